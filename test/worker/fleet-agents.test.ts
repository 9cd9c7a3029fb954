/**
 * Fleet operations on agents, as an operator and an agent see them: hello
 * describes the agent, operator labels, filtered lists, action gating,
 * pause and resume, stop for one agent and for a selector, and what a
 * command record says about why it waits and where it stands.
 */
import { evictDurableObject, runDurableObjectAlarm } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { agentHub } from "../../src/agent/stub";
import { MAX_LABELS } from "../../src/protocol";
import { TEST_READ_KEY } from "../helpers/test-secrets";
import { cancelUntaken } from "../../src/db/agents";
import { AgentSocket, api, db, enqueue, expectError, query, sql, uniqueAgentId, waitFor } from "../helpers/worker/harness";

type AgentRecord = {
	id: string;
	online: boolean;
	version: string | null;
	platform: string | null;
	actions: string[] | null;
	labels: Record<string, string>;
	agentLabels: Record<string, string>;
	operatorLabels: Record<string, string>;
	paused: boolean;
	pausedAt: string | null;
	concurrency: number | null;
};
type CommandRecord = { id: string; status: string; blockedReason: string | null; queuePosition: number | null };

async function agentRecord(agentId: string): Promise<AgentRecord> {
	const res = await api(`/v1/agents/${agentId}`);
	expect(res.status).toBe(200);
	return res.json();
}

async function command(id: string): Promise<CommandRecord> {
	return (await api(`/v1/commands/${id}`)).json();
}

function label(agentId: string, labels: Record<string, string | null>, key?: string): Promise<Response> {
	return api(`/v1/agents/${agentId}`, { method: "PATCH", json: { labels }, ...(key ? { key } : {}) });
}

async function pgStatus(id: string): Promise<string | undefined> {
	const [row] = await query<{ status: string }>(sql`select status from agent_commands where id = ${id}`);
	return row?.status;
}

/** No frame of `type` arrives within `ms`. */
async function noFrame(agent: AgentSocket, type: "command" | "cancel", ms = 300): Promise<void> {
	await new Promise((r) => setTimeout(r, ms));
	expect(agent.frames.filter((f) => f.type === type)).toEqual([]);
}

describe("hello describes the agent", () => {
	it("records version, platform, labels, actions and concurrency in the agent's record", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId, {
			hello: { concurrency: 3, version: "1.4.2", platform: "linux/arm64", labels: { env: "prod", region: "eu" }, actions: ["build", "test"] },
		});
		const record = await waitFor(async () => {
			const r = await agentRecord(agentId);
			return r.version === "1.4.2" && r;
		}, "the hello in the agent's record");
		expect(record).toMatchObject({
			online: true,
			version: "1.4.2",
			platform: "linux/arm64",
			actions: ["build", "test"],
			agentLabels: { env: "prod", region: "eu" },
			operatorLabels: {},
			labels: { env: "prod", region: "eu" },
			paused: false,
			pausedAt: null,
			concurrency: 3,
		});
		const [row] = await query<{ concurrency: number; actions: string[] }>(sql`select concurrency, actions from agents where id = ${agentId}`);
		expect(row).toEqual({ concurrency: 3, actions: ["build", "test"] });
		agent.close();
		// The object writes its presence to Postgres after the close, a moment later.
		const offline = await waitFor(async () => {
			const r = await agentRecord(agentId);
			return !r.online && r;
		}, "the agent offline in its record");
		// Offline, the last hello's concurrency still shows.
		expect(offline).toMatchObject({ online: false, concurrency: 3, version: "1.4.2" });
	});

	it("takes null for every absent field, like an agent written in Go or Python sends it", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId, { hello: { concurrency: 2, version: null, platform: null, labels: null, actions: null } });
		const record = await waitFor(async () => {
			const r = await agentRecord(agentId);
			return r.concurrency === 2 && r;
		}, "the hello");
		expect(record).toMatchObject({ version: null, platform: null, actions: null, agentLabels: {} });
		expect(agent.frames.filter((f) => f.type === "error")).toEqual([]);
		agent.close();
	});

	it("answers a hello past the limits with invalid_frame naming the field, and takes none of it", async () => {
		const agentId = uniqueAgentId();
		const tooMany = Object.fromEntries(Array.from({ length: MAX_LABELS + 1 }, (_, i) => [`k${i}`, "v"]));
		const cases: [Record<string, unknown>, string][] = [
			[{ labels: tooMany }, "labels"],
			[{ labels: { "-bad": "v" } }, "labels"],
			[{ labels: { ok: "x".repeat(256) } }, "labels"],
			[{ actions: Array.from({ length: 257 }, (_, i) => `a${i}`) }, "actions"],
			[{ version: "" }, "version"],
			[{ platform: "p".repeat(129) }, "platform"],
		];
		const agent = await AgentSocket.connect(agentId, { hello: false });
		for (const [extra, field] of cases) {
			agent.send({ type: "hello", concurrency: 5, running: [], ...extra });
			const error = await agent.next("error");
			expect(error.code).toBe("invalid_frame");
			expect(error.message).toContain(field);
		}
		expect((await agentHub(env, agentId).inspect()).concurrency).toBe(1);
		agent.close();
	});
});

