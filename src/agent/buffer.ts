/**
 * Every delivery rule of an agent's object, as plain functions over its
 * SQLite storage (./storage.ts): intake, the concurrency window, requeues,
 * cancel, and timers; what the agent's own frames do is in ./answers.ts. No socket and
 * no network, so the rules can be tested on their own; the object class only
 * wires events to them. Callers run each call inside the event's one
 * transaction (a `Tx`), so a change and its journal entry are one write.
 */
import { CANCEL_GRACE_SECONDS, type CommandStatus, FailureCode, TERMINAL_STATUSES } from "../protocol";
import {
	type BufferedRow,
	fail,
	getCommand,
	moveTo,
	OPEN,
	ROW,
	rows,
	stopsOwed,
	type Tx,
	UNREAD_PAYLOAD,
} from "./storage";

// ------------------------------------------------------------------ intake

/**
 * What the object needs to buffer a command: the Postgres row's delivery
 * fields. It comes from the worker's own committed row (typed RPC), so it
 * is not validated again here.
 */
export interface BufferInput {
	id: string;
	seq: number;
	action: string;
	/** Absent when a catch-up took it: the window reads it from Postgres to send it (./payloads.ts). */
	payload?: unknown;
	sessionId: string | null;
	priority: number;
	status: "pending" | "dispatched" | "acknowledged";
	attempts: number;
	maxAttempts: number;
	ackTimeoutSeconds: number;
	timeoutSeconds: number | null;
	/** ms since epoch */
	expiresAt: number | null;
	/** ms since epoch of the first dispatch, if any: timeoutSeconds counts from it */
	firstDispatchedAt: number | null;
	cancelRequested: boolean;
}

/**
 * Adds a command unless the buffer already knows its id (in any status),
 * and returns the status it was buffered in (null if it was known). A row that Postgres says is `dispatched` comes in
 * as `pending`: no socket of this object is waiting for its ack, so it must
 * be sent again.
 */
