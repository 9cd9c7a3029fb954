/**
 * The agent's side of the wire: who may connect, what happens to frames the
 * server cannot accept, and that a hibernated object still delivers.
 */
import { evictDurableObject } from "cloudflare:test";
import { env, exports } from "cloudflare:workers";
import { sign } from "hono/jwt";
import { describe, expect, it } from "vitest";
import { signAgentToken } from "../../src/auth/agent-token";
import { agentHub } from "../../src/agent/stub";
import {
	AgentSocket,
	api,
	apiCommand,
	BASE,
	enqueue,
	expectError,
	query,
	sql,
	tokenFor,
	uniqueAgentId,
	waitFor,
	waitForStatus,
} from "../helpers/worker/harness";

function connectRaw(agentId: string, headers: Record<string, string>): Promise<Response> {
	return exports.default.fetch(`${BASE}/v1/agents/${agentId}/connect`, { headers });
}

describe("who may connect", () => {
	it("refuses a token issued for agent A when connecting as agent B", async () => {
		const tokenForA = await tokenFor(uniqueAgentId("a"));
		const b = uniqueAgentId("b");
		const refused = await expectError(
			await connectRaw(b, { upgrade: "websocket", authorization: `Bearer ${tokenForA}` }),
			401,
			"unauthorized",
		);
		expect(refused.error.message).toMatch(/another agent/);
		expect((await agentHub(env, b).inspect()).generation).toBe(0);
	});

	it("refuses missing, garbage, expired, wrongly signed and alg=none tokens", async () => {
		const agentId = uniqueAgentId();
		const now = Math.floor(Date.now() / 1000);
		const expired = await signAgentToken(agentId, { current: env.AGENT_TOKEN_SECRET }, 60, { now: Date.now() - 3_600_000 });
		const wrongSecret = await signAgentToken(agentId, { current: "another-secret-that-is-long-enough-000" }, 600);
		const b64 = (o: object) => btoa(JSON.stringify(o)).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
		const algNone = `${b64({ alg: "none", typ: "JWT" })}.${b64({ sub: agentId, aud: "switchyard-agent", iat: now, exp: now + 600 })}.`;
		const noAudience = await sign({ sub: agentId, iat: now, exp: now + 600 }, env.AGENT_TOKEN_SECRET, "HS256");

		await expectError(await connectRaw(agentId, { upgrade: "websocket" }), 401, "unauthorized");
		for (const token of ["garbage", expired.token, wrongSecret.token, algNone, noAudience]) {
			await expectError(
				await connectRaw(agentId, { upgrade: "websocket", authorization: `Bearer ${token}` }),
				401,
				"unauthorized",
			);
		}
		const refused = await expectError(await connectRaw(agentId, { upgrade: "websocket", authorization: `Bearer ${expired.token}` }), 401, "unauthorized");
		expect(refused.error.message).toMatch(/expired/);
		expect((await agentHub(env, agentId).inspect()).generation).toBe(0);
	});

	it("refuses a plain GET on the socket endpoint with 426", async () => {
		const agentId = uniqueAgentId();
		await expectError(await connectRaw(agentId, { authorization: `Bearer ${await tokenFor(agentId)}` }), 426, "upgrade_required");
	});

	it("an operator API key is not an agent token", async () => {
		const agentId = uniqueAgentId();
		await expectError(await connectRaw(agentId, { upgrade: "websocket", authorization: "Bearer test-operator-key" }), 401, "unauthorized");
	});
});

describe("frames the server cannot accept", () => {
	it("answers each with an error frame and keeps the socket working", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const unknownId = crypto.randomUUID();

		const cases: [unknown, string, string | undefined][] = [
			["this is not json", "invalid_json", undefined],
			["", "invalid_json", undefined],
			["[1,2,3]", "invalid_frame", undefined],
			['{"type":"explode"}', "invalid_frame", undefined],
			['{"no":"type"}', "invalid_frame", undefined],
			[{ type: "ack" }, "invalid_frame", undefined],
			[{ type: "ack", id: "not-a-uuid" }, "invalid_frame", "not-a-uuid"],
			[{ type: "result", id: unknownId, status: "exploded" }, "invalid_frame", unknownId],
			[{ type: "ack", id: unknownId }, "unknown_command", unknownId],
			[{ type: "result", id: unknownId, status: "completed" }, "unknown_command", unknownId],
		];
		for (const [frame, code, id] of cases) {
			agent.send(frame);
			const err = await agent.next("error");
			expect(err.code, JSON.stringify(frame)).toBe(code);
			expect(err.message.length).toBeGreaterThan(0);
			expect(err.id).toBe(id);
		}
		agent.ws.send(new Uint8Array([1, 2, 3]));
		expect((await agent.next("error")).code).toBe("invalid_frame");

		// Still alive and still delivering.
		const cmd = await enqueue(agentId, { action: "after_garbage" });
		const frame = await agent.next("command");
		expect(frame.id).toBe(cmd.id);
		agent.send({ type: "result", id: frame.id, status: "completed" });
		await waitFor(async () => {
			const [row] = await query<{ status: string }>(sql`select status from agent_commands where id = ${cmd.id}`);
			return row?.status === "completed";
		}, "completed after garbage");
		agent.close();
	});

	it("refuses an ack for another agent's command without touching it", async () => {
		const owner = uniqueAgentId("owner");
		const other = uniqueAgentId("other");
		const ownerSocket = await AgentSocket.connect(owner);
		const cmd = await enqueue(owner, { action: "private" });
		await ownerSocket.next("command");
		const intruder = await AgentSocket.connect(other);
		intruder.send({ type: "result", id: cmd.id, status: "completed", result: "stolen" });
		expect(await intruder.next("error")).toMatchObject({ code: "unknown_command", id: cmd.id });
		expect((await agentHub(env, owner).inspect()).buffered).toEqual({ dispatched: 1 });
		ownerSocket.close();
		intruder.close();
	});

	it("ignores a duplicate result: the first one stands", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "once" });
		await agent.next("command");
		agent.send({ type: "result", id: cmd.id, status: "completed", result: 1 });
		agent.send({ type: "result", id: cmd.id, status: "failed", error: "late duplicate" });
		agent.send({ type: "ping" });
		await agent.next("pong");
		const row = await waitFor(async () => {
			const [r] = await query<{ status: string; result: unknown; error: string | null }>(
				sql`select status, result, error from agent_commands where id = ${cmd.id}`,
			);
			return r?.status === "completed" ? r : undefined;
		}, "completed");
		expect(row).toEqual({ status: "completed", result: 1, error: null });
		expect(agent.frames.filter((f) => f.type === "error")).toEqual([]);
		agent.close();
	});
});