describe("PATCH /v1/agents/:agentId (operator labels)", () => {
	it("sets and removes labels, the operator's winning over the agent's, and labels an agent that never connected", async () => {
		const agentId = uniqueAgentId();
		const res = await label(agentId, { env: "staging", team: "ci" });
		expect(res.status).toBe(200);
		expect(await res.json()).toMatchObject({ id: agentId, online: false, operatorLabels: { env: "staging", team: "ci" }, labels: { env: "staging", team: "ci" } });

		const agent = await AgentSocket.connect(agentId, { hello: { concurrency: 1, labels: { env: "prod", arch: "arm64" } } });
		await waitFor(async () => (await agentRecord(agentId)).agentLabels.arch === "arm64", "the agent's labels");
		expect(await agentRecord(agentId)).toMatchObject({
			agentLabels: { env: "prod", arch: "arm64" },
			operatorLabels: { env: "staging", team: "ci" },
			labels: { env: "staging", arch: "arm64", team: "ci" },
		});

		const removed = await (await label(agentId, { env: null, owner: "sre" })).json<AgentRecord>();
		expect(removed.operatorLabels).toEqual({ team: "ci", owner: "sre" });
		expect(removed.labels).toEqual({ env: "prod", arch: "arm64", team: "ci", owner: "sre" });
		agent.close();
	});

	it("refuses bad labels with a 400 that names the field, and a read key with 403", async () => {
		const agentId = uniqueAgentId();
		for (const body of [{ labels: { "bad key": "v" } }, { labels: { k: 5 } }, { labels: "env=prod" }, {}]) {
			const res = await api(`/v1/agents/${agentId}`, { method: "PATCH", json: body });
			const error = await expectError(res, 400, "validation_failed");
			expect(error.error.message).toContain("labels");
		}
		// 32 at once is the limit per request, and per agent in total.
		const full = Object.fromEntries(Array.from({ length: MAX_LABELS }, (_, i) => [`k${i}`, "v"]));
		expect((await label(agentId, full)).status).toBe(200);
		const over = await expectError(await label(agentId, { one_more: "v" }), 400, "validation_failed");
		expect(over.error.message).toContain("labels");
		expect((await label(agentId, { one_more: "v", k0: null })).status).toBe(200);
		await expectError(await label(agentId, { x: "y" }, TEST_READ_KEY), 403, "forbidden");
	});
});

describe("GET /v1/agents filters", () => {
	it("filters by every label given, online and id prefix, paging by id", async () => {
		const prefix = `flt-${crypto.randomUUID().slice(0, 6)}`;
		const ids = [`${prefix}-a`, `${prefix}-b`, `${prefix}-c`, `${prefix}-d`];
		await label(ids[0] ?? "", { env: "prod", region: "eu" });
		await label(ids[1] ?? "", { env: "prod", region: "us" });
		await label(ids[2] ?? "", { env: "prod", region: "eu" });
		await label(ids[3] ?? "", { env: "dev", region: "eu" });
		const agent = await AgentSocket.connect(ids[2] ?? "");
		await waitFor(async () => (await agentRecord(ids[2] ?? "")).online, "online");
		const list = async (q: string) => {
			const res = await api(`/v1/agents?prefix=${prefix}&${q}`);
			expect(res.status).toBe(200);
			return res.json<{ items: AgentRecord[]; nextCursor: string | null }>();
		};
		expect((await list("label=env=prod&label=region=eu")).items.map((a) => a.id)).toEqual([ids[0], ids[2]]);
		expect((await list("label=env=prod&online=true")).items.map((a) => a.id)).toEqual([ids[2]]);
		expect((await list("label=region=eu&online=false")).items.map((a) => a.id)).toEqual([ids[0], ids[3]]);
		const first = await list("label=region=eu&limit=2");
		expect(first.items.map((a) => a.id)).toEqual([ids[0], ids[2]]);
		const second = await list(`label=region=eu&limit=2&cursor=${first.nextCursor}`);
		expect(second).toMatchObject({ items: [{ id: ids[3] }], nextCursor: null });
		expect((await list("")).items).toHaveLength(4);
		await expectError(await api("/v1/agents?label=novalue"), 400, "validation_failed");
		await expectError(await api("/v1/agents?online=maybe"), 400, "validation_failed");
		agent.close();
	});
});

