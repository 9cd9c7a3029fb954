/**
 * Delivery guarantees: nothing lost, nothing silently stuck, every wait
 * explained. One test (or more) per rule in docs/protocol.md.
 */
import {
	createExecutionContext,
	createScheduledController,
	runDurableObjectAlarm,
	runInDurableObject,
	waitOnExecutionContext,
} from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import type { AgentHub } from "../../src/agent/agent-hub";
import worker from "../../src/index";
import { agentHub } from "../../src/agent/stub";
import {
	AgentSocket,
	api,
	connectSettled,
	apiCommand,
	enqueue,
	query,
	sql,
	uniqueAgentId,
	commandEvents,
	msUntilAlarm,
	objectSettled,
	waitFor,
	waitForStatus,
} from "../helpers/worker/harness";

describe("ack deadline", () => {
	it("resends an unacknowledged command after ackTimeoutSeconds, then fails it as undeliverable", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "slow_ack", ackTimeoutSeconds: 1, maxAttempts: 2 });
		expect(await agent.next("command")).toMatchObject({ id: cmd.id, attempt: 1 });
		expect(await agent.next("command", 5_000)).toMatchObject({ id: cmd.id, attempt: 2 });

		const failed = await waitForStatus(cmd.id, "failed");
		expect(failed).toMatchObject({ errorCode: "undeliverable", attempts: 2, blockedReason: null });
		const transitions = (await commandEvents(cmd.id)).map((e) => `${e.from_status}>${e.to_status}:${e.detail?.reason ?? ""}`);
		expect(transitions).toEqual([
			"null>pending:enqueued",
			"pending>dispatched:delivery",
			"dispatched>pending:ack_timeout",
			"pending>dispatched:redelivery",
			"dispatched>pending:ack_timeout",
			"pending>failed:",
		]);
		agent.close();
	});

	it("an ack in time stops the resends", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "acked", ackTimeoutSeconds: 1 });
		await agent.next("command");
		agent.send({ type: "ack", id: cmd.id });
		await waitForStatus(cmd.id, "acknowledged");
		await new Promise((r) => setTimeout(r, 1_500));
		expect(agent.frames.filter((f) => f.type === "command")).toEqual([]);
		expect((await apiCommand(cmd.id)).attempts).toBe(1);
		agent.close();
	});
});

describe("flow control", () => {
	it("never has more than `concurrency` commands in flight, and refills as results come in", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId, { hello: { concurrency: 3 } });
		const res = await api("/v1/commands/batch", {
			method: "POST",
			json: { commands: Array.from({ length: 20 }, (_, i) => ({ agentId, action: `job${i}` })) },
		});
		expect(res.status).toBe(201);

		let inFlight = 0;
		let maxInFlight = 0;
		const done: string[] = [];
		while (done.length < 20) {
			const f = await agent.next("command");
			inFlight++;
			maxInFlight = Math.max(maxInFlight, inFlight);
			// Hold the window full for a moment so an over-send would show.
			await new Promise((r) => setTimeout(r, 20));
			agent.send({ type: "result", id: f.id, status: "completed" });
			inFlight--;
			done.push(f.action);
		}
		expect(maxInFlight).toBeLessThanOrEqual(3);
		expect(done).toEqual(Array.from({ length: 20 }, (_, i) => `job${i}`));
		agent.close();
	});

	it("an agent that sends no hello gets one command at a time, strictly in order", async () => {
		const agentId = uniqueAgentId();
		const a = await enqueue(agentId, { action: "first" });
		const b = await enqueue(agentId, { action: "second" });
		const agent = await AgentSocket.connect(agentId, { hello: false });
		expect((await agent.next("command")).id).toBe(a.id);
		await new Promise((r) => setTimeout(r, 300));
		expect(agent.frames.filter((f) => f.type === "command")).toEqual([]);
		expect((await apiCommand(b.id)).blockedReason).toBe("concurrency_full");
		agent.send({ type: "result", id: a.id, status: "completed" });
		expect((await agent.next("command")).id).toBe(b.id);
		agent.close();
	});

	it("a burst of 1,000 batched commands is delivered in priority order, then enqueue order", async () => {
		const agentId = uniqueAgentId();
		const commands = Array.from({ length: 1000 }, (_, i) => ({ agentId, action: `n${i}`, priority: (i * 7) % 10 }));
		const res = await api("/v1/commands/batch", { method: "POST", json: { commands } });
		expect(res.status).toBe(201);
		const body = await res.json<{ items: { created: boolean; command: { action: string } }[] }>();
		expect(body.items.map((i) => i.command.action)).toEqual(commands.map((c) => c.action));
		expect(body.items.every((i) => i.created)).toBe(true);

		const agent = await AgentSocket.connect(agentId, { hello: { concurrency: 1000 } });
		const frames = await agent.commands(1000, 20_000);
		const expected = commands
			.map((c, i) => ({ ...c, i }))
			.sort((x, y) => y.priority - x.priority || x.i - y.i)
			.map((c) => c.action);
		expect(frames.map((f) => f.action)).toEqual(expected);
		agent.close();
	});

	it("a batch for many agents reaches each of them", async () => {
		const ids = [uniqueAgentId("m"), uniqueAgentId("m"), uniqueAgentId("m")];
		const sockets = await Promise.all(ids.map((id) => AgentSocket.connect(id)));
		const res = await api("/v1/commands/batch", {
			method: "POST",
			json: { commands: ids.flatMap((agentId) => [{ agentId, action: "a" }, { agentId, action: "b" }]) },
		});
		expect(res.status).toBe(201);
		for (const s of sockets) {
			expect((await s.commands(2)).map((f) => f.action)).toEqual(["a", "b"]);
			s.close();
		}
	});
});