export function addCommand(tx: Tx, c: BufferInput, now: number): CommandStatus | null {
	const { sql } = tx;
	const status = c.status === "dispatched" ? "pending" : c.status;
	const written = insertCommand(sql, c, status, now);
	if (written === 0) {
		// The worker's forward lost a race with a catch-up: its payload saves a read of Postgres.
		if (c.payload !== undefined) sql.exec("update commands set payload = ? where id = ? and payload = ?", JSON.stringify(c.payload), c.id, UNREAD_PAYLOAD);
		return null;
	}
	tx.counts.move(null, status);
	tx.journal.record({ kind: "taken", commandId: c.id, at: new Date(now).toISOString() });
	if (status !== c.status) {
		tx.journal.record({
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
	if (c.cancelRequested && status === "pending") {
		const row = getCommand(sql, c.id);
		if (row) cancelQueued(tx, row, now);
		return "cancelled";
	}
	return status;
}

/** Inserts the row unless its id is known; returns how many rows it wrote (0 or 1). */
function insertCommand(sql: SqlStorage, c: BufferInput, status: CommandStatus, now: number): number {
	const runDeadline = c.timeoutSeconds && c.firstDispatchedAt ? c.firstDispatchedAt + c.timeoutSeconds * 1000 : null;
	const cancelAt = c.cancelRequested && c.status !== "pending" ? now : null;
	return sql.exec(
		`insert into commands (id, seq, action, payload, session_id, priority, status, attempts, max_attempts,
			ack_timeout_ms, timeout_ms, expires_at, run_deadline, cancel_requested_at, cancel_deadline)
		 values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict (id) do nothing`,
		c.id,
		c.seq,
		c.action,
		c.payload === undefined ? UNREAD_PAYLOAD : JSON.stringify(c.payload),
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
}

/** The earliest deadline a newly buffered command brings (its ttl, or a run deadline already counting). */
export function deadlineOf(c: BufferInput): number | null {
	const run = c.timeoutSeconds && c.firstDispatchedAt ? c.firstDispatchedAt + c.timeoutSeconds * 1000 : null;
	const ttl = c.attempts === 0 ? c.expiresAt : null;
	if (ttl === null) return run;
	return run === null ? ttl : Math.min(run, ttl);
}

/**
 * Cancels a command that is not out with the agent now. One it was ever
 * sent, it may hold: that end is the system's guess, unconfirmed, and the
 * agent is told to stop (`fail`).
 */
export function cancelQueued(tx: Tx, row: BufferedRow, now: number, actor = "system"): void {
	const extra = { detail: { reason: "requested" }, actor };
	if (row.attempts > 0) fail(tx, row, now, FailureCode.CANCEL_UNCONFIRMED, "cancelled before the agent acknowledged it", extra);
	else moveTo(tx, row, "cancelled", now, { ...extra, result: null, error: null });
}

// ---------------------------------------------------------------- delivery

// The window (what is sent, and how much at once) is in ./window.ts.
export { fillWindow, WINDOW_BYTES } from "./window";

/**
 * Puts dispatched-but-unacknowledged commands back in the queue: their socket
 * is gone (`disconnected`, `reconnect`) or their ack deadline passed
 * (`ack_timeout`). They go out again, attempt + 1, when the window allows
 * and, after a reconnect, once the agent's hello says it does not hold them
 * (core.pump). One whose cancel was requested is cancelled instead.
 */
export function requeueDispatched(tx: Tx, now: number, reason: "disconnected" | "reconnect" | "ack_timeout"): number {
	if (tx.counts.inFlight === 0) return 0;
	const due =
		reason === "ack_timeout"
			? rows(tx.sql, `select ${ROW} from commands where status = 'dispatched' and ack_deadline <= ?`, now)
			: rows(tx.sql, `select ${ROW} from commands where status = 'dispatched'`);
	for (const row of due) {
		if (row.cancel_requested_at !== null) fail(tx, row, now, FailureCode.CANCEL_UNCONFIRMED, "cancelled before the agent acknowledged it");
		else moveTo(tx, row, "pending", now, { detail: { reason, attempt: row.attempts } });
	}
	return due.length;
}

/**
 * Whether a command that was sent before waits in the queue. Its fate is
 * unknown until the connection's `hello` (or that hello's grace) says
 * whether the agent holds it.
 */
export function sentBeforeAndQueued(sql: SqlStorage): boolean {
	return sql.exec("select 1 from commands where status = 'pending' and attempts > 0 limit 1").toArray().length > 0;
}

export type CancelOutcome = "cancelled" | "cancel_requested" | "already_finished" | "unknown";

/**
 * Pending: cancelled at once and never sent again. Sent: the agent is asked
 * (the caller sends the `cancel` frame) and has CANCEL_GRACE_SECONDS to answer.
 */
export function requestCancel(tx: Tx, id: string, now: number, actor = "api"): CancelOutcome {
	const row = getCommand(tx.sql, id);
	if (!row) return "unknown";
	if (TERMINAL_STATUSES.has(row.status)) return "already_finished";
	if (row.status === "pending") {
		cancelQueued(tx, row, now, actor);
		return "cancelled";
	}
	if (row.cancel_requested_at === null) {
		tx.sql.exec(
			"update commands set cancel_requested_at = ?, cancel_deadline = ?, cancel_actor = ? where id = ?",
			now,
			now + CANCEL_GRACE_SECONDS * 1000,
			actor,
			id,
		);
		tx.journal.record({ kind: "cancel_requested", commandId: id, at: new Date(now).toISOString() });
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

/** Runs every timer that is due. What it ends that the agent may hold, the agent is told to stop (`fail`). */
export function runDueTimers(tx: Tx, now: number): void {
	const { sql } = tx;
	for (const row of rows(
		sql,
		`select ${ROW} from commands where status in ${OPEN} and cancel_deadline is not null and cancel_deadline <= ?`,
		now,
	)) {
		fail(tx, row, now, FailureCode.CANCEL_UNCONFIRMED, "the agent did not confirm the cancel in time");
	}
	for (const row of rows(
		sql,
		`select ${ROW} from commands where status in ${OPEN} and run_deadline is not null and run_deadline <= ?`,
		now,
	)) {
		fail(tx, row, now, FailureCode.TIMEOUT, "not finished within timeoutSeconds");
	}
	for (const row of rows(
		sql,
		`select ${ROW} from commands where status = 'pending' and attempts = 0 and expires_at is not null and expires_at <= ?`,
		now,
	)) {
		fail(tx, row, now, FailureCode.EXPIRED, "not dispatched before its ttl ran out");
	}
	requeueDispatched(tx, now, "ack_timeout");
}

/** The earliest moment any command timer is due, or null. */
export function nextDeadline(sql: SqlStorage): number | null {
	return sql
		.exec<{ at: number | null }>(
			`select min(at) as at from (
				select min(ack_deadline) as at from commands where status = 'dispatched'
				union all select min(expires_at) from commands where status = 'pending' and attempts = 0
				union all select min(run_deadline) from commands where status in ${OPEN}
				union all select min(cancel_deadline) from commands where status in ${OPEN}
			)`,
		)
		.one().at;
}
