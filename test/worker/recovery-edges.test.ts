/**
 * Edge cases where a command could be lost, stuck, resurrected or sent after
 * a cancel: each guards a specific sequence of events (found in review).
 */
import { runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import type { AgentHub } from "../../src/agent/agent-hub";
import * as answers from "../../src/agent/answers";
import * as buffer from "../../src/agent/buffer";
import type { AgentCore } from "../../src/agent/core";
import { pruneSettled } from "../../src/agent/flush";
import { writeStatus } from "../../src/db/status-writes";
import { agentHub } from "../../src/agent/stub";
import {
	AgentSocket,
	api,
	connectSettled,
	apiCommand,
	db,
	endHelloGrace,
	enqueue,
	query,
	sql,
	uniqueAgentId,
	msUntilAlarm,
	waitFor,
	waitForStatus,
} from "../helpers/worker/harness";

/**
 * Stands in for a catch-up read that has waited `waitedMs` at the connection
 * gate and is still waiting, makes its safety net due and fires the alarm.
 * Returns when the safety net and the alarm are now due, and the clock before the alarm and after.
 */
async function alarmWhileCatchUpWaits(stub: ReturnType<typeof agentHub>, waitedMs: number) {
	await runInDurableObject(stub, (instance: AgentHub, state) => {
		// SAFETY: a test reaching into the object: a read that has not finished (queued at the gate).
		const job = (instance as unknown as { catchUpJob: { running: Promise<void> | null; since: number } }).catchUpJob;
		job.running = new Promise(() => {});
		job.since = Date.now() - waitedMs;
		state.storage.sql.exec(
			"insert into meta (key, value) values ('timer:catch_up', ?) on conflict (key) do update set value = excluded.value",
			String(Date.now() - 1),
		);
		instance.reloadState();
	});
	const before = Date.now();
	await runDurableObjectAlarm(stub);
	return runInDurableObject(stub, async (_i: AgentHub, state) => ({
		before,
		now: Date.now(),
		due: Number(state.storage.sql.exec<{ value: string }>("select value from meta where key = 'timer:catch_up'").one().value),
		alarm: (await state.storage.getAlarm()) ?? 0,
	}));
}

describe("cancel never races a delivery", () => {
	it("cancelling a command the object has not taken yet never sends it", async () => {
		const agentId = uniqueAgentId();
		const agent = await connectSettled(agentId);
		const [row] = await query<{ id: string }>(sql`
			insert into agent_commands (agent_id, action) values (${agentId}, 'untaken') returning id`);
		const res = await api(`/v1/commands/${row?.id}/cancel`, { method: "POST" });
		expect(res.status).toBe(200);
		expect(await res.json()).toMatchObject({ outcome: "cancelled" });
		await waitForStatus(row?.id ?? "", "cancelled");
		agent.send({ type: "ping" });
		await agent.next("pong");
		expect(agent.frames.filter((f) => f.type === "command")).toEqual([]);
		agent.close();
	});

	it("a recovered command whose cancel was already requested is cancelled, not sent", async () => {
		const agentId = uniqueAgentId();
		const [row] = await query<{ id: string }>(sql`
			insert into agent_commands (agent_id, action, status, attempts, dispatched_at, cancel_requested_at)
			values (${agentId}, 'doomed', 'dispatched', 1, now(), now()) returning id`);
		const agent = await AgentSocket.connect(agentId);
		await waitForStatus(row?.id ?? "", "cancelled");
		expect(agent.frames.filter((f) => f.type === "command")).toEqual([]);
		agent.close();
	});
});

describe("the agent is told to stop what it may still run", () => {
	it("cancelling a queued-again command that the agent had received sends it a cancel on reconnect", async () => {
		const agentId = uniqueAgentId();
		const first = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "maybe_running" });
		await first.next("command");
		first.close();
		await first.closed;
		await waitFor(async () => (await agentHub(env, agentId).inspect()).buffered.pending === 1, "requeued");

		const res = await api(`/v1/commands/${cmd.id}/cancel`, { method: "POST" });
		expect(res.status).toBe(200);
		const second = await AgentSocket.connect(agentId);
		expect(await second.next("cancel")).toEqual({ type: "cancel", id: cmd.id, reason: "requested" });
		expect(second.frames.filter((f) => f.type === "command")).toEqual([]);
		// Once the agent answers, it is not told again.
		second.send({ type: "result", id: cmd.id, status: "cancelled" });
		second.send({ type: "ping" });
		await second.next("pong");
		second.close();
		await second.closed;
		const third = await AgentSocket.connect(agentId);
		third.send({ type: "ping" });
		await third.next("pong");
		expect(third.frames.filter((f) => f.type === "cancel")).toEqual([]);
		third.close();
	});

	it("a timeout that fires while the agent is offline reaches it as a cancel when it returns", async () => {
		const agentId = uniqueAgentId();
		const first = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "long", timeoutSeconds: 1 });
		await first.next("command");
		first.send({ type: "ack", id: cmd.id });
		await waitForStatus(cmd.id, "acknowledged");
		first.close();
		await first.closed;
		expect(await waitForStatus(cmd.id, "failed")).toMatchObject({ errorCode: "timeout" });
		const second = await AgentSocket.connect(agentId, { hello: { concurrency: 5, running: [cmd.id] } });
		expect(await second.next("cancel")).toEqual({ type: "cancel", id: cmd.id, reason: "timeout" });
		second.close();
	});
});

