/**
 * A fleet of agents in one process: raw `ws` clients speaking Switchyard's
 * wire protocol (docs/protocol.md). The floor worker and the WebSocket peers
 * speak the same frames, so this one fleet drives all of them.
 *
 * Each agent answers every `command` as the SDK answers a command its
 * handler finishes at once (read from the SDK itself, lib/sdk-answer.ts:
 * the `result: completed` alone, no `ack`), and records the time from the
 * enqueuer's send (`payload.t`) to receipt.
 */
import WebSocket from "ws";
import { signAgentToken } from "../../src/auth/agent-token.ts";
import { HEARTBEAT_INTERVAL_SECONDS, PING_TEXT } from "../../src/protocol.ts";
import { Backoff } from "../../src/sdk/backoff.ts";
import { sentAt } from "../lib/payload.ts";
import { type Answer, answerFor, sdkAnswer } from "../lib/sdk-answer.ts";
import { serve } from "../lib/rpc.ts";
import { sleep, wallNow } from "../lib/stats.ts";

interface ConnectArgs {
	/** ws://host:port */
	wsBase: string;
	ids: string[];
	/** AGENT_TOKEN_SECRET; tokens are signed here instead of one HTTP call per agent. */
	secret?: string;
	deflate: boolean;
	/** Sockets opening at once. */
	parallel: number;
	/** Reconnect with the SDK's backoff and full jitter after any close. */
	reconnect: boolean;
	/** `hello.concurrency`: high, so the window never limits a throughput run. */
	concurrency: number;
	connectTimeoutMs?: number;
	/** Stop opening new sockets after this long; the rest count as not connected. */
	budgetMs?: number;
	/**
	 * Answer each command after a random wait up to this long instead of at
	 * once, half of them acked first: the chaos suite's drops then fall
	 * before and after acks, between receipt and result.
	 */
	answerDelayMs?: number;
	/**
	 * Get each connect's token from the API (POST /v1/agents/{id}/token), as
	 * an agent re-provisioned by its operator would, instead of signing one:
	 * the chaos suite revokes tokens under load, and a signed token would
	 * carry the version from before the revocation.
	 */
	mint?: { base: string; apiKey: string; keep?: boolean };
}

/**
 * With `mint.keep`, an agent keeps its token across reconnects, as the SDK
 * does, until a connect is refused with 401 (a rotated secret, a revocation):
 * then it gets a new one. Counted for the chaos suite.
 */
const tokenCounts = { minted: 0, refused401: 0 };

/** A token from the API: the version the agent's object wants now. */
async function mintedToken(agentId: string, mint: { base: string; apiKey: string }): Promise<string> {
	const res = await fetch(`${mint.base}/v1/agents/${encodeURIComponent(agentId)}/token`, {
		method: "POST",
		headers: { authorization: `Bearer ${mint.apiKey}`, "content-type": "application/json" },
		body: "{}",
	});
	if (res.status !== 201) throw new Error(`mint answered ${res.status}`);
	return ((await res.json()) as { token: string }).token;
}

interface Agent {
	id: string;
	/** The token it connects with (`mint.keep`), until refused. */
	token?: string;
	ws?: WebSocket;
	welcomed: boolean;
	backoff: Backoff;
	/** Wall time of the first command received since the last `mark`. */
	firstCommandAt?: number;
	welcomedAt?: number;
	/** Commands answered after a wait (`answerDelayMs`) whose answer is not sent yet: announced in `hello.running`. */
	running: Set<string>;
	/** Results finished while the socket was down, sent after the next `hello`, as the SDK does. */
	unsent: Set<string>;
}

const agents = new Map<string, Agent>();
/** The SDK's answer to a command, learned once per fleet process. */
const answer = sdkAnswer();
let latencies: number[] = [];
let received = 0;
let duplicates = 0;
const seen = new Set<string>();
/** Commands whose result was sent on an open socket: what the agents reported (the chaos suite's check). */
const reported = new Set<string>();
let stopping = false;
let errors: string[] = [];
/**
 * Where reconnects go once the harness says the server moved: a restarted
 * workerd runtime listens on a new port (see `retarget`).
 */
