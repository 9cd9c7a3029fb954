/**
 * Fan-outs, search and retry as an operator meets them (issue 17): the
 * `switchyard` CLI as a subprocess and the typed client, against the real
 * local stack with two SDK agents.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { progressLine, when } from "../../src/cli/fleet-commands.ts";
import { Agent } from "../../src/sdk/agent.ts";
import { SwitchyardApiError, SwitchyardClient } from "../../src/sdk/client.ts";
import { runCli } from "../helpers/node/cli.ts";
import { type LocalStack, startLocalStack } from "../helpers/node/local-stack.ts";

let stack: LocalStack;
let client: SwitchyardClient;
const agents: Agent[] = [];

function cli(args: string[]) {
	return runCli(stack, args);
}

async function startAgent(agentId: string, setup: (a: Agent) => void): Promise<void> {
	const agent = new Agent({ url: stack.base, agentId, token: async () => (await client.token(agentId)).token, concurrency: 2 });
	setup(agent);
	agents.push(agent);
	agent.start();
	await agent.whenOpen();
}

beforeAll(async () => {
	stack = await startLocalStack();
	client = new SwitchyardClient({ baseUrl: stack.base, apiKey: stack.apiKey });
});

afterAll(async () => {
	await Promise.all(agents.map((a) => a.stop({ graceMs: 1_000 })));
	await stack?.stop();
});

describe("fan-outs, search and retry from the CLI and the typed client", () => {
	const good = `good-${Date.now()}`;
	const bad = `bad-${Date.now()}`;

	beforeAll(async () => {
		await startAgent(good, (a) => a.handle("echo", (p) => ({ echoed: p })));
		await startAgent(bad, (a) =>
			a.handle("echo", () => {
				throw new Error("disk full");
			}),
		);
	});

	it("fanout send --wait shows done/total as it changes and exits 1 when a target failed; search and retry find and redo it", async () => {
		const sent = await cli(["fanout", "send", "echo", "--agent", good, "--agent", bad, "--payload", '{"n":1}', "--wait", "--json"]);
		expect(sent.code, sent.stderr).toBe(1);
		const fanout = JSON.parse(sent.stdout) as { id: string; done: boolean; counts: Record<string, number> };
		expect(fanout).toMatchObject({ done: true, counts: { completed: 1, failed: 1 } });
		// Not a terminal here: one progress line per change, the last one final.
		const lines = sent.stderr.trim().split("\n");
		expect(lines.at(-1)).toBe(`fanout ${fanout.id}: 2/2 done (completed 1, failed 1)`);
		expect(lines.every((l) => /^fanout \S+: \d\/2 done \(/.test(l))).toBe(true);

		const got = await cli(["fanout", "get", fanout.id]);
		expect(got.code).toBe(0);
		expect(got.stdout).toMatch(new RegExp(`${bad}\\s+\\S+\\s+failed`));

		const found = await cli(["command", "search", "--fanout", fanout.id, "--status", "failed", "--json"]);
		expect(found.code).toBe(0);
		const items = (JSON.parse(found.stdout) as { items: { id: string; agentId: string; error: string }[] }).items;
		expect(items).toHaveLength(1);
		expect(items[0]).toMatchObject({ agentId: bad, error: "disk full" });

		const retried = await cli(["command", "retry", items[0]?.id ?? "", "--json"]);
		expect(retried.code).toBe(0);
		const retry = JSON.parse(retried.stdout) as { id: string; retryOf: string; action: string; payload: unknown };
		expect(retry).toMatchObject({ retryOf: items[0]?.id, action: "echo", payload: { n: 1 } });
		expect((await client.wait(retry.id)).status).toBe("failed");
		expect((await client.get(items[0]?.id ?? "")).retriedBy).toEqual([retry.id]);

		// A completed command is not retried: the API refused, exit 3.
		const completed = (await client.searchCommands({ fanoutId: fanout.id, status: "completed" })).items[0];
		const refused = await cli(["command", "retry", completed?.id ?? ""]);
		expect(refused.code).toBe(3);
		expect(refused.stderr).toMatch(/not_retryable/);

		const ok = await cli(["fanout", "send", "echo", "--agent", good, "--wait"]);
		expect(ok.code, ok.stderr).toBe(0);
		expect(ok.stdout).toMatch(/1\/1 done \(completed 1\)/);
	});

	it("refuses what cannot work with the existing exit codes", async () => {
		const none = await cli(["fanout", "send", "echo", "--label", `nobody=${Date.now()}`]);
		expect(none.code).toBe(3);
		expect(none.stderr).toMatch(/no_targets/);
		expect((await cli(["fanout", "send", "echo"])).code).toBe(2);
		expect((await cli(["fanout", "send", "echo", "--label", "novalue"])).code).toBe(2);
		expect((await cli(["command", "search", "--since", "last tuesday"])).code).toBe(2);
		expect((await cli(["fanout", "get", crypto.randomUUID()])).code).toBe(3);
	});

	it("the typed client fans out, reads progress, searches, cancels and retries", async () => {
		const created = await client.fanout({ agentIds: [good, `never-${Date.now()}`], action: "echo", payload: { via: "sdk" } });
		expect(created.targetCount).toBe(2);
		const cancelled = await client.cancelFanout(created.id);
		expect(cancelled.id).toBe(created.id);
		const view = await client.getFanout(created.id);
		expect(view.done).toBe(true);
		expect(view.targets.items).toHaveLength(2);
		const page = await client.searchCommands({ fanoutId: created.id, limit: "1" });
		expect(page.items).toHaveLength(1);
		expect(page.nextCursor).not.toBeNull();
		const offline = view.targets.items.find((t) => t.agentId !== good);
		expect(offline?.status).toBe("cancelled");
		const again = await client.retry(offline?.commandId ?? "");
		expect(again).toMatchObject({ status: "pending", blockedReason: "agent_offline", retryOf: offline?.commandId });
		await expect(client.retry(crypto.randomUUID())).rejects.toBeInstanceOf(SwitchyardApiError);
	});

	it("prints progress and reads ages as a user types them", () => {
		expect(progressLine({ id: "f", targetCount: 5, counts: { pending: 2, completed: 2, expired: 1 } })).toBe(
			"fanout f: 3/5 done (pending 2, completed 2, expired 1)",
		);
		expect(when("since", "2h", Date.parse("2026-01-01T12:00:00Z"))).toBe("2026-01-01T10:00:00.000Z");
		expect(when("since", "2026-01-01T00:00:00Z")).toBe("2026-01-01T00:00:00.000Z");
	});
});
