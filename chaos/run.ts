/**
 * `npm run chaos`: the real local stack (wrangler dev, the relay, PgBouncer,
 * the machine's PostgreSQL) under faults, with agents and the enqueuer in
 * their own processes. Prints a table and writes chaos/results/<date>.json.
 *
 *   npm run chaos                         every scenario, full size
 *   npm run chaos -- --quick              every scenario small (a few minutes)
 *   npm run chaos -- --only crash,outage  some: flaps slow crash outage partition
 *   npm run chaos -- --out FILE           where the results go
 *
 * Exits non-zero when a command is lost, an outcome invented, or a scenario broke.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { runHarness } from "../bench/lib/procs.ts";
import { machine, versions } from "../bench/lib/results.ts";
import { startSwitchyard } from "../bench/lib/stack.ts";
import { config } from "./config.ts";
import { type Outcome, runScenario } from "./scenario.ts";
import { SCENARIOS } from "./scenarios.ts";
import { printTable } from "./table.ts";

const { values } = parseArgs({
	options: {
		quick: { type: "boolean", default: false },
		only: { type: "string" },
		out: { type: "string" },
		note: { type: "string" },
	},
});

const log = (m: string) => process.stdout.write(`[chaos] ${m}\n`);

function commit(): string {
	const git = (...args: string[]) => execFileSync("git", args, { encoding: "utf8" }).trim();
	return `${git("rev-parse", "HEAD")}${git("status", "--porcelain") ? " (with uncommitted changes)" : ""}`;
}

function failed(o: Outcome): boolean {
	return o.error !== undefined || (o.verdict?.lost ?? 0) > 0 || (o.verdict?.invented ?? 0) > 0;
}

async function main(): Promise<void> {
	const quick = values.quick ?? false;
	const cfg = config(quick);
	const only = values.only?.split(",").map((s) => s.trim());
	const unknown = only?.filter((k) => !SCENARIOS.some((s) => s.key === k)) ?? [];
	if (unknown.length) throw new Error(`unknown scenario ${unknown.join(", ")}: use ${SCENARIOS.map((s) => s.key).join(", ")}`);
	const picked = SCENARIOS.filter((s) => !only || only.includes(s.key));
	const startedAt = new Date().toISOString();
	// Read before the run: an edit made while it runs is not what ran.
	const ranCommit = commit();
	log(`${quick ? "quick" : "full"} run: ${picked.map((s) => s.key).join(", ")}`);
	// Its own database, so a benchmark on the same server is not disturbed.
	const stack = await startSwitchyard("real", "switchyard_chaos");
	const outcomes: Outcome[] = [];
	try {
		for (const s of picked) {
			const o = await runScenario(s, stack, cfg, log);
			if (o.error) log(`${s.key} BROKE: ${o.error.slice(0, 2000)}`);
			outcomes.push(o);
		}
	} finally {
		await stack.stop();
	}
	const out = { startedAt, endedAt: new Date().toISOString(), quick, note: values.note, commit: ranCommit, config: cfg, settings: stack.settings, machine: machine(), versions: versions(), scenarios: outcomes };
	mkdirSync("chaos/results", { recursive: true });
	const file = values.out ?? `chaos/results/${startedAt.slice(0, 10)}${quick ? "-quick" : ""}.json`;
	writeFileSync(file, `${JSON.stringify(out, null, "\t")}\n`);
	printTable(outcomes);
	log(`wrote ${file}`);
	if (outcomes.some(failed)) process.exitCode = 1;
}

runHarness("chaos", main);
