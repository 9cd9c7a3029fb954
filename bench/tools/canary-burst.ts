/**
 * What one agent's commands wait while a burst of batches lands for other
 * agents: the chaos suite's hostile batches (issue 15), asked of Switchyard
 * and of the two floors with the same fleets and load, so the canary's wait
 * can be read as the machine's, the design's, or Switchyard's own.
 *
 * A canary agent gets a command every 250 ms (`--before` seconds alone,
 * then `--during` seconds); one second into the second phase `--batches`
 * batches of `--size` commands go out at once, spread over `--agents`
 * other agents, which answer each at once. Prints the canary's
 * enqueue-to-receipt latency in each phase and how long the burst took to
 * complete (in Postgres, or received for the bare floor).
 *
 *   npx tsx bench/tools/canary-burst.ts --system durable --db real
 *   npx tsx bench/tools/canary-burst.ts --system switchyard --db real --out /tmp/canary.json
 */
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { withFleet, type Target } from "../figures/common.ts";
import { type RunningFloor, startBareFloor, startDurableFloor } from "../figures/floor.ts";
import { switchyardTarget } from "../figures/switchyard.ts";
import { agentIds } from "../lib/payload.ts";
import { spawnChild } from "../lib/rpc.ts";
import { startSwitchyard } from "../lib/stack.ts";
import { summarize, wallNow } from "../lib/stats.ts";

const { values } = parseArgs({
	options: {
		system: { type: "string", default: "switchyard" },
		db: { type: "string", default: "real" },
		agents: { type: "string", default: "50" },
		batches: { type: "string", default: "3" },
		size: { type: "string", default: "1000" },
		before: { type: "string", default: "10" },
		during: { type: "string", default: "15" },
		out: { type: "string" },
	},
});
const system = values.system ?? "switchyard";
const db = values.db === "embedded" ? "embedded" : "real";
const CANARY_RATE = 4;

async function start(): Promise<RunningFloor> {
	if (system === "bare") return startBareFloor();
	if (system === "durable") return startDurableFloor(db);
	if (system !== "switchyard") throw new Error(`--system is bare, durable or switchyard, not ${system}`);
	const stack = await startSwitchyard(db, "switchyard_bench_canary");
	return { target: await switchyardTarget(stack), settings: stack.settings, stop: stack.stop };
}

interface Drain {
	latencies: number[];
	received: number;
}

async function run(target: Target) {
	const burstSize = Number(values.size) * Number(values.batches);
	const before = Number(values.before) * CANARY_RATE;
	const during = Number(values.during) * CANARY_RATE;
	const canaryIds = agentIds(`canary-${system}`, 1);
	const burstIds = agentIds(`burst-${system}`, Number(values.agents));
	return withFleet(target, canaryIds, (canary) =>
		withFleet(target, burstIds, async (fleet) => {
			const canaryEnq = spawnChild("load/enqueue.ts");
			const burstEnq = spawnChild("load/enqueue.ts");
			try {
				await Promise.all([canaryEnq.call("ready"), burstEnq.call("ready")]);
				const steady = (action: string, count: number) =>
					canaryEnq.call("steady", { transport: target.transport(action), agents: canaryIds, count, rate: CANARY_RATE });
				await steady("canary-before", before);
				await canary.call("waitReceived", { n: before, timeoutMs: 60_000 });
				const quiet = await canary.call<Drain>("drain");

				const canaryDuring = steady("canary-during", during);
				await new Promise((r) => setTimeout(r, 1_000));
				const burstAt = wallNow();
				// Every batch at once: the rate only spaces calls, and this one is past any call's time.
				const sent = await burstEnq.call<{ ok: number; errors: number; statuses: Record<string, number> }>("steady", {
					transport: target.transport("burst", Number(values.size)),
					agents: burstIds,
					count: burstSize,
					rate: 1_000_000,
				});
				const burstDone = await target.verify("burst", sent.ok, 300_000, fleet);
				await canaryDuring;
				await canary.call("waitReceived", { n: before + during, timeoutMs: 120_000 });
				const loud = await canary.call<Drain>("drain");
				return {
					canary: { before: summarize(quiet.latencies), during: summarize(loud.latencies) },
					burst: { commands: burstSize, accepted: sent.ok, statuses: sent.statuses, completedSeconds: Math.round(burstDone.doneAt - burstAt) / 1000 },
				};
			} finally {
				for (const c of [canaryEnq, burstEnq]) {
					await c.call("close").catch(() => {});
					c.stop();
				}
			}
		}),
	);
}

const running = await start();
try {
	const r = await run(running.target);
	const out = { system, db: system === "bare" ? "none" : db, at: new Date().toISOString(), args: values, settings: running.settings, ...r };
	const { before, during } = r.canary;
	process.stdout.write(
		`${system}${system === "bare" ? "" : ` (${db} PG)`}: canary p50/p99 ${before.median}/${before.p99} ms before, ${during.median}/${during.p99} ms during; ` +
			`burst of ${r.burst.commands} (${r.burst.accepted} accepted) completed in ${r.burst.completedSeconds} s\n`,
	);
	if (values.out) writeFileSync(values.out, `${JSON.stringify(out, null, 2)}\n`);
} finally {
	await running.stop();
}
process.exit(0);