describe("lost in flight", () => {
	it("resends an acknowledged command the restarted agent no longer lists as running", async () => {
		const agentId = uniqueAgentId();
		const before = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "long_job" });
		await before.next("command");
		before.send({ type: "ack", id: cmd.id });
		await waitForStatus(cmd.id, "acknowledged");
		expect((await apiCommand(cmd.id)).blockedReason).toBe("running");
		before.close();

		const after = await AgentSocket.connect(agentId, { hello: { concurrency: 5, running: [] } });
		expect(await after.next("command")).toMatchObject({ id: cmd.id, attempt: 2 });
		after.close();
	});

	it("counts an attempt per ack deadline, not per socket: a flapping link does not use up maxAttempts", async () => {
		const agentId = uniqueAgentId();
		const cmd = await enqueue(agentId, { action: "over_a_bad_link", maxAttempts: 2, ackTimeoutSeconds: 60 });
		// Five connections that each drop before the ack leaves, well within one ack deadline.
		for (let i = 0; i < 5; i++) {
			const flaky = await AgentSocket.connect(agentId, { hello: { concurrency: 5, running: [] } });
			expect(await flaky.next("command")).toMatchObject({ id: cmd.id, attempt: 1 });
			flaky.close();
			await flaky.closed;
		}
		const steady = await AgentSocket.connect(agentId, { hello: { concurrency: 5, running: [] } });
		expect(await steady.next("command")).toMatchObject({ id: cmd.id, attempt: 1 });
		steady.send({ type: "result", id: cmd.id, status: "completed" });
		expect(await waitForStatus(cmd.id, "completed")).toMatchObject({ attempts: 1, errorCode: null });
		steady.close();
	});

	it("fails it with `lost` once its attempts are spent, tells the agent to stop, and takes its late word", async () => {
		const agentId = uniqueAgentId();
		const before = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "fragile", maxAttempts: 1 });
		await before.next("command");
		before.send({ type: "ack", id: cmd.id });
		await waitForStatus(cmd.id, "acknowledged");
		before.close();
		const after = await AgentSocket.connect(agentId, { hello: { concurrency: 5, running: [] } });
		expect(await waitForStatus(cmd.id, "failed")).toMatchObject({ errorCode: "lost" });
		// `lost` is the system's guess: the agent may have finished it, and its answer to the stop replaces it.
		expect(await after.next("cancel")).toEqual({ type: "cancel", id: cmd.id, reason: "requested" });
		after.send({ type: "result", id: cmd.id, status: "failed", error: "disk full" });
		await waitFor(async () => (await apiCommand(cmd.id)).errorCode === null, "the agent's failure to replace `lost`");
		expect(await apiCommand(cmd.id)).toMatchObject({ status: "failed", error: "disk full" });
		expect((await commandEvents(cmd.id)).at(-1)).toMatchObject({ from_status: "failed", to_status: "failed", detail: { reason: "reported_late" } });
		expect(after.frames.filter((f) => f.type === "command")).toEqual([]);
		after.close();
	});
});

