-- Fleet operations (docs/protocol.md, "Fleet"): what an agent says of itself
-- in hello (version, platform, concurrency, actions, labels), the labels an
-- operator adds, pause, fan-outs and retries. `labels` is computed so that a
-- selector is one containment query on one GIN index, with the operator's
-- labels winning on a clash (the right side of || wins).
CREATE TABLE "fanouts" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"actor" text,
	"action" text NOT NULL,
	"target" jsonb NOT NULL,
	"target_count" integer NOT NULL,
	"cancel_requested_at" timestamp with time zone
);
--> statement-breakpoint
ALTER TABLE "agent_commands" ADD COLUMN "fanout_id" uuid;--> statement-breakpoint
ALTER TABLE "agent_commands" ADD COLUMN "retry_of" uuid;--> statement-breakpoint
ALTER TABLE "agents" ADD COLUMN "version" text;--> statement-breakpoint
ALTER TABLE "agents" ADD COLUMN "platform" text;--> statement-breakpoint
ALTER TABLE "agents" ADD COLUMN "concurrency" integer;--> statement-breakpoint
ALTER TABLE "agents" ADD COLUMN "actions" text[];--> statement-breakpoint
ALTER TABLE "agents" ADD COLUMN "agent_labels" jsonb DEFAULT '{}'::jsonb NOT NULL;--> statement-breakpoint
ALTER TABLE "agents" ADD COLUMN "operator_labels" jsonb DEFAULT '{}'::jsonb NOT NULL;--> statement-breakpoint
ALTER TABLE "agents" ADD COLUMN "labels" jsonb GENERATED ALWAYS AS (agent_labels || operator_labels) STORED NOT NULL;--> statement-breakpoint
ALTER TABLE "agents" ADD COLUMN "paused_at" timestamp with time zone;--> statement-breakpoint
CREATE INDEX "agent_commands_fanout_idx" ON "agent_commands" USING btree ("fanout_id","seq") WHERE "agent_commands"."fanout_id" is not null;--> statement-breakpoint
CREATE INDEX "agent_commands_retry_of_idx" ON "agent_commands" USING btree ("retry_of") WHERE "agent_commands"."retry_of" is not null;--> statement-breakpoint
CREATE INDEX "agents_labels_idx" ON "agents" USING gin ("labels" jsonb_path_ops);