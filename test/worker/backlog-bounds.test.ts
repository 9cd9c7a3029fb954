/**
 * A backlog must not crash-loop its agent's object (issue 15, defect 2):
 * the catch-up reads Postgres in pages and without payloads, a payload is
 * read only when its command is sent, and the bytes a window sends at once
 * are bounded. The quota that bounds the backlog: backlog-quota.test.ts.
 */
import { runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import type { AgentHub } from "../../src/agent/agent-hub";
import type { AgentCore } from "../../src/agent/core";
import { agentHub, toBufferInput } from "../../src/agent/stub";
import { getCommand } from "../../src/db/commands";
import {
	AgentSocket,
	db,
	enqueue,
	query,
	sql,
	uniqueAgentId,
	waitFor,
} from "../helpers/worker/harness";

/** Shrinks the object's bounds so a test can cross them with a handful of commands. */
async function setLimits(agentId: string, limits: Partial<AgentCore["limits"]>): Promise<void> {
	await runInDurableObject(agentHub(env, agentId), (instance: AgentHub) => {
		// SAFETY: a test reaching into the object; `limits` is read on every catch-up and fill.
		Object.assign((instance as unknown as { core: AgentCore }).core.limits, limits);
	});
}

/** What the object holds as each command's payload, by id. */
function bufferedPayloads(agentId: string): Promise<Record<string, string>> {
	return runInDurableObject(agentHub(env, agentId), (_instance, state) =>
		Object.fromEntries(state.storage.sql.exec<{ id: string; payload: string }>("select id, payload from commands").toArray().map((r) => [r.id, r.payload])),
	);
}

/** How many reads of payloads failed in a row (the object's own count; 0 once one succeeds). */
function payloadReadFailures(agentId: string): Promise<number> {
	return runInDurableObject(agentHub(env, agentId), (_instance, state) =>
		Number(state.storage.sql.exec<{ value: string }>("select value from meta where key = 'payloads_failures'").toArray()[0]?.value ?? 0),
	);
}

/** Rows as an INSERT by hand leaves them: in Postgres, never forwarded to the object. */
async function insertByHand(agentId: string, n: number, priorityOf: (i: number) => number = () => 0) {
	const rows = Array.from({ length: n }, (_, i) => ({ action: `by_hand_${i}`, payload: { i, pad: "x".repeat(100) }, priority: priorityOf(i) }));
	return query<{ id: string; action: string; priority: number; seq: number }>(sql`
		insert into agent_commands (agent_id, action, payload, priority)
		select ${agentId}, action, payload, priority
		from jsonb_to_recordset(${JSON.stringify(rows)}::jsonb) as r(action text, payload jsonb, priority int)
		returning id, action, priority, seq`);
}

describe("catch-up", () => {
	it("takes a backlog longer than a page, page after page, without buffering any payload", async () => {
		const agentId = uniqueAgentId("paged");
		await setLimits(agentId, { catchUpPageRows: 3 });
		const rows = await insertByHand(agentId, 8, (i) => (i % 3 === 2 ? 5 : 0));
		expect((await agentHub(env, agentId).reconcile()).added).toBe(8);
		// Nothing is sent (no agent), so nothing needed a payload yet.
		const held = await bufferedPayloads(agentId);
		expect(Object.keys(held).sort()).toEqual(rows.map((r) => r.id).sort());
		expect(Object.values(held).every((p) => p === "")).toBe(true);

		// Sent, each command carries its payload, in priority then enqueue order.
		const agent = await AgentSocket.connect(agentId, { hello: { concurrency: 20 } });
		const frames = await agent.commands(8);
		const order = [...rows].sort((a, b) => b.priority - a.priority || a.seq - b.seq);
		expect(frames.map((f) => f.id)).toEqual(order.map((r) => r.id));
		for (const f of frames) expect(f.payload).toMatchObject({ i: Number(f.action.replace("by_hand_", "")) });
		agent.close();
	});
});

describe("payloads read when sent", () => {
	it("takes the payload a forward carries for a command a catch-up buffered without one", async () => {
		const agentId = uniqueAgentId("late-forward");
		const stub = agentHub(env, agentId);
		const [row] = await insertByHand(agentId, 1);
		expect((await stub.reconcile()).added).toBe(1);
		// The worker's forward, late: the row is known, so only its payload is new.
		const record = await db((d) => getCommand(d, row?.id ?? ""));
		if (!record) throw new Error("the row is gone");
		expect((await stub.enqueue([toBufferInput(record)])).statuses).toEqual({ [record.id]: "pending" });
		expect(JSON.parse(Object.values(await bufferedPayloads(agentId))[0] ?? "")).toMatchObject({ i: 0 });
	});

	it("keeps a command pending, unsent, while Postgres is down at its dispatch, and sends it once it is back", async () => {
		const agentId = uniqueAgentId("unread");
		const stub = agentHub(env, agentId);
		const [row] = await insertByHand(agentId, 1);
		// Buffered without its payload while no agent is there to send it to.
		expect((await stub.reconcile()).added).toBe(1);
		expect(Object.values(await bufferedPayloads(agentId))).toEqual([""]);
		// A new object reads its token version from Postgres once, before its first connect
		// (revocations outlive its storage): let it, since this test is about the payload read.
		await stub.tokenVersion();

		await fetch(`${env.TEST_RELAY_CONTROL}/down`);
		let agent: AgentSocket | undefined;
		try {
			agent = await AgentSocket.connect(agentId, { hello: { concurrency: 5 } });
			await waitFor(() => payloadReadFailures(agentId), "a failed read of the payload", 30_000);
			const seen = await stub.inspect();
			expect(seen.buffered).toMatchObject({ pending: 1 });
			expect(seen.buffered.dispatched ?? 0).toBe(0);
			expect(agent.frames.filter((f) => f.type === "command")).toEqual([]);
			expect(Object.values(await bufferedPayloads(agentId))).toEqual([""]);
		} finally {
			await fetch(`${env.TEST_RELAY_CONTROL}/up`);
		}
		// The retry (on the object's alarm, with backoff) reads it and sends it, its first attempt.
		const frame = await agent.next("command", 30_000);
		expect(frame).toMatchObject({ id: row?.id, attempt: 1, payload: { i: 0 } });
		agent.close();
	}, 60_000);
});

describe("bytes in flight", () => {
	it("stops a fill at the byte bound, sends more as acks come, and always sends one however large", async () => {
		const agentId = uniqueAgentId("bytes");
		const stub = agentHub(env, agentId);
		await setLimits(agentId, { windowBytes: 1_000 });
		// ~410 bytes of JSON each: two fit in 1,000, three do not. The last alone is over the bound.
		const small = [];
		for (let i = 0; i < 4; i++) small.push(await enqueue(agentId, { action: `bytes_${i}`, payload: { pad: "x".repeat(400) } }));
		const big = await enqueue(agentId, { action: "big", payload: { pad: "y".repeat(5_000) } });

		const agent = await AgentSocket.connect(agentId, { hello: { concurrency: 10 } });
		const first = await agent.commands(2);
		expect(first.map((f) => f.id)).toEqual([small[0]?.id, small[1]?.id]);
		// The fill was one transaction: what it left is pending, not on its way.
		expect((await stub.inspect()).buffered).toMatchObject({ dispatched: 2, pending: 3 });

		// An ack frees its bytes (not its slot): the next fits.
		agent.send({ type: "ack", id: first[0]?.id });
		expect((await agent.next("command")).id).toBe(small[2]?.id);
		agent.send({ type: "ack", id: first[1]?.id });
		expect((await agent.next("command")).id).toBe(small[3]?.id);
		expect((await stub.inspect()).buffered).toMatchObject({ dispatched: 2, acknowledged: 2, pending: 1 });
		// Over the bound on its own, the big one waits until nothing else is awaiting an ack, then goes.
		agent.send({ type: "ack", id: small[2]?.id });
		await waitFor(async () => (await stub.inspect()).buffered.acknowledged === 3, "the third ack");
		expect((await stub.inspect()).buffered).toMatchObject({ dispatched: 1, pending: 1 });
		agent.send({ type: "ack", id: small[3]?.id });
		expect((await agent.next("command")).id).toBe(big.id);
		agent.close();
	});
});
