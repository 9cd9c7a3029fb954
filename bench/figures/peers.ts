/**
 * Peers, each running the same enqueue → push → ack → complete loop with
 * the same payloads, driven by the same load generators as Switchyard.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import type { Config } from "../config.ts";
import { freePort, tcpOpen, track, waitUntil } from "../lib/procs.ts";
import type { Results } from "../lib/results.ts";
import { type Child, spawnChild } from "../lib/rpc.ts";
import { freshDatabase } from "../lib/stack.ts";
import { runMigrations } from "../../src/dev/migrate.ts";
import { fixedRoles, joinRoles, pidsNamed, postgresBackends, type Roles } from "../lib/cpu.ts";
import { latencyFigure, latencyRun, measureSaturation, pollUntil, type Target, wants } from "./common.ts";

const NATS_URL = "nats://127.0.0.1:4222";

async function figures(results: Results, cfg: Config, system: string, target: Target, settings: Record<string, unknown>): Promise<void> {
	results.settings[system] = settings;
	if (wants(only, "f1")) {
		for (const agents of cfg.f1.agents) {
			await results.measure(latencyFigure(results, agents), system, undefined, () => latencyRun(target, { tag: `${system}-f1-${agents}`, agents, count: cfg.f1.count, rate: cfg.f1.rate }));
		}
	}
	if (wants(only, "f2")) await measureSaturation(results, system, undefined, target, { tag: `${system}-f2`, agents: cfg.f2.agents, durationMs: cfg.f2.durationMs, sweep: cfg.f2.sweep });
}

/** A hub peer that counts its own durable completions (ws-pg, fastify-bullmq). */
function hubTarget(base: string, hub: Child, roles: Roles): Target {
	return {
		fleet: "load/agents.ts",
		roles,
		serving: Object.keys(roles()),
		connectArgs: (ids) => ({ wsBase: base.replace(/^http/, "ws"), ids, deflate: false, parallel: 20, reconnect: false, concurrency: 1000 }),
		transport: (action) => ({ kind: "http", base, action }),
		verify: async (action, expected, timeoutMs) => {
			let lastAt = 0;
			await pollUntil(async () => {
				const c = await hub.call<{ n: number; lastAt: number }>("completed", { action });
				lastAt = c.lastAt;
				return { done: c.n >= expected, progress: `${c.n} of ${expected} completed` };
			}, timeoutMs);
			return { doneAt: lastAt };
		},
	};
}

async function wsPg(results: Results, cfg: Config): Promise<void> {
	const url = await freshDatabase("switchyard_bench_peer");
	await runMigrations(url);
	const hub = spawnChild("peers/ws-pg.ts");
	const admin = new pg.Client({ connectionString: url, application_name: "switchyard-bench" });
	await admin.connect();
	const backends = postgresBackends(admin, "switchyard_bench_peer");
	try {
		const { port } = await hub.call<{ port: number }>("start", { databaseUrl: url });
		const roles = joinRoles(fixedRoles({ "server (node)": [hub.proc.pid] }), backends.roles);
		const target = hubTarget(`http://127.0.0.1:${port}`, hub, roles);
		target.serving = ["server (node)", "postgres backends"];
		const check = target.verify;
		// Besides the hub's own count, every row must read `completed` in Postgres.
		target.verify = async (action, expected, timeoutMs, fleet) => {
			const r = await check(action, expected, timeoutMs, fleet);
			const db = new pg.Client({ connectionString: url, application_name: "switchyard-bench" });
			await db.connect();
			const { rows } = await db.query<{ n: number }>("select count(*)::int as n from agent_commands where action = $1 and status = 'completed'", [action]);
			await db.end();
			if (rows[0]?.n !== expected) throw new Error(`ws-pg: ${rows[0]?.n} of ${expected} rows completed`);
			return r;
		};
		await figures(results, cfg, "ws-pg", target, { postgres: "real: the machine's PostgreSQL, pg.Pool of 20, no PgBouncer", durability: "every status change a committed UPDATE plus its event row" });
	} finally {
		backends.stop();
		await admin.end().catch(() => {});
		hub.stop();
	}
}

async function fastifyBullmq(results: Results, cfg: Config): Promise<void> {
	// A private Redis with the durable setting Redis offers (the shared one keeps nothing on disk).
	const dir = mkdtempSync(join(tmpdir(), "switchyard-bench-redis-"));
	const redisPort = await freePort();
	const redis = track(spawn("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--dir", dir, "--appendonly", "yes", "--appendfsync", "always", "--save", ""], { stdio: "ignore" }));
	const hub = spawnChild("peers/bullmq.ts");
	try {
		await waitUntil(() => tcpOpen(redisPort), "redis-server", 20_000);
		const { port } = await hub.call<{ port: number }>("start", { redisPort });
		const target = hubTarget(`http://127.0.0.1:${port}`, hub, fixedRoles({ "server (node)": [hub.proc.pid], "redis-server": [redis.pid] }));
		await figures(results, cfg, "fastify-bullmq", target, { redis: "private redis-server, appendonly yes, appendfsync always", bullmqWorkerConcurrency: 1000 });
	} finally {
		hub.stop();
		redis.kill("SIGTERM");
		await new Promise((r) => setTimeout(r, 500));
		rmSync(dir, { recursive: true, force: true });
	}
}

async function natsPeer(results: Results, cfg: Config): Promise<void> {
	const admin = spawnChild("peers/nats.ts");
	try {
		await admin.call("setup", { url: NATS_URL });
		await figures(results, cfg, "nats-jetstream", {
			fleet: "peers/nats.ts",
			// The machine's own nats-server; only the benchmark uses it during the run.
			roles: () => ({ "nats-server": pidsNamed("nats-server") }),
			serving: ["nats-server"],
			connectArgs: (ids) => ({ url: NATS_URL, ids }),
			transport: () => ({ kind: "nats", url: NATS_URL, subjectPrefix: "swbench.cmd" }),
			verify: async (_action, expected, timeoutMs, fleet) => {
				let lastAt = 0;
				await pollUntil(async () => {
					const c = await fleet.call<{ n: number; lastAt: number }>("completed");
					lastAt = c.lastAt;
					return { done: c.n >= expected, progress: `${c.n} of ${expected} completed` };
				}, timeoutMs);
				return { doneAt: lastAt };
			},
		}, { nats: "the machine's nats-server with JetStream, file storage, work-queue stream, explicit acks, confirmed acks" });
	} finally {
		await admin.call("teardown", { url: NATS_URL }).catch(() => {});
		admin.stop();
	}
}

/** The figures asked for (`--only`), set by runPeers. */
let only = new Set<string>();

export async function runPeers(results: Results, cfg: Config, figures: Set<string>): Promise<void> {
	only = figures;
	// The NATS server is the machine's own; start it the way the machine does if it is down.
	if (!(await tcpOpen(4222))) {
		spawn("start-stop-daemon", ["--start", "--oknodo", "--background", "--exec", "/usr/sbin/nats-server", "--", "-a", "127.0.0.1", "-p", "4222", "-js", "-sd", "/var/lib/nats-server", "-l", "/var/log/nats-server.log"], { stdio: "ignore" });
		await waitUntil(() => tcpOpen(4222), "nats-server", 20_000);
	}
	await natsPeer(results, cfg);
	await fastifyBullmq(results, cfg);
	await wsPg(results, cfg);
}