let movedTo: string | undefined;
/** Failed reconnect attempts by reason (agent ids left out), for a storm's diagnosis. */
const retryFailures = new Map<string, number>();

// Pings as the SDK does: an agent that stays silent is closed with 4002 after
// a few missed intervals, which would add reconnects of the bench's making.
setInterval(() => {
	for (const agent of agents.values()) {
		if (agent.welcomed && agent.ws?.readyState === WebSocket.OPEN) agent.ws.send(PING_TEXT);
	}
}, HEARTBEAT_INTERVAL_SECONDS * 1000).unref();

function note(err: string): void {
	if (errors.length < 20) errors.push(err);
}

/**
 * Protocol points where the chaos suite's fleets cut their own socket (no
 * close frame), each with a probability per occurrence: right after a
 * `command` arrives, instead of sending an `ack`, right after a `result`.
 */
export interface Cuts {
	afterCommand: number;
	beforeAck: number;
	afterResult: number;
}
let cuts: Cuts = { afterCommand: 0, beforeAck: 0, afterResult: 0 };
const cutCount: Record<keyof Cuts, number> = { afterCommand: 0, beforeAck: 0, afterResult: 0 };
/** Output each command writes (`withOutput`): two chunks, sent before its result and again with a resent one. */
let withOutput = false;
/** Executions per command: the agent's dedup (kept for the process's life, as on disk) should hold it at one. */
const executions = new Map<string, number>();
/** Commands the server sent a `cancel` (a stop) for. */
const stops = new Set<string>();

function cut(agent: Agent, point: keyof Cuts): boolean {
	if (cuts[point] === 0 || Math.random() >= cuts[point] || agent.ws?.readyState !== WebSocket.OPEN) return false;
	cutCount[point]++;
	agent.ws.terminate();
	return true;
}

export function outputFor(id: string): [string, string] {
	return [`out:${id}\n`, "end\n"];
}

function sendResult(agent: Agent, frames: Answer, id: string): void {
	if (withOutput) outputFor(id).forEach((data, seq) => agent.ws?.send(JSON.stringify({ type: "output", id, seq, data })));
	for (const f of answerFor(frames, id)) agent.ws?.send(f);
	reported.add(id);
}

/**
 * Sends the SDK's answer to command `id`, at once or, with `delayMs`, after a
 * random wait: half of those as the SDK answers a handler still running at
 * the end of its turn, the ack at once and the result later. A result that
 * finds the socket closed is kept and sent after the next `hello`.
 */
function answerCommand(agent: Agent, id: string, frames: Answer, delayMs: number | undefined): void {
	executions.set(id, (executions.get(id) ?? 0) + 1);
	const reply = () => {
		agent.running.delete(id);
		done.add(id);
		if (!agent.welcomed || agent.ws?.readyState !== WebSocket.OPEN) return void agent.unsent.add(id);
		sendResult(agent, frames, id);
		cut(agent, "afterResult");
	};
	if (!delayMs) return reply();
	agent.running.add(id);
	if (Math.random() < 0.5 && !cut(agent, "beforeAck")) agent.ws?.send(JSON.stringify({ type: "ack", id }));
	setTimeout(reply, Math.random() * delayMs);
}

/** Commands whose handler finished: a redelivery gets the result again, not a second run (the SDK's rule). */
const done = new Set<string>();

/** After `hello`: the results the agent could not send before, as the SDK sends them. */
function sendUnsent(agent: Agent, frames: Answer): void {
	for (const id of agent.unsent) sendResult(agent, frames, id);
	agent.unsent.clear();
}

/**
 * A `cancel` (the server ended a command this agent may hold): answered as the
 * SDK answers it, with the result if it has one, `cancelled` if it never had
 * the command; a command still running answers when it finishes.
 */
