/**
 * The core dispatch path, end to end: HTTP enqueue -> Postgres -> the agent's
 * Durable Object -> a real WebSocket -> ack/result -> Postgres.
 */
import { runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import type { AgentHub } from "../../src/agent/agent-hub";
import { describe, expect, it } from "vitest";
import { agentHub } from "../../src/agent/stub";
import { AgentSocket, api, commandEvents, enqueue, query, sql, uniqueAgentId, waitFor } from "../helpers/worker/harness";

type Row = Record<string, unknown>;

async function commandRow(id: string): Promise<Row | undefined> {
	const rows = await query(sql`select * from agent_commands where id = ${id}`);
	return rows[0];
}

describe("delivery", () => {
	it("delivers a command enqueued before the agent connects", async () => {
		const agentId = uniqueAgentId();
		const cmd = await enqueue(agentId, { action: "echo", payload: { text: "hi" } });
		expect(cmd.status).toBe("pending");

		const agent = await AgentSocket.connect(agentId);
		expect(await agent.next("command")).toEqual({
			type: "command",
			id: cmd.id,
			action: "echo",
			payload: { text: "hi" },
			sessionId: null,
			priority: 5,
			attempt: 1,
		});
		agent.close();
	});

	it("delivers a command enqueued while the agent is connected", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "start_session", payload: { repo: "x" }, sessionId: "s-1" });
		const frame = await agent.next("command");
		expect(frame).toMatchObject({ id: cmd.id, action: "start_session", sessionId: "s-1", attempt: 1 });
		agent.close();
	});

	it("writes ack and result to Postgres with timestamps and one event per transition", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "echo", payload: { n: 1 } });
		const frame = await agent.next("command");

		await waitFor(async () => (await commandRow(cmd.id))?.status === "dispatched", "dispatched in Postgres");
		agent.send({ type: "ack", id: frame.id });
		await waitFor(async () => (await commandRow(cmd.id))?.status === "acknowledged", "acknowledged in Postgres");
		agent.send({ type: "result", id: frame.id, status: "completed", result: { out: "done", lines: [1, 2] } });
		await waitFor(async () => (await commandRow(cmd.id))?.status === "completed", "completed in Postgres");

		const res = await api(`/v1/commands/${cmd.id}`);
		expect(res.status).toBe(200);
		const body = await res.json<Row>();
		expect(body).toMatchObject({ status: "completed", attempts: 1, result: { out: "done", lines: [1, 2] }, error: null });
		const created = Date.parse(body.createdAt as string);
		const dispatched = Date.parse(body.dispatchedAt as string);
		const acked = Date.parse(body.acknowledgedAt as string);
		const completed = Date.parse(body.completedAt as string);
		expect(created).toBeLessThanOrEqual(dispatched);
		expect(dispatched).toBeLessThanOrEqual(acked);
		expect(acked).toBeLessThanOrEqual(completed);

		expect((await commandEvents(cmd.id)).map((e) => [e.from_status, e.to_status])).toEqual([
			[null, "pending"],
			["pending", "dispatched"],
			["dispatched", "acknowledged"],
			["acknowledged", "completed"],
		]);
		agent.close();
	});

	it("records a failed result with its error, even without an ack first", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "deploy" });
		await agent.next("command");
		agent.send({ type: "result", id: cmd.id, status: "failed", error: "exit status 2" });
		const row = await waitFor(async () => {
			const r = await commandRow(cmd.id);
			return r?.status === "failed" ? r : undefined;
		}, "failed in Postgres");
		expect(row.error).toBe("exit status 2");
		expect(row.completed_at).not.toBeNull();
		expect(row.acknowledged_at).toBeNull();
		agent.close();
	});

	it("delivers in priority order, then enqueue order, after the agent was offline", async () => {
		const agentId = uniqueAgentId();
		const low = await enqueue(agentId, { action: "a", priority: 1 });
		const midFirst = await enqueue(agentId, { action: "b" });
		const high = await enqueue(agentId, { action: "c", priority: 9 });
		const midSecond = await enqueue(agentId, { action: "d", priority: 5 });
		const zero = await enqueue(agentId, { action: "e", priority: 0 });

		const agent = await AgentSocket.connect(agentId);
		const ids = (await agent.commands(5)).map((f) => f.id);
		expect(ids).toEqual([high.id, midFirst.id, midSecond.id, low.id, zero.id]);
		agent.close();
	});

	it("redelivers a dispatched but unacknowledged command on reconnect, and not an acknowledged one", async () => {
		const agentId = uniqueAgentId();
		const first = await AgentSocket.connect(agentId);
		const unacked = await enqueue(agentId, { action: "one" });
		const acked = await enqueue(agentId, { action: "two" });
		await first.commands(2);
		first.send({ type: "ack", id: acked.id });
		await waitFor(async () => (await commandRow(acked.id))?.status === "acknowledged", "ack stored");
		first.close();
		await first.closed;

		// The agent is still running the acknowledged one and says so.
		const second = await AgentSocket.connect(agentId, { hello: { concurrency: 10, running: [acked.id] } });
		const again = await second.next("command");
		// Sent again within its ack deadline: the same attempt (an attempt is a deadline spent).
		expect(again).toMatchObject({ id: unacked.id, attempt: 1 });
		second.send({ type: "result", id: acked.id, status: "completed" });
		await waitFor(async () => (await commandRow(acked.id))?.status === "completed", "acked one completed");
		expect(second.frames.filter((f) => f.type === "command")).toEqual([]);
		second.close();
	});
});

