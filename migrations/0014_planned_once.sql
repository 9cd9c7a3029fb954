-- The agent object's status write (src/db/status-writes.ts) as a function.
-- Sent as one statement it was planned again on every call: 0.81 ms of
-- planning for 0.39 ms of execution on a 100,000-row table (EXPLAIN ANALYZE,
-- PostgreSQL 15). PL/pgSQL keeps a statement's plan for the life of the
-- server connection, and poolers (PgBouncer, Neon's) keep those connections,
-- so each write is planned once per connection instead. The update, its
-- events and the agent's presence still commit together: a function runs
-- inside the statement that calls it.
--
-- p_updates: one object per command (CommandUpdate in status-writes.ts).
-- p_events:  one object per transition, in order.
-- p_presence: the agent's row (Presence), or null to leave it alone.
-- p_output_cap: characters of output kept per command (OUTPUT_CAP_CHARS).
CREATE OR REPLACE FUNCTION write_status(p_updates jsonb, p_events jsonb, p_presence jsonb, p_output_cap integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	v_info jsonb := CASE WHEN jsonb_typeof(p_presence->'info') = 'object' THEN p_presence->'info' END;
BEGIN
	WITH u AS (
		SELECT * FROM jsonb_to_recordset(p_updates) AS u(
			command_id uuid, status text, attempts int, updated_at timestamptz,
			dispatched_at timestamptz, first_dispatched_at timestamptz, acknowledged_at timestamptz, completed_at timestamptz,
			has_result boolean, result jsonb, has_error boolean, error text, error_code text,
			taken_at timestamptz, cancel_requested_at timestamptz, output_pieces jsonb, output_epoch text,
			output_dropped boolean, late_from text)
	), uo AS (
		-- The chunks Postgres does not have yet: all of them from another
		-- object lifetime, else those past the last position it appended.
		SELECT u.*, (
			SELECT string_agg(x.p->>'d', '' ORDER BY x.ord)
			FROM jsonb_array_elements(u.output_pieces) WITH ORDINALITY AS x(p, ord)
			WHERE x.p->>'s' IS NULL OR c.output_epoch IS DISTINCT FROM u.output_epoch
				OR (x.p->>'s')::bigint > coalesce(c.output_outbox_seq, -1)
		) AS output_append, (
			SELECT max((x.p->>'s')::bigint) FROM jsonb_array_elements(u.output_pieces) AS x(p)
		) AS output_through
		FROM u LEFT JOIN agent_commands c ON c.id = u.command_id
	), events AS (
		INSERT INTO command_events (command_id, from_status, to_status, at, detail, dedup_key, actor)
		SELECT e.command_id, e.from_status, e.to_status, e.at, e.detail, e.dedup_key, e.actor
		FROM jsonb_to_recordset(p_events) AS e(
			ord int, dedup_key text, command_id uuid, from_status text, to_status text, at timestamptz, detail jsonb,
			actor text)
		WHERE EXISTS (SELECT 1 FROM agent_commands x WHERE x.id = e.command_id)
		ORDER BY e.ord
		ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING
	)
	UPDATE agent_commands c SET
		status = coalesce(u.status, c.status),
		attempts = greatest(c.attempts, u.attempts),
		updated_at = greatest(c.updated_at, u.updated_at),
		dispatched_at = coalesce(u.dispatched_at, c.dispatched_at),
		first_dispatched_at = coalesce(c.first_dispatched_at, u.first_dispatched_at),
		acknowledged_at = coalesce(u.acknowledged_at, c.acknowledged_at),
		completed_at = coalesce(u.completed_at, c.completed_at),
		result = CASE WHEN u.has_result THEN u.result ELSE c.result END,
		error = CASE WHEN u.has_error THEN u.error ELSE c.error END,
		error_code = CASE WHEN u.has_error THEN u.error_code ELSE c.error_code END,
		taken_at = coalesce(c.taken_at, u.taken_at),
		cancel_requested_at = coalesce(c.cancel_requested_at, u.cancel_requested_at),
		-- Once anything was cut, nothing later is appended: the stored output
		-- is always a prefix, never a text with a hole in it.
		output = CASE WHEN u.output_append IS NULL OR c.output_truncated THEN c.output
			ELSE left(coalesce(c.output, '') || u.output_append, p_output_cap) END,
		output_truncated = c.output_truncated OR u.output_dropped
			OR length(coalesce(c.output, '')) + length(coalesce(u.output_append, '')) > p_output_cap,
		output_epoch = coalesce(u.output_epoch, c.output_epoch),
		output_outbox_seq = CASE WHEN u.output_through IS NULL THEN c.output_outbox_seq
			WHEN c.output_epoch IS DISTINCT FROM u.output_epoch THEN u.output_through
			ELSE greatest(c.output_outbox_seq, u.output_through) END
	-- A finished command never moves again, whatever arrives late, but for
	-- one case: the agent's result replaces the system's end it answers.
	FROM uo u WHERE c.id = u.command_id AND (c.status NOT IN ('completed','failed','cancelled','expired')
		OR (c.status = u.late_from AND c.error_code IS NOT NULL));

	IF p_presence IS NOT NULL THEN
		-- The hello's fields ride on the presence write the connect makes anyway.
		INSERT INTO agents AS a (id, connected, last_connected_at, last_seen_at, outbox_depth,
			version, platform, concurrency, actions, agent_labels)
		VALUES (p_presence->>'agentId', (p_presence->>'connected')::boolean,
			(p_presence->>'lastConnectedAt')::timestamptz, (p_presence->>'lastSeenAt')::timestamptz,
			(p_presence->>'outboxDepth')::int,
			v_info->>'version', v_info->>'platform', (v_info->>'concurrency')::int,
			(SELECT array_agg(x) FROM jsonb_array_elements_text(
				CASE WHEN jsonb_typeof(v_info->'actions') = 'array' THEN v_info->'actions' END) AS x),
			coalesce(v_info->'labels', '{}'::jsonb))
		ON CONFLICT (id) DO UPDATE SET
			connected = excluded.connected,
			outbox_depth = excluded.outbox_depth,
			last_connected_at = coalesce(excluded.last_connected_at, a.last_connected_at),
			last_seen_at = greatest(a.last_seen_at, excluded.last_seen_at),
			version = CASE WHEN v_info IS NULL THEN a.version ELSE excluded.version END,
			platform = CASE WHEN v_info IS NULL THEN a.platform ELSE excluded.platform END,
			concurrency = CASE WHEN v_info IS NULL THEN a.concurrency ELSE excluded.concurrency END,
			actions = CASE WHEN v_info IS NULL THEN a.actions ELSE excluded.actions END,
			agent_labels = CASE WHEN v_info IS NULL THEN a.agent_labels ELSE excluded.agent_labels END;
	END IF;
END
$$;
--> statement-breakpoint
-- The enqueue's insert (src/db/enqueue.ts), planned once per connection for
-- the same reason: 0.38 ms of planning for 0.69 ms of execution per call.
-- Returns each command created, with the request positions (`ord`) of the
-- rows the agents' backlog quota refused on every row.
CREATE OR REPLACE FUNCTION enqueue_commands(p_rows jsonb, p_actor text, p_limit integer)
RETURNS TABLE (refused integer[], command agent_commands) LANGUAGE plpgsql AS $$
BEGIN
	RETURN QUERY
	WITH input AS (
		SELECT * FROM jsonb_to_recordset(p_rows) AS x(
			ord int, agent_id text, session_id text, action text, payload jsonb, priority int,
			idempotency_key text, idempotency_fingerprint text, max_attempts int, ack_timeout_seconds int,
			timeout_seconds int, ttl_seconds int, retry_of uuid)
	), backlog AS (
		-- Counted through agent_commands_open_idx, never past p_limit rows.
		SELECT i.agent_id, (SELECT count(*) FROM (
			SELECT 1 FROM agent_commands o
			WHERE o.agent_id = i.agent_id AND o.status IN ('pending', 'dispatched', 'acknowledged') LIMIT p_limit) open) AS open
		FROM (SELECT DISTINCT input.agent_id FROM input) i
	), admitted AS (
		SELECT x.* FROM (SELECT input.*, row_number() OVER (PARTITION BY input.agent_id ORDER BY input.ord) AS n FROM input) x
		JOIN backlog b ON b.agent_id = x.agent_id WHERE b.open + x.n <= p_limit
	), new_agents AS (
		INSERT INTO agents (id) SELECT DISTINCT input.agent_id FROM input ON CONFLICT (id) DO NOTHING
	), c AS (
		INSERT INTO agent_commands (agent_id, session_id, action, payload, priority, idempotency_key,
			idempotency_fingerprint, max_attempts, ack_timeout_seconds, timeout_seconds, expires_at, retry_of)
		SELECT a.agent_id, a.session_id, a.action, coalesce(a.payload, 'null'::jsonb), a.priority, a.idempotency_key,
			a.idempotency_fingerprint, a.max_attempts, a.ack_timeout_seconds, a.timeout_seconds,
			CASE WHEN a.ttl_seconds IS NULL THEN NULL ELSE now() + make_interval(secs => a.ttl_seconds) END, a.retry_of
		FROM admitted a ORDER BY a.ord
		ON CONFLICT (agent_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
		RETURNING *
	), events AS (
		INSERT INTO command_events (command_id, from_status, to_status, at, detail, actor)
		SELECT c.id, NULL, 'pending', c.created_at, '{"reason":"enqueued"}'::jsonb, p_actor FROM c
	)
	SELECT array(SELECT input.ord FROM input WHERE input.ord NOT IN (SELECT admitted.ord FROM admitted)), c::agent_commands FROM c;
END
$$;