function answerCancel(agent: Agent, id: string, frames: Answer): void {
	stops.add(id);
	if (agent.running.has(id)) return;
	if (!seen.has(id)) return void agent.ws?.send(JSON.stringify({ type: "result", id, status: "cancelled" }));
	sendResult(agent, frames, id);
}

async function open(agent: Agent, a: ConnectArgs): Promise<void> {
	const frames = await answer;
	const headers: Record<string, string> = {};
	if (a.mint) {
		if (!a.mint.keep || !agent.token) {
			agent.token = await mintedToken(agent.id, a.mint);
			tokenCounts.minted++;
		}
		headers.authorization = `Bearer ${agent.token}`;
	}
	else if (a.secret) headers.authorization = `Bearer ${(await signAgentToken(agent.id, { current: a.secret }, 24 * 3600)).token}`;
	const ws = new WebSocket(`${movedTo ?? a.wsBase}/v1/agents/${encodeURIComponent(agent.id)}/connect`, {
		headers,
		perMessageDeflate: a.deflate,
	});
	agent.ws = ws;
	agent.welcomed = false;
	return new Promise<void>((resolve, reject) => {
		const timer = setTimeout(() => {
			reject(new Error(`${agent.id}: no welcome within ${a.connectTimeoutMs ?? 60_000} ms`));
			ws.terminate();
		}, a.connectTimeoutMs ?? 60_000);
		ws.on("message", (data) => {
			const frame = JSON.parse(data.toString()) as { type: string; id?: string; payload?: unknown };
			if (frame.type === "welcome") {
				agent.welcomed = true;
				agent.welcomedAt = wallNow();
				agent.backoff.reset();
				ws.send(JSON.stringify({ type: "hello", concurrency: a.concurrency, running: [...agent.running] }));
				sendUnsent(agent, frames);
				clearTimeout(timer);
				resolve();
			} else if (frame.type === "command" && frame.id) {
				const now = wallNow();
				const t = sentAt(frame.payload);
				if (t !== undefined) latencies.push(now - t);
				received++;
				if (seen.has(frame.id)) duplicates++;
				seen.add(frame.id);
				agent.firstCommandAt ??= now;
				if (cut(agent, "afterCommand")) {
					// It arrived: the agent runs it and keeps the result for after its next hello.
					if (!done.has(frame.id) && !agent.running.has(frame.id)) answerCommand(agent, frame.id, frames, a.answerDelayMs);
				} else if (done.has(frame.id)) sendResult(agent, frames, frame.id);
				else if (agent.running.has(frame.id)) ws.send(JSON.stringify({ type: "ack", id: frame.id }));
				else answerCommand(agent, frame.id, frames, a.answerDelayMs);
			} else if (frame.type === "cancel" && frame.id) {
				answerCancel(agent, frame.id, frames);
			} else if (frame.type === "error") {
				note(`${agent.id}: error frame ${data.toString().slice(0, 200)}`);
			}
		});
		ws.on("error", (err) => {
			clearTimeout(timer);
			if (/Unexpected server response: 401\b/.test(err.message)) {
				tokenCounts.refused401++;
				agent.token = undefined;
			}
			reject(err);
		});
		ws.on("close", (code) => {
			clearTimeout(timer);
			if (!agent.welcomed) reject(new Error(`${agent.id}: closed ${code} before welcome`));
			agent.welcomed = false;
			if (a.reconnect && !stopping) setTimeout(() => retry(agent, a), agent.backoff.next());
		});
	});
}

/** One reconnect attempt; a failure schedules the next through the close handler. */
function retry(agent: Agent, a: ConnectArgs): void {
	if (stopping) return;
	open(agent, a).catch((err: unknown) => {
		// The close handler already scheduled the next attempt.
		const reason = (err instanceof Error ? err.message : String(err)).replace(agent.id, "<agent>");
		retryFailures.set(reason, (retryFailures.get(reason) ?? 0) + 1);
	});
}

