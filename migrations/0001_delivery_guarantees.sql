ALTER TABLE "agent_commands" ADD COLUMN "error_code" text;--> statement-breakpoint
ALTER TABLE "agent_commands" ADD COLUMN "max_attempts" integer DEFAULT 5 NOT NULL;--> statement-breakpoint
ALTER TABLE "agent_commands" ADD COLUMN "ack_timeout_seconds" integer DEFAULT 10 NOT NULL;--> statement-breakpoint
ALTER TABLE "agent_commands" ADD COLUMN "timeout_seconds" integer;--> statement-breakpoint
ALTER TABLE "agent_commands" ADD COLUMN "expires_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "agent_commands" ADD COLUMN "taken_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "agent_commands" ADD COLUMN "cancel_requested_at" timestamp with time zone;--> statement-breakpoint
CREATE INDEX "agent_commands_untaken_idx" ON "agent_commands" USING btree ("created_at") WHERE "agent_commands"."status" = 'pending' and "agent_commands"."taken_at" is null;