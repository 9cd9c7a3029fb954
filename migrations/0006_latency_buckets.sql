-- A latency histogram kept one row per bucket an observation falls in, not
-- one per bound at or above it: observing a latency updates two rows (its
-- bucket and the sum) instead of sixteen, which was half the cost of an
-- agent's status write (docs/performance.md). /metrics adds the buckets up
-- into Prometheus's cumulative form; the count is the sum of all buckets,
-- '+Inf' included.
CREATE OR REPLACE FUNCTION observe_command_latency() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO metric_counters (name, label, shard, value)
	SELECT obs.name, v.label, metric_shard(), sum(v.value)
	FROM (
		SELECT 'enqueue_to_dispatch_seconds' AS name, extract(epoch FROM n.first_dispatched_at - n.created_at)::float8 AS d
		FROM new_rows n JOIN old_rows o ON o.id = n.id
		WHERE n.first_dispatched_at IS NOT NULL AND o.first_dispatched_at IS NULL
		UNION ALL
		SELECT 'dispatch_to_completion_seconds', extract(epoch FROM n.completed_at - n.first_dispatched_at)::float8
		FROM new_rows n JOIN old_rows o ON o.id = n.id
		WHERE n.completed_at IS NOT NULL AND n.first_dispatched_at IS NOT NULL AND o.completed_at IS NULL
	) obs
	CROSS JOIN LATERAL (VALUES
		(coalesce((SELECT b.label FROM latency_buckets() b WHERE b.le >= obs.d ORDER BY b.le LIMIT 1), '+Inf'), 1::float8),
		('sum', obs.d)
	) v(label, value)
	GROUP BY obs.name, v.label
	-- One order for every statement, so two flushes never lock the same rows crosswise.
	ORDER BY obs.name, v.label
	ON CONFLICT (name, label, shard) DO UPDATE SET value = metric_counters.value + excluded.value;
	RETURN NULL;
END $$;
--> statement-breakpoint
-- What was counted before stays counted: each bound's cumulative row becomes
-- its own bucket (itself less the bound below it), and the count what is
-- left above the last bound.
WITH cumulative AS (
	SELECT c.name, c.shard, c.label, c.value, b.le,
		c.value - coalesce(lag(c.value) OVER (PARTITION BY c.name, c.shard ORDER BY b.le), 0) AS own
	FROM metric_counters c JOIN latency_buckets() b ON b.label = c.label AND b.le IS NOT NULL
)
UPDATE metric_counters m SET value = x.own
FROM cumulative x WHERE m.name = x.name AND m.shard = x.shard AND m.label = x.label;
--> statement-breakpoint
UPDATE metric_counters m SET label = '+Inf', value = m.value - coalesce((
	SELECT sum(b.value) FROM metric_counters b
	WHERE b.name = m.name AND b.shard = m.shard AND b.label NOT IN ('count', 'sum')
), 0)
WHERE m.label = 'count' AND m.name IN ('enqueue_to_dispatch_seconds', 'dispatch_to_completion_seconds');
