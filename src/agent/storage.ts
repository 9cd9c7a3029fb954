/**
 * The agent object's SQLite storage: schema, command rows, stop notices,
 * and the one primitive that moves a command between statuses (and tells
 * the journal, and so Postgres and the observers, in the same breath).
 * The delivery rules built on these live in ./buffer.ts and ./answers.ts.
 *
 * A finished row is removed only PRUNE_AFTER_MS after it finished and once
 * Postgres has confirmed everything journaled, and never while a catch-up
 * read is under way (the object's caller decides when to prune), so a read
 * of Postgres that started earlier can never resurrect a finished command.
 */
import type { Transition } from "../db/status-writes";
import { type CommandStatus, FailureCode, OPEN_STATUSES, TERMINAL_STATUSES } from "../protocol";
import type { Journal } from "./journal";

export const PRUNE_AFTER_MS = 10 * 60 * 1000;

/** Applied in order; the index of the last one applied is kept in `meta`. */
export const MIGRATIONS = [
	`create table if not exists commands (
		id text primary key,
		seq integer not null,
		action text not null,
		payload text not null,
		session_id text,
		priority integer not null,
		status text not null,
		attempts integer not null default 0,
		finished_at integer
	);
	create index if not exists commands_by_delivery on commands (status, priority desc, seq);
	create table if not exists outbox (seq integer primary key autoincrement, body text not null);`,
	`alter table commands add column max_attempts integer not null default 5;
	alter table commands add column ack_timeout_ms integer not null default 10000;
	alter table commands add column timeout_ms integer;
	alter table commands add column expires_at integer;
	alter table commands add column generation integer;
	alter table commands add column ack_deadline integer;
	alter table commands add column run_deadline integer;
	alter table commands add column cancel_requested_at integer;
	alter table commands add column cancel_deadline integer;`,
	`alter table commands add column synced_at integer;
	create table if not exists stops (id text primary key, reason text not null, until integer not null);`,
	`create table if not exists events (seq integer primary key autoincrement, at integer not null, body text not null);`,
	`alter table commands add column first_dispatched_at integer;`,
	`alter table commands add column cancel_actor text;`,
	`alter table events add column size integer not null default 0;`,
	// The outbox becomes the journal's `sync` column; what it held moves over
	// with the key it was being written under, after everything already logged.
	`alter table events add column sync text;
	alter table events add column event_seq integer;
	update events set event_seq = seq;
	create index events_by_event_seq on events (event_seq) where event_seq is not null;
	insert into meta (key, value) values ('synced_through', cast(coalesce((select seq from sqlite_sequence where name = 'events'), 0) as text))
		on conflict (key) do update set value = excluded.value;
	insert into events (at, body, size, sync)
		select 0, '', 0, json_set(body, '$.key', (select value from meta where key = 'epoch') || ':' || seq) from outbox order by seq;
	drop table outbox;`,
	`alter table commands add column output_seq integer;
	alter table commands add column output_chars integer not null default 0;
	alter table commands add column output_cut integer not null default 0;`,
	`create table if not exists parked (seq integer primary key autoincrement, sync text not null, error text not null, tries integer not null, next_at integer not null);`,
	// An event's size beside its seq: a replay page sums sizes to know where
	// to stop, and `size` sits after `body` in the row, so reading it from the
	// table walked each event's overflow pages (64 KiB of output apiece).
	`drop index if exists events_by_event_seq;
	create index events_by_event_seq on events (event_seq, size) where event_seq is not null;`,
];

/**
 * What MIGRATIONS add up to, for a new object: every agent's first connect
 * creates one, and a dozen ALTERs each rewriting the schema were the largest
 * single cost of it. test/node/object-schema.test.ts checks that both paths
 * give the same tables, columns and indexes.
 */
export const SCHEMA = `create table commands (
		id text primary key,
		seq integer not null,
		action text not null,
		payload text not null,
		session_id text,
		priority integer not null,
		status text not null,
		attempts integer not null default 0,
		finished_at integer,
		max_attempts integer not null default 5,
		ack_timeout_ms integer not null default 10000,
		timeout_ms integer,
		expires_at integer,
		generation integer,
		ack_deadline integer,
		run_deadline integer,
		cancel_requested_at integer,
		cancel_deadline integer,
		synced_at integer,
		first_dispatched_at integer,
		cancel_actor text,
		output_seq integer,
		output_chars integer not null default 0,
		output_cut integer not null default 0
	);
	create index commands_by_delivery on commands (status, priority desc, seq);
	create table stops (id text primary key, reason text not null, until integer not null);
	create table events (seq integer primary key autoincrement, at integer not null, body text not null, size integer not null default 0, sync text, event_seq integer);
	create index events_by_event_seq on events (event_seq, size) where event_seq is not null;
	create table parked (seq integer primary key autoincrement, sync text not null, error text not null, tries integer not null, next_at integer not null);`;