describe("an agent that never says hello", () => {
	it("has what it acknowledged on an earlier connection sent again after the grace period", async () => {
		const agentId = uniqueAgentId();
		const first = await AgentSocket.connect(agentId, { hello: false });
		const cmd = await enqueue(agentId, { action: "before_restart" });
		const behind = await enqueue(agentId, { action: "behind" });
		await first.next("command");
		first.send({ type: "ack", id: cmd.id });
		await waitForStatus(cmd.id, "acknowledged");
		first.close();
		await first.closed;

		const second = await AgentSocket.connect(agentId, { hello: false });
		await endHelloGrace(agentId, () => second.frames.some((f) => f.type === "command"));
		expect(await second.next("command")).toMatchObject({ id: cmd.id, attempt: 2 });
		second.send({ type: "result", id: cmd.id, status: "completed" });
		expect((await second.next("command")).id).toBe(behind.id);
		second.close();
	});
});

describe("an object waiting at the connection gate", () => {
	// A fleet reconnecting at once queues thousands of catch-ups at the gate.
	// Their 5 s safety net, left due while the read still waited, fired each
	// object's alarm every 100 ms and slowed a 4,000-agent connect to ~6/s.
	it("pushes out a catch-up safety net that comes due while the read is still under way, instead of firing again at once", async () => {
		const agentId = uniqueAgentId();
		// Settled first, so the connect's own catch-up cannot finish and clear the stand-in below.
		const agent = await connectSettled(agentId);
		const { before, due, alarm, now } = await alarmWhileCatchUpWaits(agentHub(env, agentId), 0);
		expect(due).toBeGreaterThanOrEqual(before + 4_000);
		// And the alarm is not armed to fire again within the 100 ms floor.
		expect(alarm).toBeGreaterThan(now + 1_000);
		agent.close();
	});
});

describe("an idle object sleeps until it has something to do", () => {
	// Each alarm that finds nothing due costs a whole event. A connect used to
	// leave three behind, and an object queued two minutes at the gate woke
	// every 5 s: 40% of workerd's CPU in a 3,000-agent connect went to alarms.
	it("once a connect has settled, the alarm waits for the heartbeat deadline, not for the timers the connect cleared", async () => {
		const agentId = uniqueAgentId();
		const agent = await connectSettled(agentId);
		const stub = agentHub(env, agentId);
		// What is left is the token's expiry, an hour out.
		await waitFor(async () => (await stub.inspect()).timers.every((t) => t === "token_expiry"), "the connect's flush");
		// An idle agent's silence is checked 5 minutes after its last frame; the
		// hello grace (10 s) and the safety nets (5 s) are gone with their work.
		// The alarm is set exactly again at the next quiet moment (the end of the
		// flush the hello asked for), which can come just after the timers clear.
		await waitFor(async () => (await msUntilAlarm(agentId)) > 240_000, "the alarm to settle at the idle silence check");
		agent.close();
	});

	it("pushes out the safety net of a catch-up that has waited long by as long again, up to a minute", async () => {
		const agentId = uniqueAgentId();
		const agent = await connectSettled(agentId);
		const stub = agentHub(env, agentId);
		const waited = await alarmWhileCatchUpWaits(stub, 40_000);
		expect(waited.due).toBeGreaterThanOrEqual(waited.before + 40_000);
		expect(waited.due).toBeLessThanOrEqual(waited.now + 60_000);
		expect(waited.alarm).toBeGreaterThanOrEqual(waited.before + 40_000);
		// Five minutes at the gate: still checked again within the minute.
		const long = await alarmWhileCatchUpWaits(stub, 300_000);
		expect(long.due).toBeGreaterThanOrEqual(long.before + 60_000);
		expect(long.due).toBeLessThanOrEqual(long.now + 60_000);
		agent.close();
	});
});