describe("cancellation", () => {
	it("cancels a pending command at once; it is never delivered", async () => {
		const agentId = uniqueAgentId();
		const cmd = await enqueue(agentId, { action: "never" });
		const keep = await enqueue(agentId, { action: "keep" });
		const res = await api(`/v1/commands/${cmd.id}/cancel`, { method: "POST" });
		expect(res.status).toBe(200);
		expect(await res.json()).toMatchObject({ outcome: "cancelled", command: { id: cmd.id, status: "cancelled" } });

		const agent = await AgentSocket.connect(agentId);
		expect((await agent.next("command")).id).toBe(keep.id);
		await waitForStatus(cmd.id, "cancelled");
		expect(agent.frames.filter((f) => f.type === "command")).toEqual([]);
		agent.close();
	});

	it("asks the agent to stop a delivered command; its `cancelled` result ends it", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "stoppable" });
		await agent.next("command");
		agent.send({ type: "ack", id: cmd.id });
		await waitForStatus(cmd.id, "acknowledged");

		const res = await api(`/v1/commands/${cmd.id}/cancel`, { method: "POST" });
		expect(res.status).toBe(202);
		expect(await res.json()).toMatchObject({ outcome: "cancel_requested", command: { blockedReason: "cancel_requested" } });
		expect(await agent.next("cancel")).toEqual({ type: "cancel", id: cmd.id, reason: "requested" });
		agent.send({ type: "result", id: cmd.id, status: "cancelled" });
		expect(await waitForStatus(cmd.id, "cancelled")).toMatchObject({ errorCode: null });
		agent.close();
	});

	it("cancels without the agent's word once the grace period passes", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "stubborn" });
		await agent.next("command");
		agent.send({ type: "ack", id: cmd.id });
		await waitForStatus(cmd.id, "acknowledged");
		expect((await api(`/v1/commands/${cmd.id}/cancel`, { method: "POST" })).status).toBe(202);
		await agent.next("cancel");

		const stub = agentHub(env, agentId);
		await runInDurableObject(stub, (_i: AgentHub, state) => {
			state.storage.sql.exec("update commands set cancel_deadline = ? where id = ?", Date.now() - 1, cmd.id);
		});
		// The alarm may be mid-run already; run it until the deadline has been acted on.
		await waitFor(async () => {
			await runDurableObjectAlarm(stub);
			return (await stub.inspect()).buffered.cancelled === 1;
		}, "the cancel deadline to pass");
		expect(await waitForStatus(cmd.id, "cancelled")).toMatchObject({ errorCode: "cancel_unconfirmed" });
		agent.close();
	});

	it("refuses to cancel a finished command with 409, and an unknown one with 404", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "quick" });
		await agent.next("command");
		agent.send({ type: "result", id: cmd.id, status: "completed" });
		await waitForStatus(cmd.id, "completed");
		const res = await api(`/v1/commands/${cmd.id}/cancel`, { method: "POST" });
		expect(res.status).toBe(409);
		expect((await res.json<{ error: { code: string } }>()).error.code).toBe("already_finished");
		expect((await api(`/v1/commands/${crypto.randomUUID()}/cancel`, { method: "POST" })).status).toBe(404);
		agent.close();
	});
});

