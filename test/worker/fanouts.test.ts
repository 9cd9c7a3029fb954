/**
 * Fan-outs (issue 17): one command per target, written whole in one
 * statement before any object is called, through the real worker and real
 * agent sockets.
 */
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { FANOUT_MAX_TARGETS } from "../../src/protocol";
import { TEST_READ_KEY } from "../helpers/test-secrets";
import {
	AgentSocket,
	API_KEY,
	api,
	enqueue,
	expectError,
	postWithEnv,
	query,
	sql,
	uniqueAgentId,
	waitFor,
	waitForStatus,
} from "../helpers/worker/harness";

type Created = { id: string; targetCount: number; commands: { agentId: string; commandId: string }[] };
type Fanout = {
	id: string;
	action: string;
	target: unknown;
	targetCount: number;
	counts: Record<string, number>;
	done: boolean;
	cancelRequestedAt: string | null;
	targets: { items: { agentId: string; commandId: string; status: string; blockedReason: string | null }[]; nextCursor: string | null };
};

/**
 * Agents as rows with labels an operator gave them (an agent's own labels are
 * replaced by its next hello, and the test agents say none).
 */
async function agentsWithLabels(n: number, labels: Record<string, string>, prefix = "fleet"): Promise<string[]> {
	const ids = Array.from({ length: n }, () => uniqueAgentId(prefix));
	await query(sql`insert into agents (id, operator_labels)
		select id, ${JSON.stringify(labels)}::jsonb from jsonb_array_elements_text(${JSON.stringify(ids)}::jsonb) as t(id)`);
	return ids.sort();
}

async function fanout(json: unknown, key = API_KEY): Promise<Response> {
	return api("/v1/fanouts", { method: "POST", json, key });
}

async function created(json: unknown): Promise<Created> {
	const res = await fanout(json);
	expect(res.status, await res.clone().text()).toBe(201);
	return res.json<Created>();
}

async function getFanout(id: string, qs = ""): Promise<Fanout> {
	const res = await api(`/v1/fanouts/${id}${qs}`);
	expect(res.status).toBe(200);
	return res.json<Fanout>();
}

