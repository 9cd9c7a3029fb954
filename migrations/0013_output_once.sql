-- Output appended once: a status write whose commit landed but whose reply
-- was lost is sent again whole by the agent's object, and its output chunks
-- were appended a second time (found by the chaos suite's unclear-commit and
-- crash-loop scenarios). The last chunk's outbox position is kept beside the
-- output, and a write appends only the chunks past it.
ALTER TABLE "agent_commands" ADD COLUMN "output_epoch" text;--> statement-breakpoint
ALTER TABLE "agent_commands" ADD COLUMN "output_outbox_seq" bigint;