/**
 * The agent's command buffer and status outbox, in the Durable Object's
 * SQLite storage, and every delivery rule that acts on them. Plain functions
 * over `SqlStorage`: no socket and no network, so the rules can be tested on
 * their own and the object class only wires events to them.
 *
 * Each function that changes a command also queues the change in the outbox,
 * in the same synchronous run (callers wrap them in `transactionSync`), so
 * Postgres later gets exactly the transitions the buffer went through.
 *
 * A buffer row is removed only PRUNE_AFTER_MS after Postgres confirmed its
 * terminal status (`synced_at`), so a catch-up read of Postgres that started
 * earlier can never resurrect a finished command, however long an outage was.
 */
import { z } from "zod";
import type { KeyedEntry, OutboxEntry, Transition } from "../db/status-writes";
import { appendEvent } from "./events";
import {
	CANCEL_GRACE_SECONDS,
	type CommandFrame,
	type CommandStatus,
	FailureCode,
	TERMINAL_STATUSES,
} from "../protocol";

export const PRUNE_AFTER_MS = 10 * 60 * 1000;

/** Applied in order; the index of the last one applied is kept in `meta`. */
const MIGRATIONS = [
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
];

export function migrate(sql: SqlStorage): void {
	sql.exec("create table if not exists meta (key text primary key, value text not null)");
	const row = sql.exec<{ value: string }>("select value from meta where key = 'schema_version'").toArray()[0];
	for (let v = Number(row?.value ?? 0); v < MIGRATIONS.length; v++) {
		sql.exec(MIGRATIONS[v] ?? "");
		sql.exec(
			"insert into meta (key, value) values ('schema_version', ?) on conflict (key) do update set value = excluded.value",
			String(v + 1),
		);
	}
}

const OPEN = "('pending','dispatched','acknowledged')";

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
	finished_at: z.number().nullable(),
	synced_at: z.number().nullable(),
	first_dispatched_at: z.number().nullable(),
});
export type BufferedRow = z.infer<typeof BufferedRow>;

