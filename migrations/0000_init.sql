CREATE TABLE "agent_commands" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"seq" bigint GENERATED ALWAYS AS IDENTITY (sequence name "agent_commands_seq_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"agent_id" text NOT NULL,
	"session_id" text,
	"action" text NOT NULL,
	"payload" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"status" text DEFAULT 'pending' NOT NULL,
	"priority" smallint DEFAULT 5 NOT NULL,
	"attempts" integer DEFAULT 0 NOT NULL,
	"idempotency_key" text,
	"result" jsonb,
	"error" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	"dispatched_at" timestamp with time zone,
	"acknowledged_at" timestamp with time zone,
	"completed_at" timestamp with time zone,
	CONSTRAINT "agent_commands_status_check" CHECK ("agent_commands"."status" in ('pending','dispatched','acknowledged','completed','failed','cancelled','expired')),
	CONSTRAINT "agent_commands_priority_check" CHECK ("agent_commands"."priority" between 0 and 9)
);
--> statement-breakpoint
CREATE TABLE "agents" (
	"id" text PRIMARY KEY NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"connected" boolean DEFAULT false NOT NULL,
	"last_connected_at" timestamp with time zone,
	"last_seen_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "command_events" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "command_events_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"command_id" uuid NOT NULL,
	"from_status" text,
	"to_status" text NOT NULL,
	"at" timestamp with time zone DEFAULT now() NOT NULL,
	"detail" jsonb
);
--> statement-breakpoint
ALTER TABLE "command_events" ADD CONSTRAINT "command_events_command_id_agent_commands_id_fk" FOREIGN KEY ("command_id") REFERENCES "public"."agent_commands"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "agent_commands_agent_seq_idx" ON "agent_commands" USING btree ("agent_id","seq" DESC NULLS LAST);--> statement-breakpoint
CREATE INDEX "agent_commands_open_idx" ON "agent_commands" USING btree ("agent_id","priority" DESC NULLS LAST,"seq") WHERE "agent_commands"."status" in ('pending','dispatched','acknowledged');--> statement-breakpoint
CREATE UNIQUE INDEX "agent_commands_idempotency_idx" ON "agent_commands" USING btree ("agent_id","idempotency_key") WHERE "agent_commands"."idempotency_key" is not null;--> statement-breakpoint
CREATE INDEX "command_events_command_idx" ON "command_events" USING btree ("command_id","id");