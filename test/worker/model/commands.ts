/**
 * The steps fast-check strings together: what the worker, the agent and the
 * clock may do to one agent's object. Each runs the real rules, then
 * `settle` checks the object against the model.
 */
import fc from "fast-check";
import type { BufferInput } from "../../../src/agent/buffer";
import { type AgentStatus, type Model, OPEN, STOP_MS, type StepEvent, stopOwed } from "./model";
import * as real from "./real";
import { settle, type World } from "./step";

type Step = fc.Command<Model, World>;

function step(name: string, check: (m: Readonly<Model>) => boolean, run: (m: Model, w: World) => void): Step {
	return { check, run, toString: () => name };
}

interface Shape {
	priority: number;
	ttl: number | null;
	timeout: number | null;
	maxAttempts: number;
	/** How a catch-up finds a row the object never saw (one whose forward failed, or a reset object's): as Postgres has it. */
	as: "pending" | "dispatched" | "acknowledged";
}

function input(m: Model, s: Shape): BufferInput {
	const seq = m.nextSeq++;
	const sent = s.as !== "pending";
	return {
		id: `c${seq}`,
		seq,
		action: "act",
		payload: { seq },
		sessionId: null,
		priority: s.priority,
		status: s.as,
		attempts: sent ? 1 : 0,
		maxAttempts: s.maxAttempts,
		ackTimeoutSeconds: 10,
		timeoutSeconds: s.timeout,
		expiresAt: s.ttl === null ? null : m.now + s.ttl * 1000,
		firstDispatchedAt: sent ? m.now - 1_000 : null,
		cancelRequested: false,
	};
}

/**
 * A `dispatched` row comes in as `pending` (no socket of this object awaits
 * its ack). Found after this connection's hello, a row is judged against
 * that hello's list, like every open one (catch-up.ts).
 */
function add(m: Model, w: World, s: Shape, catchUp: boolean): void {
	const c = input(m, s);
	const status = s.as === "acknowledged" ? "acknowledged" : "pending";
	m.commands.push({ id: c.id, input: c, status, sent: c.attempts > 0, cancelRequested: false, ackGeneration: null, stopUntil: null, agentWord: null, endedAt: null });
	const judged = catchUp && m.helloGeneration === m.generation;
	const ev: StepEvent = judged ? { kind: "hello", running: new Set(m.helloRunning) } : { kind: "none" };
	settle(m, w, ev, real.addCommands(w.r, m, [c], catchUp));
}

const shape = fc.record({
	priority: fc.constantFrom(1, 5, 9),
	ttl: fc.constantFrom(null, 5, 60),
	timeout: fc.constantFrom(null, 20, 120),
	maxAttempts: fc.integer({ min: 1, max: 3 }),
	as: fc.constantFrom<Shape["as"]>("pending", "dispatched", "acknowledged"),
});

const roomForMore = (m: Readonly<Model>) => m.commands.length < 10;

const enqueue = shape.map((s) => step(`enqueue(${JSON.stringify({ ...s, as: "pending" })})`, roomForMore, (m, w) => add(m, w, { ...s, as: "pending" }, false)));
const catchUpNew = shape.map((s) => step(`catchUpNew(${JSON.stringify(s)})`, roomForMore, (m, w) => add(m, w, s, true)));

/** Postgres hands over a row the object already has: nothing may change. */
const catchUpKnown = fc.nat().map((pick) =>
	step(`catchUpKnown(${pick})`, (m) => m.commands.length > 0, (m, w) => {
		const c = m.commands[pick % m.commands.length];
		if (c) settle(m, w, { kind: "none" }, real.addCommands(w.r, m, [{ ...c.input, status: "acknowledged", attempts: 1 }], true));
	}),
);

const connect = fc.boolean().map((restart) =>
	step(`connect(${restart ? "agent restarted" : ""})`, () => true, (m, w) => {
		// A restarted agent lost what it ran; otherwise it still runs it.
		if (restart) m.running = [];
		settle(m, w, { kind: "requeue" }, real.connect(w.r, m));
	}),
);

const close = fc.constant(
	step("close", (m) => m.connected, (m, w) => {
		real.close(w.r, m);
		settle(m, w, { kind: "requeue" }, []);
	}),
);

