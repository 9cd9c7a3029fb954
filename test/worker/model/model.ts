/**
 * The reference model of one agent's delivery rules, written from
 * docs/protocol.md and not from src/: for each command, which statuses it
 * may be in after a step, whether the agent holds it, whether a stop is
 * owed, and which result of the agent's must be stored. It is deliberately
 * loose where the rules depend on deadlines the model does not recompute
 * (an alarm may end or requeue a command), and exact where the protocol is
 * (a result the agent sent for a command it ran, a cancel of a queued one).
 */
import type { BufferInput } from "../../../src/agent/buffer";
import type { CommandStatus } from "../../../src/protocol";

/** "until it answers … (or for 10 minutes)": docs/protocol.md, Stops. */
export const STOP_MS = 10 * 60 * 1000;
export const HELLO_GRACE_MS = 10_000;

export type AgentStatus = "completed" | "failed" | "cancelled";

export interface ModelCommand {
	id: string;
	input: BufferInput;
	status: CommandStatus;
	/** Ever sent (attempts > 0): from then on the agent may hold it. */
	sent: boolean;
	cancelRequested: boolean;
	/** The connection the agent proved it holds it on (an ack, or its hello). */
	ackGeneration: number | null;
	/** The system ended it while the agent may hold it: a cancel is owed until then. */
	stopUntil: number | null;
	/** The agent's result that the object must keep (and hand to Postgres). */
	agentWord: { status: AgentStatus; result: unknown } | null;
	/** When it last finished (a late result finishes it again): the object forgets it 10 minutes on. */
	endedAt: number | null;
}

export interface Model {
	now: number;
	generation: number;
	connected: boolean;
	/** The connection whose hello came, if any. */
	helloGeneration: number | null;
	/** The hello grace timer of the current connection, until it is cleared. */
	helloDeadline: number | null;
	helloRunning: string[];
	concurrency: number;
	commands: ModelCommand[];
	/** The agent's side: commands it received and has not answered, in order. */
	running: string[];
	nextSeq: number;
}

export const OPEN: ReadonlySet<CommandStatus> = new Set(["pending", "dispatched", "acknowledged"]);

export function newModel(now: number): Model {
	return {
		now,
		generation: 0,
		connected: false,
		helloGeneration: null,
		helloDeadline: null,
		helloRunning: [],
		concurrency: 1,
		commands: [],
		running: [],
		nextSeq: 1,
	};
}

export function find(m: Model, id: string): ModelCommand {
	const c = m.commands.find((x) => x.id === id);
	if (!c) throw new Error(`model has no command ${id}`);
	return c;
}

export function stopOwed(m: Model, c: ModelCommand): boolean {
	return c.stopUntil !== null && m.now <= c.stopUntil;
}

/** What one step did, as far as the model needs to know to say what may follow. */
export type StepEvent =
	| { kind: "none" }
	| { kind: "requeue" }
	| { kind: "hello"; running: ReadonlySet<string> }
	| { kind: "ack"; id: string }
	/** `stopWasOwed`: before this result answered it. */
	| { kind: "result"; id: string; status: AgentStatus; stopWasOwed: boolean }
	| { kind: "cancel"; id: string }
	| { kind: "advance"; noHello: boolean };

/** The statuses `c` may be in after the step, before the window is filled. */
function direct(m: Model, c: ModelCommand, ev: StepEvent): CommandStatus[] {
	const s = c.status;
	switch (ev.kind) {
		case "requeue":
			// "the commands it was sent but never acknowledged go back in the queue"
			if (s === "dispatched") return [c.cancelRequested ? "cancelled" : "pending"];
			return [s];
		case "hello":
			return afterHello(m, c, ev.running);
		case "ack":
			if (ev.id === c.id && (s === "dispatched" || (s === "pending" && c.sent))) return ["acknowledged"];
			return [s];
		case "result":
			return ev.id === c.id ? afterResult(c, ev.status, ev.stopWasOwed) : [s];
		case "cancel":
			// "A command that was never sent (or is queued again) is cancelled at once"
			return ev.id === c.id && s === "pending" ? ["cancelled"] : [s];
		case "advance":
			return afterTime(m, c, ev.noHello);
		default:
			return [s];
	}
}

function afterHello(m: Model, c: ModelCommand, running: ReadonlySet<string>): CommandStatus[] {
	const s = c.status;
	const listed = running.has(c.id);
	if (s === "acknowledged" && !listed && c.ackGeneration !== m.generation) {
		// Lost: sent again, or failed `lost` once attempts are spent; a cancel asked for ends it.
		return c.cancelRequested ? ["cancelled"] : ["pending", "failed"];
	}
	if (listed && (s === "dispatched" || (s === "pending" && c.sent))) return ["acknowledged"];
	return [s];
}

function afterResult(c: ModelCommand, status: AgentStatus, stopWasOwed: boolean): CommandStatus[] {
	if (OPEN.has(c.status)) return c.sent ? [status] : [c.status];
	// Late results: a completed/failed answer to a system end with a stop owed replaces it.
	if (stopWasOwed && status !== "cancelled") return [status];
	return [c.status];
}

/** An alarm at `m.now`: any deadline the model does not recompute may have passed. */
function afterTime(m: Model, c: ModelCommand, noHello: boolean): CommandStatus[] {
	const out = new Set<CommandStatus>([c.status]);
	const cancel = c.cancelRequested;
	if (c.status === "pending") {
		if (!c.sent && c.input.expiresAt !== null) out.add("expired");
		if (c.sent && c.input.timeoutSeconds !== null) out.add("failed");
	} else if (c.status === "dispatched") {
		// Its ack deadline passed: requeued, or ended if a cancel was asked for.
		out.add(cancel ? "cancelled" : "pending");
		if (c.input.timeoutSeconds !== null) out.add("failed");
	} else if (c.status === "acknowledged") {
		if (c.input.timeoutSeconds !== null) out.add("failed");
		if (cancel) out.add("cancelled");
		// No hello within the grace: what an earlier connection acknowledged is presumed lost.
		if (noHello && c.ackGeneration !== m.generation && !cancel) {
			out.add("pending");
			out.add("failed");
		}
	}
	return [...out];
}

/**
 * What filling the window may do to a command left pending: send it, or end
 * one that must not be sent (a cancel asked for, a ttl run out before a first
 * send, attempts or the run deadline spent after one).
 */
function afterPump(c: ModelCommand, statuses: CommandStatus[]): CommandStatus[] {
	if (!statuses.includes("pending")) return statuses;
	const out = new Set(statuses);
	out.add("dispatched");
	if (c.cancelRequested) out.add("cancelled");
	if (!c.sent && c.input.expiresAt !== null) out.add("expired");
	if (c.sent) out.add("failed");
	return [...out];
}

export function allowed(m: Model, c: ModelCommand, ev: StepEvent, pumped: boolean): CommandStatus[] {
	const statuses = direct(m, c, ev);
	return pumped ? afterPump(c, statuses) : statuses;
}
