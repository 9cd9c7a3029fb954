/**
 * The observers' side of the journal (./journal.ts): every presence change,
 * status transition and output chunk, numbered by a per-agent sequence.
 * Bounded (EVENT_LOG_MAX rows, EVENT_LOG_MAX_BYTES, EVENT_LOG_MAX_AGE_MS) but never past what
 * Postgres has confirmed; what was pruned is remembered, so an observer
 * resuming from before it is told about the gap instead of silently missing
 * events. Observers number events by `event_seq`, 1, 2, 3 with no holes;
 * rows with no event (for Postgres only) have none and are skipped.
 */
import type { ObserverEvent } from "../protocol";

export const EVENT_LOG_MAX = 10_000;
export const EVENT_LOG_MAX_AGE_MS = 24 * 60 * 60 * 1000;
/** Characters of event bodies kept: 10,000 output events of 64 KiB would be 640 MiB. */
export const EVENT_LOG_MAX_BYTES = 32 * 1024 * 1024;

/**
 * Replay and broadcast read the log a page at a time, bounded by count and by
 * bytes (output events can be 64 KiB each), so neither holds much in memory.
 */
export const PAGE = 100;
export const PAGE_BYTES = 1024 * 1024;

export interface Logged {
	seq: number;
	at: number;
	event: ObserverEvent;
}

export function latestSeq(sql: SqlStorage): number {
	// The predicate lets SQLite read the partial index's last entry; without it, max() scanned every row.
	return sql.exec<{ seq: number | null }>("select max(event_seq) as seq from events where event_seq is not null").one().seq ?? prunedThrough(sql);
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
			// The running sum over the first `limit` entries of the index (event_seq, size) only:
			// a window over the table would read every event after `seq`, bodies included.
			// CROSS JOIN keeps that page the outer loop: SQLite otherwise chose to scan the events.
			`select e.event_seq as seq, e.at, e.body from (
				select event_seq, size, sum(size) over (order by event_seq) - size as before from (
					select event_seq, size from events where event_seq > ? order by event_seq limit ?
				)
			) p cross join events e on e.event_seq = p.event_seq
			where p.before = 0 or p.before + p.size <= ?
			order by p.event_seq`,
			seq,
			limit,
			budget,
		)
		.toArray()
		// SAFETY: only the journal writes this table, from a typed ObserverEvent.
		.map((r) => ({ seq: r.seq, at: r.at, event: JSON.parse(r.body) as ObserverEvent }));
}

/**
 * The last seq to drop: past the age bound, the count bound or the byte
 * bound, but never past the first event Postgres has yet to confirm.
 * Bindings: synced-through seq, the age cutoff, the count bound, the byte bound.
 *
 * The byte bound sums sizes from the index (event_seq, size), which holds
 * each row's seq as its rowid: `size` sits after the body in the row, so a
 * sum over the table walked every event's overflow pages. A row without an
 * event_seq has no body (size 0) and event_seq grows with seq, so summing
 * the observers' events alone finds the same cutoff.
 */
export const PRUNE_CUTOFF = `select min(max(seq), coalesce((select min(seq) - 1 from events where seq > ? and sync is not null), max(seq))) as seq
	from events where at < ? or seq <= (select max(seq) from events) - ?
		or seq <= (select max(seq) from (
			select seq, sum(size) over (order by event_seq desc) as newer from events where event_seq is not null
		) where newer > ?)`;

/**
 * Drops what is past the log's bounds, but nothing Postgres has yet to
 * confirm (past `syncedThrough`). The byte bound sums `size` (the observer's
 * copy) newest first; an output row also holds Postgres's copy in `sync`,
 * so the table itself may be about twice as large.
 */
export function pruneEvents(sql: SqlStorage, now: number, syncedThrough: number): void {
	const cutoff = sql
		.exec<{ seq: number | null }>(PRUNE_CUTOFF, syncedThrough, now - EVENT_LOG_MAX_AGE_MS, EVENT_LOG_MAX, EVENT_LOG_MAX_BYTES)
		.one().seq;
	if (cutoff === null) return;
	const through = sql.exec<{ n: number | null }>("select max(event_seq) as n from events where seq <= ?", cutoff).one().n;
	sql.exec("delete from events where seq <= ?", cutoff);
	if (through !== null && through > prunedThrough(sql)) {
		sql.exec(
			"insert into meta (key, value) values ('events_pruned_through', ?) on conflict (key) do update set value = excluded.value",
			String(through),
		);
	}
}
