/**
 * Fleet metrics, computed from Postgres on each scrape (so as fresh as the
 * agents' last outbox flushes, normally milliseconds). Counters and
 * histograms are recomputed from the retained rows, so they step down when
 * retention deletes old ones (it runs every minute): Prometheus reads that as
 * a counter reset. Known limitation; see docs/operations.md.
 */
import { type SQL, sql } from "drizzle-orm";
import { z } from "zod";
import type { Db } from "./client";

/** Histogram bucket upper bounds, in seconds. */
export const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300] as const;

const Histogram = z.object({ buckets: z.array(z.coerce.number()), count: z.coerce.number(), sum: z.coerce.number() });
export type Histogram = z.infer<typeof Histogram>;

const Snapshot = z.object({
	agents_connected: z.coerce.number(),
	outbox_depth: z.coerce.number(),
	by_status: z.record(z.string(), z.coerce.number()).nullable(),
	transitions: z.record(z.string(), z.coerce.number()).nullable(),
	redeliveries: z.coerce.number(),
	oldest_pending_seconds: z.coerce.number().nullable(),
	enqueue_to_dispatch: Histogram,
	dispatch_to_completion: Histogram,
});
export type Snapshot = z.infer<typeof Snapshot>;

function histogram(seconds: SQL, from: SQL): SQL {
	const counts = LATENCY_BUCKETS.map((le) => `count(*) filter (where d <= ${le})`).join(", ");
	return sql`(select json_build_object('buckets', json_build_array(${sql.raw(counts)}), 'count', count(*), 'sum', coalesce(sum(d), 0))
		from (select ${seconds} as d ${from}) h)`;
}

/** Everything /metrics reports, in one round trip. */
export async function snapshot(db: Db): Promise<Snapshot> {
	const result = await db.execute(sql`
		select
			(select count(*) from agents where connected) as agents_connected,
			(select coalesce(sum(outbox_depth), 0) from agents) as outbox_depth,
			(select json_object_agg(status, n) from (select status, count(*) as n from agent_commands group by status) s) as by_status,
			(select json_object_agg(to_status, n) from (select to_status, count(*) as n from command_events group by to_status) t) as transitions,
			(select count(*) from command_events where to_status = 'dispatched' and detail->>'reason' = 'redelivery') as redeliveries,
			(select extract(epoch from now() - min(created_at)) from agent_commands where status = 'pending') as oldest_pending_seconds,
			${histogram(
				sql`extract(epoch from first_dispatched_at - created_at)`,
				sql`from agent_commands where first_dispatched_at is not null`,
			)} as enqueue_to_dispatch,
			${histogram(
				sql`extract(epoch from completed_at - first_dispatched_at)`,
				sql`from agent_commands where completed_at is not null and first_dispatched_at is not null`,
			)} as dispatch_to_completion`);
	return Snapshot.parse(result.rows[0]);
}
