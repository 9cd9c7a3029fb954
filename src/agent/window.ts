/**
 * The agent's window: which pending commands go out now, in priority, then
 * enqueue, order. Two things bound it besides the agent's concurrency: a
 * command whose payload the object has not read yet (a catch-up took it
 * without one) stops the fill until ./payloads.ts has read it, and the
 * payload bytes sent and not yet acknowledged stop at WINDOW_BYTES.
 */
import { type CommandFrame, FailureCode } from "../protocol";
import { cancelQueued } from "./buffer";
import { type BufferedRow, fail, ROW, type Tx, UNREAD_PAYLOAD } from "./storage";

/**
 * Payload bytes (UTF-8 JSON) out with the agent and not yet acknowledged.
 * A fill that would pass it stops, though it always sends one command when
 * none is awaiting its ack, however large. It keeps one event of the object
 * from holding a thousand payloads of a megabyte at once, and the agent's
 * socket from a burst it cannot take. See docs/architecture.md.
 */
export const WINDOW_BYTES = 4 * 1024 * 1024;

type WindowRow = BufferedRow & { payload_bytes: number; payload_unread: number };

export interface Fill {
	frames: CommandFrame[];
	/** The earliest deadline the frames set. */
	wakeBy: number | null;
	/** The fill stopped at a command whose payload must be read from Postgres first. */
	unread: boolean;
}

/**
 * Fills the agent's window until `concurrency` commands are in flight, or
 * the byte bound or an unread payload stops it. Commands whose ttl, run
 * deadline or attempts ran out on the way are finished instead of sent.
 */
export function fillWindow(
	tx: Tx,
	concurrency: number,
	generation: number,
	now: number,
	maxBytes = WINDOW_BYTES,
	actions: readonly string[] | null = null,
): Fill {
	const fill: Fill = { frames: [], wakeBy: null, unread: false };
	let free = concurrency - tx.counts.inFlight;
	let bytes = tx.counts.inFlight === 0 ? 0 : bytesAwaitingAck(tx.sql);
	while (free > 0 && tx.counts.pending > 0) {
		const batch = windowRows(tx.sql, free, actions);
		if (batch.length === 0) break;
		for (const row of batch) {
			if (finishUnsendable(tx, row, now)) continue;
			if (row.payload_unread) {
				fill.unread = true;
				return fill;
			}
			if (bytes > 0 && bytes + row.payload_bytes > maxBytes) return fill;
			const sent = dispatch(tx, row, generation, now);
			fill.frames.push(sent.frame);
			fill.wakeBy = Math.min(fill.wakeBy ?? sent.deadline, sent.deadline);
			bytes += row.payload_bytes;
			free--;
		}
	}
	return fill;
}

/**
 * The agent's declared actions as a filter: a command for any other action
 * is passed over (it waits, `action_unsupported`) and does not hold up the
 * ones behind it. It still expires by its ttl (buffer.ts, runDueTimers).
 */
const SENDABLE = "(? is null or action in (select value from json_each(?)))";

function sendable(actions: readonly string[] | null): [string | null, string | null] {
	const json = actions === null ? null : JSON.stringify(actions);
	return [json, json];
}

function windowRows(sql: SqlStorage, limit: number, actions: readonly string[] | null): WindowRow[] {
	// SAFETY: ROW's columns, plus the two computed here.
	return sql
		.exec(
			`select ${ROW}, length(cast(payload as blob)) as payload_bytes, payload = ? as payload_unread
			 from commands where status = 'pending' and ${SENDABLE} order by priority desc, seq asc limit ?`,
			UNREAD_PAYLOAD,
			...sendable(actions),
			limit,
		)
		.toArray() as unknown as WindowRow[];
}

function bytesAwaitingAck(sql: SqlStorage): number {
	return sql.exec<{ n: number }>("select coalesce(sum(length(cast(payload as blob))), 0) as n from commands where status = 'dispatched'").one().n;
}

/**
 * The pending commands, in window order, whose payloads the next fills
 * need read: up to `limit`.
 */
export function unreadPending(sql: SqlStorage, limit: number, actions: readonly string[] | null = null): string[] {
	return sql
		.exec<{ id: string }>(
			`select id from commands where status = 'pending' and payload = ? and ${SENDABLE} order by priority desc, seq asc limit ?`,
			UNREAD_PAYLOAD,
			...sendable(actions),
			limit,
		)
		.toArray()
		.map((r) => r.id);
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
	// The payload comes back with the update, not in a read of its own: only the send needs it.
	const { payload } = tx.sql
		.exec<{ payload: string }>(
			`update commands set status = 'dispatched', attempts = ?, generation = ?, ack_deadline = ?, run_deadline = ?,
				first_dispatched_at = coalesce(first_dispatched_at, ?)
			 where id = ? returning payload`,
			attempt,
			generation,
			now + row.ack_timeout_ms,
			runDeadline,
			now,
			row.id,
		)
		.one();
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
	return { frame: commandFrame(row, payload, attempt), deadline: Math.min(now + row.ack_timeout_ms, runDeadline ?? Number.POSITIVE_INFINITY) };
}

function commandFrame(row: BufferedRow, payload: string, attempt: number): CommandFrame {
	return {
		type: "command",
		id: row.id,
		action: row.action,
		payload: JSON.parse(payload),
		sessionId: row.session_id,
		priority: row.priority,
		attempt,
	};
}
