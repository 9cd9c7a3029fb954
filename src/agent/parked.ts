/**
 * Outbox entries Postgres refused even one by one (after a result it could
 * not store was replaced by an explanation): parked here, never dropped.
 * Dropping a transition would leave Postgres showing the command open, and
 * once the object forgot the row a catch-up would take it again and send a
 * finished command a second time. A parked entry is retried on its own
 * backoff, and while any is parked its command's row is kept and counted
 * in the outbox depth operators see.
 */
import type { KeyedEntry } from "../db/status-writes";

const RETRY_BASE_MS = 1_000;
const RETRY_MAX_MS = 60 * 60_000;

export interface Parked {
	seq: number;
	entry: KeyedEntry;
	tries: number;
}

export function park(sql: SqlStorage, entries: readonly KeyedEntry[], error: string, now: number): void {
	for (const entry of entries) {
		sql.exec(
			"insert into parked (sync, error, tries, next_at) values (?, ?, 1, ?)",
			JSON.stringify(entry),
			error,
			now + RETRY_BASE_MS,
		);
	}
}

/** Parked entries whose retry is due, oldest first. */
export function dueParked(sql: SqlStorage, now: number, limit = 50): Parked[] {
	return (
		sql
			.exec<{ seq: number; sync: string; tries: number }>("select seq, sync, tries from parked where next_at <= ? order by seq limit ?", now, limit)
			.toArray()
			// SAFETY: only park() writes `sync`, from a KeyedEntry.
			.map((r) => ({ seq: r.seq, entry: JSON.parse(r.sync) as KeyedEntry, tries: r.tries }))
	);
}

export function unpark(sql: SqlStorage, seq: number): void {
	sql.exec("delete from parked where seq = ?", seq);
}

/** Refused again: the next try waits twice as long, up to an hour. */
export function deferParked(sql: SqlStorage, p: Parked, error: string, now: number): void {
	const wait = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** Math.min(p.tries, 20));
	sql.exec("update parked set tries = tries + 1, error = ?, next_at = ? where seq = ?", error, now + wait, p.seq);
}

/** When the next parked entry is due (null: none parked). */
export function nextParkedAt(sql: SqlStorage): number | null {
	return sql.exec<{ at: number | null }>("select min(next_at) as at from parked").one().at;
}

export function parkedCount(sql: SqlStorage): number {
	return sql.exec<{ n: number }>("select count(*) as n from parked").one().n;
}