describe("regressions from the systems Switchyard replaces", () => {
	it("delivers rows with a NULL session_id (the pending scan once crashed on them)", async () => {
		const agentId = uniqueAgentId();
		const viaApi = await enqueue(agentId, { action: "no_session", sessionId: null });
		const [viaSql] = await query<{ id: string }>(sql`
			insert into agent_commands (agent_id, session_id, action, payload)
			values (${agentId}, null, 'raw_null_session', '{}'::jsonb) returning id`);
		const agent = await AgentSocket.connect(agentId);
		const frames = await agent.commands(2);
		expect(new Set(frames.map((f) => f.id))).toEqual(new Set([viaApi.id, viaSql?.id]));
		expect(frames.every((f) => f.sessionId === null)).toBe(true);
		agent.close();
	});

	it("delivers a row inserted directly with SQL on the next connect (it was once never dispatched)", async () => {
		const agentId = uniqueAgentId();
		const [row] = await query<{ id: string }>(sql`
			insert into agent_commands (agent_id, session_id, action, payload, priority)
			values (${agentId}, 'sess-9', 'restart', '{"service":"api"}'::jsonb, 7) returning id`);
		const agent = await AgentSocket.connect(agentId);
		const frame = await agent.next("command");
		expect(frame).toMatchObject({ id: row?.id, action: "restart", payload: { service: "api" }, sessionId: "sess-9", priority: 7 });
		agent.send({ type: "result", id: frame.id, status: "completed", result: "ok" });
		await waitFor(async () => (await commandRow(frame.id))?.status === "completed", "SQL row completed");
		agent.close();
	});

	it("reaches the agent through whichever worker instance takes the request, with no routing store", async () => {
		// Two requests enter through separate fetches (as two edge machines
		// would); both address the same object by agent id, the only routing.
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const [a, b] = await Promise.all([enqueue(agentId, { action: "x" }), enqueue(agentId, { action: "y" })]);
		const ids = new Set((await agent.commands(2)).map((f) => f.id));
		expect(ids).toEqual(new Set([a.id, b.id]));
		expect(env.AGENT_HUB.idFromName(agentId).equals(env.AGENT_HUB.idFromName(agentId))).toBe(true);
		agent.close();
	});
});

describe("connections", () => {
	it("a second socket for the same agent replaces the first with close code 4001", async () => {
		const agentId = uniqueAgentId();
		const first = await AgentSocket.connect(agentId);
		const second = await AgentSocket.connect(agentId);
		expect(await first.closed).toMatchObject({ code: 4001 });

		const cmd = await enqueue(agentId, { action: "after_replace" });
		expect(await second.next("command")).toMatchObject({ id: cmd.id });
		expect(first.frames.filter((f) => f.type === "command")).toEqual([]);
		second.close();
	});

	it("ignores frames from a replaced socket", async () => {
		const agentId = uniqueAgentId();
		const first = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "x" });
		await first.next("command");
		const second = await AgentSocket.connect(agentId);
		await first.closed;

		// A frame that raced the close still reaches the object on the old
		// socket; the object must judge it by that socket's generation.
		const stub = agentHub(env, agentId);
		await runInDurableObject(stub, async (instance: AgentHub) => {
			const pair = new WebSocketPair();
			pair[1].accept();
			pair[1].serializeAttachment({ agentId, generation: 1, connectedAt: Date.now() });
			await instance.webSocketMessage(pair[1], JSON.stringify({ type: "result", id: cmd.id, status: "completed" }));
		});
		const again = await second.next("command");
		expect(again).toMatchObject({ id: cmd.id, attempt: 1 });
		expect((await stub.inspect()).buffered).toEqual({ dispatched: 1 });

		second.send({ type: "result", id: cmd.id, status: "completed" });
		await waitFor(async () => (await stub.inspect()).buffered.completed === 1, "current socket's result taken");
		second.close();
	});

	it("answers pings with pongs, with and without waking the object", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		agent.send('{"type":"ping"}');
		expect(await agent.next("pong")).toEqual({ type: "pong" });
		agent.send({ type: "ping", extra: undefined });
		agent.send('{ "type" : "ping" }');
		await agent.next("pong");
		await agent.next("pong");
		agent.close();
	});

	it("marks the agent online while connected and offline after it leaves", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const online = await waitFor(async () => {
			const res = await api(`/v1/agents/${agentId}`);
			const body = res.status === 200 ? await res.json<Row>() : undefined;
			return body?.online === true ? body : undefined;
		}, "agent online");
		expect(online.connectedSince).not.toBeNull();
		agent.close();
		await waitFor(async () => {
			const body = await (await api(`/v1/agents/${agentId}`)).json<Row>();
			return body.online === false && body.connectedSince === null;
		}, "agent offline");
	});
});