function rows(sql: SqlStorage, query: string, ...params: SqlStorageValue[]): BufferedRow[] {
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
function push(sql: SqlStorage, entry: OutboxEntry): void {
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
function addStop(sql: SqlStorage, id: string, reason: "requested" | "timeout", now: number): void {
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

function clearStop(sql: SqlStorage, id: string): void {
	sql.exec("delete from stops where id = ?", id);
}

// ------------------------------------------------------------- transitions

type Extra = Pick<Transition, "result" | "error" | "errorCode" | "detail" | "actor">;

/** Moves a row to `to`, clears timers that no longer apply, and queues the transition. */
function moveTo(sql: SqlStorage, row: BufferedRow, to: CommandStatus, now: number, extra: Extra = {}): void {
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
	});
}

function fail(sql: SqlStorage, row: BufferedRow, now: number, code: FailureCode, error: string): void {
	moveTo(sql, row, code === FailureCode.EXPIRED ? "expired" : code === FailureCode.CANCEL_UNCONFIRMED ? "cancelled" : "failed", now, {
		error,
		errorCode: code,
		result: null,
	});
}

// ------------------------------------------------------------------ intake

/** What the object needs to buffer a command: the Postgres row's delivery fields. */
export const BufferInput = z.object({
	id: z.uuid(),
	seq: z.number().int(),
	action: z.string(),
	payload: z.json(),
	sessionId: z.string().nullable(),
	priority: z.number().int(),
	status: z.enum(["pending", "dispatched", "acknowledged"]),
	attempts: z.number().int().min(0),
	maxAttempts: z.number().int().min(1),
	ackTimeoutSeconds: z.number().int().min(1),
	timeoutSeconds: z.number().int().nullable(),
	/** ms since epoch */
	expiresAt: z.number().nullable(),
	/** ms since epoch of the first dispatch, if any: timeoutSeconds counts from it */
	firstDispatchedAt: z.number().nullable(),
	cancelRequested: z.boolean(),
});
export type BufferInput = z.infer<typeof BufferInput>;

/**
 * Adds a command unless the buffer already knows its id (in any status).
 * A row that Postgres says is `dispatched` comes in as `pending`: no socket
 * of this object is waiting for its ack, so it must be sent again.
 */
export function addCommand(sql: SqlStorage, c: BufferInput, now: number): boolean {
	const status = c.status === "dispatched" ? "pending" : c.status;
	const runDeadline = c.timeoutSeconds && c.firstDispatchedAt ? c.firstDispatchedAt + c.timeoutSeconds * 1000 : null;
	const cancelAt = c.cancelRequested && c.status !== "pending" ? now : null;
	const written = sql.exec(
		`insert into commands (id, seq, action, payload, session_id, priority, status, attempts, max_attempts,
			ack_timeout_ms, timeout_ms, expires_at, run_deadline, cancel_requested_at, cancel_deadline)
		 values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict (id) do nothing`,
		c.id,
		c.seq,
		c.action,
		JSON.stringify(c.payload),
		c.sessionId,
		c.priority,
		status,
		c.attempts,
		c.maxAttempts,
		c.ackTimeoutSeconds * 1000,
		c.timeoutSeconds ? c.timeoutSeconds * 1000 : null,
		c.expiresAt,
		runDeadline,
		cancelAt,
		cancelAt === null ? null : cancelAt + CANCEL_GRACE_SECONDS * 1000,
	).rowsWritten;
	if (written === 0) return false;
	push(sql, { kind: "taken", commandId: c.id, at: new Date(now).toISOString() });
	if (status !== c.status) {
		push(sql, {
			kind: "transition",
			commandId: c.id,
			from: c.status,
			to: status,
			at: new Date(now).toISOString(),
			attempts: c.attempts,
			detail: { reason: "recovered" },
		});
	}
	// A cancel asked for before this object knew the command: honour it now.
	const row = getCommand(sql, c.id);
	if (c.cancelRequested && row?.status === "pending") cancelQueued(sql, row, now);
	return true;
}

/** Cancels a command that is not out with the agent now; if it ever was, the agent is told to stop. */
function cancelQueued(sql: SqlStorage, row: BufferedRow, now: number, actor = "system"): void {
	moveTo(sql, row, "cancelled", now, { detail: { reason: "requested" }, result: null, error: null, actor });
	if (row.attempts > 0) addStop(sql, row.id, "requested", now);
}

// ---------------------------------------------------------------- delivery

export function inFlight(sql: SqlStorage): number {
	return sql.exec<{ n: number }>("select count(*) as n from commands where status in ('dispatched','acknowledged')").one()
		.n;
}

function commandFrame(row: BufferedRow, attempt: number): CommandFrame {
	return {
		type: "command",
		id: row.id,
		action: row.action,
		payload: JSON.parse(row.payload),
		sessionId: row.session_id,
		priority: row.priority,
		attempt,
	};
}

/**
 * Fills the agent's window: dispatches pending commands in priority, then
 * enqueue, order until `concurrency` are in flight. Commands whose ttl, run
 * deadline or attempts ran out on the way are finished instead of sent.
 * Returns the frames to send, in order.
 */
export function fillWindow(sql: SqlStorage, concurrency: number, generation: number, now: number): CommandFrame[] {
	const frames: CommandFrame[] = [];
	let free = concurrency - inFlight(sql);
	while (free > 0) {
		const batch = rows(
			sql,
			"select * from commands where status = 'pending' order by priority desc, seq asc limit ?",
			free + 16,
		);
		if (batch.length === 0) break;
		for (const row of batch) {
			if (free <= 0) break;
			if (row.cancel_requested_at !== null) {
				cancelQueued(sql, row, now);
			} else if (row.expires_at !== null && row.expires_at <= now) {
				fail(sql, row, now, FailureCode.EXPIRED, "not dispatched before its ttl ran out");
			} else if (row.run_deadline !== null && row.run_deadline <= now) {
				fail(sql, row, now, FailureCode.TIMEOUT, "not finished within timeoutSeconds");
			} else if (row.attempts >= row.max_attempts) {
				fail(sql, row, now, FailureCode.UNDELIVERABLE, `not acknowledged after ${row.attempts} attempts`);
			} else {
				const attempt = row.attempts + 1;
				sql.exec(
					`update commands set status = 'dispatched', attempts = ?, generation = ?, ack_deadline = ?,
						run_deadline = coalesce(run_deadline, case when timeout_ms is null then null else ? + timeout_ms end),
						first_dispatched_at = coalesce(first_dispatched_at, ?)
					 where id = ?`,
					attempt,
					generation,
					now + row.ack_timeout_ms,
					now,
					now,
					row.id,
				);
				push(sql, {
					kind: "transition",
					commandId: row.id,
					from: "pending",
					to: "dispatched",
					at: new Date(now).toISOString(),
					attempts: attempt,
					detail: { attempt, generation, reason: row.attempts === 0 ? "delivery" : "redelivery" },
				});
				frames.push(commandFrame(row, attempt));
				free--;
			}
		}
	}
	return frames;
}

/**
 * Puts dispatched-but-unacknowledged commands back in the queue: their socket
 * is gone (`disconnected`, `reconnect`) or their ack deadline passed
 * (`ack_timeout`). They go out again, attempt + 1, when the window allows.
 * One whose cancel was requested is cancelled instead: it is never resent.
 */
export function requeueDispatched(
	sql: SqlStorage,
	now: number,
	reason: "disconnected" | "reconnect" | "ack_timeout",
): number {
	const due =
		reason === "ack_timeout"
			? rows(sql, "select * from commands where status = 'dispatched' and ack_deadline <= ?", now)
			: rows(sql, "select * from commands where status = 'dispatched'");
	for (const row of due) {
		if (row.cancel_requested_at !== null) {
			fail(sql, row, now, FailureCode.CANCEL_UNCONFIRMED, "cancelled before the agent acknowledged it");
			addStop(sql, row.id, "requested", now);
		} else {
			moveTo(sql, row, "pending", now, { detail: { reason, attempt: row.attempts } });
		}
	}
	return due.length;
}

export type FrameOutcome = "applied" | "duplicate" | "unknown" | "not_dispatched";

/** A command the agent may legitimately know: sent at least once and not finished. */
function sentAndOpen(row: BufferedRow): boolean {
	return row.status === "dispatched" || row.status === "acknowledged" || (row.status === "pending" && row.attempts > 0);
}

/** `generation` is the connection the ack came on: proof the agent has the command on it. */
/** Output may come for a command that was sent and is not finished. */
export function acceptsOutput(sql: SqlStorage, id: string): FrameOutcome {
	const row = getCommand(sql, id);
	if (!row) return "unknown";
	if (row.status === "pending" && row.attempts === 0) return "not_dispatched";
	return sentAndOpen(row) ? "applied" : "duplicate";
}

export function acknowledge(sql: SqlStorage, id: string, now: number, generation: number): FrameOutcome {
	const row = getCommand(sql, id);
	if (!row) return "unknown";
	if (row.status === "pending" && row.attempts === 0) return "not_dispatched";
	if (row.status === "acknowledged" || !sentAndOpen(row)) return "duplicate";
	// Also from `pending`: a command requeued after a disconnect that the agent
	// had in fact received. It is running; do not send it again.
	moveTo(sql, row, "acknowledged", now);
	sql.exec("update commands set generation = ? where id = ?", generation, id);
	return "applied";
}

export function finish(
	sql: SqlStorage,
	id: string,
	outcome: { status: "completed" | "failed" | "cancelled"; result?: unknown; error?: string },
	now: number,
): FrameOutcome {
	const row = getCommand(sql, id);
	// Any answer about a command means the agent is no longer running it.
	clearStop(sql, id);
	if (!row) return "unknown";
	if (row.status === "pending" && row.attempts === 0) return "not_dispatched";
	if (!sentAndOpen(row)) return "duplicate";
	moveTo(sql, row, outcome.status, now, {
		result: outcome.result ?? null,
		error: outcome.status === "failed" ? (outcome.error ?? "failed") : (outcome.error ?? null),
		errorCode: null,
	});
	return "applied";
}

/**
 * Reconciles with the agent's own list of running commands. Commands
 * acknowledged on an earlier connection that it does not list were lost (the
 * agent restarted): they are sent again, or failed with `lost` once their
 * attempts are spent. One acknowledged on this connection is proof enough and
 * is left alone. Sent commands it does list are running, whatever the buffer
 * thought.
 */
export function applyHello(sql: SqlStorage, running: ReadonlySet<string>, now: number, generation: number): number {
	let changed = 0;
	for (const row of rows(sql, `select * from commands where status in ${OPEN}`)) {
		const listed = running.has(row.id);
		if (row.status === "acknowledged" && !listed && row.generation !== generation) {
			changed++;
			if (row.cancel_requested_at !== null) moveTo(sql, row, "cancelled", now, { detail: { reason: "lost" } });
			else if (row.attempts >= row.max_attempts)
				fail(sql, row, now, FailureCode.LOST, "the agent lost it and no attempts are left");
			else moveTo(sql, row, "pending", now, { detail: { reason: "lost", attempt: row.attempts } });
		} else if (listed && row.status !== "acknowledged" && sentAndOpen(row)) {
			changed++;
			moveTo(sql, row, "acknowledged", now, { detail: { reason: "reported_running" } });
			sql.exec("update commands set generation = ? where id = ?", generation, row.id);
		}
	}
	return changed;
}

export type CancelOutcome = "cancelled" | "cancel_requested" | "already_finished" | "unknown";

/**
 * Pending: cancelled at once and never sent again. Sent: the agent is asked
 * (the caller sends the `cancel` frame) and has CANCEL_GRACE_SECONDS to answer.
 */
export function requestCancel(sql: SqlStorage, id: string, now: number, actor = "api"): CancelOutcome {
	const row = getCommand(sql, id);
	if (!row) return "unknown";
	if (TERMINAL_STATUSES.has(row.status)) return "already_finished";
	if (row.status === "pending") {
		cancelQueued(sql, row, now, actor);
		return "cancelled";
	}
	if (row.cancel_requested_at === null) {
		sql.exec(
			"update commands set cancel_requested_at = ?, cancel_deadline = ? where id = ?",
			now,
			now + CANCEL_GRACE_SECONDS * 1000,
			id,
		);
		push(sql, { kind: "cancel_requested", commandId: id, at: new Date(now).toISOString() });
	}
	return "cancel_requested";
}

/** Every `cancel` frame the agent is owed: open commands awaiting its answer, and stops. */
export function cancelsOwed(sql: SqlStorage, now: number): { id: string; reason: "requested" | "timeout" }[] {
	const open = sql
		.exec<{ id: string }>(
			"select id from commands where status in ('dispatched','acknowledged') and cancel_requested_at is not null",
		)
		.toArray()
		.map((r) => ({ id: r.id, reason: "requested" as const }));
	return [...open, ...stopsOwed(sql, now)];
}

/**
 * Runs every timer that is due. Returns the ids of commands the agent must
 * be told to stop (execution timeout while it holds them).
 */
export function runDueTimers(sql: SqlStorage, now: number): { stop: string[] } {
	const stop: string[] = [];
	for (const row of rows(
		sql,
		`select * from commands where status in ${OPEN} and cancel_deadline is not null and cancel_deadline <= ?`,
		now,
	)) {
		fail(sql, row, now, FailureCode.CANCEL_UNCONFIRMED, "the agent did not confirm the cancel in time");
		addStop(sql, row.id, "requested", now);
	}
	for (const row of rows(
		sql,
		`select * from commands where status in ${OPEN} and run_deadline is not null and run_deadline <= ?`,
		now,
	)) {
		fail(sql, row, now, FailureCode.TIMEOUT, "not finished within timeoutSeconds");
		if (row.status !== "pending" || row.attempts > 0) {
			// It may still be running; told now if connected, and on every connect until it answers.
			addStop(sql, row.id, "timeout", now);
			stop.push(row.id);
		}
	}
	for (const row of rows(
		sql,
		"select * from commands where status = 'pending' and expires_at is not null and expires_at <= ?",
		now,
	)) {
		fail(sql, row, now, FailureCode.EXPIRED, "not dispatched before its ttl ran out");
	}
	requeueDispatched(sql, now, "ack_timeout");
	return { stop };
}

/** The earliest moment any command timer is due, or null. */
export function nextDeadline(sql: SqlStorage): number | null {
	return sql
		.exec<{ at: number | null }>(
			`select min(at) as at from (
				select min(ack_deadline) as at from commands where status = 'dispatched'
				union all select min(expires_at) from commands where status = 'pending'
				union all select min(run_deadline) from commands where status in ${OPEN}
				union all select min(cancel_deadline) from commands where status in ${OPEN}
			)`,
		)
		.one().at;
}

export function statusCounts(sql: SqlStorage): Partial<Record<CommandStatus, number>> {
	const out: Partial<Record<CommandStatus, number>> = {};
	for (const r of sql
		.exec<{ status: CommandStatus; n: number }>("select status, count(*) as n from commands group by status")
		.toArray())
		out[r.status] = r.n;
	return out;
}
