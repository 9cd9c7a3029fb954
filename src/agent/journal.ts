/**
 * The agent object's journal: one table (`events`) that is both the log its
 * observers replay and the outbox Postgres is fed from. A status change is
 * one row, carrying the observer's event (`body`) and what Postgres must
 * store (`sync`); a fact only Postgres needs (`taken`) has an empty body,
 * and a presence change has no `sync`. An event's rows are staged in memory
 * and written in one statement when its transaction commits.
 *
 * What Postgres has confirmed is a mark (`synced_through` in the object's
 * state), not a delete: replaying a suffix is harmless, since the status
 * write is idempotent per entry key. The unconfirmed tail is also kept in
 * memory while this isolate lives, so a flush reads nothing it wrote itself.
 */
import type { KeyedEntry, OutboxEntry } from "../db/status-writes";
import { type ObserverEvent, TERMINAL_STATUSES } from "../protocol";
import { latestSeq, pruneEvents } from "./events";
import type { State } from "./state";

/** Pruning runs about every this many rows, so the log stays bounded even while Postgres is down. */
const PRUNE_EVERY = 100;
/** …or once this many characters of events were written since, so large output cannot outrun the byte bound. */
export const PRUNE_EVERY_BYTES = 1024 * 1024;
/** Past this many unconfirmed entries, the tail is read from storage again instead of held in memory. */
const MEMORY_TAIL_MAX = 2_000;

interface Staged {
	at: number;
	body: string;
	sync: OutboxEntry | null;
}

interface Unsynced {
	seq: number;
	entry: OutboxEntry;
}

export class Journal {
	private staged: Staged[] = [];
	/** The highest seq ever written (sqlite_sequence), once read. */
	private lastSeq: number | undefined;
	/** The highest observer event number so far, once read. */
	private lastEventSeq: number | undefined;
	/** Every unconfirmed entry, in order, when known to be complete; undefined: read storage. */
	private tail: Unsynced[] | undefined;
	/** Characters of events written since the last prune, in this isolate. */
	private unpruned = 0;

	constructor(
		private readonly sql: SqlStorage,
		private readonly state: State,
		/** Told of every entry as it is staged (the object logs commands that end). */
		private readonly onRecord: (entry: OutboxEntry) => void = () => {},
	) {}

	/** A fact for Postgres; a status transition or output is also an event for observers. */
	record(entry: OutboxEntry): void {
		this.onRecord(entry);
		const at = Date.parse(entry.at);
		const event = observed(entry);
		this.staged.push({ at, body: event ? JSON.stringify(event) : "", sync: entry });
	}

	/** Output is numbered by the agent's chunk seq for observers; Postgres appends it to the command's output. */
	output(commandId: string, chunk: number, data: string, now: number): void {
		const at = new Date(now).toISOString();
		const event: ObserverEvent = { type: "output", id: commandId, chunk, data };
		this.staged.push({ at: now, body: JSON.stringify(event), sync: { kind: "output", commandId, at, data } });
	}

	/** Output past the cap was dropped: Postgres marks the command's output truncated. Observers get nothing more of it. */
	outputCut(commandId: string, now: number): void {
		const at = new Date(now).toISOString();
		this.staged.push({ at: now, body: "", sync: { kind: "output", commandId, at, data: "", cut: true } });
	}

	/** An event only observers need (presence: Postgres gets it from the object's state). */
	note(event: ObserverEvent, now: number): void {
		this.staged.push({ at: now, body: JSON.stringify(event), sync: null });
	}

	/** Writes what this transaction staged, in one statement; says whether there was any. */
	write(): boolean {
		if (this.staged.length === 0) return false;
		const staged = this.staged;
		this.staged = [];
		let seq = this.last();
		let eventSeq = this.lastEvent();
		const rows = staged.map((s) => [++seq, s.at, s.body, s.sync === null ? null : JSON.stringify(s.sync), s.body === "" ? null : ++eventSeq]);
		this.sql.exec(
			`insert into events (seq, at, body, size, sync, event_seq)
			 select json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
				length(json_extract(value, '$[2]')), json_extract(value, '$[3]'), json_extract(value, '$[4]')
			 from json_each(?)`,
			JSON.stringify(rows),
		);
		const first = this.last() + 1;
		this.lastSeq = seq;
		this.lastEventSeq = eventSeq;
		if (this.tail) {
			staged.forEach((s, i) => {
				if (s.sync) this.tail?.push({ seq: first + i, entry: s.sync });
			});
			if (this.tail.length > MEMORY_TAIL_MAX) this.tail = undefined;
		}
		this.unpruned += staged.reduce((sum, s) => sum + s.body.length, 0);
		if (this.unpruned >= PRUNE_EVERY_BYTES || Math.floor(seq / PRUNE_EVERY) > Math.floor((first - 1) / PRUNE_EVERY)) {
			this.unpruned = 0;
			pruneEvents(this.sql, staged[0]?.at ?? Date.now(), this.state.get("synced_through") ?? 0);
		}
		return true;
	}

