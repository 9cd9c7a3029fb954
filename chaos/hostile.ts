/**
 * Hostile load beside the steady one, with a canary: one well-behaved agent
 * that gets a command every 250 ms and answers at once; its latency (enqueue
 * call to the command's arrival) is measured before and during the abuse.
 * The abuse, all at once: observers replaying an agent's log from 0, a
 * backlog far past the quota for an agent that then connects, an agent
 * flooding the same ack, /healthz and /metrics at a fixed high rate, and
 * batches at the size limit (and one past it).
 */
import { randomUUID } from "node:crypto";
import WebSocket from "ws";
import { makePayload, sentAt } from "../bench/lib/payload.ts";
import { spawnChild } from "../bench/lib/rpc.ts";
import type { Stack } from "../bench/lib/stack.ts";
import { sleep, wallNow } from "../bench/lib/stats.ts";
import { signAgentToken } from "../src/auth/agent-token.ts";
import { EVENT_LOG_MAX_BYTES } from "../src/agent/events.ts";
import { CloseCode, MAX_BATCH, MAX_OUTPUT_CHUNK, OUTPUT_CAP_CHARS } from "../src/protocol.ts";
import { batch } from "./http.ts";
import type { FaultEnv, FaultReport, Scenario } from "./scenarios.ts";

type Tally = Record<string, number>;
const count = (t: Tally, k: string, n = 1) => {
	t[k] = (t[k] ?? 0) + n;
};

/**
 * An agent in the harness that answers every command at once; `onCommand`
 * sees each. With `outputChunks`, it first writes that many output chunks
 * of the largest size the protocol takes.
 */
async function simpleAgent(stack: Stack, id: string, onCommand: (id: string, payload: unknown) => void, closes?: Tally, outputChunks = 0) {
	const token = (await signAgentToken(id, { current: stack.secret }, 3600)).token;
	let ws: WebSocket | undefined;
	let stopped = false;
	const open = () =>
		new Promise<void>((resolve) => {
			const s = new WebSocket(`${stack.wsBase}/v1/agents/${id}/connect`, { headers: { authorization: `Bearer ${token}` }, perMessageDeflate: false });
			ws = s;
			s.on("message", (data) => {
				const f = JSON.parse(data.toString()) as { type: string; id?: string; payload?: unknown };
				if (f.type === "welcome") {
					s.send(JSON.stringify({ type: "hello", concurrency: 100, running: [] }));
					resolve();
				} else if (f.type === "command" && f.id) {
					onCommand(f.id, f.payload);
					for (let seq = 0; seq < outputChunks; seq++) s.send(JSON.stringify({ type: "output", id: f.id, seq, data: CHUNK }));
					s.send(JSON.stringify({ type: "result", id: f.id, status: "completed", result: { ok: true } }));
				} else if (f.type === "cancel" && f.id) {
					s.send(JSON.stringify({ type: "result", id: f.id, status: "completed", result: { ok: true } }));
				}
			});
			s.on("error", () => resolve());
			s.on("close", (code) => {
				if (closes) count(closes, `close ${code}`);
				resolve();
				if (!stopped) setTimeout(() => void open(), 500);
			});
		});
	await open();
	return {
		close: () => {
			stopped = true;
			ws?.terminate();
		},
	};
}

const CHUNK = "x".repeat(MAX_OUTPUT_CHUNK);

/**
 * Fills an agent's event log past its byte bound with output (each command
 * writes its whole output cap in the largest chunks), so observers replay
 * from 0 over a full log; returns what the log held when they came.
 */
async function fillLog(stack: Stack, id: string, action: string) {
	const perCommand = Math.ceil(OUTPUT_CAP_CHARS / MAX_OUTPUT_CHUNK);
	const commands = Math.ceil((EVENT_LOG_MAX_BYTES * 1.1) / OUTPUT_CAP_CHARS);
	const agent = await simpleAgent(stack, id, () => {}, undefined, perCommand);
	try {
		const b = await batch(stack, action, Array(commands).fill(id));
		if (b.status !== 201) throw new Error(`filling the observed agent's log: batch answered ${b.status}`);
		const deadline = wallNow() + 120_000;
		const open = () =>
			stack.pg
				.query<{ n: string }>("select count(*) as n from agent_commands where action = $1 and status <> 'completed'", [action])
				.then((r) => Number(r.rows[0]?.n));
		while ((await open()) > 0 && wallNow() < deadline) await sleep(500);
		return { commands, outputBytes: commands * perCommand * MAX_OUTPUT_CHUNK, logBoundBytes: EVENT_LOG_MAX_BYTES };
	} finally {
		agent.close();
	}
}