/** Brings the object's tables to the current schema. The object runs this in a transaction, so the schema and its version move together. */
export function migrate(sql: SqlStorage): void {
	sql.exec("create table if not exists meta (key text primary key, value text not null)");
	const row = sql.exec<{ value: string }>("select value from meta where key = 'schema_version'").toArray()[0];
	const from = Number(row?.value ?? 0);
	if (from >= MIGRATIONS.length) return;
	if (from === 0 && !tableExists(sql, "commands")) sql.exec(SCHEMA);
	else for (const step of MIGRATIONS.slice(from)) sql.exec(step);
	sql.exec(
		"insert into meta (key, value) values ('schema_version', ?) on conflict (key) do update set value = excluded.value",
		String(MIGRATIONS.length),
	);
}

function tableExists(sql: SqlStorage, name: string): boolean {
	return sql.exec("select 1 from sqlite_master where type = 'table' and name = ?", name).toArray().length > 0;
}

export const OPEN = "('pending','dispatched','acknowledged')";

/**
 * A catch-up buffers a command without its payload (it may be a backlog of
 * megabytes): the column, which is not null, holds this text, which no JSON
 * encoding is, until the window reads the payload from Postgres to send it.
 */
export const UNREAD_PAYLOAD = "";

/**
 * Every column but the payload: a rule reads rows by the hundred, a payload
 * may be a megabyte, and only the send needs it (./buffer.ts, `dispatch`).
 */
export const ROW = `id, seq, action, session_id, priority, status, attempts, finished_at, max_attempts, ack_timeout_ms,
	timeout_ms, expires_at, generation, ack_deadline, run_deadline, cancel_requested_at, cancel_deadline, synced_at,
	first_dispatched_at, cancel_actor, output_seq, output_chars, output_cut`;

/** A command row as the object wrote it, less its payload (see ROW). */
export interface BufferedRow {
	id: string;
	seq: number;
	action: string;
	session_id: string | null;
	priority: number;
	status: CommandStatus;
	attempts: number;
	max_attempts: number;
	ack_timeout_ms: number;
	timeout_ms: number | null;
	expires_at: number | null;
	generation: number | null;
	ack_deadline: number | null;
	run_deadline: number | null;
	cancel_requested_at: number | null;
	cancel_deadline: number | null;
	/** Who asked for the cancel (api:<key id>), when an operator did through this object. */
	cancel_actor: string | null;
	finished_at: number | null;
	synced_at: number | null;
	first_dispatched_at: number | null;
	/** The seq of the last output chunk kept (./output.ts). */
	output_seq: number | null;
	/** UTF-16 units of output kept for Postgres so far. */
	output_chars: number;
	/** 1 once output past the cap was dropped here (and Postgres told). */
	output_cut: number;
}

/**
 * How many commands wait and how many are out with the agent, kept in
 * memory so an event that changes neither reads neither. Loaded on first
 * use; every status change goes through `moveTo` or `dispatch`, which keep
 * it; a rolled-back transaction drops it.
 */
export class Counts {
	private known: { pending: number; inFlight: number } | undefined;

	constructor(private readonly sql: SqlStorage) {}

	private get(): { pending: number; inFlight: number } {
		if (!this.known) {
			this.known = { pending: 0, inFlight: 0 };
			for (const r of this.sql.exec<{ status: string; n: number }>(
				`select status, count(*) as n from commands where status in ${OPEN} group by status`,
			)) {
				if (r.status === "pending") this.known.pending += r.n;
				else this.known.inFlight += r.n;
			}
		}
		return this.known;
	}

	get pending(): number {
		return this.get().pending;
	}

	get inFlight(): number {
		return this.get().inFlight;
	}

	get open(): number {
		return this.pending + this.inFlight;
	}

	move(from: CommandStatus | null, to: CommandStatus | null): void {
		if (!this.known || from === to) return;
		this.adjust(from, -1);
		this.adjust(to, 1);
	}

	forget(): void {
		this.known = undefined;
	}

	private adjust(status: CommandStatus | null, by: number): void {
		if (!this.known || status === null) return;
		if (status === "pending") this.known.pending += by;
		else if ((OPEN_STATUSES as readonly string[]).includes(status)) this.known.inFlight += by;
	}
}

/** A `cancel` frame the agent is owed for a command the system ended. */
export interface Stop {
	id: string;
	reason: "requested" | "timeout";
}

/** What the delivery rules write through: the table, the journal and the counts, inside one transaction. */
export interface Tx {
	readonly sql: SqlStorage;
	readonly journal: Journal;
	readonly counts: Counts;
	/** Stops added in this transaction: sent to a connected agent once it commits. */
	readonly stops: Stop[];
}

export function rows(sql: SqlStorage, query: string, ...params: SqlStorageValue[]): BufferedRow[] {
	// SAFETY: only this module, buffer.ts and answers.ts write the commands table, with these columns.
	return sql.exec(query, ...params).toArray() as unknown as BufferedRow[];
}