describe("expiry and timeouts", () => {
	it("expires a command not dispatched within ttlSeconds while the agent is offline", async () => {
		const agentId = uniqueAgentId();
		const cmd = await enqueue(agentId, { action: "stale", ttlSeconds: 1 });
		expect(cmd.expiresAt).not.toBeNull();
		expect((await apiCommand(cmd.id)).blockedReason).toBe("agent_offline");
		expect(await waitForStatus(cmd.id, "expired")).toMatchObject({ errorCode: "expired", blockedReason: null });
		const agent = await AgentSocket.connect(agentId);
		await new Promise((r) => setTimeout(r, 300));
		expect(agent.frames.filter((f) => f.type === "command")).toEqual([]);
		agent.close();
	});

	it("fails a command not finished within timeoutSeconds and tells the agent to stop; its answer still counts", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const stopped = await enqueue(agentId, { action: "hangs", timeoutSeconds: 1 });
		const finished = await enqueue(agentId, { action: "just_late", timeoutSeconds: 1 });
		for (const f of await agent.commands(2)) agent.send({ type: "ack", id: f.id });
		const cancels = [await agent.next("cancel", 5_000), await agent.next("cancel", 5_000)];
		expect(new Set(cancels)).toEqual(new Set([stopped.id, finished.id].map((id) => ({ type: "cancel", id, reason: "timeout" }))));
		expect(await waitForStatus(stopped.id, "failed")).toMatchObject({ errorCode: "timeout" });
		await waitForStatus(finished.id, "failed");

		// Stopped as asked: the `cancelled` answer confirms the verdict.
		agent.send({ type: "result", id: stopped.id, status: "cancelled" });
		// Finished before the stop arrived: the agent's word stands, and the timeout stays in the events.
		agent.send({ type: "result", id: finished.id, status: "completed", result: "made it" });
		expect(await waitForStatus(finished.id, "completed")).toMatchObject({ result: "made it", errorCode: null });
		expect((await commandEvents(finished.id)).slice(-2)).toMatchObject([
			{ from_status: "acknowledged", to_status: "failed", detail: { errorCode: "timeout" } },
			{ from_status: "failed", to_status: "completed", detail: { reason: "reported_late" } },
		]);
		await objectSettled(agentId);
		expect(await apiCommand(stopped.id)).toMatchObject({ status: "failed", errorCode: "timeout" });
		agent.close();
	});
});

describe("idempotent enqueue", () => {
	it("20 concurrent identical requests make one command", async () => {
		const agentId = uniqueAgentId();
		const responses = await Promise.all(
			Array.from({ length: 20 }, () =>
				api(`/v1/agents/${agentId}/commands`, { method: "POST", json: { action: "deploy", idempotencyKey: "deploy-42" } }),
			),
		);
		const statuses = responses.map((r) => r.status).sort();
		expect(statuses.filter((s) => s === 201)).toHaveLength(1);
		expect(statuses.filter((s) => s === 200)).toHaveLength(19);
		const ids = new Set(await Promise.all(responses.map(async (r) => (await r.json<{ id: string }>()).id)));
		expect(ids.size).toBe(1);
		const [row] = await query<{ n: number }>(sql`select count(*)::int as n from agent_commands where agent_id = ${agentId}`);
		expect(row?.n).toBe(1);
	});

	it("the same key for another agent is another command; a batch reuses keys too", async () => {
		const a = uniqueAgentId();
		const b = uniqueAgentId();
		const first = await enqueue(a, { action: "x", idempotencyKey: "k1" });
		const other = await enqueue(b, { action: "x", idempotencyKey: "k1" });
		expect(other.id).not.toBe(first.id);
		const res = await api("/v1/commands/batch", {
			method: "POST",
			json: {
				commands: [
					{ agentId: a, action: "x", idempotencyKey: "k1" },
					{ agentId: a, action: "y", idempotencyKey: "k2" },
					{ agentId: a, action: "y", idempotencyKey: "k2" },
					{ agentId: a, action: "z" },
				],
			},
		});
		const items = (await res.json<{ items: { created: boolean; command: { id: string } }[] }>()).items;
		expect(items.map((i) => i.created)).toEqual([false, true, false, true]);
		expect(items[0]?.command.id).toBe(first.id);
		expect(items[1]?.command.id).toBe(items[2]?.command.id);
	});
});

describe("recovery beside push", () => {
	it("the cron hands a connected agent a row inserted by SQL", async () => {
		const agentId = uniqueAgentId();
		const agent = await connectSettled(agentId);
		const [row] = await query<{ id: string }>(sql`
			insert into agent_commands (agent_id, action, created_at)
			values (${agentId}, 'from_sql', now() - interval '10 seconds') returning id`);

		const ctx = createExecutionContext();
		await worker.scheduled(createScheduledController({ cron: "* * * * *" }), env, ctx);
		await waitOnExecutionContext(ctx);
		expect(await agent.next("command")).toMatchObject({ id: row?.id, action: "from_sql" });
		// Once taken, the cron leaves it alone: the object owns it now.
		await waitFor(async () => {
			const [t] = await query<{ taken_at: string | null }>(sql`select taken_at from agent_commands where id = ${row?.id}`);
			return t?.taken_at !== null;
		}, "taken_at recorded");
		agent.close();
	});

	it("POST /v1/agents/:id/reconcile does the same at once", async () => {
		const agentId = uniqueAgentId();
		const agent = await connectSettled(agentId);
		const [row] = await query<{ id: string }>(sql`
			insert into agent_commands (agent_id, action) values (${agentId}, 'reconciled') returning id`);
		const res = await api(`/v1/agents/${agentId}/reconcile`, { method: "POST" });
		expect(await res.json()).toEqual({ agentId, added: 1 });
		expect((await agent.next("command")).id).toBe(row?.id);
		agent.close();
	});
});

