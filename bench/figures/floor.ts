/**
 * The machine's limits, measured in the same run: a bare Durable Object
 * pushing to a socket (the floor for the push path), raw single-row
 * INSERTs through the worker's driver and relay (the durability floor),
 * and the two together (the durable floor: the bare object with the row
 * committed before the forward and completed on the result, floor/durable.ts).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import type { Config } from "../config.ts";
import { fixedRoles, joinRoles, postgresBackends, wranglerRoles, type Roles } from "../lib/cpu.ts";
import { startPgBouncer } from "../lib/pgbouncer.ts";
import { freePort, runtimeWsBase, startWrangler, waitUntil, workerdOpenFiles, workerdRss, wranglerSettings } from "../lib/procs.ts";
import type { Results } from "../lib/results.ts";
import { spawnChild } from "../lib/rpc.ts";
import { startEmbeddedPostgres } from "../../src/dev/embedded-postgres.ts";
import { startRelay } from "../../src/dev/relay.ts";
import { CREATE_TABLE, TABLE } from "../floor/durable.ts";
import { freshDatabase } from "../lib/stack.ts";
import { summarize } from "../lib/stats.ts";
import { latencyFigure, latencyRun, measureSaturation, pollUntil, type Target, wants } from "./common.ts";
import { connectionRamp } from "./switchyard.ts";

const FLOOR_CONFIG = fileURLToPath(new URL("../floor/wrangler.toml", import.meta.url));

async function insertFloor(results: Results, cfg: Config): Promise<void> {
	const lat = results.figure("floor.insert.latency", "Durability floor: one single-row INSERT, Neon driver via the relay (p50)", "ms", true);
	const rate = results.figure("floor.insert.rate", `Durability floor: single-row INSERTs per second, ${cfg.insert.concurrency} connections`, "rows/s", false);
	for (const db of ["embedded", "real"] as const) {
		const embedded = db === "embedded" ? await startEmbeddedPostgres({}) : undefined;
		const url = embedded?.url ?? (await freshDatabase("switchyard_bench_floor"));
		const child = spawnChild("floor/insert.ts");
		try {
			type Run = { latency: number[]; fresh: number[]; sequentialRate: number; concurrentRate: number; rows: number; concurrency: number };
			let run: Run | undefined;
			await results.measure(lat, "floor:insert", db, async () => {
				run = await child.call<Run>("run", { url, ...cfg.insert });
				return {
					value: summarize(run.latency).median,
					samples: run.latency,
					detail: { freshPoolPerInsertMs: summarize(run.fresh), sequentialRate: Math.round(run.sequentialRate), rows: run.rows },
				};
			});
			if (run) {
				const r = run;
				await results.measure(rate, "floor:insert", db, async () => ({
					value: r.concurrentRate,
					detail: { concurrency: r.concurrency, sequentialRate: Math.round(r.sequentialRate) },
				}));
			}
		} finally {
			child.stop();
			await embedded?.stop();
		}
	}
}

/**
 * Agents and enqueuer drive the floor worker exactly as they drive
 * Switchyard, at the runtime's own address past wrangler dev's proxy; it
 * has no Postgres to check.
 */
function floorTarget(wsBase: string, roles: Roles): Target {
	const base = wsBase.replace(/^ws/, "http");
	return {
		fleet: "load/agents.ts",
		roles,
		serving: ["runtime (workerd)"],
		connectArgs: (ids) => ({ wsBase, ids, deflate: false, parallel: 20, reconnect: false, concurrency: 1000 }),
		transport: (action, batch) => (batch ? { kind: "http-batch", base, action, size: batch } : { kind: "http", base, action }),
		verify: async (_action, expected, timeoutMs, fleet) => {
			const doneAt = await pollUntil(async () => {
				const r = await fleet.call<{ received: number }>("waitReceived", { n: expected, timeoutMs: 1 });
				return { done: r.received >= expected, progress: `${r.received} received` };
			}, timeoutMs);
			return { doneAt, detail: { note: "floor: no durable completion; done when the agents received every command" } };
		},
	};
}

