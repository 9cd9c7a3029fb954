/**
 * The system under test: a real agent object's core (its SQLite, journal,
 * counts and state) driven through the delivery rules the object's entry
 * points call, in the same order and within one transaction each, with the
 * clock the model chooses. The glue is what connect.ts, frames.ts,
 * catch-up.ts and AgentHub.alarm do around those calls; it is kept in step
 * with them by hand, since they read Date.now() and need a live socket.
 */
import * as answers from "../../../src/agent/answers";
import * as buffer from "../../../src/agent/buffer";
import type { AgentCore } from "../../../src/agent/core";
import { admitOutput, recordOutput } from "../../../src/agent/output";
import { prune as pruneRows, type Tx } from "../../../src/agent/storage";
import { type AgentStatus, HELLO_GRACE_MS, type Model } from "./model";

export interface Real {
	core: AgentCore;
	/** The status each command was handed to the object with (a `taken` entry's first status). */
	declared: Map<string, "pending" | "dispatched" | "acknowledged">;
}

/** What a step sent the agent: the commands it now has. */
export type Sent = string[];

/** core.pump without its clock and socket: nothing before the hello says what the agent holds. */
function pump(r: Real, m: Model, tx: Tx): Sent {
	if (!m.connected) return [];
	if (m.helloDeadline !== null && buffer.sentBeforeAndQueued(r.core.sql)) return [];
	return buffer.fillWindow(tx, m.concurrency, m.generation, m.now).frames.map((f) => f.id);
}

export function canPump(m: Model): boolean {
	return m.connected;
}

/** AgentHub.enqueue, and catch-up.ts for a row the object never saw. */
export function addCommands(r: Real, m: Model, inputs: buffer.BufferInput[], catchUp: boolean): Sent {
	return r.core.atomically((tx) => {
		let added = 0;
		for (const c of inputs) {
			if (buffer.addCommand(tx, c, m.now) === null) continue;
			added++;
			if (!r.declared.has(c.id)) r.declared.set(c.id, c.status);
		}
		if (catchUp && added > 0 && m.helloGeneration === m.generation) {
			answers.applyHello(tx, new Set(m.helloRunning), m.now, m.generation);
		}
		return catchUp && added === 0 ? [] : pump(r, m, tx);
	});
}

/** connect.ts: a new connection requeues what the last was sent and not acknowledged. */
export function connect(r: Real, m: Model): Sent {
	m.generation++;
	m.connected = true;
	m.concurrency = 1;
	m.helloDeadline = m.now + HELLO_GRACE_MS;
	return r.core.atomically((tx) => {
		buffer.requeueDispatched(tx, m.now, "reconnect");
		return pump(r, m, tx);
	});
}

/** AgentCore.socketGone. */
export function close(r: Real, m: Model): void {
	m.connected = false;
	r.core.atomically((tx) => buffer.requeueDispatched(tx, m.now, "disconnected"));
}

/** frames.ts `hello`. */
export function hello(r: Real, m: Model, concurrency: number, running: string[]): Sent {
	m.concurrency = concurrency;
	m.helloGeneration = m.generation;
	m.helloRunning = running;
	m.helloDeadline = null;
	return r.core.atomically((tx) => {
		answers.applyHello(tx, new Set(running), m.now, m.generation);
		return pump(r, m, tx);
	});
}

/** frames.ts `ack`: no send follows an ack. */
export function ack(r: Real, m: Model, id: string): void {
	r.core.atomically((tx) => answers.acknowledge(tx, id, m.now, m.generation));
}

/** frames.ts `result`: an applied result frees a place in the window. */
export function result(r: Real, m: Model, id: string, status: AgentStatus, value: unknown): Sent {
	return r.core.atomically((tx) => {
		const outcome = answers.finish(tx, id, { status, result: value }, m.now);
		return outcome === "applied" ? pump(r, m, tx) : [];
	});
}

/** frames.ts `output`. */
export function output(r: Real, m: Model, id: string, seq: number): void {
	const outcome = admitOutput(r.core.sql, id, seq);
	if (outcome !== "keep" && outcome !== "cut") return;
	r.core.atomically(() => {
		recordOutput(r.core.sql, id, seq, outcome, 4);
		if (outcome === "keep") r.core.journal.output(id, seq, "data", m.now);
		else r.core.journal.outputCut(id, m.now);
	});
}

/** AgentHub.cancel for a command the object knows. */
export function cancel(r: Real, m: Model, id: string): Sent {
	return r.core.atomically((tx) => {
		buffer.requestCancel(tx, id, m.now, "api:model");
		return pump(r, m, tx);
	});
}

/** AgentHub.alarm at m.now: due timers, the hello grace, then the window. */
export function alarm(r: Real, m: Model): Sent {
	const graceOver = m.helloDeadline !== null && m.helloDeadline <= m.now;
	return r.core.atomically((tx) => {
		buffer.runDueTimers(tx, m.now);
		if (graceOver) {
			m.helloDeadline = null;
			if (m.connected && m.helloGeneration !== m.generation) answers.applyHello(tx, new Set(), m.now, m.generation, "no_hello");
		}
		return pump(r, m, tx);
	});
}

/** storage.prune, which the flush runs once Postgres has confirmed the journal (no catch-up under way here). */
export function prune(r: Real, m: Model): void {
	r.core.atomically(() => pruneRows(r.core.sql, m.now));
}
