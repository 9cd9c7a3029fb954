/**
 * The agent object's SQLite storage: schema, command rows, the outbox to
 * Postgres, stop notices, and the one primitive that moves a command between
 * statuses (and tells the outbox and the observers in the same breath).
 * The delivery rules built on these live in ./buffer.ts.
 *
 * A buffer row is removed only PRUNE_AFTER_MS after Postgres confirmed its
 * terminal status (`synced_at`), so a catch-up read of Postgres that started
 * earlier can never resurrect a finished command, however long an outage was.
 */
import { z } from "zod";
import type { KeyedEntry, OutboxEntry, Transition } from "../db/status-writes";
import { type CommandStatus, FailureCode, TERMINAL_STATUSES } from "../protocol";
import { appendEvent } from "./events";

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
		cancel_actor text
	);
	create index commands_by_delivery on commands (status, priority desc, seq);
	create table outbox (seq integer primary key autoincrement, body text not null);
	create table stops (id text primary key, reason text not null, until integer not null);
	create table events (seq integer primary key autoincrement, at integer not null, body text not null, size integer not null default 0);`;

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

const BufferedRow = z.object({
	id: z.string(),
	seq: z.number(),
	action: z.string(),
	payload: z.string(),
	session_id: z.string().nullable(),
	priority: z.number(),
	status: z.enum(["pending", "dispatched", "acknowledged", "completed", "failed", "cancelled", "expired"]),
	attempts: z.number(),
	max_attempts: z.number(),
	ack_timeout_ms: z.number(),
	timeout_ms: z.number().nullable(),
	expires_at: z.number().nullable(),
	generation: z.number().nullable(),
	ack_deadline: z.number().nullable(),
	run_deadline: z.number().nullable(),
	cancel_requested_at: z.number().nullable(),
	cancel_deadline: z.number().nullable(),
	/** Who asked for the cancel (api:<key id>), when an operator did through this object. */
	cancel_actor: z.string().nullable(),
	finished_at: z.number().nullable(),
	synced_at: z.number().nullable(),
	first_dispatched_at: z.number().nullable(),
});
export type BufferedRow = z.infer<typeof BufferedRow>;

export function rows(sql: SqlStorage, query: string, ...params: SqlStorageValue[]): BufferedRow[] {
	return sql
		.exec(query, ...params)
		.toArray()
		.map((r) => BufferedRow.parse(r));
}

export function getCommand(sql: SqlStorage, id: string): BufferedRow | undefined {
	return rows(sql, "select * from commands where id = ?", id)[0];
}

// ------------------------------------------------------------------ outbox

/** Queues an entry for Postgres; a status transition is also told to observers. */
export function push(sql: SqlStorage, entry: OutboxEntry): void {
	sql.exec("insert into outbox (body) values (?)", JSON.stringify(entry));
	if (entry.kind === "transition") {
		const reason = entry.detail?.reason;
		appendEvent(
			sql,
			{
				type: "status",
				id: entry.commandId,
				from: entry.from,
				to: entry.to,
				attempt: entry.attempts,
				reason: typeof reason === "string" ? reason : null,
				errorCode: entry.errorCode ?? null,
			},
			Date.parse(entry.at),
		);
	}
}

/** Queues a chunk of a command's output for Postgres and for observers. */
export function recordOutput(sql: SqlStorage, id: string, chunk: number, data: string, now: number): void {
	sql.exec(
		"insert into outbox (body) values (?)",
		JSON.stringify({ kind: "output", commandId: id, at: new Date(now).toISOString(), data } satisfies OutboxEntry),
	);
	appendEvent(sql, { type: "output", id, chunk, data }, now);
}

/**
 * The oldest `limit` entries. Each gets a key from the object's storage epoch
 * and its outbox seq: unique even if the object's storage is ever reset.
 */
export function peekOutbox(sql: SqlStorage, limit: number, epoch: string): { lastSeq: number; entries: KeyedEntry[] } {
	const batch = sql
		.exec<{ seq: number; body: string }>("select seq, body from outbox order by seq limit ?", limit)
		.toArray();
	return {
		lastSeq: batch.at(-1)?.seq ?? 0,
		// SAFETY: only push() writes this table, from a typed OutboxEntry.
		entries: batch.map((r) => ({ ...(JSON.parse(r.body) as OutboxEntry), key: `${epoch}:${r.seq}` })),
	};
}

export function dropOutbox(sql: SqlStorage, throughSeq: number): void {
	sql.exec("delete from outbox where seq <= ?", throughSeq);
}

export function outboxSize(sql: SqlStorage): number {
	return sql.exec<{ n: number }>("select count(*) as n from outbox").one().n;
}

/** Records that Postgres now has these commands' terminal status. */
export function markSynced(sql: SqlStorage, ids: readonly string[], now: number): void {
	for (const id of ids) sql.exec("update commands set synced_at = ? where id = ? and finished_at is not null", now, id);
}

/** Forgets finished commands PRUNE_AFTER_MS after Postgres confirmed them, and stale stops. */
export function prune(sql: SqlStorage, now: number): number {
	sql.exec("delete from stops where until < ?", now);
	return sql.exec("delete from commands where synced_at is not null and synced_at < ?", now - PRUNE_AFTER_MS)
		.rowsWritten;
}

// ------------------------------------------------------------------- stops

/**
 * Commands the system ended (cancelled, timed out) that the agent may still
 * be running: it is sent a `cancel` frame now if connected, and again on
 * every connect until it answers with a result or PRUNE_AFTER_MS pass.
 */
export function addStop(sql: SqlStorage, id: string, reason: "requested" | "timeout", now: number): void {
	sql.exec(
		"insert into stops (id, reason, until) values (?, ?, ?) on conflict (id) do update set reason = excluded.reason",
		id,
		reason,
		now + PRUNE_AFTER_MS,
	);
}

export function stopsOwed(sql: SqlStorage, now: number): { id: string; reason: "requested" | "timeout" }[] {
	return sql
		.exec<{ id: string; reason: "requested" | "timeout" }>("select id, reason from stops where until >= ?", now)
		.toArray();
}

export function clearStop(sql: SqlStorage, id: string): void {
	sql.exec("delete from stops where id = ?", id);
}

// ------------------------------------------------------------- transitions

export type Extra = Pick<Transition, "result" | "error" | "errorCode" | "detail" | "actor">;

/** Moves a row to `to`, clears timers that no longer apply, and queues the transition. */
export function moveTo(sql: SqlStorage, row: BufferedRow, to: CommandStatus, now: number, extra: Extra = {}): void {
	const terminal = TERMINAL_STATUSES.has(to);
	sql.exec(
		`update commands set status = ?, finished_at = ?,
			ack_deadline = case when ? = 'dispatched' then ack_deadline else null end,
			generation = case when ? in ('dispatched','acknowledged') then generation else null end
		 where id = ?`,
		to,
		terminal ? now : null,
		to,
		to,
		row.id,
	);
	push(sql, {
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

export function fail(sql: SqlStorage, row: BufferedRow, now: number, code: FailureCode, error: string): void {
	moveTo(sql, row, code === FailureCode.EXPIRED ? "expired" : code === FailureCode.CANCEL_UNCONFIRMED ? "cancelled" : "failed", now, {
		error,
		errorCode: code,
		result: null,
	});
}

export function statusCounts(sql: SqlStorage): Partial<Record<CommandStatus, number>> {
	const out: Partial<Record<CommandStatus, number>> = {};
	for (const r of sql
		.exec<{ status: CommandStatus; n: number }>("select status, count(*) as n from commands group by status")
		.toArray())
		out[r.status] = r.n;
	return out;
}
