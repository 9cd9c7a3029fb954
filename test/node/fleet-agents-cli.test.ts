/**
 * The CLI's fleet stop asks before it acts on a terminal. The subprocess
 * runs in sdk-cli.e2e.test.ts have no terminal, so the question is asked
 * here, of fleetAgents itself, with a client that records what it is told.
 */
import { describe, expect, it } from "vitest";
import { fleetAgents } from "../../src/cli/fleet-agents.ts";
import type { SwitchyardClient } from "../../src/sdk/client.ts";

function fakeClient() {
	const calls: unknown[][] = [];
	const client = {
		stopFleet: async (...args: unknown[]) => {
			calls.push(args);
			return { matched: 2, reached: 1, unreached: [{ agentId: "b", error: "unavailable" }], cancelled: 3, cancelRequested: 1, paused: false };
		},
	};
	// SAFETY: fleet stop calls only stopFleet.
	return { client: client as unknown as SwitchyardClient, calls };
}

function run(positionals: string[], flags: Record<string, unknown>, answer: boolean) {
	const { client, calls } = fakeClient();
	const asked: string[] = [];
	const out: string[] = [];
	const code = fleetAgents({
		client,
		positionals,
		flags,
		print: (_value, human) => out.push(human()),
		interactive: true,
		confirm: async (q) => {
			asked.push(q);
			return answer;
		},
	});
	return { code, calls, asked, out };
}

describe("switchyard fleet stop on a terminal", () => {
	it("asks first, naming the selector, and stops nothing on no", async () => {
		const r = run(["fleet", "stop"], { label: ["env=prod"], pause: true }, false);
		expect(await r.code).toBe(0);
		expect(r.asked).toEqual(["Cancel every open command of every agent with env=prod and pause them? [y/N] "]);
		expect(r.calls).toEqual([]);
	});

	it("stops on yes, and exits 4 when an agent was not reached", async () => {
		const r = run(["fleet", "stop"], { label: ["env=prod", "region=eu"], online: true }, true);
		expect(await r.code).toBe(4);
		expect(r.calls).toEqual([[{ labels: { env: "prod", region: "eu" }, online: true }, { pause: undefined }]]);
		expect(r.out.join("\n")).toContain("unreached b: unavailable");
	});

	it("does not ask with --yes, and says EVERY agent for --all", async () => {
		const yes = run(["fleet", "stop"], { all: true, yes: true }, false);
		expect(await yes.code).toBe(4);
		expect(yes.asked).toEqual([]);
		expect(yes.calls[0]?.[0]).toEqual({ all: true });
		const all = run(["fleet", "stop"], { all: true }, false);
		await all.code;
		expect(all.asked[0]).toContain("EVERY agent");
	});

	it("refuses a selector it cannot send", async () => {
		await expect(run(["fleet", "stop"], {}, true).code).rejects.toThrow(/--label/);
		await expect(run(["fleet", "stop"], { label: ["env"] }, true).code).rejects.toThrow(/key=value/);
		await expect(run(["fleet", "stop"], { label: ["a=1"], all: true }, true).code).rejects.toThrow(/not both/);
	});
});