/** Makes the object's last frame from its agent `agoMs` old (pings answered at the edge aside). */
function lastHeardFrom(stub: ReturnType<typeof agentHub>, agoMs: number) {
	return runInDurableObject(stub, (instance: AgentHub, state) => {
		state.storage.sql.exec("update meta set value = ? where key = 'last_seen_at'", String(Date.now() - agoMs));
		instance.reloadState();
	});
}

describe("liveness", () => {
	it("closes a socket silent for three ping intervals with 4002 and marks the agent offline", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const stub = agentHub(env, agentId);
		await waitFor(async () => (await (await api(`/v1/agents/${agentId}`)).json<{ online: boolean }>()).online, "online");
		await lastHeardFrom(stub, 91_000);
		let closed: { code: number } | undefined;
		void agent.closed.then((c) => {
			closed = c;
		});
		await waitFor(async () => {
			await runDurableObjectAlarm(stub);
			return closed !== undefined;
		}, "the heartbeat rule to close the socket");
		expect(closed).toMatchObject({ code: 4002 });
		await waitFor(async () => !(await (await api(`/v1/agents/${agentId}`)).json<{ online: boolean }>()).online, "offline");
	});

	// A 90 s check for every idle agent woke a whole fleet around the clock
	// (pings never reach the object): idle agents are checked every 5 minutes,
	// agents holding work every 90 s, and an enqueue always checks first.
	it("checks an idle agent's silence every 5 minutes and one holding work every 90 s", async () => {
		const agentId = uniqueAgentId();
		const agent = await connectSettled(agentId);
		const stub = agentHub(env, agentId);
		await waitFor(async () => (await stub.inspect()).timers.every((t) => t === "token_expiry"), "the connect's timers to clear");
		// The hello's grace deadline goes away with the hello; the alarm is set
		// exactly again at the next quiet moment (the end of the connect's flush),
		// which on a real server can come a little after the timers clear.
		await waitFor(async () => (await msUntilAlarm(agentId)) > 240_000, "the alarm to settle at the idle silence check");
		const cmd = await enqueue(agentId, { action: "held", payload: {} });
		expect((await agent.next("command")).id).toBe(cmd.id);
		agent.send({ type: "ack", id: cmd.id });
		await waitForStatus(cmd.id, "acknowledged");
		// Acknowledged, no run timeout: the alarm still stands at the answered
		// ack deadline (moving it on every command would cost a write each); it
		// fires once, finds nothing due, and the only deadline left is the
		// silence rule's, 90 s after the last frame.
		expect(await msUntilAlarm(agentId)).toBeLessThanOrEqual(10_000);
		await runDurableObjectAlarm(stub);
		const held = await msUntilAlarm(agentId);
		expect(held).toBeGreaterThan(60_000);
		expect(held).toBeLessThanOrEqual(90_000);
		agent.close();
	});

	it("closes an idle agent's silent socket with 4002 when a command arrives, and keeps the command pending", async () => {
		const agentId = uniqueAgentId();
		const agent = await connectSettled(agentId);
		const stub = agentHub(env, agentId);
		await lastHeardFrom(stub, 91_000);
		const cmd = await enqueue(agentId, { action: "to_a_dead_socket" });
		expect((await agent.closed).code).toBe(4002);
		expect(agent.frames.filter((f) => f.type === "command")).toEqual([]);
		// Offline once the object's flush of its presence has reached Postgres.
		await waitFor(async () => (await apiCommand(cmd.id)).blockedReason === "agent_offline", "agent_offline");
		expect(await apiCommand(cmd.id)).toMatchObject({ status: "pending", attempts: 0 });
		// The agent that comes back gets it.
		const again = await AgentSocket.connect(agentId);
		expect((await again.next("command")).id).toBe(cmd.id);
		again.close();
	});

	it("a reconcile that finds commands for an idle agent's silent socket closes it instead of sending", async () => {
		const agentId = uniqueAgentId();
		const agent = await connectSettled(agentId);
		const stub = agentHub(env, agentId);
		await lastHeardFrom(stub, 91_000);
		// A row the object never heard of, as an INSERT by hand leaves it.
		const [row] = await query<{ id: string }>(sql`
			insert into agent_commands (agent_id, action, max_attempts) values (${agentId}, 'by_hand', 1) returning id`);
		expect((await stub.reconcile()).added).toBe(1);
		expect((await agent.closed).code).toBe(4002);
		expect(agent.frames.filter((f) => f.type === "command")).toEqual([]);
		// One attempt allowed, none spent: the agent that comes back runs it.
		const again = await AgentSocket.connect(agentId);
		expect((await again.next("command")).id).toBe(row?.id);
		again.close();
	});

	it("keeps a socket that pings", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const stub = agentHub(env, agentId);
		await lastHeardFrom(stub, 91_000);
		agent.send('{"type":"ping"}'); // answered at the edge, recorded as the auto-response time
		await agent.next("pong");
		await runDurableObjectAlarm(stub);
		expect((await stub.inspect()).connected).toBe(true);
		agent.close();
	});
});