export function getCommand(sql: SqlStorage, id: string): BufferedRow | undefined {
	return rows(sql, `select ${ROW} from commands where id = ?`, id)[0];
}

/**
 * Forgets finished commands PRUNE_AFTER_MS after they finished, and stale
 * stops. A command with a parked outbox entry is kept: Postgres has not
 * heard how it ended, and a catch-up must not take it again.
 */
export function prune(sql: SqlStorage, now: number): number {
	sql.exec("delete from stops where until < ?", now);
	return sql.exec(
		`delete from commands where finished_at is not null and finished_at < ?
			and id not in (select json_extract(sync, '$.commandId') from parked)`,
		now - PRUNE_AFTER_MS,
	).rowsWritten;
}

// ------------------------------------------------------------------- stops

/**
 * Commands the system ended that the agent may still be running (it was
 * sent them): it is sent a `cancel` frame now if connected, and again on
 * every connect until it answers with a result or PRUNE_AFTER_MS pass. The
 * answer still counts (answers.ts, `finish`).
 */
function addStop(tx: Tx, id: string, reason: Stop["reason"], now: number): void {
	tx.sql.exec(
		"insert into stops (id, reason, until) values (?, ?, ?) on conflict (id) do update set reason = excluded.reason",
		id,
		reason,
		now + PRUNE_AFTER_MS,
	);
	tx.stops.push({ id, reason });
}

export function stopsOwed(sql: SqlStorage, now: number): Stop[] {
	return sql.exec<{ id: string; reason: Stop["reason"] }>("select id, reason from stops where until >= ?", now).toArray();
}

export function stopOwed(sql: SqlStorage, id: string, now: number): boolean {
	return sql.exec("select 1 from stops where id = ? and until >= ?", id, now).toArray().length > 0;
}

/** Any answer about a command ends its stop; says whether one was owed. */
export function takeStop(sql: SqlStorage, id: string, now: number): boolean {
	const owed = stopOwed(sql, id, now);
	sql.exec("delete from stops where id = ?", id);
	return owed;
}

// ------------------------------------------------------------- transitions

export type Extra = Pick<Transition, "result" | "error" | "errorCode" | "detail" | "actor">;

/**
 * Moves a row to `to`, clears timers that no longer apply, and journals the
 * transition. `generation` is set for a move to `acknowledged` (the
 * connection the agent proved it holds the command on).
 */
export function moveTo(tx: Tx, row: BufferedRow, to: CommandStatus, now: number, extra: Extra = {}, generation?: number): void {
	const terminal = TERMINAL_STATUSES.has(to);
	tx.sql.exec(
		`update commands set status = ?, finished_at = ?,
			ack_deadline = case when ? in ('dispatched','pending') then ack_deadline else null end,
			generation = case when ? is not null then ? when ? in ('dispatched','acknowledged') then generation else null end
		 where id = ?`,
		to,
		terminal ? now : null,
		to,
		generation ?? null,
		generation ?? null,
		to,
		row.id,
	);
	tx.counts.move(row.status, to);
	tx.journal.record({
		kind: "transition",
		commandId: row.id,
		from: row.status,
		to,
		at: new Date(now).toISOString(),
		attempts: row.attempts,
		...extra,
		...(terminal && row.cancel_requested_at !== null ? cancelAttribution(row, to, extra) : {}),
	});
}

/**
 * How a command whose cancel was requested ended names who asked: a
 * `cancelled` end is theirs (the agent or a timer only carried it out), and
 * any other end records the request in its detail, so the operator's key is
 * in the trail however the command finished.
 */
function cancelAttribution(row: BufferedRow, to: CommandStatus, extra: Extra): Pick<Extra, "actor" | "detail"> {
	const requestedBy = row.cancel_actor ?? "system";
	return {
		...(to === "cancelled" && !extra.actor ? { actor: requestedBy } : {}),
		detail: { ...extra.detail, cancelRequestedBy: requestedBy },
	};
}

/**
 * The system ends a command. One it ever sent, the agent may hold: it is
 * told to stop, and its answer still counts, since its word on what became
 * of the work beats the system's guess.
 */
export function fail(tx: Tx, row: BufferedRow, now: number, code: FailureCode, error: string, extra: Pick<Extra, "actor" | "detail"> = {}): void {
	moveTo(tx, row, code === FailureCode.EXPIRED ? "expired" : code === FailureCode.CANCEL_UNCONFIRMED ? "cancelled" : "failed", now, {
		error,
		errorCode: code,
		result: null,
		...extra,
	});
	if (row.attempts > 0) addStop(tx, row.id, code === FailureCode.TIMEOUT ? "timeout" : "requested", now);
}

export function statusCounts(sql: SqlStorage): Partial<Record<CommandStatus, number>> {
	const out: Partial<Record<CommandStatus, number>> = {};
	for (const r of sql
		.exec<{ status: CommandStatus; n: number }>("select status, count(*) as n from commands group by status")
		.toArray())
		out[r.status] = r.n;
	return out;
}
