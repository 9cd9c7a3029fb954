-- What Postgres's side of a command costs inside its two functions, with
-- and without the metric triggers, on a database `npm run bench` left
-- behind (switchyard_bench). Everything runs in transactions rolled back,
-- in one session: no commits, no planning of the calling statements, no
-- other load. Compare the two pairs of "Time:" lines of the two
-- procedures' calls (2,000 enqueues, then 2,000 status writes of
-- dispatched + completed with their two events).
--
--   psql -h 127.0.0.1 -U postgres -d switchyard_bench -f bench/tools/pg-function-cost.sql

-- 2,000 commands over 100 agents, one enqueue each, as the worker makes them.
create function pg_temp.enqueue_many() returns void language plpgsql as $$ begin
	for i in 1..2000 loop
		insert into ids (id) select (e.command).id from enqueue_commands(jsonb_build_array(jsonb_build_object(
			'ord', 0, 'agent_id', 'ws-agent-' || (i % 100), 'action', 'ws.test', 'payload', '{"x":1}'::jsonb,
			'priority', 5, 'max_attempts', 3, 'ack_timeout_seconds', 30)), 'api', 1000) e;
	end loop;
end $$;

-- Dispatched then completed in one write, as a flush after a quick result makes it.
create function pg_temp.write_many() returns void language plpgsql as $$ declare r record; begin
	for r in select id from ids order by n loop
		perform write_status(
			jsonb_build_array(jsonb_build_object('command_id', r.id, 'status', 'completed', 'attempts', 1,
				'updated_at', now(), 'dispatched_at', now(), 'first_dispatched_at', now(), 'completed_at', now(),
				'taken_at', now(), 'has_result', true, 'result', '{"ok":true}'::jsonb, 'output_dropped', false)),
			jsonb_build_array(
				jsonb_build_object('ord', 0, 'command_id', r.id, 'from_status', 'pending', 'to_status', 'dispatched',
					'at', now(), 'dedup_key', r.id::text || ':d', 'detail', '{}'::jsonb, 'actor', 'system'),
				jsonb_build_object('ord', 1, 'command_id', r.id, 'from_status', 'dispatched', 'to_status', 'completed',
					'at', now(), 'dedup_key', r.id::text || ':c', 'detail', '{}'::jsonb, 'actor', 'agent')),
			null, 65536);
	end loop;
end $$;

\timing on
\echo with the metric triggers
begin;
create temp table ids (n serial, id uuid);
select pg_temp.enqueue_many();
select pg_temp.write_many();
rollback;

\echo without them
begin;
alter table agent_commands disable trigger agent_commands_latency;
alter table command_events disable trigger command_events_count;
create temp table ids (n serial, id uuid);
select pg_temp.enqueue_many();
select pg_temp.write_many();
rollback;
