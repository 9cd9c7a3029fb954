/**
 * GET /v1/commands across agents and POST /v1/commands/{id}/retry (issue 17),
 * through the real worker and real agent sockets.
 */
import { describe, expect, it } from "vitest";
import { TEST_READ_KEY } from "../helpers/test-secrets";
import { AgentSocket, api, enqueue, expectError, query, sql, uniqueAgentId, waitForStatus } from "../helpers/worker/harness";

type Item = { id: string; agentId: string; action: string; status: string; fanoutId: string | null; retryOf: string | null; retriedBy: string[] };
type Page = { items: Item[]; nextCursor: string | null };

async function search(qs: string, key?: string): Promise<Page> {
	const res = await api(`/v1/commands?${qs}`, key ? { key } : {});
	expect(res.status, await res.clone().text()).toBe(200);
	return res.json<Page>();
}

describe("GET /v1/commands", () => {
	it("filters across agents by agent, status (repeatable), action, session, label and fan-out, newest first", async () => {
		const run = crypto.randomUUID().slice(0, 8);
		const a = uniqueAgentId("search-a");
		const b = uniqueAgentId("search-b");
		// a connects below, and its hello (which names no labels) replaces the agent's own:
		// its labels are the operator's. b never connects, so the merge can be seen on it.
		await query(sql`insert into agents (id, agent_labels, operator_labels) values
			(${a}, '{}'::jsonb, ${JSON.stringify({ env: "prod", run })}::jsonb),
			(${b}, ${JSON.stringify({ env: "dev", run })}::jsonb, ${JSON.stringify({ env: "prod-override" })}::jsonb)`);
		const action = `find-${run}`;
		const a1 = await enqueue(a, { action, sessionId: `s-${run}` });
		const b1 = await enqueue(b, { action });
		const a2 = await enqueue(a, { action: `${action}-other` });
		const sa = await AgentSocket.connect(a);
		const frames = await sa.commands(2);
		const f1 = frames.find((f) => f.id === a1.id);
		sa.send({ type: "result", id: f1?.id, status: "failed", error: "no" });
		await waitForStatus(a1.id, "failed");

		expect((await search(`agentId=${a}`)).items.map((c) => c.id)).toEqual([a2.id, a1.id]);
		expect((await search(`action=${action}`)).items.map((c) => c.id)).toEqual([b1.id, a1.id]);
		expect((await search(`action=${action}&status=failed`)).items.map((c) => c.id)).toEqual([a1.id]);
		expect((await search(`action=${action}&status=failed&status=pending`)).items.map((c) => c.id)).toEqual([b1.id, a1.id]);
		expect((await search(`sessionId=s-${run}`)).items.map((c) => c.id)).toEqual([a1.id]);
		// Labels are the agent's merged labels: the operator's win on a clash.
		expect((await search(`label=run=${run}&label=env=prod`)).items.map((c) => c.id)).toEqual([a2.id, a1.id]);
		expect((await search(`label=run=${run}&label=env=prod-override`)).items.map((c) => c.id)).toEqual([b1.id]);
		expect((await search(`label=run=${run}&label=env=dev`)).items).toEqual([]);

		const fan = await api("/v1/fanouts", { method: "POST", json: { agentIds: [a, b], action } });
		const { id: fanoutId } = await fan.json<{ id: string }>();
		const byFanout = await search(`fanoutId=${fanoutId}`);
		expect(byFanout.items.map((c) => c.agentId).sort()).toEqual([a, b].sort());
		expect(byFanout.items.every((c) => c.fanoutId === fanoutId)).toBe(true);
		sa.close();
	});

	it("pages newest first with the per-agent list's cursor, and filters by a created-at range", async () => {
		const action = `page-${crypto.randomUUID().slice(0, 8)}`;
		const made = [];
		for (let i = 0; i < 5; i++) made.push(await enqueue(uniqueAgentId("page"), { action }));
		const ids = made.map((c) => c.id).reverse();
		const p1 = await search(`action=${action}&limit=2`);
		const p2 = await search(`action=${action}&limit=2&cursor=${p1.nextCursor}`);
		const p3 = await search(`action=${action}&limit=2&cursor=${p2.nextCursor}`);
		expect([...p1.items, ...p2.items, ...p3.items].map((c) => c.id)).toEqual(ids);
		expect(p3.nextCursor).toBeNull();

		const created = await query<{ created_at: Date | string }>(sql`select created_at from agent_commands where id = ${made[2]?.id}`);
		const at = new Date(created[0]?.created_at ?? 0).toISOString();
		const after = await search(`action=${action}&createdAfter=${encodeURIComponent(at)}`);
		expect(after.items.map((c) => c.id)).toEqual(ids.slice(0, 3));
		const before = await search(`action=${action}&createdBefore=${encodeURIComponent(at)}`);
		expect(before.items.map((c) => c.id)).toEqual(ids.slice(3));
	});

	it("refuses bad filters with 400 naming the field; read keys may search", async () => {
		expect((await api("/v1/commands?limit=1", { key: TEST_READ_KEY })).status).toBe(200);
		for (const [qs, field] of [
			["status=done", "status"],
			["label=noequals", "label"],
			["label=-bad=x", "label"],
			["createdAfter=yesterday", "createdAfter"],
			["fanoutId=nope", "fanoutId"],
			["limit=0", "limit"],
			["cursor=zzz", "cursor"],
			["colour=red", "colour"],
		] as const) {
			const body = await expectError(await api(`/v1/commands?${qs}`), 400, "validation_failed");
			expect(body.error.message, qs).toContain(field);
		}
	});
});

