-- Counters were spread over 16 shards by backend pid, but a pooler keeps
-- dozens of server connections, so several backends shared each shard and
-- every agent's status write queued on the same few counter rows until the
-- one ahead committed: in the goals bench's batch phase the counting insert
-- averaged 4.5 ms, most of a status write's 21 ms (docs/performance.md).
-- 256 shards give each pooled backend a row of its own; a scrape still sums
-- them, and the rows already counted keep their shards.
CREATE OR REPLACE FUNCTION metric_shard() RETURNS smallint LANGUAGE sql STABLE AS $$ SELECT (pg_backend_pid() % 256)::smallint $$;
