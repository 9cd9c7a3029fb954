/**
 * An idempotency key names one command. The same key with the same command
 * replays it; the same key with a different command is a client bug (a key
 * reused, or derived from too little), refused with 422 instead of silently
 * answering with a command the client did not ask for.
 */
import { describe, expect, it } from "vitest";
import { api, enqueue, expectError, query, sql, uniqueAgentId } from "../helpers/worker/harness";

const post = (agentId: string, json: unknown) => api(`/v1/agents/${agentId}/commands`, { method: "POST", json });

type BatchItem = { created: boolean; command?: { id: string; action: string }; error?: { code: string; message: string } };

async function batch(commands: unknown[]): Promise<{ status: number; items: BatchItem[] }> {
	const res = await api("/v1/commands/batch", { method: "POST", json: { commands } });
	return { status: res.status, items: (await res.json<{ items: BatchItem[] }>()).items };
}

async function rowsFor(agentId: string): Promise<number> {
	const [row] = await query<{ n: number }>(sql`select count(*)::int as n from agent_commands where agent_id = ${agentId}`);
	return row?.n ?? -1;
}

describe("idempotency key reused with a different command", () => {
	const base = {
		action: "deploy",
		payload: { ref: "main", env: { region: "eu", replicas: 3 } },
		idempotencyKey: "deploy-1",
	};

	it("the same command, however spelled, replays the first (200)", async () => {
		const agentId = uniqueAgentId();
		const first = await enqueue(agentId, base);
		// Defaults spelled out, nulls for absent fields, payload keys in another order: the same command.
		const same = {
			idempotencyKey: "deploy-1",
			payload: { env: { replicas: 3, region: "eu" }, ref: "main" },
			action: "deploy",
			priority: 5,
			maxAttempts: 5,
			ackTimeoutSeconds: 10,
			sessionId: null,
			ttlSeconds: null,
			timeoutSeconds: null,
		};
		const again = await post(agentId, same);
		expect(again.status).toBe(200);
		expect((await again.json<{ id: string }>()).id).toBe(first.id);
	});

	it.each([
		["action", { action: "rollback" }],
		["payload", { payload: { ref: "main", env: { region: "eu", replicas: 4 } } }],
		["payload (left out)", { payload: undefined }],
		["priority", { priority: 9 }],
		["sessionId", { sessionId: "s-1" }],
		["ttlSeconds", { ttlSeconds: 60 }],
		["timeoutSeconds", { timeoutSeconds: 60 }],
		["maxAttempts", { maxAttempts: 2 }],
		["ackTimeoutSeconds", { ackTimeoutSeconds: 30 }],
	])("a change of %s is refused with 422 idempotency_key_reused", async (_field, change) => {
		const agentId = uniqueAgentId();
		const first = await enqueue(agentId, base);
		const res = await post(agentId, { ...base, ...change });
		const body = await expectError(res, 422, "idempotency_key_reused");
		expect(body.error.message).toContain("deploy-1");
		expect(body.error.message).toContain(first.id);
		expect(await rowsFor(agentId)).toBe(1);
	});

	it("two racing requests with one key and different commands: one is created, the other refused", async () => {
		const agentId = uniqueAgentId();
		const [a, b] = await Promise.all([
			post(agentId, { action: "a", idempotencyKey: "race" }),
			post(agentId, { action: "b", idempotencyKey: "race" }),
		]);
		expect([a?.status, b?.status].sort()).toEqual([201, 422]);
		expect(await rowsFor(agentId)).toBe(1);
	});

	it("a batch refuses only the item that reuses a key, and creates the rest", async () => {
		const agentId = uniqueAgentId();
		const first = await enqueue(agentId, { action: "x", idempotencyKey: "k1" });
		const { status, items } = await batch([
			{ agentId, action: "x", idempotencyKey: "k1" },
			{ agentId, action: "other", idempotencyKey: "k1" },
			{ agentId, action: "y", idempotencyKey: "k2" },
			{ agentId, action: "y", payload: { changed: true }, idempotencyKey: "k2" },
			{ agentId, action: "z" },
		]);
		expect(status).toBe(201);
		expect(items.map((i) => i.created)).toEqual([false, false, true, false, true]);
		expect(items[0]?.command?.id).toBe(first.id);
		expect(items[1]).toEqual({ created: false, error: { code: "idempotency_key_reused", message: expect.stringContaining("k1") } });
		expect(items[2]?.command?.action).toBe("y");
		expect(items[3]).toEqual({ created: false, error: { code: "idempotency_key_reused", message: expect.stringContaining("k2") } });
		expect(items[4]?.command?.action).toBe("z");
		expect(await rowsFor(agentId)).toBe(3);
	});

	it("a keyed row written before fingerprints existed (or by SQL) is replayed, not refused", async () => {
		const agentId = uniqueAgentId();
		const [row] = await query<{ id: string }>(sql`
			insert into agent_commands (agent_id, action, idempotency_key) values (${agentId}, 'from_sql', 'legacy') returning id`);
		const res = await post(agentId, { action: "something-else", idempotencyKey: "legacy" });
		expect(res.status).toBe(200);
		expect((await res.json<{ id: string }>()).id).toBe(row?.id);
	});
});
