/**
 * Every delivery rule of an agent's object, as plain functions over its
 * SQLite storage (./storage.ts): intake, the concurrency window, requeues,
 * acks and results, hello reconciliation, cancel, and timers. No socket and
 * no network, so the rules can be tested on their own; the object class only
 * wires events to them. Callers wrap each call in `transactionSync`, so a
 * change, its outbox entry and its observer event are one write.
 */
import { z } from "zod";
import {
	CANCEL_GRACE_SECONDS,
	type CommandFrame,
	FailureCode,
	TERMINAL_STATUSES,
} from "../protocol";
import {
	addStop,
	type BufferedRow,
	clearStop,
	fail,
	getCommand,
	moveTo,
	OPEN,
	push,
	rows,
	stopsOwed,
} from "./storage";

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

/** Whether any command is still to be sent or answered: then the agent's silence is checked on time. */
export function hasOpenCommands(sql: SqlStorage): boolean {
	return sql.exec<{ n: number }>(`select exists (select 1 from commands where status in ${OPEN}) as n`).one().n === 1;
}

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

/** The agent holds this command: it was sent and is not finished. */
export function holds(sql: SqlStorage, id: string): boolean {
	const row = getCommand(sql, id);
	return row !== undefined && sentAndOpen(row);
}

/** Output may come for a command that was sent and is not finished. */
export function acceptsOutput(sql: SqlStorage, id: string): FrameOutcome {
	const row = getCommand(sql, id);
	if (!row) return "unknown";
	if (row.status === "pending" && row.attempts === 0) return "not_dispatched";
	return sentAndOpen(row) ? "applied" : "duplicate";
}

/** `generation` is the connection the ack came on: proof the agent has the command on it. */
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
export function applyHello(
	sql: SqlStorage,
	running: ReadonlySet<string>,
	now: number,
	generation: number,
	reason: "lost" | "no_hello" = "lost",
): number {
	let changed = 0;
	for (const row of rows(sql, `select * from commands where status in ${OPEN}`)) {
		const listed = running.has(row.id);
		if (row.status === "acknowledged" && !listed && row.generation !== generation) {
			changed++;
			if (row.cancel_requested_at !== null) moveTo(sql, row, "cancelled", now, { detail: { reason: "lost" } });
			else if (row.attempts >= row.max_attempts)
				fail(sql, row, now, FailureCode.LOST, "the agent lost it and no attempts are left");
			else moveTo(sql, row, "pending", now, { detail: { reason, attempt: row.attempts } });
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
			"update commands set cancel_requested_at = ?, cancel_deadline = ?, cancel_actor = ? where id = ?",
			now,
			now + CANCEL_GRACE_SECONDS * 1000,
			actor,
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