/** The floor's own figures 1 and 2, for the bare floor and the durable one alike. */
async function pushFigures(results: Results, cfg: Config, only: Set<string>, system: string, postgres: string | undefined, target: Target): Promise<void> {
	const tag = system === "floor:bare-do" ? "floor" : "dfloor";
	if (wants(only, "f1")) {
		for (const agents of cfg.f1.agents) {
			await results.measure(latencyFigure(results, agents), system, postgres, () =>
				latencyRun(target, { tag: `${tag}-f1-${agents}`, agents, count: cfg.f1.count, rate: cfg.f1.rate }),
			);
		}
	}
	if (wants(only, "f2")) {
		const f2 = { agents: cfg.f2.agents, durationMs: cfg.f2.durationMs };
		await measureSaturation(results, system, postgres, target, { ...f2, tag: `${tag}-f2s`, sweep: cfg.f2.sweep });
		await measureSaturation(results, system, postgres, target, { ...f2, tag: `${tag}-f2b`, sweep: cfg.f2.batchSweep, batch: cfg.f2.batch });
	}
}

export interface RunningFloor {
	target: Target;
	settings: Record<string, unknown>;
	stop(): Promise<void>;
}

/** What a starter has started, stopped in reverse, also when a later part fails to start. */
class Started {
	private readonly undo: (() => unknown)[] = [];

	add(stop: () => unknown): void {
		this.undo.push(stop);
	}

	async stop(): Promise<void> {
		for (const step of this.undo.splice(0).reverse()) await step();
	}
}

/** The floor's worker under its own `wrangler dev`, once it answers. */
async function startFloorWorker(started: Started, persistTo: string, vars: Record<string, string>): Promise<{ pid(): number; port: number }> {
	const port = await freePort();
	const w = startWrangler({ port, persistTo, config: FLOOR_CONFIG, vars });
	started.add(() => w.stop());
	const base = `http://127.0.0.1:${port}`;
	await waitUntil(async () => (await fetch(`${base}/v1/agents/x/none`).catch(() => undefined))?.status === 404, "floor worker", 120_000);
	return { pid: () => w.child.pid ?? -1, port };
}

function stateDir(started: Started, prefix: string): string {
	const dir = mkdtempSync(join(tmpdir(), prefix));
	started.add(() => rmSync(dir, { recursive: true, force: true }));
	return dir;
}

/** Read when a floor starts: the settings come from the environment of that moment. */
const runtimeSettings = () => ({ connectedTo: "the workerd runtime, past wrangler dev's proxy", wrangler: wranglerSettings() });

/**
 * The durable floor on one Postgres kind, reached as Switchyard is: the
 * relay, and for real PostgreSQL PgBouncer in front of it. A command is
 * done when its row says completed, as in Switchyard's figure 2.
 */
