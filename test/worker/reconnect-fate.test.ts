/**
 * A command the agent was sent, whose socket dropped before its ack left
 * (issue 15, defect 1). The record once said such work never ran while it
 * ran: on reconnect the object ended it (`expired` by a ttl that had passed,
 * `undeliverable` with its attempts spent) before `hello` could say the
 * agent held it, told the agent nothing, and dropped the agent's result as
 * a duplicate. Now what the agent says decides, and what the system ended
 * while the agent may hold it gets a stop whose answer still counts.
 */
import { runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import type { AgentHub } from "../../src/agent/agent-hub";
import { agentHub } from "../../src/agent/stub";
import { writeStatus } from "../../src/db/status-writes";
import {
	AgentSocket,
	apiCommand,
	commandEvents,
	db,
	endHelloGrace,
	enqueue,
	objectSettled,
	query,
	sql,
	uniqueAgentId,
	waitForStatus,
} from "../helpers/worker/harness";

/** The agent receives the command and its socket drops before it acknowledges it. */
async function sentThenDropped(agentId: string, body: Record<string, unknown>): Promise<{ id: string }> {
	const first = await AgentSocket.connect(agentId);
	const cmd = await enqueue(agentId, body);
	expect(await first.next("command")).toMatchObject({ id: cmd.id, attempt: 1 });
	first.close();
	await first.closed;
	await objectSettled(agentId, { connected: false });
	return cmd;
}

/** The command's ttl runs out while the agent is away, and the object's alarm runs. */
async function ttlRunsOut(agentId: string, id: string): Promise<void> {
	const stub = agentHub(env, agentId);
	await runInDurableObject(stub, (instance: AgentHub, state) => {
		state.storage.sql.exec("update commands set expires_at = ? where id = ?", Date.now() - 1, id);
		instance.reloadState();
	});
	await runDurableObjectAlarm(stub);
}

/** The send's ack deadline passes while the agent is away: that attempt is spent. */
async function ackDeadlinePasses(agentId: string, id: string): Promise<void> {
	await runInDurableObject(agentHub(env, agentId), (instance: AgentHub, state) => {
		state.storage.sql.exec("update commands set ack_deadline = ? where id = ?", Date.now() - 1, id);
		instance.reloadState();
	});
}

/** The command's audit trail as `from>to:reason`. */
async function trail(id: string): Promise<string[]> {
	return (await commandEvents(id)).map((e) => `${e.from_status}>${e.to_status}:${e.detail?.reason ?? ""}`);
}

/** Everything the server sent before it answered a ping sent now. */
async function framesUntilPong(agent: AgentSocket) {
	agent.send({ type: "ping" });
	await agent.next("pong");
	return agent.frames.splice(0);
}

describe("a command the agent holds when it reconnects", () => {
	it("is not expired by a ttl that ran out after it was sent: the hello that lists it keeps it running", async () => {
		const agentId = uniqueAgentId();
		const cmd = await sentThenDropped(agentId, { action: "slow_start", ttlSeconds: 60 });
		await ttlRunsOut(agentId, cmd.id);
		expect(await apiCommand(cmd.id)).toMatchObject({ status: "pending", errorCode: null });

		const back = await AgentSocket.connect(agentId, { hello: { concurrency: 5, running: [cmd.id] } });
		expect(await waitForStatus(cmd.id, "acknowledged")).toMatchObject({ errorCode: null, attempts: 1 });
		back.send({ type: "result", id: cmd.id, status: "completed", result: { ran: true } });
		expect(await waitForStatus(cmd.id, "completed")).toMatchObject({ result: { ran: true }, errorCode: null, attempts: 1 });
		// Neither sent again nor stopped.
		expect((await framesUntilPong(back)).filter((f) => f.type === "command" || f.type === "cancel")).toEqual([]);
		expect(await trail(cmd.id)).toEqual([
			"null>pending:enqueued",
			"pending>dispatched:delivery",
			"dispatched>pending:disconnected",
			"pending>acknowledged:reported_running",
			"acknowledged>completed:",
		]);
		back.close();
	});

	it("is not failed as undeliverable before the hello that lists it, though its last attempt's ack deadline passed", async () => {
		const agentId = uniqueAgentId();
		const cmd = await sentThenDropped(agentId, { action: "one_shot", maxAttempts: 1, ackTimeoutSeconds: 1 });
		const back = await AgentSocket.connect(agentId, { hello: { concurrency: 5, running: [cmd.id] } });
		expect(await waitForStatus(cmd.id, "acknowledged")).toMatchObject({ errorCode: null, attempts: 1 });
		back.send({ type: "result", id: cmd.id, status: "completed", result: 1 });
		expect(await waitForStatus(cmd.id, "completed")).toMatchObject({ result: 1, errorCode: null });
		expect((await framesUntilPong(back)).filter((f) => f.type === "command" || f.type === "cancel")).toEqual([]);
		back.close();
	});

	it("takes a result sent before the hello (the SDK's order) for a command whose ttl and attempts ran out", async () => {
		const agentId = uniqueAgentId();
		const cmd = await sentThenDropped(agentId, { action: "finished_offline", ttlSeconds: 60, maxAttempts: 1 });
		await ttlRunsOut(agentId, cmd.id);
		const back = await AgentSocket.connect(agentId, { hello: false });
		back.send({ type: "result", id: cmd.id, status: "completed", result: "done while away" });
		back.send({ type: "hello", concurrency: 5, running: [] });
		expect(await waitForStatus(cmd.id, "completed")).toMatchObject({ result: "done while away", errorCode: null });
		expect((await trail(cmd.id)).slice(-1)).toEqual(["pending>completed:"]);
		expect((await framesUntilPong(back)).filter((f) => f.type === "command" || f.type === "cancel")).toEqual([]);
		back.close();
	});
});

describe("a command whose fate is in doubt waits for the agent's word", () => {
	it("is not sent again before the hello, or its grace period, says the agent does not hold it", async () => {
		const agentId = uniqueAgentId();
		const cmd = await sentThenDropped(agentId, { action: "in_doubt" });
		const back = await AgentSocket.connect(agentId, { hello: false });
		expect((await framesUntilPong(back)).filter((f) => f.type === "command")).toEqual([]);
		expect(await apiCommand(cmd.id)).toMatchObject({ status: "pending", attempts: 1 });

		await endHelloGrace(agentId, () => back.frames.some((f) => f.type === "command"));
		// Within its ack deadline still: the same attempt, sent again.
		expect(await back.next("command")).toMatchObject({ id: cmd.id, attempt: 1 });
		back.close();
	});

	it("a hello that does not list it sends it again while attempts are left", async () => {
		const agentId = uniqueAgentId();
		const cmd = await sentThenDropped(agentId, { action: "resent", ttlSeconds: 60 });
		await ttlRunsOut(agentId, cmd.id);
		const back = await AgentSocket.connect(agentId, { hello: { concurrency: 5, running: [] } });
		expect(await back.next("command")).toMatchObject({ id: cmd.id, attempt: 1 });
		back.close();
	});
});

describe("what the system ends while the agent may hold it", () => {
	it("an unlisted command with no attempts left fails as undeliverable, the agent is told to stop, and its late result stands", async () => {
		const agentId = uniqueAgentId();
		const cmd = await sentThenDropped(agentId, { action: "spent", maxAttempts: 1 });
		await ackDeadlinePasses(agentId, cmd.id);
		const back = await AgentSocket.connect(agentId, { hello: { concurrency: 5, running: [] } });
		expect(await back.next("cancel")).toEqual({ type: "cancel", id: cmd.id, reason: "requested" });
		expect(await waitForStatus(cmd.id, "failed")).toMatchObject({ errorCode: "undeliverable" });

		// The agent had finished it: it answers the stop with its result.
		back.send({ type: "result", id: cmd.id, status: "completed", result: { late: true } });
		expect(await waitForStatus(cmd.id, "completed")).toMatchObject({ result: { late: true }, error: null, errorCode: null });
		expect((await trail(cmd.id)).slice(-2)).toEqual(["pending>failed:", "failed>completed:reported_late"]);
		const [late] = await query<{ actor: string }>(sql`
			select actor from command_events where command_id = ${cmd.id} and to_status = 'completed'`);
		expect(late?.actor).toBe(`agent:${agentId}`);
		// Answered: not told again, and a second answer changes nothing.
		back.send({ type: "result", id: cmd.id, status: "failed", error: "again" });
		back.close();
		await back.closed;
		const third = await AgentSocket.connect(agentId);
		expect((await framesUntilPong(third)).filter((f) => f.type === "cancel")).toEqual([]);
		expect(await apiCommand(cmd.id)).toMatchObject({ status: "completed", result: { late: true } });
		third.close();
	});

	it("a `cancelled` answer to the stop confirms the system's end and changes nothing", async () => {
		const agentId = uniqueAgentId();
		const cmd = await sentThenDropped(agentId, { action: "never_arrived", maxAttempts: 1 });
		await ackDeadlinePasses(agentId, cmd.id);
		const back = await AgentSocket.connect(agentId, { hello: { concurrency: 5, running: [] } });
		expect(await back.next("cancel")).toEqual({ type: "cancel", id: cmd.id, reason: "requested" });
		back.send({ type: "result", id: cmd.id, status: "cancelled" });
		await framesUntilPong(back);
		await objectSettled(agentId);
		expect(await apiCommand(cmd.id)).toMatchObject({ status: "failed", errorCode: "undeliverable" });
		back.close();
		await back.closed;
		const again = await AgentSocket.connect(agentId);
		expect((await framesUntilPong(again)).filter((f) => f.type === "cancel")).toEqual([]);
		again.close();
	});

	it("a command that runs out of attempts while the agent is connected is stopped at once", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "unacked", ackTimeoutSeconds: 1, maxAttempts: 1 });
		await agent.next("command");
		expect(await agent.next("cancel", 5_000)).toEqual({ type: "cancel", id: cmd.id, reason: "requested" });
		expect(await waitForStatus(cmd.id, "failed")).toMatchObject({ errorCode: "undeliverable" });
		agent.close();
	});
});

