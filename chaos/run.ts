/**
 * `npm run chaos`: the real local stack (wrangler dev, the relay, PgBouncer,
 * the machine's PostgreSQL) under faults, with agents and the enqueuer in
 * their own processes. Prints a table and writes chaos/results/<date>.json.
 *
 *   npm run chaos                         every scenario, full size
 *   npm run chaos -- --quick              every scenario small (a few minutes)
 *   npm run chaos -- --only crash,outage  some (see SCENARIOS in scenarios.ts)
 *   CHAOS_HOSTILE=http,batches npm run chaos -- --quick --only hostile
 *                                         only those parts of the hostile load (observers,
 *                                         backlog, acks, http, batches)
 *   npm run chaos -- --out FILE           where the results go
 *   npm run chaos -- --table FILE         print a results file's tables again
 *
 * It runs on its own PostgreSQL cluster (cluster.ts, port 5433: scenarios
 * restart it and skew its clock) with a fault proxy between the relay and
 * PgBouncer, and stops that cluster when done.
 *
 * Exits non-zero when a command is lost, an outcome invented, a must-be-0
 * figure is not 0, a scenario broke, or PgBouncer crashed under it.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { runHarness } from "../bench/lib/procs.ts";
import { gitCommit, machine, versions } from "../bench/lib/results.ts";
import { startSwitchyard } from "../bench/lib/stack.ts";
import { config } from "./config.ts";
import { clusterUnavailable, lockCluster, startCluster, stopCluster } from "./cluster.ts";
import { type Outcome, runScenario } from "./scenario.ts";
import { SCENARIOS } from "./scenarios.ts";
import { printTable } from "./table.ts";

const { values } = parseArgs({
	options: {
		quick: { type: "boolean", default: false },
		only: { type: "string" },
		out: { type: "string" },
		note: { type: "string" },
		table: { type: "string" },
	},
});

const log = (m: string) => process.stdout.write(`[chaos] ${m}\n`);

function failed(o: Outcome): boolean {
	const v = o.verdict;
	const canary = (o.fault?.canary as { commands?: { notCompleted?: number } } | undefined)?.commands?.notCompleted ?? 0;
	return (
		o.error !== undefined ||
		(o.pgbouncerCrashes?.length ?? 0) > 0 ||
		(v?.lost ?? 0) > 0 ||
		(v?.invented ?? 0) > 0 ||
		(v?.endedWithoutStop ?? 0) > 0 ||
		(v?.duplicatedOutputBytes ?? 0) > 0 ||
		(o.executedMoreThanOnce ?? 0) > 0 ||
		canary > 0
	);
}

async function main(): Promise<void> {
	if (values.table) {
		// Prints the tables of a results file again (for the docs), runs nothing.
		printTable((JSON.parse(readFileSync(values.table, "utf8")) as { scenarios: Outcome[] }).scenarios);
		return;
	}
	const quick = values.quick ?? false;
	const cfg = config(quick);
	const only = values.only?.split(",").map((s) => s.trim());
	const unknown = only?.filter((k) => !SCENARIOS.some((s) => s.key === k)) ?? [];
	if (unknown.length) throw new Error(`unknown scenario ${unknown.join(", ")}: use ${SCENARIOS.map((s) => s.key).join(", ")}`);
	const picked = SCENARIOS.filter((s) => !only || only.includes(s.key));
	const startedAt = new Date().toISOString();
	// Read before the run: an edit made while it runs is not what ran.
	const ranCommit = gitCommit();
	log(`${quick ? "quick" : "full"} run: ${picked.map((s) => s.key).join(", ")}`);
	// Its own cluster when it can have one (never the shared one on 5432: scenarios stop it),
	// else its own database on the machine's, where the cluster scenarios are skipped.
	const noCluster = clusterUnavailable();
	const unlock = noCluster ? () => {} : lockCluster();
	const pgPort = noCluster ? undefined : startCluster(log);
	if (noCluster) log(`no cluster of its own (${noCluster}): the machine's PostgreSQL, without pgrestart and clock`);
	const stack = await startSwitchyard("real", "switchyard_chaos", { pgPort, faultProxy: true });
	// Production runs the scheduled handler every minute (wrangler.toml's cron): its recovery
	// pass hands objects the pending rows none has taken, such as one written for an enqueue
	// whose answer was lost. wrangler dev does not fire crons; the harness does, as often.
	let cronRuns = 0;
	const cron = setInterval(() => {
		fetch(`${stack.base}/cdn-cgi/local/scheduled?cron=${encodeURIComponent("* * * * *")}`)
			.then((r) => {
				if (r.ok) cronRuns++;
				else log(`cron trigger answered ${r.status}`);
				return r.arrayBuffer();
			})
			.catch(() => {});
	}, 60_000);
	const outcomes: Outcome[] = [];
	try {
		for (const s of picked) {
			const o = await runScenario(s, stack, cfg, log);
			if (o.error) log(`${s.key} BROKE: ${o.error.slice(0, 2000)}`);
			for (const c of o.pgbouncerCrashes ?? []) log(`${s.key}: PgBouncer exited on its own (restarted): ${c.fatal}`);
			outcomes.push(o);
		}
	} finally {
		clearInterval(cron);
		await stack.stop();
		if (pgPort) stopCluster();
		unlock();
	}
	const out = { startedAt, endedAt: new Date().toISOString(), quick, note: values.note, commit: ranCommit, config: cfg, settings: { ...stack.settings, cronEveryMs: 60_000, cronRuns }, machine: machine(), versions: versions(), scenarios: outcomes };
	mkdirSync("chaos/results", { recursive: true });
	const file = values.out ?? `chaos/results/${startedAt.slice(0, 10)}${quick ? "-quick" : ""}.json`;
	writeFileSync(file, `${JSON.stringify(out, null, "\t")}\n`);
	printTable(outcomes);
	log(`wrote ${file}`);
	if (outcomes.some(failed)) process.exitCode = 1;
}

runHarness("chaos", main);
