ALTER TABLE "agent_commands" ADD COLUMN "output" text;--> statement-breakpoint
ALTER TABLE "agent_commands" ADD COLUMN "output_truncated" boolean DEFAULT false NOT NULL;--> statement-breakpoint
ALTER TABLE "command_events" ADD COLUMN "actor" text;