/**
 * `npm run bench`: Switchyard against the machine's limits and its peers, in
 * one run. Prints a table and writes bench/results/<date>.json.
 *
 *   npm run bench                     full run (figures 3 and 4 take most of it)
 *   npm run bench -- --only f1,f2,floor,peers   issue 14's goals, both Postgres kinds (~17 min)
 *   npm run bench -- --quick          small N smoke run (~3 min)
 *   npm run bench -- --only f1,floor  some figures: f1 f2 f3 f4 f5 floor peers
 *   npm run bench -- --only f2.single,f2.batch --sweep 64 --batch-sweep 4
 *                                     parts of figure 2 (also f2.proxy), at the calls in flight given
 *   npm run bench -- --db real        one Postgres: embedded | real (default both)
 *   npm run bench -- --storm-agents N figure 4 with N agents instead of 4,000
 *   npm run bench -- --heavy-db embedded,real  Postgres kinds for figures 3 and 4 (default: real)
 *   npm run bench -- --note "…"       a line for the results file and its table
 *   npm run bench -- --out FILE       where the results go (default bench/results/<date>[-quick].json)
 *
 * Exits non-zero only when a run broke (errors, lost commands), never on a
 * slow figure.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { runFloors } from "./figures/floor.ts";
import { runPeers } from "./figures/peers.ts";
import { connectionRamp, reconnectStorm, streaming, switchyardTarget } from "./figures/switchyard.ts";
import { latencyFigure, latencyRun, measureSaturation } from "./figures/common.ts";
import { type Config, config } from "./config.ts";
import { runHarness } from "./lib/procs.ts";
import { gitCommit, machine, Results, versions } from "./lib/results.ts";
import { type DbKind, startSwitchyard } from "./lib/stack.ts";
import { printTable } from "./table.ts";

const { values } = parseArgs({
	options: {
		quick: { type: "boolean", default: false },
		only: { type: "string" },
		db: { type: "string" },
		out: { type: "string" },
		"storm-agents": { type: "string" },
		"heavy-db": { type: "string" },
		/** A line for the results file and its table: e.g. that the machine was loaded. */
		note: { type: "string" },
		/** Figure 2's calls in flight, instead of the configured sweep (an A/B of one change). */
		sweep: { type: "string" },
		"batch-sweep": { type: "string" },
	},
});

const cfg: Config = config(values.quick ?? false);
if (values["storm-agents"]) cfg.f4.agents = Number(values["storm-agents"]);
if (values["heavy-db"]) cfg.heavyDbs = values["heavy-db"].split(",").map((s) => s.trim());
const numbers = (list: string) => list.split(",").map((s) => Number(s.trim()));
if (values.sweep) cfg.f2.sweep = numbers(values.sweep);
if (values["batch-sweep"]) cfg.f2.batchSweep = numbers(values["batch-sweep"]);
const only = new Set((values.only ?? "f1,f2,f3,f4,f5,floor,peers").split(",").map((s) => s.trim()));
const dbs: DbKind[] = values.db ? [values.db as DbKind] : ["embedded", "real"];
const results = new Results();