/** One stream connection from `since`: how it ended, the last event seq it got, and whether it reached the live end. */
function observeOnce(stack: Stack, agentId: string, since: number, ms: number, replayed: { bytes: number }) {
	return new Promise<{ outcome: string; through: number; caughtUp: boolean; retryAfterMs?: number }>((resolve) => {
		const ws = new WebSocket(`${stack.wsBase}/v1/agents/${agentId}/stream?since=${since}`, {
			headers: { authorization: `Bearer ${stack.apiKey}` },
			perMessageDeflate: false,
		});
		let opened = false;
		let latest = Number.POSITIVE_INFINITY;
		let through = since;
		let settled = false;
		const done = (outcome: string, retryAfterMs?: number) => {
			if (settled) return;
			settled = true;
			clearTimeout(timer);
			ws.terminate();
			resolve({ outcome, through, caughtUp: through >= latest, retryAfterMs });
		};
		const timer = setTimeout(() => done(opened ? (through >= latest ? "caught up, open till the end" : "open till the end, still replaying") : "no answer"), ms);
		ws.on("open", () => {
			opened = true;
		});
		ws.on("message", (data) => {
			const text = data.toString();
			replayed.bytes += text.length;
			const f = JSON.parse(text) as { type: string; seq?: number; latestSeq?: number; through?: number };
			if (f.type === "observing") latest = f.latestSeq ?? 0;
			else if (f.type === "replay_paused") {
				// Resumed on the frame, not on the close after it (docs/protocol.md).
				through = Math.max(through, f.through ?? through);
				done("page (replay_paused), resumed");
			} else if (f.type === "gap") through = Math.max(through, f.through ?? through);
			else if (typeof f.seq === "number") through = Math.max(through, f.seq);
		});
		ws.on("unexpected-response", (_req, res) => done(`HTTP ${res.statusCode}`, Number(res.headers["retry-after"] ?? 5) * 1000));
		ws.on("close", (code) => done(code === CloseCode.REPLAY_PAUSED ? "page (close 4007 before its frame)" : `close ${code}`));
		ws.on("error", () => done("error"));
	});
}

/**
 * An observer that replays an agent's log from 0 as a client of
 * docs/protocol.md would: it resumes at once after each page (4007), waits
 * `retry-after` when refused for the observer caps (429), and stays on once
 * it reaches the live end.
 */
async function observe(stack: Stack, agentId: string, ms: number, got: Tally, replayed: { bytes: number; caughtUp: number }): Promise<void> {
	const end = wallNow() + ms;
	let since = 0;
	while (wallNow() < end - 100) {
		const r = await observeOnce(stack, agentId, since, end - wallNow(), replayed);
		count(got, r.outcome);
		since = r.through;
		if (r.caughtUp) {
			replayed.caughtUp++;
			return;
		}
		if (r.retryAfterMs !== undefined) await sleep(Math.min(r.retryAfterMs * (0.5 + Math.random()), Math.max(0, end - wallNow())));
		else if (!r.outcome.startsWith("page")) await sleep(500);
	}
}

async function ackFlood(stack: Stack, n: number, got: Tally): Promise<number> {
	const id = "chaos-hostile-acker";
	const token = (await signAgentToken(id, { current: stack.secret }, 3600)).token;
	const ws = new WebSocket(`${stack.wsBase}/v1/agents/${id}/connect`, { headers: { authorization: `Bearer ${token}` }, perMessageDeflate: false });
	let sent = 0;
	await new Promise<void>((resolve) => {
		const frame = JSON.stringify({ type: "ack", id: randomUUID() });
		ws.on("message", async (data) => {
			const f = JSON.parse(data.toString()) as { type: string; code?: string };
			if (f.type === "error") count(got, `error ${f.code ?? "?"}`);
			if (f.type !== "welcome") return;
			ws.send(JSON.stringify({ type: "hello", concurrency: 1, running: [] }));
			while (sent < n && ws.readyState === WebSocket.OPEN) {
				ws.send(frame);
				sent++;
				// Let the socket drain now and then, so the flood is the server's problem, not ours.
				if (sent % 500 === 0) await sleep(5);
			}
			await sleep(2_000);
			ws.close();
		});
		ws.on("unexpected-response", (_req, res) => {
			count(got, `HTTP ${res.statusCode}`);
			resolve();
		});
		ws.on("close", (code) => {
			count(got, `close ${code}`);
			resolve();
		});
		ws.on("error", () => resolve());
	});
	return sent;
}

