/**
 * The per-agent backlog quota (issue 15, defect 2): an enqueue past
 * AGENT_BACKLOG_LIMIT open commands is refused with 429 agent_backlog_full,
 * and a batch's items past it are refused one by one.
 */
import { describe, expect, it } from "vitest";
import { AgentSocket, expectError, postWithEnv, query, sql, uniqueAgentId, waitForStatus } from "../helpers/worker/harness";

describe("backlog quota", () => {
	const LIMIT = 3;

	/** The worker with AGENT_BACKLOG_LIMIT set low, through its real fetch handler. */
	function call(path: string, json: unknown): Promise<Response> {
		return postWithEnv(path, json, { AGENT_BACKLOG_LIMIT: String(LIMIT) });
	}

	it("refuses an enqueue past AGENT_BACKLOG_LIMIT open commands with 429 agent_backlog_full, and writes nothing", async () => {
		const agentId = uniqueAgentId("quota");
		for (let i = 0; i < LIMIT; i++) expect((await call(`/v1/agents/${agentId}/commands`, { action: `q${i}`, idempotencyKey: `k${i}` })).status).toBe(201);
		const refused = await call(`/v1/agents/${agentId}/commands`, { action: "one_too_many" });
		await expectError(refused, 429, "agent_backlog_full");
		expect(Number(refused.headers.get("retry-after"))).toBeGreaterThan(0);
		// A replay adds nothing to the backlog: it is answered, full or not.
		expect((await call(`/v1/agents/${agentId}/commands`, { action: "q0", idempotencyKey: "k0" })).status).toBe(200);
		const [n] = await query<{ n: number }>(sql`select count(*)::int as n from agent_commands where agent_id = ${agentId}`);
		expect(n?.n).toBe(LIMIT);
	});

	it("refuses a batch's items past their agent's quota one by one, and writes the rest", async () => {
		const full = uniqueAgentId("quota-batch");
		const other = uniqueAgentId("quota-other");
		expect((await call(`/v1/agents/${full}/commands`, { action: "first" })).status).toBe(201);
		const res = await call("/v1/commands/batch", {
			commands: [
				{ agentId: full, action: "a" },
				{ agentId: other, action: "b" },
				{ agentId: full, action: "c" },
				{ agentId: full, action: "d" },
				{ agentId: full, action: "e", idempotencyKey: "e" },
			],
		});
		expect(res.status).toBe(201);
		const { items } = await res.json<{ items: { created: boolean; command?: { action: string }; error?: { code: string; message: string } }[] }>();
		expect(items.map((i) => i.command?.action ?? i.error?.code)).toEqual(["a", "b", "c", "agent_backlog_full", "agent_backlog_full"]);
		expect(items.map((i) => i.created)).toEqual([true, true, true, false, false]);
		const counts = await query<{ agent_id: string; n: number }>(
			sql`select agent_id, count(*)::int as n from agent_commands where agent_id in (${full}, ${other}) group by agent_id order by agent_id`,
		);
		expect(Object.fromEntries(counts.map((c) => [c.agent_id, c.n]))).toEqual({ [full]: LIMIT, [other]: 1 });
	});

	it("counts only open commands: a finished one frees its place", async () => {
		const agentId = uniqueAgentId("quota-done");
		const agent = await AgentSocket.connect(agentId);
		const ids: string[] = [];
		for (let i = 0; i < LIMIT; i++) ids.push(((await (await call(`/v1/agents/${agentId}/commands`, { action: `d${i}` })).json()) as { id: string }).id);
		await expectError(await call(`/v1/agents/${agentId}/commands`, { action: "refused" }), 429, "agent_backlog_full");
		const [frame] = await agent.commands(1);
		agent.send({ type: "result", id: frame?.id, status: "completed" });
		await waitForStatus(frame?.id ?? "", "completed");
		expect((await call(`/v1/agents/${agentId}/commands`, { action: "admitted" })).status).toBe(201);
		agent.close();
	});
});