async function switchyard(db: DbKind): Promise<void> {
	const pgName = db === "embedded" ? "embedded (PGlite)" : "real (PostgreSQL)";
	process.stdout.write(`[bench] starting Switchyard with ${pgName} Postgres\n`);
	let stack = await startSwitchyard(db);
	try {
		// Straight to the workerd runtime, as the floor is reached; and once
		// through wrangler dev's proxy, as `npm run dev` serves it.
		const target = await switchyardTarget(stack, "runtime");
		const viaProxy = await switchyardTarget(stack, "proxy");
		const sys = "switchyard";
		const proxySys = "switchyard:dev-proxy";
		results.settings[`${sys}/${db}`] = { connectedTo: "the workerd runtime, past wrangler dev's proxy", ...stack.settings };
		results.settings[`${proxySys}/${db}`] = { connectedTo: "wrangler dev's public port (its proxy), as npm run dev serves it", ...stack.settings };
		if (only.has("f1")) {
			for (const agents of cfg.f1.agents) {
				for (const [system, t] of [[sys, target], [proxySys, viaProxy]] as const) {
					await results.measure(latencyFigure(results, agents), system, db, () =>
						latencyRun(t, { tag: `f1-${db}-${system === sys ? "rt" : "px"}-${agents}`, agents, count: cfg.f1.count, rate: cfg.f1.rate }),
					);
				}
			}
		}
		const f2 = { agents: cfg.f2.agents, durationMs: cfg.f2.durationMs };
		if (only.has("f2") || only.has("f2.single")) await measureSaturation(results, sys, db, target, { ...f2, tag: `f2s-${db}`, sweep: cfg.f2.sweep });
		if (only.has("f2") || only.has("f2.proxy")) await measureSaturation(results, proxySys, db, viaProxy, { ...f2, tag: `f2p-${db}`, sweep: cfg.f2.sweep });
		if (only.has("f2") || only.has("f2.batch")) {
			await measureSaturation(results, sys, db, target, { ...f2, tag: `f2b-${db}`, sweep: cfg.f2.batchSweep, batch: cfg.f2.batch });
		}
		if (only.has("f5")) {
			const fig = results.figure("f5.streaming", "Agent output chunk → observer receipt (p50)", "ms", true);
			await results.measure(fig, sys, db, () => streaming(stack, { tag: `f5-${db}`, chunks: cfg.f5.chunks, rate: cfg.f5.rate }));
		}
		if (only.has("f4") && cfg.heavyDbs.includes(db)) {
			const fig = results.figure("f4.storm", `Reconnect storm: restart → all ${cfg.f4.agents} agents reconnected with their command`, "s", true);
			await results.measure(fig, sys, db, () => reconnectStorm(stack, { tag: `f4-${db}`, agents: cfg.f4.agents }));
		}
		if (only.has("f3") && cfg.heavyDbs.includes(db)) {
			for (const deflate of [false, true]) {
				// A fresh workerd for each ramp, so the baseline holds no earlier objects.
				await stack.stop();
				stack = await startSwitchyard(db);
				const fig = results.figure(
					`f3.memory.${deflate ? "deflate" : "plain"}`,
					`Resident memory per idle agent (workerd), client ${deflate ? "offers" : "does not offer"} permessage-deflate, up to ${cfg.f3.steps.at(-1)} agents`,
					"KiB",
					true,
				);
				const s = stack;
				await results.measure(fig, sys, db, async () => ({
					...(await connectionRamp(s, { tag: `f3-${db}-${deflate ? "z" : "p"}`, steps: cfg.f3.steps, deflate, budgetMs: cfg.f3.budgetMs })),
				}));
			}
		}
	} finally {
		await stack.stop();
	}
}

async function main(): Promise<void> {
	const date = new Date().toISOString().slice(0, 10);
	const meta = { startedAt: new Date().toISOString(), commit: gitCommit(), quick: values.quick ?? false, note: values.note, machine: machine(), versions: versions(), config: cfg };
	process.stdout.write(`[bench] ${meta.quick ? "quick" : "full"} run; figures: ${[...only].join(", ")}; Postgres: ${dbs.join(", ")}\n`);
	if (only.has("floor")) await runFloors(results, cfg, only);
	for (const db of dbs) {
		if ([...only].some((f) => /^f[1-5](\.|$)/.test(f))) {
			await switchyard(db).catch((err: unknown) => {
				results.problems.push({ figure: "stack", system: `switchyard/${db}`, error: err instanceof Error ? err.message : String(err) });
			});
		}
	}
	if (only.has("peers")) await runPeers(results, cfg, only);

	const out = {
		...meta,
		endedAt: new Date().toISOString(),
		settings: {
			systems: results.settings,
			note: "Load averages are recorded per entry: the machine has 2 cores and other work may run beside the benchmark.",
		},
		figures: [...results.figures.values()],
		problems: results.problems,
	};
	mkdirSync("bench/results", { recursive: true });
	const file = values.out ?? `bench/results/${date}${meta.quick ? "-quick" : ""}.json`;
	writeFileSync(file, `${JSON.stringify(out, null, "\t")}\n`);
	printTable(results);
	process.stdout.write(`[bench] wrote ${file}\n`);
	if (results.problems.length) {
		process.stdout.write(`[bench] ${results.problems.length} problem(s):\n${results.problems.map((p) => `  ${p.figure} ${p.system}: ${p.error.slice(0, 500)}`).join("\n")}\n`);
		process.exitCode = 1;
	}
}

runHarness("bench", main);
