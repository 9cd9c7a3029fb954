-- 0015 was half a fix. With sequential scans costed out, the planner still
-- believed jsonb_to_recordset's 100 rows and joined them to agent_commands
-- by hashing the whole primary-key index instead: a full index walk per
-- status write, in a plan PL/pgSQL keeps for the life of the connection. On
-- a table that grew from empty (every new deployment), 1,000 single-command
-- writes took 1.0, 3.3, 3.9 and 6.3 ms each as the table went from 1,000 to
-- 4,000 rows, and 0.44 to 0.58 ms flat with joins by key (PostgreSQL 15).
-- So hash and merge joins are costed out of write_status too: every join in
-- it is a primary-key probe per input row, and its input is one flush.
ALTER FUNCTION write_status(jsonb, jsonb, jsonb, integer) SET enable_hashjoin = off;--> statement-breakpoint
ALTER FUNCTION write_status(jsonb, jsonb, jsonb, integer) SET enable_mergejoin = off;--> statement-breakpoint
-- The triggers that fire inside it join only the statement's transition
-- tables, where hashing is right: a 250-command flush ran 20 % slower with
-- nested loops there.
ALTER FUNCTION observe_command_latency() SET enable_hashjoin = on;--> statement-breakpoint
ALTER FUNCTION observe_command_latency() SET enable_mergejoin = on;--> statement-breakpoint
ALTER FUNCTION observe_command_latency() SET enable_seqscan = on;--> statement-breakpoint
ALTER FUNCTION count_command_events() SET enable_hashjoin = on;--> statement-breakpoint
ALTER FUNCTION count_command_events() SET enable_mergejoin = on;--> statement-breakpoint
ALTER FUNCTION count_command_events() SET enable_seqscan = on;--> statement-breakpoint
-- The enqueue's function returns a table, which Postgres assumes is 1,000
-- rows; the statement around it then hashed the whole agents table to find
-- each new command's agent (a sequential scan of 21,000 agents per enqueue,
-- against one primary-key probe with this estimate). A request creates one
-- command, or a batch of at most 1,000 that probes as cheaply.
ALTER FUNCTION enqueue_commands(jsonb, text, integer) ROWS 1;