export async function startDurableFloor(db: "embedded" | "real"): Promise<RunningFloor> {
	const started = new Started();
	try {
		const persist = stateDir(started, "switchyard-bench-dfloor-");
		const embedded = db === "embedded" ? await startEmbeddedPostgres({}) : undefined;
		if (embedded) started.add(() => embedded.stop());
		const database = "switchyard_bench_durable_floor";
		const url = embedded?.url ?? (await freshDatabase(database));
		const bouncer = embedded ? undefined : await startPgBouncer(database);
		if (bouncer) started.add(() => bouncer.stop());
		const workerUrl = bouncer?.url ?? url;
		const target = new URL(workerUrl);
		const relay = await startRelay({ allow: (h, p) => h === target.hostname && p === Number(target.port || 5432) });
		started.add(() => relay.close());
		const check = new pg.Pool({ connectionString: url, max: 2, application_name: "switchyard-bench" });
		check.on("error", () => {});
		started.add(() => check.end().catch(() => {}));
		await check.query(CREATE_TABLE);
		const backends = embedded ? undefined : postgresBackends(check, database);
		if (backends) started.add(() => backends.stop());
		const { pid, port } = await startFloorWorker(started, persist, { DATABASE_URL: workerUrl, NEON_WS_PROXY: relay.proxy });
		const roles = joinRoles(
			wranglerRoles(pid, port),
			fixedRoles({ pgbouncer: [bouncer?.pid], [embedded ? "harness (relay, PGlite, checks)" : "harness (relay, checks)"]: [process.pid] }),
			backends?.roles ?? (() => ({})),
		);
		return {
			target: {
				...floorTarget(await runtimeWsBase(pid(), port), roles),
				verify: async (action, expected, timeoutMs) => {
					const doneAt = await pollUntil(async () => {
						const { rows } = await check.query<{ status: string; n: string }>(`select status, count(*) as n from ${TABLE} where action = $1 group by status`, [action]);
						const by = Object.fromEntries(rows.map((r) => [r.status, Number(r.n)]));
						const total = rows.reduce((sum, r) => sum + Number(r.n), 0);
						return {
							done: (by.completed ?? 0) === expected && total === expected,
							fail: total > expected ? `rows ${JSON.stringify(by)}, expected ${expected} completed` : undefined,
							progress: JSON.stringify(by),
						};
					}, timeoutMs);
					return { doneAt };
				},
			},
			settings: {
				...runtimeSettings(),
				postgres: embedded ? "embedded: PGlite, through the relay" : "real: the machine's PostgreSQL through the relay and PgBouncer, as Switchyard's",
				durability: "the command's row INSERTed (Neon HTTP query) before the forward, kept in the object's SQLite before the send; on the result the buffer row and the Postgres row (Neon Pool, one kept connection) UPDATEd",
			},
			stop: () => started.stop(),
		};
	} catch (err) {
		await started.stop();
		throw err;
	}
}

/** The bare floor: no Postgres; a command is done when its agent received it. */
export async function startBareFloor(): Promise<RunningFloor & { pid(): number; port: number }> {
	const started = new Started();
	try {
		const { pid, port } = await startFloorWorker(started, stateDir(started, "switchyard-bench-floor-"), {});
		return {
			target: floorTarget(await runtimeWsBase(pid(), port), wranglerRoles(pid, port)),
			settings: { ...runtimeSettings(), postgres: "none" },
			stop: () => started.stop(),
			pid,
			port,
		};
	} catch (err) {
		await started.stop();
		throw err;
	}
}

async function durableDo(results: Results, cfg: Config, only: Set<string>): Promise<void> {
	for (const db of ["embedded", "real"] as const) {
		const floor = await startDurableFloor(db);
		try {
			results.settings[`floor:durable-do/${db}`] = floor.settings;
			await pushFigures(results, cfg, only, "floor:durable-do", db, floor.target);
		} finally {
			await floor.stop();
		}
	}
}

async function bareDo(results: Results, cfg: Config, only: Set<string>): Promise<void> {
	const floor = await startBareFloor();
	try {
		results.settings["floor:bare-do"] = floor.settings;
		await pushFigures(results, cfg, only, "floor:bare-do", undefined, floor.target);
		if (only.has("f3")) {
			const fig = results.figure("f3.memory.plain", "Resident memory per idle agent (workerd)", "KiB", true);
			const stack = {
				secret: "",
				workerdRss: () => workerdRss(floor.pid()),
				workerdOpenFiles: () => workerdOpenFiles(floor.pid()),
				runtimeWsBase: () => runtimeWsBase(floor.pid(), floor.port),
			};
			await results.measure(fig, "floor:bare-do", undefined, () => connectionRamp(stack, { tag: "floor-f3", steps: cfg.f3.steps, deflate: false, budgetMs: cfg.f3.budgetMs }));
		}
	} finally {
		await floor.stop();
	}
}

export async function runFloors(results: Results, cfg: Config, only: Set<string>): Promise<void> {
	await insertFloor(results, cfg);
	await bareDo(results, cfg, only);
	await durableDo(results, cfg, only);
}