describe("Postgres is the record, and it never goes backwards", () => {
	it("keeps a finished command in the object until Postgres has confirmed it, however old", async () => {
		const agentId = uniqueAgentId();
		const cmd = await enqueue(agentId, { action: "old" });
		const stub = agentHub(env, agentId);
		await runInDurableObject(stub, (instance: AgentHub, state) => {
			const s = state.storage.sql;
			// SAFETY: a test reaching into the object for its transaction primitive.
			const core = (instance as unknown as { core: AgentCore }).core;
			const t0 = Date.now();
			core.atomically((tx) => {
				buffer.fillWindow(tx, 1, 1, t0);
				expect(answers.finish(tx, cmd.id, { status: "completed" }, t0)).toBe("applied");
			});
			// Twelve minutes of outage: Postgres has not confirmed it, so it stays.
			expect(pruneSettled(s, t0 + 12 * 60_000, { unsynced: 1, reading: false })).toBe(0);
			// Confirmed, but a catch-up read that began before is still under way.
			expect(pruneSettled(s, t0 + 12 * 60_000, { unsynced: 0, reading: true })).toBe(0);
			expect(pruneSettled(s, t0 + 5 * 60_000, { unsynced: 0, reading: false })).toBe(0);
			expect(pruneSettled(s, t0 + 12 * 60_000, { unsynced: 0, reading: false })).toBe(1);
		});
	});

	it("a late transition cannot move a finished command, and a retried flush writes no event twice", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "done" });
		await agent.next("command");
		agent.send({ type: "result", id: cmd.id, status: "completed", result: 7 });
		await waitForStatus(cmd.id, "completed");
		const before = await query<{ n: number }>(sql`select count(*)::int as n from command_events where command_id = ${cmd.id}`);

		const at = new Date().toISOString();
		const late = [
			{ kind: "transition" as const, key: `test:${cmd.id}:1`, commandId: cmd.id, from: "dispatched" as const, to: "acknowledged" as const, at, attempts: 1 },
		];
		await db((d) => writeStatus(d, late, null));
		await db((d) => writeStatus(d, late, null)); // the same batch again, as after an unclear commit
		const after = await apiCommand(cmd.id);
		expect(after).toMatchObject({ status: "completed", result: 7 });
		const events = await query<{ n: number }>(sql`select count(*)::int as n from command_events where command_id = ${cmd.id}`);
		expect(events[0]?.n).toBe((before[0]?.n ?? 0) + 1);
		agent.close();
	});

	it("timeoutSeconds counts from the first dispatch, even after redeliveries", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "redelivered", ackTimeoutSeconds: 1 });
		await agent.next("command");
		await agent.next("command", 5_000); // attempt 2
		const row = await waitFor(async () => {
			const [r] = await query<{ first: string; latest: string; attempts: number }>(sql`
				select first_dispatched_at::text as first, dispatched_at::text as latest, attempts
				from agent_commands where id = ${cmd.id}`);
			return r && r.attempts === 2 ? r : undefined;
		}, "the second dispatch in Postgres");
		expect(Date.parse(row.first)).toBeLessThan(Date.parse(row.latest));
		agent.close();
	});
});
