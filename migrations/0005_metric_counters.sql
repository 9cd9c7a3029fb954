CREATE TABLE "metric_counters" (
	"name" text NOT NULL,
	"label" text DEFAULT '' NOT NULL,
	"shard" smallint NOT NULL,
	"value" double precision DEFAULT 0 NOT NULL,
	CONSTRAINT "metric_counters_name_label_shard_pk" PRIMARY KEY("name","label","shard")
);
--> statement-breakpoint
-- The counters are kept by triggers, not by the application, so every writer
-- of events and status changes (the API, the agent objects' flushes, an
-- operator's plain SQL) is counted, and deleting rows (retention) never takes
-- a count back.
-- Histogram bounds must match LATENCY_BUCKETS in src/db/metrics.ts; each
-- bucket row holds the cumulative count (observations <= le), as Prometheus wants.
CREATE FUNCTION metric_shard() RETURNS smallint LANGUAGE sql STABLE AS $$ SELECT (pg_backend_pid() % 16)::smallint $$;
--> statement-breakpoint
CREATE FUNCTION count_command_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO metric_counters (name, label, shard, value)
	SELECT name, label, metric_shard(), count(*) FROM (
		SELECT 'transitions' AS name, e.to_status AS label FROM new_events e
		UNION ALL
		SELECT 'redeliveries', '' FROM new_events e
		WHERE e.to_status = 'dispatched' AND e.detail->>'reason' = 'redelivery'
	) x
	GROUP BY name, label
	-- One order for every statement, so two flushes never lock the same rows crosswise.
	ORDER BY name, label
	ON CONFLICT (name, label, shard) DO UPDATE SET value = metric_counters.value + excluded.value;
	RETURN NULL;
END $$;
--> statement-breakpoint
CREATE TRIGGER command_events_count AFTER INSERT ON command_events
	REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT EXECUTE FUNCTION count_command_events();
--> statement-breakpoint
CREATE FUNCTION latency_buckets() RETURNS TABLE (label text, le float8) LANGUAGE sql IMMUTABLE AS $$
	VALUES ('0.005', 0.005), ('0.01', 0.01), ('0.025', 0.025), ('0.05', 0.05), ('0.1', 0.1), ('0.25', 0.25),
		('0.5', 0.5), ('1', 1), ('2.5', 2.5), ('5', 5), ('10', 10), ('30', 30), ('60', 60), ('300', 300),
		('count', NULL), ('sum', NULL)
$$;
--> statement-breakpoint
-- A latency is observed when an UPDATE first sets first_dispatched_at or
-- completed_at; the old transition table is what the row was before it.
CREATE FUNCTION observe_command_latency() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO metric_counters (name, label, shard, value)
	SELECT obs.name, b.label, metric_shard(),
		sum(CASE WHEN b.label = 'sum' THEN obs.d WHEN b.label = 'count' OR obs.d <= b.le THEN 1 ELSE 0 END)
	FROM (
		SELECT 'enqueue_to_dispatch_seconds' AS name, extract(epoch FROM n.first_dispatched_at - n.created_at)::float8 AS d
		FROM new_rows n JOIN old_rows o ON o.id = n.id
		WHERE n.first_dispatched_at IS NOT NULL AND o.first_dispatched_at IS NULL
		UNION ALL
		SELECT 'dispatch_to_completion_seconds', extract(epoch FROM n.completed_at - n.first_dispatched_at)::float8
		FROM new_rows n JOIN old_rows o ON o.id = n.id
		WHERE n.completed_at IS NOT NULL AND n.first_dispatched_at IS NOT NULL AND o.completed_at IS NULL
	) obs CROSS JOIN latency_buckets() b
	GROUP BY obs.name, b.label
	ORDER BY obs.name, b.label
	ON CONFLICT (name, label, shard) DO UPDATE SET value = metric_counters.value + excluded.value;
	RETURN NULL;
END $$;
--> statement-breakpoint
CREATE TRIGGER agent_commands_latency AFTER UPDATE ON agent_commands
	REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION observe_command_latency();
--> statement-breakpoint
-- Start from what the retained rows already say, so an upgrade does not reset the counts.
INSERT INTO metric_counters (name, label, shard, value)
SELECT 'transitions', to_status, 0, count(*) FROM command_events GROUP BY to_status
UNION ALL
SELECT 'redeliveries', '', 0, count(*) FROM command_events WHERE to_status = 'dispatched' AND detail->>'reason' = 'redelivery';
--> statement-breakpoint
INSERT INTO metric_counters (name, label, shard, value)
SELECT obs.name, b.label, 0,
	sum(CASE WHEN b.label = 'sum' THEN obs.d WHEN b.label = 'count' OR obs.d <= b.le THEN 1 ELSE 0 END)
FROM (
	SELECT 'enqueue_to_dispatch_seconds' AS name, extract(epoch FROM first_dispatched_at - created_at)::float8 AS d
	FROM agent_commands WHERE first_dispatched_at IS NOT NULL
	UNION ALL
	SELECT 'dispatch_to_completion_seconds', extract(epoch FROM completed_at - first_dispatched_at)::float8
	FROM agent_commands WHERE completed_at IS NOT NULL AND first_dispatched_at IS NOT NULL
) obs CROSS JOIN latency_buckets() b
GROUP BY obs.name, b.label;
