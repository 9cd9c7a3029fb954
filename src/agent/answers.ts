/**
 * What the agent's word does to its commands: an ack, a result, and the
 * list of running commands in its `hello`. Plain functions over the
 * object's storage, like ./buffer.ts, run inside the event's transaction.
 */
import { FailureCode } from "../protocol";
import { type BufferedRow, fail, getCommand, moveTo, OPEN, ROW, rows, stopOwed, takeStop, type Tx } from "./storage";

type Outcome = { status: "completed" | "failed" | "cancelled"; result?: unknown; error?: string };

export type FrameOutcome = "applied" | "duplicate" | "unknown" | "not_dispatched";

/** A command the agent may legitimately know: sent at least once and not finished. */
function sentAndOpen(row: BufferedRow): boolean {
	return row.status === "dispatched" || row.status === "acknowledged" || (row.status === "pending" && row.attempts > 0);
}

/** The agent holds this command (sent, not finished), or the system ended it and waits for the agent's word. */
export function holds(sql: SqlStorage, id: string, now: number): boolean {
	const row = getCommand(sql, id);
	return row !== undefined && (sentAndOpen(row) || stopOwed(sql, id, now));
}

/** Output may come for a command that was sent and is not finished. */
export function acceptsOutput(sql: SqlStorage, id: string): { outcome: FrameOutcome; row?: BufferedRow } {
	const row = getCommand(sql, id);
	if (!row) return { outcome: "unknown" };
	if (row.status === "pending" && row.attempts === 0) return { outcome: "not_dispatched", row };
	return { outcome: sentAndOpen(row) ? "applied" : "duplicate", row };
}

/**
 * Whether this ack or result would change something: an ack for a command
 * not yet acknowledged, a result for one the agent holds or owes an answer
 * for. Only such a frame is taken over the frame budget.
 */
export function wouldChange(sql: SqlStorage, frame: { type: "ack" | "result"; id: string }, now: number): boolean {
	if (frame.type === "result") return holds(sql, frame.id, now);
	const row = getCommand(sql, frame.id);
	return row !== undefined && row.status !== "acknowledged" && sentAndOpen(row);
}

/** `generation` is the connection the ack came on: proof the agent has the command on it. */
export function acknowledge(tx: Tx, id: string, now: number, generation: number): FrameOutcome {
	const row = getCommand(tx.sql, id);
	if (!row) return "unknown";
	if (row.status === "pending" && row.attempts === 0) return "not_dispatched";
	if (row.status === "acknowledged" || !sentAndOpen(row)) return "duplicate";
	// Also from `pending`: a command requeued after a disconnect that the agent
	// had in fact received. It is running; do not send it again.
	moveTo(tx, row, "acknowledged", now, {}, generation);
	return "applied";
}

export function finish(tx: Tx, id: string, outcome: Outcome, now: number): FrameOutcome {
	const row = getCommand(tx.sql, id);
	if (!row) {
		takeStop(tx.sql, id, now);
		return "unknown";
	}
	if (row.status === "pending" && row.attempts === 0) return "not_dispatched";
	if (!sentAndOpen(row)) return answerAfterEnd(tx, row, outcome, now);
	moveTo(tx, row, outcome.status, now, agentsWord(outcome));
	return "applied";
}

/**
 * A result for a finished command. Any answer means the agent no longer
 * runs it, so its stop ends. If the system ended the command while the
 * agent may have held it (a stop was owed), a `completed` or `failed`
 * answer says what became of the work, and the agent's word beats the
 * system's guess: it replaces that end, once. A `cancelled` answer only
 * confirms the stop. Anything else is a duplicate: the first result stands.
 */
function answerAfterEnd(tx: Tx, row: BufferedRow, outcome: Outcome, now: number): FrameOutcome {
	if (!takeStop(tx.sql, row.id, now) || outcome.status === "cancelled") return "duplicate";
	moveTo(tx, row, outcome.status, now, { ...agentsWord(outcome), detail: { reason: "reported_late" } });
	return "applied";
}

function agentsWord(outcome: Outcome) {
	return {
		result: outcome.result ?? null,
		error: outcome.status === "failed" ? (outcome.error ?? "failed") : (outcome.error ?? null),
		errorCode: null,
	};
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
	tx: Tx,
	running: ReadonlySet<string>,
	now: number,
	generation: number,
	reason: "lost" | "no_hello" = "lost",
): number {
	if (tx.counts.open === 0) return 0;
	let changed = 0;
	for (const row of rows(tx.sql, `select ${ROW} from commands where status in ${OPEN}`)) {
		const listed = running.has(row.id);
		if (row.status === "acknowledged" && !listed && row.generation !== generation) {
			changed++;
			if (row.cancel_requested_at !== null)
				fail(tx, row, now, FailureCode.CANCEL_UNCONFIRMED, "the agent no longer runs it", { detail: { reason: "lost" } });
			else if (row.attempts >= row.max_attempts)
				fail(tx, row, now, FailureCode.LOST, "the agent lost it and no attempts are left");
			else moveTo(tx, row, "pending", now, { detail: { reason, attempt: row.attempts } });
		} else if (listed && row.status !== "acknowledged" && sentAndOpen(row)) {
			changed++;
			moveTo(tx, row, "acknowledged", now, { detail: { reason: "reported_running" } }, generation);
		}
	}
	return changed;
}