/** Enqueues `n` commands for an agent nobody runs, in batches at the size limit; then connects it and counts what arrives. */
async function backlog(stack: Stack, n: number, drainMs: number, got: Tally) {
	const id = "chaos-hostile-backlog";
	const action = "chaos.hostile.backlog";
	let created = 0;
	for (let i = 0; i < n; i += MAX_BATCH) {
		const size = Math.min(MAX_BATCH, n - i);
		const b = await batch(stack, action, Array(size).fill(id));
		if (b.status === 201) {
			count(got, "201 item created", b.ids.length);
			count(got, "201 item refused (agent_backlog_full)", b.refused);
		} else count(got, `${b.status}`, size);
		created += b.ids.length;
	}
	const received = new Set<string>();
	const agent = await simpleAgent(stack, id, (cid) => received.add(cid));
	const deadline = wallNow() + drainMs;
	while (received.size < created && wallNow() < deadline) await sleep(500);
	await sleep(1_000);
	agent.close();
	const open = await stack.pg
		.query<{ n: string }>("select count(*) as n from agent_commands where action = $1 and status in ('pending','dispatched','acknowledged')", [action])
		.then((r) => Number(r.rows[0]?.n));
	return { created, received: received.size, openAfterDrain: open };
}

const p = (xs: number[], q: number) => {
	const s = [...xs].sort((a, b) => a - b);
	return s.length ? Math.round(s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)] ?? 0) : null;
};

