/**
 * Postgres's confirmation of a status write is not given a commit of its
 * own: it rides with the object's next commit, or a timer's within
 * DEFERRED_WRITE_MS. Losing it with the isolate must cost nothing but a
 * suffix written again, which Postgres keeps once.
 */
import { evictDurableObject, runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import type { AgentHub } from "../../src/agent/agent-hub";
import type { AgentCore } from "../../src/agent/core";
import { DEFERRED_WRITE_MS } from "../../src/agent/core";
import { agentHub } from "../../src/agent/stub";
import { commandEvents, connectSettled, enqueue, objectSettled, uniqueAgentId, waitFor, waitForStatus } from "../helpers/worker/harness";

/** The confirmation mark as the object holds it, and as its storage does. */
function marks(stub: ReturnType<typeof agentHub>): Promise<{ held: number; stored: number }> {
	return runInDurableObject(stub, (instance: AgentHub, state) => {
		// SAFETY: a test reading the object's in-memory state.
		const core = (instance as unknown as { core: AgentCore }).core;
		const row = state.storage.sql.exec<{ value: string }>("select value from meta where key = 'synced_through'").toArray()[0];
		return { held: core.state.get("synced_through") ?? 0, stored: Number(row?.value ?? 0) };
	});
}

describe("Postgres's confirmation, deferred to the next commit", () => {
	it("an instance that lost it writes the suffix again, and Postgres keeps one copy of each change", async () => {
		const agentId = uniqueAgentId();
		const agent = await connectSettled(agentId);
		const stub = agentHub(env, agentId);
		const cmd = await enqueue(agentId, { action: "count" });
		const frame = await agent.next("command");
		agent.send({ type: "result", id: frame.id, status: "completed", result: { ok: true } });
		await waitForStatus(cmd.id, "completed");
		await objectSettled(agentId);
		const events = await commandEvents(cmd.id);

		// Confirmed in memory, not yet on disk: the isolate dies now, its timers with it.
		const before = await marks(stub);
		expect(before.stored).toBeLessThan(before.held);
		await runInDurableObject(stub, (_i: AgentHub, state) => {
			state.abort("the test kills the isolate");
		}).catch(() => undefined);
		// A stub is bound to the instance it reached; a new one reaches the next.
		const fresh = agentHub(env, agentId);
		expect((await fresh.inspect()).outbox).toBeGreaterThan(0);

		// The alarm (the stale ack deadline) finds entries Postgres has not confirmed, as far as it knows, and writes them.
		expect(await runDurableObjectAlarm(fresh)).toBe(true);
		await objectSettled(agentId);
		expect(await commandEvents(cmd.id)).toEqual(events);
		expect((await waitForStatus(cmd.id, "completed")).result).toEqual({ ok: true });
		agent.close();
	});

	it(`is written within ${DEFERRED_WRITE_MS / 1000} s when no other commit comes, so a fresh instance has nothing to write`, async () => {
		const agentId = uniqueAgentId();
		const agent = await connectSettled(agentId);
		const stub = agentHub(env, agentId);
		const cmd = await enqueue(agentId, { action: "count" });
		const frame = await agent.next("command");
		agent.send({ type: "result", id: frame.id, status: "completed" });
		await waitForStatus(cmd.id, "completed");
		await objectSettled(agentId);

		await waitFor(
			async () => {
				const { held, stored } = await marks(stub);
				return stored === held;
			},
			"the confirmation on disk",
			DEFERRED_WRITE_MS * 3,
		);
		await evictDurableObject(stub);
		expect((await stub.inspect()).outbox).toBe(0);
		agent.close();
	});

	it("rides with the next command's commit", async () => {
		const agentId = uniqueAgentId();
		const agent = await connectSettled(agentId);
		const stub = agentHub(env, agentId);
		const first = await enqueue(agentId, { action: "count" });
		agent.send({ type: "result", id: (await agent.next("command")).id, status: "completed" });
		await waitForStatus(first.id, "completed");
		await objectSettled(agentId);
		const confirmed = await marks(stub);
		expect(confirmed.stored).toBeLessThan(confirmed.held);

		await enqueue(agentId, { action: "count" });
		await agent.next("command");
		// The enqueue's own commit carried the first command's confirmation.
		expect((await marks(stub)).stored).toBeGreaterThanOrEqual(confirmed.held);
		agent.close();
	});
});