describe("command records: blockedReason and queuePosition", () => {
	it("counts the open commands that go before a pending one, priority first", async () => {
		const agentId = uniqueAgentId();
		const a = await enqueue(agentId, { action: "a" });
		const b = await enqueue(agentId, { action: "b" });
		const c = await enqueue(agentId, { action: "c", priority: 9 });
		expect(await command(c.id)).toMatchObject({ queuePosition: 0, blockedReason: "agent_offline" });
		expect(await command(a.id)).toMatchObject({ queuePosition: 1 });
		expect(await command(b.id)).toMatchObject({ queuePosition: 2 });
		const list = await (await api(`/v1/agents/${agentId}/commands`)).json<{ items: CommandRecord[] }>();
		expect(list.items.map((i) => [i.id, i.queuePosition])).toEqual([
			[c.id, 0],
			[b.id, 2],
			[a.id, 1],
		]);
		const agent = await AgentSocket.connect(agentId, { hello: { concurrency: 1 } });
		const sent = await agent.next("command");
		expect(sent.id).toBe(c.id);
		await waitFor(async () => (await command(c.id)).status === "dispatched", "dispatched in Postgres");
		expect(await command(c.id)).toMatchObject({ queuePosition: null });
		agent.close();
	});

	it("counts a batch's own commands for the agent in the positions a read shows", async () => {
		const agentId = uniqueAgentId();
		await enqueue(agentId, { action: "before" });
		const res = await api("/v1/commands/batch", {
			method: "POST",
			json: { commands: [{ agentId, action: "a" }, { agentId, action: "b" }, { agentId, action: "c", priority: 9 }] },
		});
		const { items } = await res.json<{ items: { command: CommandRecord }[] }>();
		// The enqueue's answer leaves the position to reads (protocol.md: counting per row inserted is quadratic).
		expect(items.map((i) => i.command.queuePosition)).toEqual([null, null, null]);
		const read = await Promise.all(items.map(({ command: c }) => command(c.id)));
		expect(read.map((c) => c.queuePosition)).toEqual([2, 3, 0]);
	});
});

describe("action gating", () => {
	it("holds a command for an undeclared action without blocking the ones behind it, and sends it to an agent that declares it", async () => {
		const agentId = uniqueAgentId();
		const first = await AgentSocket.connect(agentId, { hello: { concurrency: 5, actions: ["build"] } });
		await waitFor(async () => (await agentRecord(agentId)).actions?.length === 1, "the declared actions");
		const deploy = await enqueue(agentId, { action: "deploy", priority: 9 });
		const build = await enqueue(agentId, { action: "build" });
		expect((await first.next("command")).id).toBe(build.id);
		await noFrame(first, "command");
		expect(await command(deploy.id)).toMatchObject({ status: "pending", blockedReason: "action_unsupported", queuePosition: 0 });
		first.send({ type: "ack", id: build.id });
		first.send({ type: "result", id: build.id, status: "completed", result: null });

		const second = await AgentSocket.connect(agentId, { hello: { concurrency: 5, actions: ["build", "deploy"] } });
		expect((await second.next("command")).id).toBe(deploy.id);
		await first.closed;
		second.close();
	});

	it("expires a held command by its ttl", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId, { hello: { concurrency: 5, actions: ["build"] } });
		await waitFor(async () => (await agentHub(env, agentId).inspect()).actions !== null, "the declared actions");
		const deploy = await enqueue(agentId, { action: "deploy", ttlSeconds: 1 });
		await new Promise((r) => setTimeout(r, 1_100));
		await runDurableObjectAlarm(agentHub(env, agentId));
		await waitFor(async () => (await pgStatus(deploy.id)) === "expired", "expired by its ttl");
		await noFrame(agent, "command", 0);
		agent.close();
	});
});