const methods = {
	async connect(a: ConnectArgs) {
		stopping = false;
		const started = wallNow();
		let failed = 0;
		const queue = a.ids.map((id) => {
			const agent: Agent = { id, welcomed: false, backoff: new Backoff(), running: new Set(), unsent: new Set() };
			agents.set(id, agent);
			return agent;
		});
		const worker = async () => {
			for (let agent = queue.shift(); agent; agent = queue.shift()) {
				if (a.budgetMs !== undefined && wallNow() - started > a.budgetMs) {
					failed++;
					continue;
				}
				try {
					await open(agent, { ...a, reconnect: false });
					// From now on, like the SDK: any close is followed by reconnects.
					if (a.reconnect) {
						agent.ws?.on("close", () => {
							if (!stopping) setTimeout(() => retry(agent, a), agent.backoff.next());
						});
					}
				} catch (err) {
					failed++;
					note(err instanceof Error ? err.message : String(err));
				}
			}
		};
		await Promise.all(Array.from({ length: a.parallel }, worker));
		const live = a.ids.filter((id) => agents.get(id)?.welcomed).length;
		return { connected: a.ids.length - failed, live, failed, ms: wallNow() - started, errors: errors.splice(0) };
	},
	/** From now on every (re)connect goes to `wsBase`. */
	async retarget(a: { wsBase: string }) {
		movedTo = a.wsBase;
		return null;
	},
	/** Latency samples since the last call, and counters. */
	async drain() {
		const out = { latencies, received, duplicates, connected: [...agents.values()].filter((x) => x.welcomed).length, errors: errors.splice(0) };
		latencies = [];
		return out;
	},
	async waitReceived(a: { n: number; timeoutMs: number }) {
		const deadline = Date.now() + a.timeoutMs;
		while (received < a.n && Date.now() < deadline) await sleep(50);
		return { received };
	},
	/** Forget who got a command, so `waitEveryAgent` times the next round. */
	async mark() {
		for (const agent of agents.values()) agent.firstCommandAt = undefined;
		return null;
	},
	/** Waits until every agent is connected again and got a command since `mark`; returns the last times. */
	async waitEveryAgent(a: { timeoutMs: number }) {
		const deadline = Date.now() + a.timeoutMs;
		const done = () => [...agents.values()].every((x) => x.welcomed && x.firstCommandAt !== undefined);
		while (!done() && Date.now() < deadline) await sleep(100);
		const all = [...agents.values()];
		return {
			complete: done(),
			agents: all.length,
			reconnected: all.filter((x) => x.welcomed).length,
			gotCommand: all.filter((x) => x.firstCommandAt !== undefined).length,
			lastWelcomeAt: Math.max(...all.map((x) => x.welcomedAt ?? 0)),
			lastCommandAt: Math.max(...all.map((x) => x.firstCommandAt ?? 0)),
			firstCommandTimes: all.map((x) => x.firstCommandAt ?? Number.NaN),
			retryFailures: Object.fromEntries(retryFailures),
		};
	},
	/** Which commands the agents received and which they answered (the chaos suite's ground truth). */
	async ran() {
		const twice = [...executions.entries()].filter(([, n]) => n > 1).map(([id]) => id);
		return { received: [...seen], reported: [...reported], duplicates, executedTwice: twice, stops: [...stops], cuts: { ...cutCount } };
	},
	/** Sets the cut points (chaos `cuts`), and whether commands write output. */
	async configure(a: { cuts?: Cuts; withOutput?: boolean }) {
		if (a.cuts) cuts = a.cuts;
		if (a.withOutput !== undefined) withOutput = a.withOutput;
		return null;
	},
	/** Agents with a welcomed socket, of all. */
	async status() {
		const all = [...agents.values()];
		return {
			agents: all.length,
			connected: all.filter((x) => x.welcomed).length,
			running: all.reduce((s, x) => s + x.running.size + x.unsent.size, 0),
			tokens: { ...tokenCounts },
		};
	},
	/** Drops a random `fraction` of the open sockets without a close frame; they reconnect if told to. */
	async flap(a: { fraction: number }) {
		let dropped = 0;
		for (const agent of agents.values()) {
			if (!agent.welcomed || Math.random() >= a.fraction) continue;
			agent.ws?.terminate();
			dropped++;
		}
		return { dropped };
	},
	async close() {
		stopping = true;
		movedTo = undefined;
		for (const agent of agents.values()) agent.ws?.terminate();
		agents.clear();
		seen.clear();
		reported.clear();
		done.clear();
		executions.clear();
		stops.clear();
		cuts = { afterCommand: 0, beforeAck: 0, afterResult: 0 };
		for (const k of Object.keys(cutCount) as (keyof Cuts)[]) cutCount[k] = 0;
		withOutput = false;
		received = 0;
		duplicates = 0;
		latencies = [];
		return null;
	},
	stream,
};

