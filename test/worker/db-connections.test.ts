/**
 * What an agent costs the database in connections. A fleet reconnecting at
 * once (every deploy) is bounded by connection setup, not by sockets, so an
 * object keeps one connection across its events instead of opening one per
 * read or flush.
 */
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { connectTimeout } from "../../src/db/client";
import { agentHub } from "../../src/agent/stub";
import { AgentSocket, api, objectSettled, query, sql, uniqueAgentId, waitFor } from "../helpers/worker/harness";

/** Connections the relay has accepted so far, from anyone. */
async function connectionsOpened(): Promise<number> {
	return Number(await (await fetch(`${env.TEST_RELAY_CONTROL}/opened`)).text());
}

/** Requests to the relay's /sql (the worker's HTTP query path) so far, from anyone. */
async function sqlRequests(): Promise<number> {
	return Number(await (await fetch(`${env.TEST_RELAY_CONTROL}/sql-requests`)).text());
}

/** Connections through the relay open right now. */
async function connectionsOpen(): Promise<number> {
	return Number(await (await fetch(`${env.TEST_RELAY_CONTROL}/open`)).text());
}


describe("database connections", () => {
	it("an agent's connect, twenty commands' status changes and two reconnects share one connection", async () => {
		const agentId = uniqueAgentId();
		const commands = Array.from({ length: 20 }, (_, i) => ({ agentId, action: `step-${i}` }));
		const before = await connectionsOpened();
		const sqlBefore = await sqlRequests();
		// The worker's insert is one HTTP request, no connection; handing the rows over wakes the object, which opens its own.
		expect((await api("/v1/commands/batch", { method: "POST", json: { commands } })).status).toBe(201);
		expect((await sqlRequests()) - sqlBefore).toBeGreaterThanOrEqual(1);

		let agent = await AgentSocket.connect(agentId, { hello: { concurrency: 1 } });
		// One at a time, so every ack and result is its own flush of the outbox.
		for (let i = 0; i < commands.length; i++) {
			const frame = await agent.next("command");
			agent.send({ type: "ack", id: frame.id });
			agent.send({ type: "result", id: frame.id, status: "completed", result: { i } });
		}
		await objectSettled(agentId);
		for (let i = 0; i < 2; i++) {
			agent.close();
			await agent.closed;
			agent = await AgentSocket.connect(agentId);
			await objectSettled(agentId);
		}
		const used = (await connectionsOpened()) - before;
		agent.close();

		// Opened one per read and per flush, this would be dozens (connect-time
		// reads, presence writes, ~40 status flushes). The object's connection
		// makes one (the worker's insert went over HTTP); other tests' objects
		// may still be winding down, hence a little room.
		expect(used).toBeGreaterThanOrEqual(1);
		expect(used).toBeLessThanOrEqual(3);
		const done = await query<{ n: number }>(
			sql`select count(*)::int as n from agent_commands where agent_id = ${agentId} and status = 'completed'`,
		);
		expect(done[0]?.n).toBe(20);
	});

	it("an object closes its connection once unused, so it can hibernate", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		await objectSettled(agentId);
		agent.close();
		await objectSettled(agentId);
		// Held open, every idle agent of a fleet would pin a pooler connection
		// and keep its object from hibernating.
		await waitFor(async () => (await connectionsOpen()) === 0, "every connection closed", 10_000);
		const seen = await agentHub(env, agentId).inspect();
		expect(seen.connected).toBe(false);
	});

	it("waits DB_CONNECT_TIMEOUT_MS for a connection: 1 to 60 s, otherwise 10 s", () => {
		expect(connectTimeout({ DATABASE_URL: "", DB_CONNECT_TIMEOUT_MS: "2500" })).toBe(2_500);
		for (const bad of [undefined, "", "0", "999", "60001", "1500.5", "abc", "-5000"]) {
			expect(connectTimeout({ DATABASE_URL: "", DB_CONNECT_TIMEOUT_MS: bad })).toBe(10_000);
		}
	});
});
