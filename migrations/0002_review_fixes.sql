ALTER TABLE "agent_commands" ADD COLUMN "first_dispatched_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "command_events" ADD COLUMN "dedup_key" text;--> statement-breakpoint
CREATE UNIQUE INDEX "command_events_dedup_idx" ON "command_events" USING btree ("dedup_key") WHERE "command_events"."dedup_key" is not null;