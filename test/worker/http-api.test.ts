/**
 * The HTTP API's contract: shapes, paging, auth on every route, and a clear
 * JSON error (never a 500) for bad input or a database outage.
 */
import { createExecutionContext, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import type { AgentHub } from "../../src/agent/agent-hub";
import { app } from "../../src/app";
import { agentHub } from "../../src/agent/stub";
import { TEST_READ_KEY } from "../helpers/test-secrets";
import { AgentSocket, API_KEY, BASE, api, enqueue, expectError, query, sql, uniqueAgentId, waitFor } from "../helpers/worker/harness";

async function countCommands(agentId: string): Promise<number> {
	const [row] = await query<{ n: string }>(sql`select count(*)::text as n from agent_commands where agent_id = ${agentId}`);
	return Number(row?.n);
}

describe("POST /v1/agents/:agentId/commands", () => {
	it("returns 201 with the full command and applies defaults", async () => {
		const agentId = uniqueAgentId();
		const res = await api(`/v1/agents/${agentId}/commands`, { method: "POST", json: { action: "echo" } });
		expect(res.status).toBe(201);
		const body = await res.json<Record<string, unknown>>();
		expect(body).toMatchObject({
			agentId,
			action: "echo",
			payload: {},
			sessionId: null,
			status: "pending",
			priority: 5,
			attempts: 0,
			result: null,
			error: null,
			dispatchedAt: null,
			acknowledgedAt: null,
			completedAt: null,
		});
		expect(body.id).toMatch(/^[0-9a-f-]{36}$/);
		expect(Date.parse(body.createdAt as string)).not.toBeNaN();
	});

	it("says where the time went: Server-Timing with the durable write, the agent's object and the total", async () => {
		const agentId = uniqueAgentId();
		const timings = (res: Response) =>
			Object.fromEntries(
				(res.headers.get("server-timing") ?? "").split(",").map((part) => {
					const [name, ...fields] = part.trim().split(";");
					return [name, Number(fields.find((f) => f.startsWith("dur="))?.slice(4))];
				}),
			);
		const single = await api(`/v1/agents/${agentId}/commands`, { method: "POST", json: { action: "echo" } });
		const batch = await api("/v1/commands/batch", { method: "POST", json: { commands: [{ agentId, action: "echo" }] } });
		for (const res of [single, batch]) {
			expect(res.status).toBe(201);
			const t = timings(res);
			expect(Object.keys(t).sort()).toEqual(["agent", "db", "total"]);
			for (const ms of Object.values(t)) expect(ms).toBeGreaterThanOrEqual(0);
			expect(t.total).toBeGreaterThanOrEqual(t.db ?? Number.NaN);
		}
	});

	it("stores any JSON payload verbatim", async () => {
		const agentId = uniqueAgentId();
		const payload = { s: "quote ' \" and ; DROP TABLE agents; --", n: 1.5, neg: -3, arr: [null, true, { deep: ["x"] }], uni: "héllo 👋" };
		const cmd = await enqueue(agentId, { action: "store", payload });
		const got = await (await api(`/v1/commands/${cmd.id}`)).json<{ payload: unknown }>();
		expect(got.payload).toEqual(payload);
		for (const scalar of ["text", 42, null, [1, 2]]) {
			const c = await enqueue(agentId, { action: "scalar", payload: scalar });
			expect(c.payload).toEqual(scalar);
		}
	});

	it.each([
		["missing action", {}],
		["empty action", { action: "" }],
		["action with spaces", { action: "rm -rf" }],
		["action too long", { action: "a".repeat(129) }],
		["priority above 9", { action: "x", priority: 10 }],
		["negative priority", { action: "x", priority: -1 }],
		["fractional priority", { action: "x", priority: 2.5 }],
		["priority as string", { action: "x", priority: "5" }],
		["sessionId not a string", { action: "x", sessionId: 12 }],
		["empty sessionId", { action: "x", sessionId: "" }],
		["unknown field", { action: "x", priorty: 3 }],
		["body is an array", [{ action: "x" }]],
		["body is a string", "echo"],
	])("refuses %s with 400 and writes nothing", async (_name, body) => {
		const agentId = uniqueAgentId();
		const res = await api(`/v1/agents/${agentId}/commands`, { method: "POST", json: body });
		const err = await expectError(res, 400, "validation_failed");
		expect(Array.isArray(err.error.issues)).toBe(true);
		expect(await countCommands(agentId)).toBe(0);
	});

	it.each([
		["a NUL character", '{"action":"x","payload":{"s":"a\\u0000b"}}'],
		["a lone surrogate", '{"action":"x","payload":"\\ud800"}'],
		["a NUL in a key", '{"action":"x","payload":{"k\\u0000":1}}'],
		["a NUL in the session id", '{"action":"x","sessionId":"s\\u0000"}'],
		["10,000 levels of nesting", `{"action":"x","payload":${"[".repeat(10_000)}${"]".repeat(10_000)}}`],
	])("refuses a payload with %s with 400, never a 500", async (_n, body) => {
		const agentId = uniqueAgentId();
		const res = await api(`/v1/agents/${agentId}/commands`, {
			method: "POST",
			headers: { "content-type": "application/json" },
			body,
		});
		await expectError(res, 400, "validation_failed");
		expect(await countCommands(agentId)).toBe(0);
	});

	it("refuses malformed JSON with 400 invalid_json", async () => {
		const res = await api(`/v1/agents/${uniqueAgentId()}/commands`, {
			method: "POST",
			headers: { "content-type": "application/json" },
			body: '{"action": "x",',
		});
		await expectError(res, 400, "invalid_json");
	});

	it("refuses a body that is not declared as JSON with 415", async () => {
		const res = await api(`/v1/agents/${uniqueAgentId()}/commands`, {
			method: "POST",
			headers: { "content-type": "text/plain" },
			body: '{"action":"x"}',
		});
		await expectError(res, 415, "unsupported_media_type");
	});

	it("refuses a body over 1 MiB with 413 and writes nothing", async () => {
		const agentId = uniqueAgentId();
		const res = await api(`/v1/agents/${agentId}/commands`, {
			method: "POST",
			json: { action: "big", payload: { blob: "x".repeat(1024 * 1024) } },
		});
		await expectError(res, 413, "payload_too_large");
		expect(await countCommands(agentId)).toBe(0);
	});

	it("refuses an invalid agent id in the path with 400", async () => {
		const res = await api(`/v1/agents/${encodeURIComponent("bad id!")}/commands`, { method: "POST", json: { action: "x" } });
		await expectError(res, 400, "validation_failed");
	});

	it("answers 503 and forwards nothing when Postgres is unreachable", async () => {
		const agentId = uniqueAgentId();
		const down = { ...env, DATABASE_URL: env.TEST_DEAD_DATABASE_URL };
		const res = await app.fetch(
			new Request(`${BASE}/v1/agents/${agentId}/commands`, {
				method: "POST",
				headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
				body: JSON.stringify({ action: "x" }),
			}),
			down,
			createExecutionContext(),
		);
		await expectError(res, 503, "db_unavailable");
		expect(res.headers.get("retry-after")).toBe("5");
		const seen = await agentHub(env, agentId).inspect();
		expect(seen.buffered).toEqual({});
		expect(await countCommands(agentId)).toBe(0);
	});

	it("keeps the command pending and still delivers it when the object cannot be reached after the insert", async () => {
		const agentId = uniqueAgentId();
		const brokenHub = {
			idFromName: (name: string) => env.AGENT_HUB.idFromName(name),
			get: () => ({
				enqueue: () => Promise.reject(new Error("Durable Object reset")),
			}),
		};
		const res = await app.fetch(
			new Request(`${BASE}/v1/agents/${agentId}/commands`, {
				method: "POST",
				headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
				body: JSON.stringify({ action: "survives" }),
			}),
			{ ...env, AGENT_HUB: brokenHub as unknown as typeof env.AGENT_HUB },
			createExecutionContext(),
		);
		expect(res.status).toBe(201);
		const cmd = await res.json<{ id: string; status: string }>();
		expect(cmd.status).toBe("pending");
		expect((await agentHub(env, agentId).inspect()).buffered).toEqual({});

		const agent = await AgentSocket.connect(agentId);
		expect(await agent.next("command")).toMatchObject({ id: cmd.id, action: "survives" });
		agent.close();
	});
});

describe("reading commands", () => {
	it("GET /v1/commands/:id returns 404 for an unknown id and 400 for a malformed one", async () => {
		await expectError(await api(`/v1/commands/${crypto.randomUUID()}`), 404, "not_found");
		await expectError(await api("/v1/commands/not-a-uuid"), 400, "validation_failed");
	});

	it("lists an agent's commands newest first, paged by cursor, filtered by status", async () => {
		const agentId = uniqueAgentId();
		const made = [];
		for (let i = 0; i < 5; i++) made.push(await enqueue(agentId, { action: `step${i}` }));
		const ids = made.map((c) => c.id).reverse();

		const page1 = await (await api(`/v1/agents/${agentId}/commands?limit=2`)).json<{ items: { id: string }[]; nextCursor: string }>();
		expect(page1.items.map((c) => c.id)).toEqual(ids.slice(0, 2));
		const page2 = await (await api(`/v1/agents/${agentId}/commands?limit=2&cursor=${page1.nextCursor}`)).json<{ items: { id: string }[]; nextCursor: string }>();
		expect(page2.items.map((c) => c.id)).toEqual(ids.slice(2, 4));
		const page3 = await (await api(`/v1/agents/${agentId}/commands?limit=2&cursor=${page2.nextCursor}`)).json<{ items: { id: string }[]; nextCursor: string | null }>();
		expect(page3.items.map((c) => c.id)).toEqual(ids.slice(4));
		expect(page3.nextCursor).toBeNull();

		const agent = await AgentSocket.connect(agentId);
		const frames = await agent.commands(5);
		agent.send({ type: "result", id: frames[0]?.id, status: "failed", error: "boom" });
		const { waitFor } = await import("../helpers/worker/harness");
		const failed = await waitFor(async () => {
			const r = await (await api(`/v1/agents/${agentId}/commands?status=failed`)).json<{ items: { id: string }[] }>();
			return r.items.length === 1 ? r.items : undefined;
		}, "failed filter");
		expect(failed[0]?.id).toBe(frames[0]?.id);
		agent.close();
	});

	it.each([
		["bad status", "status=done"],
		["limit 0", "limit=0"],
		["limit too big", "limit=1000"],
		["forged cursor", "cursor=abc"],
		["unknown parameter", "sort=asc"],
	])("refuses a listing with %s", async (_n, qs) => {
		await expectError(await api(`/v1/agents/${uniqueAgentId()}/commands?${qs}`), 400, "validation_failed");
	});
});

describe("agents", () => {
	it("GET /v1/agents/:id shows counts by status; unknown agents are 404", async () => {
		const agentId = uniqueAgentId();
		await enqueue(agentId, { action: "a" });
		await enqueue(agentId, { action: "b" });
		const body = await (await api(`/v1/agents/${agentId}`)).json<Record<string, unknown>>();
		expect(body).toMatchObject({ id: agentId, online: false, connectedSince: null, commands: { pending: 2, completed: 0 } });
		await expectError(await api(`/v1/agents/${uniqueAgentId("nobody")}`), 404, "not_found");
	});

	it("GET /v1/agents pages through agents in id order", async () => {
		const prefix = `list-${crypto.randomUUID().slice(0, 6)}`;
		for (const n of ["a", "b", "c"]) await enqueue(`${prefix}-${n}`, { action: "x" });
		const first = await (await api(`/v1/agents?limit=1&cursor=${prefix}`)).json<{ items: { id: string }[]; nextCursor: string }>();
		expect(first.items.map((a) => a.id)).toEqual([`${prefix}-a`]);
		const next = await (await api(`/v1/agents?limit=2&cursor=${first.nextCursor}`)).json<{ items: { id: string }[] }>();
		expect(next.items.map((a) => a.id)).toEqual([`${prefix}-b`, `${prefix}-c`]);
	});

	it("GET /v1/agents shows each agent's command counts, and concurrency and running while online", async () => {
		const prefix = `load-${crypto.randomUUID().slice(0, 6)}`;
		const [idle, busy] = [`${prefix}-a`, `${prefix}-b`];
		await enqueue(idle, { action: "x" });
		const agent = await AgentSocket.connect(busy, { hello: { concurrency: 3 } });
		const cmd = await enqueue(busy, { action: "run" });
		await agent.next("command");
		agent.send({ type: "ack", id: cmd.id });
		type Row = { id: string; online: boolean; concurrency: number | null; running: number | null; commands: Record<string, number> };
		const rows = await waitFor(async () => {
			const page = await (await api(`/v1/agents?limit=2&cursor=${prefix}`)).json<{ items: Row[] }>();
			return page.items[1]?.online && page.items[1].commands.acknowledged === 1 ? page.items : undefined;
		}, "the busy agent online with its command acknowledged");
		expect(rows[0]).toMatchObject({ id: idle, online: false, concurrency: null, running: null, commands: { pending: 1, completed: 0 } });
		expect(rows[1]).toMatchObject({ id: busy, online: true, concurrency: 3, running: 1, commands: { acknowledged: 1 } });
		const one = await (await api(`/v1/agents/${busy}`)).json<Row>();
		expect(one).toMatchObject({ concurrency: 3, running: 1 });
		agent.close();
	});

	it("POST /v1/agents/:id/token mints a token that connects that agent", async () => {
		const agentId = uniqueAgentId();
		const res = await api(`/v1/agents/${agentId}/token`, { method: "POST", json: { ttlSeconds: 600 } });
		expect(res.status).toBe(201);
		const body = await res.json<{ token: string; expiresAt: string; agentId: string }>();
		expect(body.agentId).toBe(agentId);
		const ttl = Date.parse(body.expiresAt) - Date.now();
		expect(ttl).toBeGreaterThan(590_000);
		expect(ttl).toBeLessThanOrEqual(600_000);
		const agent = await AgentSocket.connect(agentId, { token: body.token });
		agent.close();
		// no body at all takes the default lifetime
		const dflt = await api(`/v1/agents/${agentId}/token`, { method: "POST" });
		expect(dflt.status).toBe(201);
		await expectError(await api(`/v1/agents/${agentId}/token`, { method: "POST", json: { ttlSeconds: 5 } }), 400, "validation_failed");
	});
});

describe("authentication", () => {
	const routes: [string, string, unknown?][] = [
		["POST", "/v1/agents/auth-check/commands", { action: "x" }],
		["GET", "/v1/agents/auth-check/commands"],
		["GET", `/v1/commands/${crypto.randomUUID()}`],
		["GET", "/v1/agents"],
		["GET", "/v1/agents/auth-check"],
		["POST", "/v1/agents/auth-check/token"],
		["GET", "/v1/whoami"],
	];

	it.each(routes)("%s %s refuses a missing, malformed or wrong API key", async (method, path, json) => {
		for (const headers of [{} as Record<string, string>, { authorization: "Basic abc" }, { authorization: "Bearer" }, { authorization: "Bearer wrong-key" }]) {
			const res = await api(path, { method, json, key: null, headers });
			await expectError(res, 401, "unauthorized");
		}
	});

	it("GET /v1/whoami tells an operator key from a read-only key", async () => {
		expect(await (await api("/v1/whoami")).json()).toEqual({ keyId: expect.stringMatching(/^api:[0-9a-f]{16}$/), scope: "write" });
		expect(await (await api("/v1/whoami", { key: TEST_READ_KEY })).json()).toMatchObject({ scope: "read" });
		await expectError(await api("/v1/whoami", { key: "wrong-key" }), 401, "unauthorized");
	});

	it("accepts every configured key (rotation)", async () => {
		const res = await api("/v1/agents?limit=1", { key: "test-second-key" });
		expect(res.status).toBe(200);
	});

	it("GET /healthz and /readyz need no key", async () => {
		const res = await api("/healthz", { key: null });
		expect(res.status).toBe(200);
		expect(await res.json()).toEqual({ ok: true });
		const ready = await api("/readyz", { key: null });
		expect(ready.status).toBe(200);
		expect(await ready.json()).toEqual({ ok: true, db: "ok" });
	});

	it("unknown routes get a JSON 404", async () => {
		await expectError(await api("/v2/whatever"), 404, "not_found");
	});

	it("the object refuses an upgrade that did not come through the worker's token check", async () => {
		const stub = agentHub(env, uniqueAgentId());
		const res = await stub.fetch("http://do/connect", { headers: { upgrade: "websocket" } });
		expect(res.status).toBe(400);
		await runInDurableObject(stub, async (instance: AgentHub) => {
			expect((await instance.inspect()).connected).toBe(false);
		});
	});
});