	/** A rolled-back transaction: nothing staged was written, and what is in memory may not match storage. */
	rollback(): void {
		this.staged = [];
		this.lastSeq = undefined;
		this.lastEventSeq = undefined;
		this.tail = undefined;
	}

	/**
	 * The oldest unconfirmed entries, keyed for Postgres's dedup: at most
	 * `limit`, and no more than `maxChars` of output and results past the
	 * first entry, so one status write stays a bounded statement however
	 * much output waited while Postgres was away.
	 */
	peek(limit: number, maxChars = Number.POSITIVE_INFINITY): { through: number; entries: KeyedEntry[] } {
		const synced = this.state.get("synced_through") ?? 0;
		let batch: Unsynced[];
		if (this.tail) batch = this.tail.slice(0, limit);
		else {
			batch = this.sql
				.exec<{ seq: number; sync: string }>(
					"select seq, sync from events where seq > ? and sync is not null order by seq limit ?",
					synced,
					limit,
				)
				.toArray()
				// SAFETY: only write() fills `sync`, from a typed OutboxEntry.
				.map((r) => ({ seq: r.seq, entry: JSON.parse(r.sync) as OutboxEntry }));
			// Everything unconfirmed fit: from here on, memory knows the whole tail.
			if (batch.length < limit) this.tail = [...batch];
		}
		batch = upToChars(batch, maxChars);
		const epoch = this.state.epoch();
		return {
			through: batch.at(-1)?.seq ?? synced,
			// Entries moved here from the old outbox table keep the key they had there.
			entries: batch.map((u) => ({ ...u.entry, key: (u.entry as { key?: string }).key ?? `${epoch}:j${u.seq}` })),
		};
	}

	/**
	 * Postgres has everything through `seq`. The mark is deferred (it rides
	 * with the next commit): one lost with the isolate only means a suffix
	 * written again, which Postgres dedups by entry key.
	 */
	confirm(seq: number): void {
		if (seq <= (this.state.get("synced_through") ?? 0)) return;
		this.state.defer("synced_through", seq);
		if (this.tail) this.tail = this.tail.filter((u) => u.seq > seq);
	}

	/**
	 * When the oldest unconfirmed entry was made, and whether any of them ends
	 * a command (someone is waiting to see that). Undefined when nothing is
	 * unconfirmed or the tail is not in memory (a backlog: no reason to wait).
	 */
	pending(): { oldestAt: number; ending: boolean } | undefined {
		const first = this.tail?.[0];
		if (!first) return undefined;
		const ending = this.tail?.some((u) => u.entry.kind === "transition" && TERMINAL_STATUSES.has(u.entry.to)) ?? false;
		return { oldestAt: Date.parse(first.entry.at), ending };
	}

	/** How many entries Postgres has not confirmed. */
	unsynced(): number {
		if (this.tail) return this.tail.length;
		return this.sql
			.exec<{ n: number }>("select count(*) as n from events where seq > ? and sync is not null", this.state.get("synced_through") ?? 0)
			.one().n;
	}

	private lastEvent(): number {
		this.lastEventSeq ??= latestSeq(this.sql);
		return this.lastEventSeq;
	}

	private last(): number {
		this.lastSeq ??=
			this.sql.exec<{ seq: number }>("select seq from sqlite_sequence where name = 'events'").toArray()[0]?.seq ?? 0;
		return this.lastSeq;
	}
}

/** The longest prefix of `batch` within `maxChars` of payload (never empty if `batch` is not). */
function upToChars(batch: Unsynced[], maxChars: number): Unsynced[] {
	if (maxChars === Number.POSITIVE_INFINITY) return batch;
	let chars = 0;
	for (let i = 0; i < batch.length; i++) {
		chars += payloadChars(batch[i]?.entry);
		if (chars > maxChars && i > 0) return batch.slice(0, i);
	}
	return batch;
}

function payloadChars(entry: OutboxEntry | undefined): number {
	if (entry?.kind === "output") return entry.data.length;
	if (entry?.kind === "transition" && entry.result !== undefined) return JSON.stringify(entry.result).length;
	return 0;
}

function observed(entry: OutboxEntry): ObserverEvent | null {
	if (entry.kind !== "transition") return null;
	const reason = entry.detail?.reason;
	return {
		type: "status",
		id: entry.commandId,
		from: entry.from,
		to: entry.to,
		attempt: entry.attempts,
		reason: typeof reason === "string" ? reason : null,
		errorCode: entry.errorCode ?? null,
	};
}
