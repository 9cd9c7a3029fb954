/**
 * The machine's limits, measured in the same run: a bare Durable Object
 * pushing to a socket (the floor for the push path) and raw single-row
 * INSERTs through the worker's driver and relay (the durability floor).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Config } from "../config.ts";
import { wranglerRoles, type Roles } from "../lib/cpu.ts";
import { freePort, runtimeWsBase, startWrangler, waitUntil, workerdOpenFiles, workerdRss, wranglerSettings } from "../lib/procs.ts";
import type { Results } from "../lib/results.ts";
import { spawnChild } from "../lib/rpc.ts";
import { startEmbeddedPostgres } from "../../src/dev/embedded-postgres.ts";
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

async function bareDo(results: Results, cfg: Config, only: Set<string>): Promise<void> {
	const port = await freePort();
	const persist = mkdtempSync(join(tmpdir(), "switchyard-bench-floor-"));
	const w = startWrangler({ port, persistTo: persist, config: FLOOR_CONFIG, vars: {} });
	const base = `http://127.0.0.1:${port}`;
	try {
		await waitUntil(async () => (await fetch(`${base}/v1/agents/x/none`).catch(() => undefined))?.status === 404, "floor worker", 120_000);
		const target = floorTarget(await runtimeWsBase(w.child.pid ?? -1, port), wranglerRoles(() => w.child.pid ?? -1, port));
		results.settings["floor:bare-do"] = { connectedTo: "the workerd runtime, past wrangler dev's proxy", wrangler: wranglerSettings(), postgres: "none" };
		if (wants(only, "f1")) {
			for (const agents of cfg.f1.agents) {
				await results.measure(latencyFigure(results, agents), "floor:bare-do", undefined, () =>
					latencyRun(target, { tag: `floor-f1-${agents}`, agents, count: cfg.f1.count, rate: cfg.f1.rate }),
				);
			}
		}
		if (wants(only, "f2")) {
			const f2 = { agents: cfg.f2.agents, durationMs: cfg.f2.durationMs };
			await measureSaturation(results, "floor:bare-do", undefined, target, { ...f2, tag: "floor-f2s", sweep: cfg.f2.sweep });
			await measureSaturation(results, "floor:bare-do", undefined, target, { ...f2, tag: "floor-f2b", sweep: cfg.f2.batchSweep, batch: cfg.f2.batch });
		}
		if (only.has("f3")) {
			const fig = results.figure("f3.memory.plain", "Resident memory per idle agent (workerd)", "KiB", true);
			const stack = {
				secret: "",
				workerdRss: () => workerdRss(w.child.pid ?? -1),
				workerdOpenFiles: () => workerdOpenFiles(w.child.pid ?? -1),
				runtimeWsBase: () => runtimeWsBase(w.child.pid ?? -1, port),
			};
			await results.measure(fig, "floor:bare-do", undefined, () => connectionRamp(stack, { tag: "floor-f3", steps: cfg.f3.steps, deflate: false, budgetMs: cfg.f3.budgetMs }));
		}
	} finally {
		await w.stop();
		rmSync(persist, { recursive: true, force: true });
	}
}

export async function runFloors(results: Results, cfg: Config, only: Set<string>): Promise<void> {
	await insertFloor(results, cfg);
	await bareDo(results, cfg, only);
}
