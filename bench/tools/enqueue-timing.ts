/**
 * Where one enqueue's time goes, at rest: one agent, one call at a time,
 * straight to the runtime. Reads the enqueue's Server-Timing (the durable
 * write, the agent's object, the whole handler) beside what the caller and
 * the agent saw, and prints p50 / p90 of each.
 *
 *   npx tsx bench/tools/enqueue-timing.ts --n 300 [--db embedded]
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

const stack = await startSwitchyard(db);
try {
	const wsBase = await stack.runtimeWsBase();
	const base = wsBase.replace(/^ws/, "http");
	const agentId = "timing-agent";
	const token = (await signAgentToken(agentId, { current: stack.secret }, 3600)).token;
	const ws = new WebSocket(`${wsBase}/v1/agents/${agentId}/connect`, { headers: { authorization: `Bearer ${token}` }, perMessageDeflate: false });
	const received = new Map<string, number>();
	let notify: (() => void) | null = null;
	ws.on("message", (data) => {
		const frame = JSON.parse(String(data)) as { type: string; id?: string };
		if (frame.type === "welcome") ws.send(JSON.stringify({ type: "hello", running: [] }));
		if (frame.type === "command" && frame.id) {
			received.set(frame.id, performance.now());
			ws.send(JSON.stringify({ type: "result", id: frame.id, status: "completed" }));
			notify?.();
		}
	});
	await new Promise((r) => ws.once("open", r));
	await new Promise((r) => setTimeout(r, 1500));
	const series: Record<string, number[]> = { call: [], receipt: [], db: [], agent: [], total: [] };
	for (let i = 0; i < n + 20; i++) {
		const t0 = performance.now();
		const got = new Promise<void>((r) => (notify = r));
		const res = await fetch(`${base}/v1/agents/${agentId}/commands`, {
			method: "POST",
			headers: { authorization: `Bearer ${stack.apiKey}`, "content-type": "application/json" },
			body: JSON.stringify({ action: "timing", payload: { i } }),
		});
		const t1 = performance.now();
		const body = (await res.json()) as { id: string };
		if (!received.has(body.id)) await got;
		if (i < 20) continue; // warm-up
		series.call?.push(t1 - t0);
		series.receipt?.push((received.get(body.id) ?? t1) - t0);
		for (const part of (res.headers.get("server-timing") ?? "").split(",")) {
			const [name, ...rest] = part.trim().split(";");
			const dur = rest.find((r) => r.startsWith("dur="));
			if (name && dur) series[name]?.push(Number(dur.slice(4)));
		}
		await new Promise((r) => setTimeout(r, 20));
	}
	const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) * p)] ?? Number.NaN;
	for (const [name, xs] of Object.entries(series)) {
		console.log(`${name.padEnd(8)} p50 ${pct(xs, 0.5).toFixed(2).padStart(7)} ms   p90 ${pct(xs, 0.9).toFixed(2).padStart(7)} ms   (n ${xs.length})`);
	}
	ws.close();
} finally {
	await stack.stop();
}