describe("explainable waits", () => {
	it("reports why each open command waits and when it will be tried again", async () => {
		const agentId = uniqueAgentId();
		const offline = await enqueue(agentId, { action: "waits" });
		expect(await apiCommand(offline.id)).toMatchObject({ blockedReason: "agent_offline", nextAttemptAt: null });

		const agent = await AgentSocket.connect(agentId, { hello: { concurrency: 1 } });
		await agent.next("command");
		const dispatched = await waitForStatus(offline.id, "dispatched");
		expect(dispatched.blockedReason).toBe("awaiting_ack");
		expect(Date.parse(dispatched.nextAttemptAt as string) - Date.parse(dispatched.dispatchedAt as string)).toBe(10_000);
		const queued = await enqueue(agentId, { action: "behind" });
		expect((await apiCommand(queued.id)).blockedReason).toBe("concurrency_full");
		agent.send({ type: "ack", id: offline.id });
		expect(await waitForStatus(offline.id, "acknowledged")).toMatchObject({ blockedReason: "running", nextAttemptAt: null });
		agent.close();
	});
});

describe("Postgres outage", () => {
	it("keeps every result the agent reports while Postgres is down and writes them, in order, once it is back", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmds: { id: string }[] = [];
		for (let i = 0; i < 5; i++) cmds.push(await enqueue(agentId, { action: `during_outage_${i}` }));
		const frames = await agent.commands(5);
		await waitFor(async () => (await apiCommand(cmds[4]?.id ?? "")).status === "dispatched", "all dispatched");

		await fetch(`${env.TEST_RELAY_CONTROL}/down`);
		try {
			for (const f of frames) {
				agent.send({ type: "ack", id: f.id });
				agent.send({ type: "result", id: f.id, status: "completed", result: { n: f.action } });
			}
			const stub = agentHub(env, agentId);
			await waitFor(async () => (await stub.inspect()).buffered.completed === 5, "object has all results");
			await waitFor(async () => (await stub.inspect()).outbox >= 10, "results held in the outbox");
			// Enqueue refuses while the database is down, and writes nothing.
			const refused = await api(`/v1/agents/${agentId}/commands`, { method: "POST", json: { action: "x" } });
			expect(refused.status).toBe(503);
		} finally {
			await fetch(`${env.TEST_RELAY_CONTROL}/up`);
		}
		for (const f of frames) {
			expect(await waitForStatus(f.id, "completed", 30_000)).toMatchObject({ result: { n: f.action } });
			expect((await commandEvents(f.id)).map((e) => e.to_status)).toEqual(["pending", "dispatched", "acknowledged", "completed"]);
		}
		const [n] = await query<{ n: number }>(sql`select count(*)::int as n from agent_commands where agent_id = ${agentId}`);
		expect(n?.n).toBe(5);
		agent.close();
	}, 90_000);
});
