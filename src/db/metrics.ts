/**
 * Fleet metrics, read from Postgres (so as fresh as the agents' last outbox
 * flushes, normally milliseconds). Gauges are computed from the open work
 * only, each part through a partial index (migrations/0008), so a scrape costs
 * the same with a week or a year of finished commands retained; finished
 * commands are counted by `transitions`, not gauged. Counters and histograms
 * come from `metric_counters`, which triggers keep (migrations/0005, 0006) and
 * retention never touches, so they only grow. A histogram is stored one row
 * per bucket (the cheapest for the trigger to keep) and made cumulative here.
 */
import { type SQL, sql } from "drizzle-orm";
import { z } from "zod";
import type { Db } from "./client";

/** Histogram bucket upper bounds, in seconds. Must match latency_buckets() in migrations/0005. */
export const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300] as const;

export interface Histogram {
	/** Cumulative counts, one per LATENCY_BUCKETS bound. */
	buckets: number[];
	count: number;
	sum: number;
}

const Snapshot = z.object({
	agents_connected: z.coerce.number(),
	outbox_depth: z.coerce.number(),
	by_status: z.record(z.string(), z.coerce.number()).nullable(),
	oldest_pending_seconds: z.coerce.number().nullable(),
	counters: z.array(z.object({ name: z.string(), label: z.string(), value: z.coerce.number() })).nullable(),
});

export interface Snapshot {
	agentsConnected: number;
	outboxDepth: number;
	/** Open commands (pending, dispatched, acknowledged) by status; finished ones are in `transitions`. */
	byStatus: Record<string, number>;
	oldestPendingSeconds: number | null;
	transitions: Record<string, number>;
	redeliveries: number;
	enqueueToDispatch: Histogram;
	dispatchToCompletion: Histogram;
}

/**
 * The one statement behind /metrics. Each predicate is the one of a partial
 * index (agents_connected_idx, agents_outbox_idx,
 * agent_commands_open_status_idx), so what it reads grows with the agents
 * online and the commands open, never with the history;
 * test/worker/query-plans.test.ts holds it to that.
 */
export function snapshotQuery(): SQL {
	return sql`
		select
			(select count(*) from agents where connected) as agents_connected,
			(select coalesce(sum(outbox_depth), 0) from agents where outbox_depth > 0) as outbox_depth,
			(select json_object_agg(status, n) from (
				select status, count(*) as n from agent_commands
				where status in ('pending','dispatched','acknowledged') group by status
			) s) as by_status,
			(select extract(epoch from now() - min(created_at)) from agent_commands where status = 'pending') as oldest_pending_seconds,
			(select json_agg(c) from (select name, label, sum(value) as value from metric_counters group by name, label) c) as counters`;
}

/** Everything /metrics reports, in one round trip. */
export async function snapshot(db: Db): Promise<Snapshot> {
	const result = await db.execute(snapshotQuery());
	const row = Snapshot.parse(result.rows[0]);
	const counters = new Map((row.counters ?? []).map((c) => [`${c.name}/${c.label}`, c.value]));
	const counter = (name: string, label = "") => counters.get(`${name}/${label}`) ?? 0;
	const histogram = (name: string): Histogram => {
		let below = 0;
		const buckets = LATENCY_BUCKETS.map((le) => (below += counter(name, String(le))));
		return { buckets, count: below + counter(name, "+Inf"), sum: counter(name, "sum") };
	};
	return {
		agentsConnected: row.agents_connected,
		outboxDepth: row.outbox_depth,
		byStatus: row.by_status ?? {},
		oldestPendingSeconds: row.oldest_pending_seconds,
		transitions: Object.fromEntries(
			(row.counters ?? []).filter((c) => c.name === "transitions").map((c) => [c.label, c.value]),
		),
		redeliveries: counter("redeliveries"),
		enqueueToDispatch: histogram("enqueue_to_dispatch_seconds"),
		dispatchToCompletion: histogram("dispatch_to_completion_seconds"),
	};
}