const hello = fc.integer({ min: 1, max: 3 }).map((concurrency) =>
	step(`hello(${concurrency})`, (m) => m.connected, (m, w) => {
		const running = [...m.running];
		settle(m, w, { kind: "hello", running: new Set(running) }, real.hello(w.r, m, concurrency, running));
	}),
);

/** A command the agent runs, or (stray) any command at all. */
function target(m: Readonly<Model>, pick: number, stray: boolean): string | undefined {
	const pool = stray ? m.commands.map((c) => c.id) : m.running;
	return pool.length === 0 ? undefined : pool[pick % pool.length];
}

const ack = fc.nat().map((pick) =>
	step(`ack(${pick})`, (m) => m.connected && m.running.length > 0, (m, w) => {
		const id = target(m, pick, false);
		if (!id) return;
		real.ack(w.r, m, id);
		settle(m, w, { kind: "ack", id }, []);
	}),
);

const result = fc.tuple(fc.nat(), fc.constantFrom<AgentStatus>("completed", "failed", "cancelled"), fc.boolean()).map(([pick, status, stray]) =>
	step(`result(${pick}, ${status}${stray ? ", stray" : ""})`, (m) => m.connected && (stray ? m.commands.length : m.running.length) > 0, (m, w) => {
		const id = target(m, pick, stray);
		if (!id) return;
		const value = { answer: id, n: m.nextSeq++ };
		m.running = m.running.filter((x) => x !== id);
		const c = m.commands.find((x) => x.id === id);
		// The object forgot it (pruned): the answer is refused and brings nothing back.
		if (!c) return settle(m, w, { kind: "none" }, real.result(w.r, m, id, status, value));
		// The agent's word is kept for a command it may run, and replaces a system end it answers, once.
		const stopWasOwed = stopOwed(m, c);
		const kept = OPEN.has(c.status) ? c.sent : stopWasOwed && status !== "cancelled";
		if (kept) c.agentWord = { status, result: value };
		if (kept && !OPEN.has(c.status)) c.endedAt = m.now;
		const sent = real.result(w.r, m, id, status, value);
		c.stopUntil = null;
		settle(m, w, { kind: "result", id, status, stopWasOwed }, sent);
	}),
);

const output = fc.tuple(fc.nat(), fc.nat({ max: 3 })).map(([pick, seq]) =>
	step(`output(${pick}, ${seq})`, (m) => m.connected && m.running.length > 0, (m, w) => {
		const id = target(m, pick, false);
		if (!id) return;
		real.output(w.r, m, id, seq);
		settle(m, w, { kind: "none" }, []);
	}),
);

const cancel = fc.nat().map((pick) =>
	step(`cancel(${pick})`, (m) => m.commands.length > 0, (m, w) => {
		const c = m.commands[pick % m.commands.length];
		if (!c) return;
		if (OPEN.has(c.status)) c.cancelRequested = true;
		settle(m, w, { kind: "cancel", id: c.id }, real.cancel(w.r, m, c.id));
	}),
);

const advance = fc.constantFrom(1_000, 9_000, 11_000, 31_000, 130_000, 610_000).map((ms) =>
	step(`advance(${ms / 1000} s)`, () => true, (m, w) => {
		m.now += ms;
		const noHello = m.helloDeadline !== null && m.helloDeadline <= m.now && m.connected && m.helloGeneration !== m.generation;
		settle(m, w, { kind: "advance", noHello }, real.alarm(w.r, m));
	}),
);

/** Weighted by repetition: the agent's answers and the clock are where the rules meet. */
/** What the flush does once Postgres has everything: finished rows and stops go 10 minutes after. */
const prune = fc.constant(
	step("prune", () => true, (m, w) => {
		real.prune(w.r, m);
		m.commands = m.commands.filter((c) => c.endedAt === null || c.endedAt >= m.now - STOP_MS);
		settle(m, w, { kind: "none" }, []);
	}),
);

export const steps = [enqueue, enqueue, catchUpNew, catchUpKnown, connect, close, hello, hello, ack, ack, result, result, result, output, cancel, advance, advance, prune];
