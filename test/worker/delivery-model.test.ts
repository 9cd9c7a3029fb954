/**
 * A model-based test of the delivery rules (issue 15): fast-check strings
 * together enqueues, connects, closes, hellos, acks, results, output,
 * cancels, clock advances and catch-ups, runs them on a real agent object's
 * SQLite, and after every step checks the object against a small reference
 * model (./model/): no illegal transition, the window never exceeded, no
 * command ended by the system while the agent may hold it without a stop
 * owed, and every result the agent sent for a command it ran stored.
 *
 * The seed is fixed so `npm test` is repeatable and quick; to explore more,
 * set SWITCHYARD_MODEL_RUNS (and SWITCHYARD_MODEL_SEED) in the environment
 * of `npx vitest run --project worker test/worker/delivery-model.test.ts`.
 */
import { runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import fc from "fast-check";
import { describe, it } from "vitest";
import type { AgentHub } from "../../src/agent/agent-hub";
import type { AgentCore } from "../../src/agent/core";
import { uniqueAgentId } from "../helpers/worker/harness";
import { steps } from "./model/commands";
import { newSeen } from "./model/invariants";
import { newModel } from "./model/model";
import type { World } from "./model/step";

const T0 = 1_800_000_000_000;
const RUNS = Number(env.TEST_MODEL_RUNS || 200);
const SEED = Number(env.TEST_MODEL_SEED || 15);

/** How often each kind of transition was exercised, so a run shows what it covered. */
function tally(core: AgentCore, seen: Map<string, number>): void {
	const rows = core.sql
		.exec<{ kind: string; n: number }>(
			`select json_extract(sync, '$.from') || '→' || json_extract(sync, '$.to') || coalesce(' (' || json_extract(sync, '$.detail.reason') || ')', '') as kind, count(*) as n
			 from events where json_extract(sync, '$.kind') = 'transition' group by kind`,
		)
		.toArray();
	for (const r of rows) seen.set(r.kind, (seen.get(r.kind) ?? 0) + r.n);
}

describe("the delivery rules against a reference model", () => {
	it("keeps every invariant through random sequences of events", async ({ annotate }) => {
		let ran = 0;
		const seen = new Map<string, number>();
		await fc.assert(
			fc.asyncProperty(fc.commands(steps, { maxCommands: 60, size: "max" }), async (cmds) => {
				const stub = env.AGENT_HUB.getByName(uniqueAgentId("model"));
				await runInDurableObject(stub, (instance: AgentHub) => {
					// SAFETY: a test reaching into the object for its storage primitives.
					const core = (instance as unknown as { core: AgentCore }).core;
					const world: World = { r: { core, declared: new Map() }, seen: newSeen() };
					fc.modelRun(() => ({ model: newModel(T0), real: world }), cmds);
					tally(core, seen);
				});
				ran++;
			}),
			{ numRuns: RUNS, seed: SEED },
		);
		const kinds = [...seen].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k} ${n}`);
		await annotate(`${ran} sequences of up to 60 steps (seed ${SEED}); transitions: ${kinds.join(", ")}`);
		// About 30 ms a sequence; more runs asked for get the time they need.
	}, Math.max(30_000, RUNS * 50));
});