describe("POST /v1/fanouts", () => {
	it("sends one command to each agent the selector matches; online ones run it, offline ones get it on connect", async () => {
		const tag = crypto.randomUUID().slice(0, 8);
		const [a, b, c] = await agentsWithLabels(3, { role: "builder", run: tag });
		await agentsWithLabels(2, { role: "other", run: tag });
		if (!a || !b || !c) throw new Error("agents");
		const sa = await AgentSocket.connect(a);
		const sb = await AgentSocket.connect(b);
		const out = await created({ selector: { labels: { role: "builder", run: tag } }, action: "build", payload: { ref: "main" } });
		expect(out.targetCount).toBe(3);
		expect(out.commands.map((t) => t.agentId).sort()).toEqual([a, b, c]);

		const fa = await sa.next("command");
		const fb = await sb.next("command");
		expect(fa).toMatchObject({ action: "build", payload: { ref: "main" } });
		sa.send({ type: "result", id: fa.id, status: "completed", result: "ok" });
		sb.send({ type: "result", id: fb.id, status: "failed", error: "broke" });
		await waitForStatus(fa.id, "completed");
		await waitForStatus(fb.id, "failed");

		let view = await getFanout(out.id);
		expect(view).toMatchObject({ action: "build", targetCount: 3, counts: { completed: 1, failed: 1, pending: 1 }, done: false });
		expect(view.target).toEqual({ selector: { labels: { role: "builder", run: tag } } });
		const offline = view.targets.items.find((t) => t.agentId === c);
		expect(offline).toMatchObject({ status: "pending", blockedReason: "agent_offline" });

		// The offline agent connects later and gets its command.
		const sc = await AgentSocket.connect(c);
		const fc = await sc.next("command");
		expect(fc.id).toBe(offline?.commandId);
		sc.send({ type: "result", id: fc.id, status: "completed" });
		await waitForStatus(fc.id, "completed");
		view = await getFanout(out.id);
		expect(view.counts).toEqual({ completed: 2, failed: 1 });
		expect(view.done).toBe(true);
		// The command record names its fan-out.
		const record = await (await api(`/v1/commands/${fc.id}`)).json<{ fanoutId: string; retryOf: null; retriedBy: string[] }>();
		expect(record).toMatchObject({ fanoutId: out.id, retryOf: null, retriedBy: [] });
		for (const s of [sa, sb, sc]) s.close();
	});

	it("online: true reaches only the connected agents the labels match", async () => {
		const tag = crypto.randomUUID().slice(0, 8);
		const [a, b] = await agentsWithLabels(2, { run: tag });
		if (!a || !b) throw new Error("agents");
		const sa = await AgentSocket.connect(a);
		await waitFor(async () => (await query<{ connected: boolean }>(sql`select connected from agents where id = ${a}`))[0]?.connected, "a online");
		const out = await created({ selector: { labels: { run: tag }, online: true }, action: "ping" });
		expect(out.commands.map((t) => t.agentId)).toEqual([a]);
		await sa.next("command");
		sa.close();
	});

	it("accepts a fan-out to 1,000 agents in one call and writes all 1,000 commands", async () => {
		const ids = Array.from({ length: 1000 }, (_, i) => `thousand-${crypto.randomUUID().slice(0, 8)}-${i}`);
		const live = ids.slice(0, 3);
		const sockets = await Promise.all(live.map((id) => AgentSocket.connect(id)));
		const t0 = Date.now();
		const out = await created({ agentIds: ids, action: "inventory", ttlSeconds: 3600 });
		console.warn(`fanout 1000: ${Date.now() - t0} ms`);
		expect(out.targetCount).toBe(1000);
		expect(new Set(out.commands.map((t) => t.agentId))).toEqual(new Set(ids));
		const [rows] = await query<{ n: number; agents: number; events: number }>(sql`
			select count(*)::int as n, count(distinct agent_id)::int as agents,
				(select count(*)::int from command_events e join agent_commands c2 on c2.id = e.command_id
					where c2.fanout_id = ${out.id} and e.to_status = 'pending') as events
			from agent_commands where fanout_id = ${out.id}`);
		expect(rows).toEqual({ n: 1000, agents: 1000, events: 1000 });
		for (const s of sockets) expect((await s.next("command", 60_000)).action).toBe("inventory");
		// Every object took its command (after the answer, 50 at a time).
		await waitFor(
			async () => (await query<{ n: number }>(sql`select count(*)::int as n from agent_commands where fanout_id = ${out.id} and taken_at is null`))[0]?.n === 0,
			"every object to take its command",
			150_000,
		);
		console.warn(`fanout 1000 taken: ${Date.now() - t0} ms`);
		// Paged targets: 1,000 in pages of 400.
		let seen = 0;
		let cursor: string | null = "";
		while (cursor !== null) {
			const page: Fanout = await getFanout(out.id, `?limit=400${cursor ? `&cursor=${cursor}` : ""}`);
			seen += page.targets.items.length;
			cursor = page.targets.nextCursor;
		}
		expect(seen).toBe(1000);
		for (const s of sockets) s.close();
	}, 180_000);

	it("refuses more than FANOUT_MAX_TARGETS targets with 400 too_many_targets and writes nothing", async () => {
		const action = `too-many-${crypto.randomUUID().slice(0, 8)}`;
		const ids = Array.from({ length: FANOUT_MAX_TARGETS + 1 }, (_, i) => `max-${i}`);
		const body = await expectError(await fanout({ agentIds: ids, action }), 400, "too_many_targets");
		expect(body.error.message).toMatch(/agentIds: more than 5000 targets/);
		const [n] = await query<{ n: number }>(sql`select count(*)::int as n from fanouts where action = ${action}`);
		expect(n?.n).toBe(0);
	});

	it("refuses a selector that matches nobody with 400 no_targets, and bad input naming the field", async () => {
		await expectError(await fanout({ selector: { labels: { nobody: crypto.randomUUID() } }, action: "x" }), 400, "no_targets");
		const empty = await expectError(await fanout({ selector: { labels: {} }, action: "x" }), 400, "validation_failed");
		expect(empty.error.message).toMatch(/labels/);
		const both = await expectError(await fanout({ selector: { all: true }, agentIds: ["a"], action: "x" }), 400, "validation_failed");
		expect(both.error.message).toMatch(/selector/);
		const badKey = await expectError(await fanout({ selector: { labels: { "-bad": "x" } }, action: "x" }), 400, "validation_failed");
		expect(badKey.error.message).toMatch(/selector\.labels/);
		const badAction = await expectError(await fanout({ agentIds: ["a"], action: "bad action" }), 400, "validation_failed");
		expect(badAction.error.message).toMatch(/action/);
		await expectError(await fanout({ agentIds: ["a"], action: "x", priority: 12 }), 400, "validation_failed");
		// Null is absent, as everywhere.
		const nulls = await created({ agentIds: [uniqueAgentId("nulls")], selector: null, action: "x", ttlSeconds: null, sessionId: null, idempotencyKey: null });
		expect(nulls.targetCount).toBe(1);
	});

	it("refuses the whole fan-out with 429 agent_backlog_full, naming the full agents, when a target's backlog is full", async () => {
		const LIMIT = 2;
		const call = (json: unknown) => postWithEnv("/v1/fanouts", json, { AGENT_BACKLOG_LIMIT: String(LIMIT) });
		const full = uniqueAgentId("full");
		const ok = uniqueAgentId("ok");
		for (let i = 0; i < LIMIT; i++) await enqueue(full, { action: `fill${i}` });
		const action = `quota-${crypto.randomUUID().slice(0, 8)}`;
		const body = await expectError(await call({ agentIds: [ok, full], action }), 429, "agent_backlog_full");
		expect(body.error.message).toContain(full);
		expect(body.error.message).not.toContain(ok);
		const [n] = await query<{ n: number }>(sql`select count(*)::int as n from agent_commands where action = ${action}`);
		expect(n?.n).toBe(0);
		expect((await call({ agentIds: [ok], action })).status).toBe(201);
	});

	it("answers a retried POST with the same idempotencyKey with the first fan-out, and refuses the key for another request", async () => {
		const ids = [uniqueAgentId("idem"), uniqueAgentId("idem")];
		const key = `fan-${crypto.randomUUID()}`;
		const first = await created({ agentIds: ids, action: "deploy", payload: { v: 1 }, idempotencyKey: key });
		const again = await fanout({ agentIds: ids, action: "deploy", payload: { v: 1 }, idempotencyKey: key });
		expect(again.status).toBe(200);
		expect(await again.json()).toEqual(first);
		await expectError(await fanout({ agentIds: ids, action: "deploy", payload: { v: 2 }, idempotencyKey: key }), 422, "idempotency_key_reused");
		const [n] = await query<{ n: number }>(sql`select count(*)::int as n from agent_commands where fanout_id = ${first.id}`);
		expect(n?.n).toBe(2);
	});

	it("keeps an unreachable object's command pending, delivers the others, and the agent gets it when it connects", async () => {
		const dead = uniqueAgentId("dead");
		const alive = uniqueAgentId("alive");
		const sAlive = await AgentSocket.connect(alive);
		const brokenHub = {
			idFromName: (name: string) => env.AGENT_HUB.idFromName(name),
			getByName: (name: string) =>
				name === dead ? { enqueue: () => Promise.reject(new Error("Durable Object reset")) } : env.AGENT_HUB.getByName(name),
		};
		const res = await postWithEnv(
			"/v1/fanouts",
			{ agentIds: [dead, alive], action: "survive" },
			{ AGENT_HUB: brokenHub as unknown as typeof env.AGENT_HUB },
		);
		expect(res.status).toBe(201);
		const out = await res.json<Created>();
		expect((await sAlive.next("command")).action).toBe("survive");
		const deadCommand = out.commands.find((t) => t.agentId === dead)?.commandId ?? "";
		expect((await (await api(`/v1/commands/${deadCommand}`)).json<{ status: string }>()).status).toBe("pending");
		const sDead = await AgentSocket.connect(dead);
		expect((await sDead.next("command")).id).toBe(deadCommand);
		sAlive.close();
		sDead.close();
	});
});