export const hostile: Scenario = {
	key: "hostile",
	title: "hostile load: observers replaying, a backlog past the quota, an ack flood, /healthz+/metrics flood, batches at the limit; a canary's latency",
	// 20 s more for filling the observed log first.
	tune: (cfg) => ({ loadMs: cfg.faultAtMs + 2 * cfg.hostile.phaseMs + 25_000 }),
	async fault(env: FaultEnv): Promise<FaultReport> {
		const { stack, cfg, ids, action } = env;
		const h = cfg.hostile;
		// CHAOS_HOSTILE=observers,backlog,acks,http,batches runs only those, to find which one a canary feels.
		const only = process.env.CHAOS_HOSTILE?.split(",");
		const on = (part: string) => !only || only.includes(part);
		const replayed = { bytes: 0, caughtUp: 0 };
		// Before the abuse: a log full to its byte bound for the observers to replay.
		const target = "chaos-hostile-observed";
		const observed = on("observers") ? await fillLog(stack, target, "chaos.hostile.observed") : undefined;
		const canaryLatency: { phase: "before" | "during"; ms: number }[] = [];
		let phase: "before" | "during" = "before";
		const canaryAction = "chaos.hostile.canary";
		const canary = await simpleAgent(stack, "chaos-hostile-canary", (_id, payload) => {
			const t = sentAt(payload);
			if (t !== undefined) canaryLatency.push({ phase, ms: wallNow() - t });
		});
		let canaryOn = true;
		const canaryLoop = (async () => {
			let seq = 0;
			while (canaryOn) {
				void fetch(`${stack.base}/v1/agents/chaos-hostile-canary/commands`, {
					method: "POST",
					headers: { "content-type": "application/json", authorization: `Bearer ${stack.apiKey}` },
					body: JSON.stringify({ action: canaryAction, payload: makePayload(seq++) }),
				})
					.then((r) => r.arrayBuffer())
					.catch(() => {});
				await sleep(250);
			}
		})();
		await sleep(h.phaseMs);
		phase = "during";
		const got = { observers: {} as Tally, backlog: {} as Tally, ackFlood: {} as Tally, http: {} as Tally, batches: {} as Tally };
		const flooder = spawnChild("../chaos/flood.ts");
		const accepted: string[] = [];
		const none = { tried: 0, skipped: 0, got: {} as Tally, achievedPerSecond: 0 };
		// The flood goes to the runtime itself, as production has no wrangler dev proxy to saturate first.
		const runtimeBase = on("http") ? (await stack.runtimeWsBase()).replace(/^ws/, "http") : "";
		try {
			const [, backlogOut, acks, httpOut] = await Promise.all([
				Promise.all(Array.from({ length: on("observers") ? h.observers : 0 }, () => observe(stack, target, h.phaseMs, got.observers, replayed))),
				on("backlog") ? backlog(stack, h.backlog, h.phaseMs, got.backlog) : undefined,
				on("acks") ? ackFlood(stack, h.ackFlood, got.ackFlood) : 0,
				on("http")
					? flooder.call<{ tried: number; skipped: number; got: Tally; achievedPerSecond: number }>("flood", {
							base: runtimeBase,
							apiKey: stack.apiKey,
							rate: h.httpRate,
							durationMs: h.phaseMs,
							maxInFlight: 512,
						})
					: none,
				(async () => {
					if (!on("batches")) return;
					for (let i = 0; i < h.batches; i++) {
						const agents = Array.from({ length: MAX_BATCH }, (_, k) => ids[k % ids.length] ?? "");
						const b = await batch(stack, action, agents);
						accepted.push(...b.ids);
						count(got.batches, `${MAX_BATCH} items: ${b.status}`);
					}
					const over = await batch(stack, action, Array.from({ length: MAX_BATCH + 1 }, (_, k) => ids[k % ids.length] ?? ""));
					count(got.batches, `${MAX_BATCH + 1} items: ${over.status}`);
					accepted.push(...over.ids);
				})(),
			]);
			for (const [k, n] of Object.entries(httpOut.got)) count(got.http, k, n);
			if (httpOut.skipped) count(got.http, "not sent on time (client saturated)", httpOut.skipped);
			canaryOn = false;
			await canaryLoop;
			// The canary stays up until its last commands are done (they can take seconds to arrive under the flood).
			const canaryCounts = () =>
				stack.pg
					.query<{ n: string; total: string }>(
						"select count(*) filter (where status <> 'completed') as n, count(*) as total from agent_commands where action = $1",
						[canaryAction],
					)
					.then((r) => ({ notCompleted: Number(r.rows[0]?.n), total: Number(r.rows[0]?.total) }));
			const canaryDeadline = wallNow() + cfg.recoveryTimeoutMs;
			let canaryOpen = await canaryCounts();
			while (canaryOpen.notCompleted > 0 && wallNow() < canaryDeadline) {
				await sleep(1_000);
				canaryOpen = await canaryCounts();
			}
			canary.close();
			const healedAt = wallNow();
			const lat = (ph: "before" | "during") => {
				const xs = canaryLatency.filter((x) => x.phase === ph).map((x) => x.ms);
				return { n: xs.length, p50: p(xs, 0.5), p99: p(xs, 0.99) };
			};
			return {
				faults: {},
				recoveries: [await env.recovered(healedAt)],
				accepted,
				hostile: {
					[`observers replaying from 0 (${h.observers})`]: { tried: h.observers, got: got.observers },
					[`backlog for one agent (${h.backlog}), then connect`]: { tried: h.backlog, got: got.backlog },
					[`repeated ack (${h.ackFlood})`]: { tried: acks, got: got.ackFlood },
					[`/healthz+/metrics at ${h.httpRate}/s (achieved ${httpOut.achievedPerSecond}/s)`]: { tried: httpOut.tried, got: got.http },
					[`batches of ${MAX_BATCH}, and one of ${MAX_BATCH + 1}`]: { tried: h.batches + 1, got: got.batches },
				},
				canary: { before: lat("before"), during: lat("during"), commands: canaryOpen },
				backlog: backlogOut,
				observedLog: observed && { ...observed, replayedBytes: replayed.bytes, observersCaughtUp: replayed.caughtUp },
				phaseSeconds: h.phaseMs / 1000,
			};
		} finally {
			canaryOn = false;
			canary.close();
			flooder.stop();
		}
	},
};