describe("pause and resume", () => {
	it("lets running commands finish and stores their results, sends nothing new, and sends what waited on resume", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId, { hello: { concurrency: 2 } });
		const one = await enqueue(agentId, { action: "one" });
		const two = await enqueue(agentId, { action: "two" });
		await agent.commands(2);
		agent.send({ type: "ack", id: one.id });

		const paused = await api(`/v1/agents/${agentId}/pause`, { method: "POST" });
		expect(paused.status).toBe(200);
		const body = await paused.json<{ agentId: string; paused: boolean; pausedAt: string }>();
		expect(body).toMatchObject({ agentId, paused: true });
		expect(Date.parse(body.pausedAt)).not.toBeNaN();
		// Pausing twice keeps the first time.
		expect(await (await api(`/v1/agents/${agentId}/pause`, { method: "POST" })).json()).toEqual(body);

		const three = await enqueue(agentId, { action: "three" });
		agent.send({ type: "ack", id: two.id });
		agent.send({ type: "result", id: one.id, status: "completed", result: { n: 1 } });
		agent.send({ type: "result", id: two.id, status: "completed", result: { n: 2 } });
		await waitFor(async () => (await pgStatus(one.id)) === "completed" && (await pgStatus(two.id)) === "completed", "results stored while paused");
		await noFrame(agent, "command");
		expect(await command(three.id)).toMatchObject({ status: "pending", blockedReason: "agent_paused", queuePosition: 0 });
		expect(await agentRecord(agentId)).toMatchObject({ paused: true, pausedAt: body.pausedAt });

		const resumed = await api(`/v1/agents/${agentId}/resume`, { method: "POST" });
		expect(await resumed.json()).toEqual({ agentId, paused: false, pausedAt: null });
		expect((await agent.next("command")).id).toBe(three.id);
		expect(await agentRecord(agentId)).toMatchObject({ paused: false, pausedAt: null });
		agent.close();
	});

	it("stays paused after the object is evicted and the agent reconnects", async () => {
		const agentId = uniqueAgentId();
		expect((await api(`/v1/agents/${agentId}/pause`, { method: "POST" })).status).toBe(200);
		const cmd = await enqueue(agentId, { action: "after_restart" });
		await evictDurableObject(agentHub(env, agentId));
		const agent = await AgentSocket.connect(agentId);
		await noFrame(agent, "command");
		expect((await agentHub(env, agentId).inspect()).paused).toBe(true);
		await api(`/v1/agents/${agentId}/resume`, { method: "POST" });
		expect((await agent.next("command")).id).toBe(cmd.id);
		agent.close();
	});
});

