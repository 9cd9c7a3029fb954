-- Fan-outs and the search across agents (docs/protocol.md, "Fan-outs" and
-- "Search"). IF NOT EXISTS: on a large table an operator may build the
-- indexes first with CREATE INDEX CONCURRENTLY under the same names
-- (docs/operations.md, "Database"); this transaction then finds them.
-- POST /v1/fanouts with an idempotencyKey: a retried POST finds its fan-out.
ALTER TABLE "fanouts" ADD COLUMN "idempotency_key" text;--> statement-breakpoint
ALTER TABLE "fanouts" ADD COLUMN "idempotency_fingerprint" text;--> statement-breakpoint
CREATE UNIQUE INDEX IF NOT EXISTS "fanouts_idempotency_idx" ON "fanouts" USING btree ("idempotency_key") WHERE "fanouts"."idempotency_key" is not null;--> statement-breakpoint
-- GET /v1/commands, every shape newest first (order by seq desc, limit n+1);
-- each filter walks the index led by its column backwards and stops at the
-- page. Plans on a million rows: docs/operations.md, "Searching commands".
--   no filter, and createdAfter/createdBefore alone (seq follows created_at):
CREATE INDEX IF NOT EXISTS "agent_commands_seq_idx" ON "agent_commands" USING btree ("seq");--> statement-breakpoint
--   status=S (one; several are a merge of these ranges or a bitmap scan):
CREATE INDEX IF NOT EXISTS "agent_commands_status_seq_idx" ON "agent_commands" USING btree ("status","seq");--> statement-breakpoint
--   action=A:
CREATE INDEX IF NOT EXISTS "agent_commands_action_seq_idx" ON "agent_commands" USING btree ("action","seq");--> statement-breakpoint
--   sessionId=S:
CREATE INDEX IF NOT EXISTS "agent_commands_session_seq_idx" ON "agent_commands" USING btree ("session_id","seq") WHERE "agent_commands"."session_id" is not null;--> statement-breakpoint
--   a narrow created range far in the past (a bitmap of this, then a top-n sort):
CREATE INDEX IF NOT EXISTS "agent_commands_created_idx" ON "agent_commands" USING btree ("created_at");
--   agentId=X uses agent_commands_agent_seq_idx (0000); fanoutId=F uses
--   agent_commands_fanout_idx (0010); label=k=v finds the agents through
--   agents_labels_idx (GIN, 0010), then each agent's rows through
--   agent_commands_agent_seq_idx.