describe("Postgres moves a finished command again only for the agent's late word", () => {
	const at = () => new Date().toISOString();
	const late = (id: string, from: "failed" | "completed" | "expired") => ({
		kind: "transition" as const,
		key: `test:${crypto.randomUUID()}`,
		commandId: id,
		from,
		to: "completed" as const,
		at: at(),
		attempts: 1,
		result: "late",
		errorCode: null,
		detail: { reason: "reported_late" },
	});

	async function finishedRow(agentId: string, status: string, errorCode: string | null): Promise<string> {
		const [row] = await query<{ id: string }>(sql`
			insert into agent_commands (agent_id, action, status, attempts, error_code, completed_at)
			values (${agentId}, 'ended', ${status}, 1, ${errorCode}, now()) returning id`);
		return row?.id ?? "";
	}

	it("takes a late report over the system's end it answers, and nothing else", async () => {
		const agentId = uniqueAgentId();
		const systemEnded = await finishedRow(agentId, "failed", "undeliverable");
		const agentEnded = await finishedRow(agentId, "failed", null);
		const otherEnd = await finishedRow(agentId, "cancelled", "cancel_unconfirmed");
		await db((d) => writeStatus(d, [late(systemEnded, "failed"), late(agentEnded, "failed"), late(otherEnd, "failed")], null, agentId));
		expect(await apiCommand(systemEnded)).toMatchObject({ status: "completed", result: "late", errorCode: null });
		// The agent's own result is never replaced, nor an end the report does not answer.
		expect(await apiCommand(agentEnded)).toMatchObject({ status: "failed", result: null });
		expect(await apiCommand(otherEnd)).toMatchObject({ status: "cancelled", errorCode: "cancel_unconfirmed" });
		// Any other transition still cannot move a finished command.
		const plain = { ...late(otherEnd, "failed"), detail: { reason: "delivery" }, from: "cancelled" as const };
		await db((d) => writeStatus(d, [plain], null, agentId));
		expect(await apiCommand(otherEnd)).toMatchObject({ status: "cancelled" });
	});
});