describe("stop", () => {
	it("cancels the queued commands and sends the running one a cancel frame, and answers the counts", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId, { hello: { concurrency: 1 } });
		const running = await enqueue(agentId, { action: "long" });
		const queued = [await enqueue(agentId, { action: "q1" }), await enqueue(agentId, { action: "q2" })];
		expect((await agent.next("command")).id).toBe(running.id);
		agent.send({ type: "ack", id: running.id });
		await waitFor(async () => (await pgStatus(running.id)) === "acknowledged", "acknowledged");

		const res = await api(`/v1/agents/${agentId}/stop`, { method: "POST" });
		expect(res.status).toBe(200);
		expect(await res.json()).toEqual({ agentId, cancelled: 2, cancelRequested: 1, paused: false });
		expect(await agent.next("cancel")).toEqual({ type: "cancel", id: running.id, reason: "requested" });
		for (const q of queued) await waitFor(async () => (await pgStatus(q.id)) === "cancelled", "queued ones cancelled");
		expect(await command(running.id)).toMatchObject({ blockedReason: "cancel_requested" });
		agent.send({ type: "result", id: running.id, status: "cancelled" });
		await waitFor(async () => (await pgStatus(running.id)) === "cancelled", "the running one cancelled by the agent");
		await noFrame(agent, "command");
		agent.close();
	});

	it("cancels commands still only in Postgres, so no later catch-up delivers them, and pauses with ?pause=true", async () => {
		const agentId = uniqueAgentId();
		const [row] = await query<{ id: string }>(sql`insert into agent_commands (agent_id, action) values (${agentId}, 'by_sql') returning id`);
		const res = await api(`/v1/agents/${agentId}/stop?pause=true`, { method: "POST" });
		expect(await res.json()).toEqual({ agentId, cancelled: 1, cancelRequested: 0, paused: true });
		await waitFor(async () => (await pgStatus(row?.id ?? "")) === "cancelled", "the SQL row cancelled");
		expect(await agentRecord(agentId)).toMatchObject({ paused: true });
		const later = await enqueue(agentId, { action: "later" });
		const agent = await AgentSocket.connect(agentId);
		await noFrame(agent, "command");
		expect(await command(later.id)).toMatchObject({ status: "pending", blockedReason: "agent_paused" });
		agent.close();
	});

	it("marks what an unreachable object never took, so the connect's catch-up cancels it instead of delivering it", async () => {
		const agentId = uniqueAgentId();
		const [row] = await query<{ id: string }>(sql`insert into agent_commands (agent_id, action) values (${agentId}, 'untaken') returning id`);
		// What a stop does for an agent whose object it could not reach (routes/agents.ts).
		expect(await db((d) => cancelUntaken(d, [agentId]))).toBe(1);
		const agent = await AgentSocket.connect(agentId);
		await waitFor(async () => (await pgStatus(row?.id ?? "")) === "cancelled", "cancelled on intake");
		await noFrame(agent, "command");
		agent.close();
	});

	it("POST /v1/agents/stop reaches every agent the selector matches, and no other", async () => {
		const fleet = `f${crypto.randomUUID().slice(0, 8)}`;
		const ids = [uniqueAgentId("fleet"), uniqueAgentId("fleet"), uniqueAgentId("fleet")];
		const other = uniqueAgentId("fleet");
		for (const id of ids) await label(id, { fleet, role: "edge" });
		await label(other, { fleet, role: "core" });
		const cmds = await Promise.all([...ids, other].map((id) => enqueue(id, { action: "work" })));
		const online = await AgentSocket.connect(ids[0] ?? "", { hello: { concurrency: 1 } });
		expect((await online.next("command")).id).toBe(cmds[0]?.id);

		const res = await api("/v1/agents/stop", { method: "POST", json: { selector: { labels: { fleet, role: "edge" } }, pause: true } });
		expect(res.status).toBe(200);
		expect(await res.json()).toEqual({ matched: 3, reached: 3, unreached: [], cancelled: 2, cancelRequested: 1, paused: true });
		expect((await online.next("cancel")).id).toBe(cmds[0]?.id);
		for (const c of cmds.slice(1, 3)) await waitFor(async () => (await pgStatus(c.id)) === "cancelled", "cancelled");
		expect(await pgStatus(cmds[3]?.id ?? "")).toBe("pending");
		for (const id of ids) expect((await agentRecord(id)).paused).toBe(true);
		expect((await agentRecord(other)).paused).toBe(false);

		// `online` is Postgres's view of presence, one flush behind the object: wait until it has it.
		await waitFor(async () => (await agentRecord(ids[0] ?? "")).online === true, "the agent online in Postgres");
		const onlineOnly = await api("/v1/agents/stop", { method: "POST", json: { selector: { labels: { fleet }, online: true } } });
		expect(await onlineOnly.json()).toMatchObject({ matched: 1, reached: 1, paused: false });
		online.close();
	});

	it("refuses a fleet stop without labels unless it says all", async () => {
		for (const body of [{ selector: {} }, { selector: { labels: {} } }, { selector: { online: true } }, {}]) {
			const error = await expectError(await api("/v1/agents/stop", { method: "POST", json: body }), 400, "validation_failed");
			expect(error.error.message).toMatch(/selector|labels/);
		}
	});
});

describe("scopes", () => {
	it("refuses a read key on pause, resume, stop, fleet stop and labels", async () => {
		const agentId = uniqueAgentId();
		for (const path of [`/v1/agents/${agentId}/pause`, `/v1/agents/${agentId}/resume`, `/v1/agents/${agentId}/stop`]) {
			await expectError(await api(path, { method: "POST", key: TEST_READ_KEY }), 403, "forbidden");
		}
		await expectError(
			await api("/v1/agents/stop", { method: "POST", key: TEST_READ_KEY, json: { selector: { labels: { a: "b" } } } }),
			403,
			"forbidden",
		);
		await expectError(await label(agentId, { a: "b" }, TEST_READ_KEY), 403, "forbidden");
		expect((await api(`/v1/agents?label=a=b`, { key: TEST_READ_KEY })).status).toBe(200);
	});
});