describe("values Postgres cannot store", () => {
	it("refuses a result with a NUL character or a lone surrogate, and a later clean result still lands", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "x" });
		await agent.next("command");
		for (const bad of [
			`{"type":"result","id":"${cmd.id}","status":"completed","result":{"out":"a\\u0000b"}}`,
			`{"type":"result","id":"${cmd.id}","status":"failed","error":"half \\ud800 a pair"}`,
			`{"type":"result","id":"${cmd.id}","status":"completed","result":{"\\u0000key":1}}`,
			`{"type":"result","id":"${cmd.id}","status":"completed","result":${"[".repeat(10_000)}${"]".repeat(10_000)}}`,
		]) {
			agent.send(bad);
			const err = await agent.next("error");
			expect(err.code).toBe("invalid_frame");
		}
		agent.send({ type: "result", id: cmd.id, status: "completed", result: { out: "clean" } });
		await waitFor(async () => {
			const [r] = await query<{ status: string; result: unknown }>(sql`select status, result from agent_commands where id = ${cmd.id}`);
			return r?.status === "completed" && JSON.stringify(r.result) === '{"out":"clean"}';
		}, "clean result stored");
		expect((await agentHub(env, agentId).inspect()).outbox).toBe(0);
		agent.close();
	});
});

describe("hibernation", () => {
	it("delivers to a socket whose object was evicted, and takes its results", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		await evictDurableObject(agentHub(env, agentId));

		agent.send('{"type":"ping"}');
		await agent.next("pong");
		const cmd = await enqueue(agentId, { action: "after_sleep" });
		const frame = await agent.next("command");
		expect(frame.id).toBe(cmd.id);

		await evictDurableObject(agentHub(env, agentId));
		agent.send({ type: "ack", id: cmd.id });
		agent.send({ type: "result", id: cmd.id, status: "completed", result: { woke: true } });
		await waitFor(async () => {
			const [r] = await query<{ status: string }>(sql`select status from agent_commands where id = ${cmd.id}`);
			return r?.status === "completed";
		}, "completed after eviction");
		agent.close();
	});
});

// Go's nil, Python's None and serde's Option all serialise as null. An agent
// written from docs/protocol.md in those languages sends `"error": null` with
// a completed result and `"running": null` in its hello; they must work.
describe("a client that writes null for a field it does not set", () => {
	it("is served over HTTP and over the socket as if the field were absent", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId, { hello: false });
		agent.send({ type: "hello", concurrency: 2, running: null });
		const res = await api(`/v1/agents/${agentId}/commands`, {
			method: "POST",
			json: {
				action: "null_fields",
				sessionId: null,
				priority: null,
				idempotencyKey: null,
				ttlSeconds: null,
				timeoutSeconds: null,
				maxAttempts: null,
				ackTimeoutSeconds: null,
			},
		});
		expect(res.status).toBe(201);
		const cmd = await res.json<{ id: string; priority: number; maxAttempts: number; ackTimeoutSeconds: number; expiresAt: string | null }>();
		expect(cmd).toMatchObject({ priority: 5, maxAttempts: 5, ackTimeoutSeconds: 10, expiresAt: null, idempotencyKey: null });

		expect((await agent.next("command")).id).toBe(cmd.id);
		agent.send({ type: "result", id: cmd.id, status: "completed", result: { ok: true }, error: null });
		await waitForStatus(cmd.id, "completed");
		expect(await apiCommand(cmd.id)).toMatchObject({ result: { ok: true }, error: null });
		expect(agent.frames.filter((f) => f.type === "error")).toEqual([]);
		agent.close();
	});
});
