/**
 * Where an enqueue's time goes: reads the enqueue's Server-Timing (the
 * durable write, the agent's object, the whole handler) beside what the
 * caller saw, and prints p50 / p90 / p99 of each, straight to the runtime.
 *
 * At rest (the default): one agent, one call at a time, with the agent's
 * receipt too. Under load (`--concurrency` above 1): `--agents` agents that
 * answer at once, and that many calls in flight for `--seconds`; the gap
 * between the handler's total and the call is time spent waiting for the
 * runtime's thread.
 *
 *   npx tsx bench/tools/enqueue-timing.ts --n 300 [--db embedded]
 *   npx tsx bench/tools/enqueue-timing.ts --agents 100 --concurrency 64 --seconds 15
 */
import WebSocket from "ws";
import { signAgentToken } from "../../src/auth/agent-token.ts";
import { startSwitchyard } from "../lib/stack.ts";

const arg = (name: string, dflt: string) => {
	const i = process.argv.indexOf(`--${name}`);
	return i > 0 ? (process.argv[i + 1] ?? dflt) : dflt;
};
const n = Number(arg("n", "300"));
const db = arg("db", "real") === "embedded" ? "embedded" : "real";
const concurrency = Number(arg("concurrency", "1"));
const agentCount = concurrency > 1 ? Number(arg("agents", "100")) : 1;
const seconds = Number(arg("seconds", "15"));

type Series = Record<string, number[]>;

/** An agent that answers every command at once; `onCommand` sees each arrival. */
async function connectAgent(wsBase: string, secret: string, agentId: string, onCommand: (id: string) => void): Promise<WebSocket> {
	const token = (await signAgentToken(agentId, { current: secret }, 3600)).token;
	const ws = new WebSocket(`${wsBase}/v1/agents/${agentId}/connect`, { headers: { authorization: `Bearer ${token}` }, perMessageDeflate: false });
	ws.on("message", (data) => {
		const frame = JSON.parse(String(data)) as { type: string; id?: string };
		if (frame.type === "welcome") ws.send(JSON.stringify({ type: "hello", running: [] }));
		if (frame.type === "command" && frame.id) {
			onCommand(frame.id);
			ws.send(JSON.stringify({ type: "result", id: frame.id, status: "completed" }));
		}
	});
	await new Promise((r) => ws.once("open", r));
	return ws;
}

function recordTiming(series: Series, res: Response): void {
	for (const part of (res.headers.get("server-timing") ?? "").split(",")) {
		const [name, ...rest] = part.trim().split(";");
		const dur = rest.find((r) => r.startsWith("dur="));
		if (name && dur) series[name]?.push(Number(dur.slice(4)));
	}
}

const stack = await startSwitchyard(db);
const sockets: WebSocket[] = [];
try {
	const wsBase = await stack.runtimeWsBase();
	const base = wsBase.replace(/^ws/, "http");
	const received = new Map<string, number>();
	let notify: (() => void) | null = null;
	for (let a = 0; a < agentCount; a++) {
		sockets.push(
			await connectAgent(wsBase, stack.secret, `timing-agent-${a}`, (id) => {
				if (concurrency > 1) return;
				received.set(id, performance.now());
				notify?.();
			}),
		);
	}
	await new Promise((r) => setTimeout(r, 1500));
	const post = (agentId: string, i: number) =>
		fetch(`${base}/v1/agents/${agentId}/commands`, {
			method: "POST",
			headers: { authorization: `Bearer ${stack.apiKey}`, "content-type": "application/json" },
			body: JSON.stringify({ action: "timing", payload: { i } }),
		});
	const series: Series = { call: [], receipt: [], db: [], agent: [], total: [] };
	if (concurrency > 1) {
		let errors = 0;
		const end = performance.now() + seconds * 1000;
		await Promise.all(
			Array.from({ length: concurrency }, async (_, w) => {
				for (let i = 0; performance.now() < end; i++) {
					const t0 = performance.now();
					const res = await post(`timing-agent-${(w + i * concurrency) % agentCount}`, i);
					await res.text();
					if (res.status !== 201) {
						errors++;
						continue;
					}
					series.call?.push(performance.now() - t0);
					recordTiming(series, res);
				}
			}),
		);
		console.log(`${series.call?.length} enqueues (${errors} refused) in ${seconds} s: ${((series.call?.length ?? 0) / seconds).toFixed(1)}/s, ${concurrency} in flight to ${agentCount} agents`);
	} else {
		for (let i = 0; i < n + 20; i++) {
			const t0 = performance.now();
			const got = new Promise<void>((r) => (notify = r));
			const res = await post("timing-agent-0", i);
			const t1 = performance.now();
			const body = (await res.json()) as { id: string };
			if (!received.has(body.id)) await got;
			if (i < 20) continue; // warm-up
			series.call?.push(t1 - t0);
			series.receipt?.push((received.get(body.id) ?? t1) - t0);
			recordTiming(series, res);
			await new Promise((r) => setTimeout(r, 20));
		}
	}
	const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) * p)] ?? Number.NaN;
	const ms = (x: number) => `${x.toFixed(2).padStart(7)} ms`;
	for (const [name, xs] of Object.entries(series)) {
		if (xs.length === 0) continue;
		console.log(`${name.padEnd(8)} p50 ${ms(pct(xs, 0.5))}   p90 ${ms(pct(xs, 0.9))}   p99 ${ms(pct(xs, 0.99))}   (n ${xs.length})`);
	}
} finally {
	for (const ws of sockets) ws.close();
	await stack.stop();
}
