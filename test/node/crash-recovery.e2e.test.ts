/**
 * A process dies: the real `wrangler dev` (with persisted Durable Object
 * state) is killed with SIGKILL while 200 commands are in flight, then
 * restarted. Every accepted command must complete, and the agent must have
 * executed each exactly once (it deduplicates redeliveries by command id, as
 * the protocol tells agents to).
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect, it } from "vitest";
import WebSocket from "ws";
import { withNodePool } from "../../src/dev/migrate.ts";
import { loopbackOnly, type Relay, startRelay } from "../../src/dev/relay.ts";
import { startTestDatabase, type TestDatabase } from "../helpers/node/test-database.ts";
import { freePort, killGroup, startWranglerDev, waitHealthy, waitUntil } from "../helpers/node/processes.ts";

const COMMANDS = 200;
const API_KEY = `sk_test_${randomBytes(12).toString("hex")}`;
const TOKEN_SECRET = randomBytes(32).toString("hex");
const stateDir = mkdtempSync(join(tmpdir(), "switchyard-crash-"));
let db: TestDatabase | undefined;
let relay: Relay | undefined;
let stopAgent = () => {};
const wranglers: ReturnType<typeof startWranglerDev>[] = [];

afterAll(async () => {
	stopAgent();
	for (const w of wranglers) killGroup(w.child, "SIGKILL");
	await relay?.close();
	await db?.stop();
	rmSync(stateDir, { recursive: true, force: true });
});

/** A protocol-only agent that reconnects and never runs a command id twice. */
function runAgent(base: string, agentId: string, token: string) {
	const executions = new Map<string, number>();
	const results = new Map<string, { n: number }>();
	const running = new Set<string>();
	let deliveries = 0;
	let stopped = false;
	let ws: WebSocket | undefined;
	const connect = () => {
		if (stopped) return;
		ws = new WebSocket(`${base.replace("http", "ws")}/v1/agents/${agentId}/connect`, {
			headers: { authorization: `Bearer ${token}` },
			perMessageDeflate: false,
		});
		const socket = ws;
		socket.on("open", () => socket.send(JSON.stringify({ type: "hello", concurrency: 10, running: [...running] })));
		socket.on("message", (data) => {
			const frame = JSON.parse(String(data)) as { type: string; id: string; payload: { n: number } };
			if (frame.type !== "command") return;
			deliveries++;
			socket.send(JSON.stringify({ type: "ack", id: frame.id }));
			const done = results.get(frame.id);
			if (done) {
				socket.send(JSON.stringify({ type: "result", id: frame.id, status: "completed", result: done }));
				return;
			}
			if (running.has(frame.id)) return; // already running from an earlier delivery
			running.add(frame.id);
			executions.set(frame.id, (executions.get(frame.id) ?? 0) + 1);
			setTimeout(() => {
				const result = { n: frame.payload.n * 2 };
				results.set(frame.id, result);
				running.delete(frame.id);
				if (ws?.readyState === WebSocket.OPEN) {
					ws.send(JSON.stringify({ type: "result", id: frame.id, status: "completed", result }));
				}
			}, 25);
		});
		socket.on("error", () => {});
		socket.on("close", () => {
			if (!stopped) setTimeout(connect, 300);
		});
	};
	connect();
	stopAgent = () => {
		stopped = true;
		ws?.terminate();
	};
	return { executions, results, deliveries: () => deliveries };
}

it("SIGKILL of wrangler dev mid-flight loses no command and runs none twice", async () => {
	db = await startTestDatabase();
	relay = await startRelay({ allow: (h) => loopbackOnly(h) });
	const port = await freePort();
	const base = `http://127.0.0.1:${port}`;
	const start = () => {
		const w = startWranglerDev({
			port,
			persistTo: join(stateDir, "wrangler"),
			vars: { DATABASE_URL: db?.url ?? "", NEON_WS_PROXY: relay?.proxy ?? "", API_KEYS: API_KEY, AGENT_TOKEN_SECRET: TOKEN_SECRET },
		});
		wranglers.push(w);
		return w;
	};
	const api = (path: string, init: RequestInit = {}) =>
		fetch(`${base}${path}`, { ...init, headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" } });

	const first = start();
	await waitHealthy(base).catch((err) => {
		throw new Error(`${err}\n${first.output()}`);
	});
	const agentId = `crash-${Date.now()}`;
	const { token } = (await (await api(`/v1/agents/${agentId}/token`, { method: "POST" })).json()) as { token: string };
	const agent = runAgent(base, agentId, token);

	const accepted: string[] = [];
	for (let i = 0; i < COMMANDS; i += 50) {
		const res = await api("/v1/commands/batch", {
			method: "POST",
			body: JSON.stringify({
				commands: Array.from({ length: 50 }, (_, j) => ({ agentId, action: "double", payload: { n: i + j } })),
			}),
		});
		expect(res.status).toBe(201);
		const body = (await res.json()) as { items: { command: { id: string } }[] };
		accepted.push(...body.items.map((it) => it.command.id));
	}
	expect(accepted).toHaveLength(COMMANDS);

	// Kill in the middle of the work, not before or after it.
	await waitUntil(() => agent.results.size >= 40, "the agent to finish some commands", 60_000);
	expect(agent.results.size).toBeLessThan(COMMANDS);
	killGroup(first.child, "SIGKILL");
	await new Promise((r) => first.child.once("exit", r));

	start();
	await waitHealthy(base);

	await waitUntil(
		async () =>
			withNodePool(db?.url ?? "", async (pool) => {
				const { rows } = await pool.query(
					"select count(*)::int as n from agent_commands where agent_id = $1 and status = 'completed'",
					[agentId],
				);
				return rows[0].n === COMMANDS;
			}),
		"every accepted command to be completed in Postgres",
		120_000,
	);

	const stored = await withNodePool(db?.url ?? "", async (pool) => {
		const { rows } = await pool.query("select id, status, result from agent_commands where agent_id = $1", [agentId]);
		return rows as { id: string; status: string; result: { n: number } }[];
	});
	expect(new Set(stored.map((r) => r.id))).toEqual(new Set(accepted));
	for (const row of stored) {
		expect(agent.executions.get(row.id), `executions of ${row.id}`).toBe(1);
		expect(row.result).toEqual(agent.results.get(row.id));
	}
	// The crash really cost deliveries that had to be repeated.
	expect(agent.deliveries()).toBeGreaterThan(COMMANDS);
}, 300_000);
