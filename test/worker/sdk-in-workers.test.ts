/**
 * The agent SDK runs inside workerd too (no Node-only imports): an Agent
 * living in a Worker connects through a fetch upgrade, as the SDK's default
 * connector does there, and completes commands.
 */
import { describe, expect, it } from "vitest";
import { Agent } from "../../src/sdk/agent";
import { connectHere, enqueue, tokenFor, uniqueAgentId, waitForStatus } from "../helpers/worker/harness";

describe("the agent SDK in a Worker", () => {
	it("connects, runs a handler and reports its result", async () => {
		const agentId = uniqueAgentId("sdk");
		const agent = new Agent({
			url: "https://switchyard.test",
			agentId,
			token: await tokenFor(agentId),
			concurrency: 2,
			connect: connectHere,
		});
		agent.handle("add", (payload) => {
			const { a, b } = payload as { a: number; b: number };
			return { sum: a + b };
		});
		agent.start();
		await agent.whenOpen();
		const cmd = await enqueue(agentId, { action: "add", payload: { a: 2, b: 3 } });
		expect(await waitForStatus(cmd.id, "completed")).toMatchObject({ result: { sum: 5 } });
		await agent.stop({ graceMs: 1_000 });
		expect(agent.state).toBe("stopped");
	});

	it("stops when the worker refuses its token", async () => {
		const agentId = uniqueAgentId("sdk");
		const agent = new Agent({ url: "https://switchyard.test", agentId, token: "not-a-token", connect: connectHere });
		const stopped = new Promise<string>((r) => agent.on("stopped", (e) => r(e.reason)));
		agent.start();
		expect(await stopped).toBe("connection refused (HTTP 401): invalid agent token");
	});
});
