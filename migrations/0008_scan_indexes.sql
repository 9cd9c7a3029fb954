-- Partial indexes bounded by the open work, so neither a /metrics scrape nor
-- a retention batch reads the retained history (30 days of finished commands
-- can be millions of rows). IF NOT EXISTS: on a large table an operator may
-- build them first with CREATE INDEX CONCURRENTLY under the same names
-- (docs/operations.md, "Database"); this transaction then finds them.
-- /metrics: open commands by status, and the oldest pending one.
CREATE INDEX IF NOT EXISTS "agent_commands_open_status_idx" ON "agent_commands" USING btree ("status","created_at") WHERE "agent_commands"."status" in ('pending','dispatched','acknowledged');--> statement-breakpoint
-- Retention: finished rows, oldest completion first. (Its cascade to
-- command_events is served by command_events_command_idx, led by command_id.)
CREATE INDEX IF NOT EXISTS "agent_commands_finished_idx" ON "agent_commands" USING btree ("completed_at") WHERE "agent_commands"."status" in ('completed','failed','cancelled','expired');--> statement-breakpoint
-- /metrics: connected agents, and the agents whose objects still hold changes.
CREATE INDEX IF NOT EXISTS "agents_connected_idx" ON "agents" USING btree ("id") WHERE "agents"."connected";--> statement-breakpoint
CREATE INDEX IF NOT EXISTS "agents_outbox_idx" ON "agents" USING btree ("outbox_depth") WHERE "agents"."outbox_depth" > 0;