/**
 * Figure 5: one agent streams `chunks` output frames at `rate` per second
 * for one running command; an observer on the agent's stream receives them.
 * Each chunk carries its send time.
 */
async function stream(a: { wsBase: string; base: string; apiKey: string; secret: string; agentId: string; chunks: number; rate: number }) {
	const latency: number[] = [];
	const observer = new WebSocket(`${a.wsBase}/v1/agents/${a.agentId}/stream`, {
		headers: { authorization: `Bearer ${a.apiKey}` },
		perMessageDeflate: false,
	});
	await new Promise<void>((resolve, reject) => {
		observer.on("message", (data) => {
			const frame = JSON.parse(data.toString()) as { type: string; data?: string };
			if (frame.type === "observing") resolve();
			else if (frame.type === "output" && frame.data) latency.push(wallNow() - (JSON.parse(frame.data) as { t: number }).t);
		});
		observer.on("error", reject);
	});
	const token = (await signAgentToken(a.agentId, { current: a.secret }, 3600)).token;
	const ws = new WebSocket(`${a.wsBase}/v1/agents/${a.agentId}/connect`, {
		headers: { authorization: `Bearer ${token}` },
		perMessageDeflate: false,
	});
	const done = new Promise<void>((resolve, reject) => {
		ws.on("error", reject);
		ws.on("message", async (data) => {
			const frame = JSON.parse(data.toString()) as { type: string; id?: string };
			if (frame.type === "welcome") ws.send(JSON.stringify({ type: "hello", concurrency: 1, running: [] }));
			if (frame.type !== "command" || !frame.id) return;
			ws.send(JSON.stringify({ type: "ack", id: frame.id }));
			const start = wallNow();
			for (let seq = 0; seq < a.chunks; seq++) {
				const wait = start + (seq / a.rate) * 1000 - wallNow();
				if (wait > 1) await sleep(wait);
				const data = JSON.stringify({ t: wallNow(), line: "log line from the benchmark agent ".padEnd(160, ".") });
				ws.send(JSON.stringify({ type: "output", id: frame.id, seq, data }));
			}
			ws.send(JSON.stringify({ type: "result", id: frame.id, status: "completed", result: { ok: true } }));
			resolve();
		});
	});
	await new Promise<void>((resolve) => ws.once("open", () => resolve()));
	const res = await fetch(`${a.base}/v1/agents/${a.agentId}/commands`, {
		method: "POST",
		headers: { "content-type": "application/json", authorization: `Bearer ${a.apiKey}` },
		body: JSON.stringify({ action: "bench.f5", payload: { stream: true } }),
	});
	if (res.status !== 201) throw new Error(`enqueue for streaming: HTTP ${res.status} ${await res.text()}`);
	await done;
	const deadline = Date.now() + 30_000;
	while (latency.length < a.chunks && Date.now() < deadline) await sleep(50);
	ws.close();
	observer.close();
	return { latency, sent: a.chunks };
}

serve(methods);