describe("POST /v1/commands/:id/retry", () => {
	it("enqueues the same action, payload and options for a failed command, linked both ways, and runs it", async () => {
		const agentId = uniqueAgentId("retry");
		const agent = await AgentSocket.connect(agentId);
		const first = await enqueue(agentId, { action: "flaky", payload: { n: 1 }, priority: 7, sessionId: "s1", timeoutSeconds: 60, maxAttempts: 3, ttlSeconds: 600 });
		const f1 = await agent.next("command");
		agent.send({ type: "result", id: f1.id, status: "failed", error: "transient" });
		await waitForStatus(first.id, "failed");

		const res = await api(`/v1/commands/${first.id}/retry`, { method: "POST" });
		expect(res.status).toBe(201);
		const retry = await res.json<Item & Record<string, unknown>>();
		expect(retry).toMatchObject({
			agentId,
			action: "flaky",
			payload: { n: 1 },
			priority: 7,
			sessionId: "s1",
			timeoutSeconds: 60,
			maxAttempts: 3,
			retryOf: first.id,
			retriedBy: [],
		});
		expect(retry.id).not.toBe(first.id);
		expect(Date.parse(String(retry.expiresAt)) - Date.parse(String(retry.createdAt))).toBe(600_000);
		const f2 = await agent.next("command");
		expect(f2).toMatchObject({ id: retry.id, action: "flaky", payload: { n: 1 } });
		agent.send({ type: "result", id: f2.id, status: "completed" });
		await waitForStatus(retry.id, "completed");
		const old = await (await api(`/v1/commands/${first.id}`)).json<Item>();
		expect(old.retriedBy).toEqual([retry.id]);
		// A completed one is not retried; nor is an open one.
		await expectError(await api(`/v1/commands/${retry.id}/retry`, { method: "POST" }), 409, "not_retryable");
		const open = await enqueue(agentId, { action: "slow" });
		await expectError(await api(`/v1/commands/${open.id}/retry`, { method: "POST" }), 409, "not_retryable");
		agent.close();
	});

	it("retries a command whose agent never comes back: the retry stays pending for it; a cancelled or expired one too", async () => {
		const gone = uniqueAgentId("gone");
		const c = await enqueue(gone, { action: "lost-cause" });
		const cancel = await api(`/v1/commands/${c.id}/cancel`, { method: "POST" });
		expect(cancel.status).toBe(200);
		// At once: Postgres may not have heard of the cancel yet (it trails the object by a
		// flush), and a retry refused 409 "still pending" here was the bug this guards.
		const res = await api(`/v1/commands/${c.id}/retry`, { method: "POST" });
		expect(res.status).toBe(201);
		const retry = await res.json<Item & { blockedReason: string }>();
		expect(retry).toMatchObject({ status: "pending", blockedReason: "agent_offline", retryOf: c.id });
		// Retried again: both retries are listed, oldest first.
		const again = await (await api(`/v1/commands/${c.id}/retry`, { method: "POST" })).json<Item>();
		expect((await (await api(`/v1/commands/${c.id}`)).json<Item>()).retriedBy).toEqual([retry.id, again.id]);
		expect((await (await api(`/v1/commands/${retry.id}`)).json<Item>()).status).toBe("pending");

		const expiring = uniqueAgentId("expired");
		const e = await enqueue(expiring, { action: "late" });
		await query(sql`update agent_commands set status = 'expired', error_code = 'expired', completed_at = now() where id = ${e.id}`);
		expect((await api(`/v1/commands/${e.id}/retry`, { method: "POST" })).status).toBe(201);
	});

	it("answers 404 for an unknown command, 400 for a malformed id, 403 for a read key", async () => {
		await expectError(await api(`/v1/commands/${crypto.randomUUID()}/retry`, { method: "POST" }), 404, "not_found");
		await expectError(await api("/v1/commands/nope/retry", { method: "POST" }), 400, "validation_failed");
		const c = await enqueue(uniqueAgentId("scope"), { action: "x" });
		await expectError(await api(`/v1/commands/${c.id}/retry`, { method: "POST", key: TEST_READ_KEY }), 403, "forbidden");
	});
});