describe("GET /v1/fanouts/:id and POST /v1/fanouts/:id/cancel", () => {
	it("answers 404 for an unknown fan-out and 400 for a malformed id or cursor", async () => {
		await expectError(await api(`/v1/fanouts/${crypto.randomUUID()}`), 404, "not_found");
		await expectError(await api(`/v1/fanouts/${crypto.randomUUID()}/cancel`, { method: "POST" }), 404, "not_found");
		await expectError(await api("/v1/fanouts/nope"), 400, "validation_failed");
		const out = await created({ agentIds: [uniqueAgentId("cur")], action: "x" });
		await expectError(await api(`/v1/fanouts/${out.id}?cursor=zzz`), 400, "validation_failed");
	});

	it("cancel during a fan-out: queued ones end cancelled, running ones get the cancel frame, finished ones stay", async () => {
		const running = uniqueAgentId("running");
		const queued = uniqueAgentId("queued");
		const offline = uniqueAgentId("offline");
		const finished = uniqueAgentId("finished");
		const sRun = await AgentSocket.connect(running);
		// Concurrency 1, busy with another command: the fan-out's waits behind it.
		const sQueued = await AgentSocket.connect(queued, { hello: { concurrency: 1 } });
		const sFinished = await AgentSocket.connect(finished);
		const busy = await enqueue(queued, { action: "busy" });
		expect((await sQueued.next("command")).id).toBe(busy.id);
		sQueued.send({ type: "ack", id: busy.id });

		const out = await created({ agentIds: [running, queued, offline, finished], action: "long" });
		const byAgent = Object.fromEntries(out.commands.map((t) => [t.agentId, t.commandId]));
		const fr = await sRun.next("command");
		sRun.send({ type: "ack", id: fr.id });
		await waitForStatus(fr.id, "acknowledged");
		const ff = await sFinished.next("command");
		sFinished.send({ type: "result", id: ff.id, status: "completed" });
		await waitForStatus(ff.id, "completed");

		const res = await api(`/v1/fanouts/${out.id}/cancel`, { method: "POST" });
		expect(res.status).toBe(200);
		expect(await res.json()).toEqual({ id: out.id, cancelled: 2, cancelRequested: 1, unreached: [] });
		expect(await sRun.next("cancel")).toMatchObject({ id: fr.id, reason: "requested" });
		sRun.send({ type: "result", id: fr.id, status: "cancelled" });
		await waitForStatus(byAgent[queued] ?? "", "cancelled");
		await waitForStatus(byAgent[offline] ?? "", "cancelled");
		await waitForStatus(fr.id, "cancelled");
		const view = await getFanout(out.id);
		expect(view.counts).toEqual({ cancelled: 3, completed: 1 });
		expect(view.done).toBe(true);
		expect(view.cancelRequestedAt).not.toBeNull();
		// The busy command was not the fan-out's: untouched.
		expect((await (await api(`/v1/commands/${busy.id}`)).json<{ status: string }>()).status).toBe("acknowledged");
		// The offline agent, connecting later, is not sent the cancelled command.
		const sOff = await AgentSocket.connect(offline);
		await expect(sOff.next("command", 500)).rejects.toThrow(/no command frame/);
		// A second cancel finds nothing open.
		expect(await (await api(`/v1/fanouts/${out.id}/cancel`, { method: "POST" })).json()).toEqual({
			id: out.id,
			cancelled: 0,
			cancelRequested: 0,
			unreached: [],
		});
		for (const s of [sRun, sQueued, sFinished, sOff]) s.close();
	});

	it("read keys may read a fan-out but get 403 on creating or cancelling one", async () => {
		const out = await created({ agentIds: [uniqueAgentId("scope")], action: "x" });
		expect((await api(`/v1/fanouts/${out.id}`, { key: TEST_READ_KEY })).status).toBe(200);
		await expectError(await fanout({ agentIds: ["a"], action: "x" }, TEST_READ_KEY), 403, "forbidden");
		await expectError(await api(`/v1/fanouts/${out.id}/cancel`, { method: "POST", key: TEST_READ_KEY }), 403, "forbidden");
		await expectError(await api("/v1/fanouts", { method: "POST", json: { agentIds: ["a"], action: "x" }, key: null }), 401, "unauthorized");
	});
});
