/**
 * Every delivery rule of an agent's object, as plain functions over its
 * SQLite storage (./storage.ts): intake, the concurrency window, requeues,
 * cancel, and timers; what the agent's own frames do is in ./answers.ts. No socket and
 * no network, so the rules can be tested on their own; the object class only
 * wires events to them. Callers run each call inside the event's one
 * transaction (a `Tx`), so a change and its journal entry are one write.
 */
import { CANCEL_GRACE_SECONDS, type CommandFrame, type CommandStatus, FailureCode, TERMINAL_STATUSES } from "../protocol";
import {
	type BufferedRow,
	fail,
	getCommand,
	moveTo,
	OPEN,
	rows,
	stopsOwed,
	type Tx,
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
	payload: unknown;
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
	if (written === 0) return null;
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
function cancelQueued(tx: Tx, row: BufferedRow, now: number, actor = "system"): void {
	const extra = { detail: { reason: "requested" }, actor };
	if (row.attempts > 0) fail(tx, row, now, FailureCode.CANCEL_UNCONFIRMED, "cancelled before the agent acknowledged it", extra);
	else moveTo(tx, row, "cancelled", now, { ...extra, result: null, error: null });
}

// ---------------------------------------------------------------- delivery

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
 * Returns the frames to send, in order, and the earliest deadline they set.
 */
export function fillWindow(
	tx: Tx,
	concurrency: number,
	generation: number,
	now: number,
): { frames: CommandFrame[]; wakeBy: number | null } {
	const frames: CommandFrame[] = [];
	let wakeBy: number | null = null;
	let free = concurrency - tx.counts.inFlight;
	while (free > 0 && tx.counts.pending > 0) {
		const batch = rows(tx.sql, "select * from commands where status = 'pending' order by priority desc, seq asc limit ?", free);
		if (batch.length === 0) break;
		for (const row of batch) {
			if (finishUnsendable(tx, row, now)) continue;
			const sent = dispatch(tx, row, generation, now);
			frames.push(sent.frame);
			wakeBy = Math.min(wakeBy ?? sent.deadline, sent.deadline);
			free--;
		}
	}
	return { frames, wakeBy };
}

/**
 * Ends a pending command that must not be sent any more; says whether it
 * did. A ttl bounds the wait for a first dispatch only: once sent, the
 * agent may be running it, and only its word (or the run deadline) ends it.
 */
function finishUnsendable(tx: Tx, row: BufferedRow, now: number): boolean {
	if (row.cancel_requested_at !== null) cancelQueued(tx, row, now);
	else if (row.attempts === 0 && row.expires_at !== null && row.expires_at <= now) fail(tx, row, now, FailureCode.EXPIRED, "not dispatched before its ttl ran out");
	else if (row.run_deadline !== null && row.run_deadline <= now) fail(tx, row, now, FailureCode.TIMEOUT, "not finished within timeoutSeconds");
	else if (row.attempts >= row.max_attempts && deadlineSpent(row, now)) fail(tx, row, now, FailureCode.UNDELIVERABLE, `not acknowledged after ${row.attempts} attempts`);
	else return false;
	return true;
}

/** Whether the command's last send has used up its attempt: its ack deadline passed (or it was acknowledged, then lost). */
function deadlineSpent(row: BufferedRow, now: number): boolean {
	return row.ack_deadline === null || row.ack_deadline <= now;
}

/**
 * Marks a pending command sent on connection `generation`; returns its frame
 * and its earliest deadline. An attempt is an ack deadline spent, not a
 * socket: sent again because its connection dropped before its deadline
 * (a requeue keeps the deadline), it keeps its attempt number, so a
 * flapping link does not use up `maxAttempts`.
 */
function dispatch(tx: Tx, row: BufferedRow, generation: number, now: number): { frame: CommandFrame; deadline: number } {
	const attempt = row.attempts === 0 || deadlineSpent(row, now) ? row.attempts + 1 : row.attempts;
	const runDeadline = row.run_deadline ?? (row.timeout_ms === null ? null : now + row.timeout_ms);
	tx.sql.exec(
		`update commands set status = 'dispatched', attempts = ?, generation = ?, ack_deadline = ?, run_deadline = ?,
			first_dispatched_at = coalesce(first_dispatched_at, ?)
		 where id = ?`,
		attempt,
		generation,
		now + row.ack_timeout_ms,
		runDeadline,
		now,
		row.id,
	);
	tx.counts.move("pending", "dispatched");
	tx.journal.record({
		kind: "transition",
		commandId: row.id,
		from: "pending",
		to: "dispatched",
		at: new Date(now).toISOString(),
		attempts: attempt,
		detail: { attempt, generation, reason: row.attempts === 0 ? "delivery" : "redelivery" },
	});
	return { frame: commandFrame(row, attempt), deadline: Math.min(now + row.ack_timeout_ms, runDeadline ?? Number.POSITIVE_INFINITY) };
}

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
			? rows(tx.sql, "select * from commands where status = 'dispatched' and ack_deadline <= ?", now)
			: rows(tx.sql, "select * from commands where status = 'dispatched'");
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
		`select * from commands where status in ${OPEN} and cancel_deadline is not null and cancel_deadline <= ?`,
		now,
	)) {
		fail(tx, row, now, FailureCode.CANCEL_UNCONFIRMED, "the agent did not confirm the cancel in time");
	}
	for (const row of rows(
		sql,
		`select * from commands where status in ${OPEN} and run_deadline is not null and run_deadline <= ?`,
		now,
	)) {
		fail(tx, row, now, FailureCode.TIMEOUT, "not finished within timeoutSeconds");
	}
	for (const row of rows(
		sql,
		"select * from commands where status = 'pending' and attempts = 0 and expires_at is not null and expires_at <= ?",
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
