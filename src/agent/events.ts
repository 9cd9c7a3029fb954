/**
 * The agent's event log, for observers: every presence change, every command
 * status transition and every output chunk, numbered by a per-agent sequence.
 * Bounded (EVENT_LOG_MAX events, EVENT_LOG_MAX_AGE_MS); what was pruned is
 * remembered, so an observer resuming from before it is told about the gap
 * instead of silently missing events.
 */
import type { ObserverEvent } from "../protocol";

export const EVENT_LOG_MAX = 10_000;
export const EVENT_LOG_MAX_AGE_MS = 24 * 60 * 60 * 1000;

/** Pruning runs every this many appends, so the bound holds even while Postgres is down. */
const PRUNE_EVERY = 100;
/**
 * Replay and broadcast read the log a page at a time, bounded by count and by
 * bytes (output events can be 64 KiB each), so neither holds much in memory.
 */
export const PAGE = 100;
export const PAGE_BYTES = 1024 * 1024;

export function appendEvent(sql: SqlStorage, event: ObserverEvent, now: number): number {
	const body = JSON.stringify(event);
	const seq = sql
		.exec<{ seq: number }>("insert into events (at, body, size) values (?, ?, ?) returning seq", now, body, body.length)
		.one().seq;
	if (seq % PRUNE_EVERY === 0) pruneEvents(sql, now);
	return seq;
}

export interface Logged {
	seq: number;
	at: number;
	event: ObserverEvent;
}

export function latestSeq(sql: SqlStorage): number {
	return sql.exec<{ seq: number | null }>("select max(seq) as seq from events").one().seq ?? prunedThrough(sql);
}

/** The highest seq ever pruned (0 if none): resuming from before it has a gap. */
export function prunedThrough(sql: SqlStorage): number {
	const row = sql.exec<{ value: string }>("select value from meta where key = 'events_pruned_through'").toArray()[0];
	return Number(row?.value ?? 0);
}

/** The next page after `seq`: at most `limit` events, and past the first, at most `budget` characters. */
export function eventsAfter(sql: SqlStorage, seq: number, limit = PAGE, budget = PAGE_BYTES): Logged[] {
	return sql
		.exec<{ seq: number; at: number; body: string }>(
			`select e.seq, e.at, e.body from events e join (
				select seq, sum(size) over (order by seq) - size as before from events where seq > ? order by seq limit ?
			) p on p.seq = e.seq
			where p.before = 0 or p.before + e.size <= ?
			order by e.seq`,
			seq,
			limit,
			budget,
		)
		.toArray()
		// SAFETY: only appendEvent writes this table, from a typed ObserverEvent.
		.map((r) => ({ seq: r.seq, at: r.at, event: JSON.parse(r.body) as ObserverEvent }));
}

export function pruneEvents(sql: SqlStorage, now: number): void {
	const cutoff = sql
		.exec<{ seq: number | null }>(
			"select max(seq) as seq from events where at < ? or seq <= (select max(seq) from events) - ?",
			now - EVENT_LOG_MAX_AGE_MS,
			EVENT_LOG_MAX,
		)
		.one().seq;
	if (cutoff === null) return;
	sql.exec("delete from events where seq <= ?", cutoff);
	sql.exec(
		"insert into meta (key, value) values ('events_pruned_through', ?) on conflict (key) do update set value = excluded.value",
		String(cutoff),
	);
}
