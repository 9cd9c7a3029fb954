/**
 * Watching an agent live: the observer stream (order, resume, gaps, output,
 * many observers), stored output, the audit trail and retention.
 */
import { createExecutionContext, runInDurableObject } from "cloudflare:test";
import { env, exports } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import type { AgentHub } from "../../src/agent/agent-hub";
import type { AgentCore } from "../../src/agent/core";
import { app } from "../../src/app";
import { DbUnavailableError } from "../../src/db/client";
import { httpDb } from "../../src/db/http";
import { deleteExpired } from "../../src/retention";
import { exposition, METRICS_CACHE_MS, METRICS_STALE_MS } from "../../src/routes/metrics";
import { agentHub } from "../../src/agent/stub";
import { OUTPUT_CAP_CHARS, OUTPUT_TRUNCATION_MARKER } from "../../src/protocol";
import {
	API_KEY,
	AgentSocket,
	BASE,
	api,
	apiCommand,
	enqueue,
	query,
	sql,
	uniqueAgentId,
	waitFor,
	waitForStatus,
	objectSettled,
} from "../helpers/worker/harness";
import { Observer, catchUp } from "../helpers/worker/observer";
import { OBSERVERS_PER_AGENT } from "../../src/agent/observer-limits";

describe("observer stream", () => {
	it("shows presence and a command's whole lifecycle, in order, numbered without holes", async () => {
		const agentId = uniqueAgentId();
		const observer = await Observer.attach(agentId);
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "watched" });
		await agent.next("command");
		agent.send({ type: "ack", id: cmd.id });
		agent.send({ type: "result", id: cmd.id, status: "completed" });
		await waitFor(() => observer.statusOf(cmd.id).includes("acknowledged>completed"), "completed event");
		agent.close();
		await waitFor(() => observer.events().some((f) => f.type === "presence" && f.state === "disconnected"), "disconnect");

		expect(observer.statusOf(cmd.id)).toEqual(["pending>dispatched", "dispatched>acknowledged", "acknowledged>completed"]);
		const seqs = observer.events().map((f) => f.seq as number);
		expect(seqs).toEqual(seqs.map((_, i) => (seqs[0] ?? 0) + i));
		const presence = observer.events().filter((f) => f.type === "presence").map((f) => f.state);
		expect(presence).toEqual(["connected", "disconnected"]);
		observer.close();
	});

	it("shows a replaced connection as such", async () => {
		const agentId = uniqueAgentId();
		const observer = await Observer.attach(agentId);
		const first = await AgentSocket.connect(agentId);
		const second = await AgentSocket.connect(agentId);
		await first.closed;
		await waitFor(() => observer.events().filter((f) => f.type === "presence").length === 3, "three presence events");
		expect(observer.events().filter((f) => f.type === "presence").map((f) => [f.state, f.generation])).toEqual([
			["connected", 1],
			["replaced", 1],
			["connected", 2],
		]);
		second.close();
		observer.close();
	});

	it("resumes with ?since= and gets exactly what it missed, then live events", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const first = await Observer.attach(agentId);
		const a = await enqueue(agentId, { action: "a" });
		await agent.next("command");
		await waitFor(() => first.statusOf(a.id).length === 1, "first event");
		const lastSeen = first.events().at(-1)?.seq as number;
		const epoch = first.epoch;
		first.close();

		// Missed while away:
		agent.send({ type: "ack", id: a.id });
		agent.send({ type: "result", id: a.id, status: "completed" });
		await waitForStatus(a.id, "completed");
		const again = await Observer.attach(agentId, { since: lastSeen, epoch });
		expect(again.frames.filter((f) => f.type === "gap" || f.type === "reset")).toEqual([]);
		expect(again.statusOf(a.id)).toEqual(["dispatched>acknowledged", "acknowledged>completed"]);
		expect(again.events()[0]?.seq).toBe(lastSeen + 1);
		// and then live:
		const b = await enqueue(agentId, { action: "b" });
		await waitFor(() => again.statusOf(b.id).includes("pending>dispatched"), "live event");
		again.close();
		agent.close();
	});

	it("says so explicitly when the gap is older than the log", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "old" });
		await agent.next("command");
		const stub = agentHub(env, agentId);
		// The log never drops what Postgres has yet to confirm.
		await objectSettled(agentId);
		// Age the log past its limit, as days of activity would.
		await runInDurableObject(stub, async (instance: AgentHub, state) => {
			const { pruneEvents } = await import("../../src/agent/events");
			state.storage.sql.exec("update events set at = at - ?", 2 * 24 * 3600 * 1000);
			// What Postgres confirmed, as the object holds it (the stored mark may lag: it is deferred state).
			// SAFETY: a test reading the object's in-memory state.
			const synced = (instance as unknown as { core: AgentCore }).core.state.get("synced_through") ?? 0;
			pruneEvents(state.storage.sql, Date.now(), synced);
		});
		agent.send({ type: "result", id: cmd.id, status: "completed" });
		await waitForStatus(cmd.id, "completed");
		const observer = await Observer.attach(agentId, { since: 0 });
		const gap = observer.frames.find((f) => f.type === "gap");
		expect(gap).toMatchObject({ since: 0 });
		expect(gap?.through).toBeGreaterThan(0);
		expect(observer.statusOf(cmd.id)).toEqual(["dispatched>completed"]);
		observer.close();
		agent.close();
	});

	it("streams output chunks in order with their command, and keeps them with the command", async () => {
		const agentId = uniqueAgentId();
		const observer = await Observer.attach(agentId);
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "build" });
		await agent.next("command");
		agent.send({ type: "ack", id: cmd.id });
		const chunks = ["compiling…\n", "linking…\n", "done ✓\n"];
		chunks.forEach((data, seq) => agent.send({ type: "output", id: cmd.id, seq, data }));
		agent.send({ type: "result", id: cmd.id, status: "completed" });
		await waitFor(() => observer.statusOf(cmd.id).includes("acknowledged>completed"), "completed");

		const outs = observer.events().filter((f) => f.type === "output");
		expect(outs.map((f) => [f.id, f.chunk, f.data])).toEqual(chunks.map((d, i) => [cmd.id, i, d]));
		const completedSeq = observer.events().find((f) => f.type === "status" && f.to === "completed")?.seq as number;
		expect(outs.every((f) => (f.seq as number) < completedSeq)).toBe(true);

		const stored = await waitFor(async () => {
			const r = await api(`/v1/commands/${cmd.id}/output`);
			const body = await r.json<{ output: string; truncated: boolean }>();
			return body.output === chunks.join("") ? body : undefined;
		}, "stored output");
		expect(stored.truncated).toBe(false);
		// Output for a command that is not running is refused.
		agent.send({ type: "output", id: crypto.randomUUID(), seq: 0, data: "x" });
		expect((await agent.next("error")).code).toBe("unknown_command");
		observer.close();
		agent.close();
	});

	it("keeps a chunk resent with a seq already kept once: in Postgres and for observers", async () => {
		const agentId = uniqueAgentId();
		const observer = await Observer.attach(agentId);
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "flaky-link" });
		await agent.next("command");
		// What an agent resends after a reconnect, or after some were refused for rate.
		const sent: [number, string][] = [[0, "a"], [1, "b"], [1, "b"], [0, "a"], [2, "c"], [2, "c"]];
		for (const [seq, data] of sent) agent.send({ type: "output", id: cmd.id, seq, data });
		agent.send({ type: "result", id: cmd.id, status: "completed" });
		await waitForStatus(cmd.id, "completed");
		const body = await (await api(`/v1/commands/${cmd.id}/output`)).json<{ output: string }>();
		expect(body.output).toBe("abc");
		await waitFor(() => observer.statusOf(cmd.id).includes("dispatched>completed"), "the observer saw it complete");
		const chunks = observer.events().filter((f) => f.type === "output" && f.id === cmd.id);
		expect(chunks.map((f) => [f.chunk, f.data])).toEqual([[0, "a"], [1, "b"], [2, "c"]]);
		observer.close();
		agent.close();
	});

	it("journals no output past the cap: a runaway command costs its object one chunk more, then a marker", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "runaway" });
		await agent.next("command");
		const chunk = "r".repeat(60 * 1024);
		const upToCap = Math.ceil(OUTPUT_CAP_CHARS / chunk.length);
		for (let i = 0; i < upToCap + 10; i++) agent.send({ type: "output", id: cmd.id, seq: i, data: chunk });
		agent.send({ type: "result", id: cmd.id, status: "completed" });
		const body = await waitFor(async () => {
			const b = await (await api(`/v1/commands/${cmd.id}/output`)).json<{ output: string; truncated: boolean; status: string }>();
			return b.status === "completed" ? b : undefined;
		}, "completed", 20_000);
		expect(body.truncated).toBe(true);
		expect(body.output.length).toBe(OUTPUT_CAP_CHARS + OUTPUT_TRUNCATION_MARKER.length);
		const journaled = await runInDurableObject(agentHub(env, agentId), (_i: AgentHub, state) =>
			state.storage.sql
				.exec<{ n: number }>("select count(*) as n from events where json_extract(sync, '$.kind') = 'output' and json_extract(sync, '$.commandId') = ?", cmd.id)
				.one().n,
		);
		// Every chunk up to and across the cap, and the one marker that says the rest was dropped.
		expect(journaled).toBe(upToCap + 1);
		agent.close();
	});

	it("writes a backlog of output to Postgres in statements of bounded size, and all of it", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmds = [];
		for (let i = 0; i < 3; i++) cmds.push(await enqueue(agentId, { action: "backlog" }));
		await agent.commands(3);
		for (const c of cmds) await waitFor(async () => (await apiCommand(c.id)).status === "dispatched", "dispatched");
		const stub = agentHub(env, agentId);
		await runInDurableObject(stub, (instance: AgentHub) => {
			// SAFETY: a test counting the object's round trips to Postgres.
			const core = (instance as unknown as { core: AgentCore }).core;
			const run = core.db.run.bind(core.db);
			const counted = instance as unknown as { writes: number };
			counted.writes = 0;
			core.db.run = ((fn) =>
				run(fn).then((done) => {
					counted.writes++;
					return done;
				})) as typeof core.db.run;
		});
		const resetWrites = () => runInDurableObject(stub, (instance: AgentHub) => void ((instance as unknown as { writes: number }).writes = 0));
		// 3 × 16 chunks of 60 KiB (2.8 MiB) wait while Postgres is away.
		const chunk = "b".repeat(60 * 1024);
		await fetch(`${env.TEST_RELAY_CONTROL}/down`);
		try {
			for (let seq = 0; seq < 16; seq++) for (const c of cmds) agent.send({ type: "output", id: c.id, seq, data: chunk });
			await waitFor(async () => (await stub.inspect()).outbox >= 48, "output held in the outbox");
		} finally {
			await resetWrites();
			await fetch(`${env.TEST_RELAY_CONTROL}/up`);
		}
		for (const c of cmds) agent.send({ type: "result", id: c.id, status: "completed" });
		for (const c of cmds) {
			const body = await waitFor(async () => {
				const b = await (await api(`/v1/commands/${c.id}/output`)).json<{ output: string; status: string }>();
				return b.status === "completed" ? b : undefined;
			}, "completed", 30_000);
			expect(body.output).toBe(chunk.repeat(16));
		}
		// At most 2 MiB of output per statement past its first entry: two writes at least once Postgres is back.
		const writes = await runInDurableObject(stub, (instance: AgentHub) => (instance as unknown as { writes: number }).writes);
		expect(writes).toBeGreaterThanOrEqual(2);
		agent.close();
	}, 60_000);

	it("caps stored output with the documented marker", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "chatty" });
		await agent.next("command");
		const chunk = "y".repeat(60 * 1024);
		const n = Math.ceil(OUTPUT_CAP_CHARS / chunk.length) + 2;
		for (let i = 0; i < n; i++) agent.send({ type: "output", id: cmd.id, seq: i, data: chunk });
		agent.send({ type: "result", id: cmd.id, status: "completed" });
		const body = await waitFor(async () => {
			const b = await (await api(`/v1/commands/${cmd.id}/output`)).json<{ output: string; truncated: boolean; status: string }>();
			return b.status === "completed" && b.truncated ? b : undefined;
		}, "truncated output", 20_000);
		expect(body.output.length).toBe(OUTPUT_CAP_CHARS + OUTPUT_TRUNCATION_MARKER.length);
		expect(body.output.endsWith(OUTPUT_TRUNCATION_MARKER)).toBe(true);
		agent.close();
	});

	it("flags output cut by the cap even when the cut text is astral characters (UTF-16 units vs Postgres characters)", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "emoji" });
		await agent.next("command");
		await waitFor(async () => (await apiCommand(cmd.id)).status === "dispatched", "dispatched");
		// Each chunk is 64 Ki UTF-16 units but only 32 Ki characters to Postgres.
		const chunk = "😀".repeat(32 * 1024);
		const n = Math.ceil(OUTPUT_CAP_CHARS / chunk.length) + 2;
		const stub = agentHub(env, agentId);
		// Postgres away, so every chunk reaches it in one flush: the case where the
		// object drops what is past the cap before Postgres can measure it.
		await fetch(`${env.TEST_RELAY_CONTROL}/down`);
		try {
			for (let i = 0; i < n; i++) agent.send({ type: "output", id: cmd.id, seq: i, data: chunk });
			await waitFor(async () => (await stub.inspect()).outbox >= n, "chunks held in the outbox");
		} finally {
			await fetch(`${env.TEST_RELAY_CONTROL}/up`);
		}
		agent.send({ type: "result", id: cmd.id, status: "completed" });
		const body = await waitFor(async () => {
			const b = await (await api(`/v1/commands/${cmd.id}/output`)).json<{ output: string; truncated: boolean; status: string }>();
			return b.status === "completed" ? b : undefined;
		}, "completed", 30_000);
		expect(body.truncated).toBe(true);
		const kept = body.output.slice(0, -OUTPUT_TRUNCATION_MARKER.length);
		expect(body.output.endsWith(OUTPUT_TRUNCATION_MARKER)).toBe(true);
		expect(chunk.repeat(n).startsWith(kept)).toBe(true);
		expect(kept.length).toBeGreaterThan(0);
		agent.close();
	}, 60_000);

	it("as many observers as an agent takes all see its events, and the agent's commands still flow", async () => {
		const agentId = uniqueAgentId();
		const keys = ["test-operator-key", "test-second-key", "test-observer-key", "test-observer-key-2"];
		const observers = await Promise.all(
			Array.from({ length: OBSERVERS_PER_AGENT }, (_, i) => Observer.attach(agentId, {}, keys[i % keys.length])),
		);
		const agent = await AgentSocket.connect(agentId, { hello: { concurrency: 10 } });
		const cmds = await Promise.all(Array.from({ length: 10 }, (_, i) => enqueue(agentId, { action: `fan${i}` })));
		for (const f of await agent.commands(10)) agent.send({ type: "result", id: f.id, status: "completed" });
		for (const c of cmds) await waitForStatus(c.id, "completed");
		await waitFor(
			() => observers.every((o) => cmds.every((c) => o.statusOf(c.id).includes("dispatched>completed"))),
			"every observer saw every completion",
		);
		const first = observers[0]?.events().map((f) => f.seq);
		expect(observers.every((o) => JSON.stringify(o.events().map((f) => f.seq)) === JSON.stringify(first))).toBe(true);
		for (const o of observers) o.close();
		agent.close();
	});

	it("replays a log of large output events page by page, bounded in bytes, and whole", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		// Four commands, so the log holds more than one command's capped output.
		const cmds = [];
		for (let i = 0; i < 4; i++) cmds.push(await enqueue(agentId, { action: "verbose" }));
		await agent.commands(4);
		const chunk = (i: number) => `${i}:`.padEnd(60 * 1024, "z");
		const n = 40;
		for (let i = 0; i < n; i++) agent.send({ type: "output", id: cmds[i % 4]?.id ?? "", seq: Math.floor(i / 4), data: chunk(i) });
		const stub = agentHub(env, agentId);
		const page = await waitFor(
			() =>
				runInDurableObject(stub, async (_i: AgentHub, state) => {
					const { eventsAfter, PAGE_BYTES } = await import("../../src/agent/events");
					const all = state.storage.sql.exec("select count(*) as n from events where body like '%\"output\"%'").one().n;
					if (all !== n) return undefined;
					const first = eventsAfter(state.storage.sql, 0);
					return { size: first.reduce((sum, e) => sum + JSON.stringify(e.event).length, 0), count: first.length, budget: PAGE_BYTES };
				}),
			"all output logged",
		);
		expect(page.count).toBeGreaterThan(1);
		expect(page.count).toBeLessThan(n);
		expect(page.size).toBeLessThanOrEqual(page.budget);
		// 2.4 MiB: more than one connection replays, so the client pages.
		const { events, live, pages } = await catchUp(agentId, { since: 0 });
		expect(pages).toBeGreaterThan(1);
		const all = [...events, ...live.events()];
		expect(all.filter((f) => f.type === "output").map((f) => f.data)).toEqual(Array.from({ length: n }, (_, i) => chunk(i)));
		live.close();
		agent.close();
	});

	it("tells an observer resuming from a log that no longer exists (storage reset), and replays this one from its start", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "after_reset" });
		await agent.next("command");
		const live = await Observer.attach(agentId);
		const latest = live.frames.find((f) => f.type === "observing")?.latestSeq as number;
		live.close();

		// Its seq is from another epoch's log (what an object whose storage was reset looks like to it).
		const otherEpoch = await Observer.attach(agentId, { since: 1, epoch: crypto.randomUUID() });
		// Its seq is past the end of this log, and it did not say which epoch.
		const pastEnd = await Observer.attach(agentId, { since: latest + 50 });
		for (const [observer, since] of [[otherEpoch, 1], [pastEnd, latest + 50]] as const) {
			const [observing, reset] = observer.frames;
			expect(observing).toMatchObject({ type: "observing", epoch: live.epoch, latestSeq: latest });
			expect(reset).toEqual({ type: "reset", since, epoch: live.epoch });
			await waitFor(() => observer.events().length >= latest, "full replay");
			expect(observer.events().map((f) => f.seq)).toEqual(Array.from({ length: latest }, (_, i) => i + 1));
			expect(observer.statusOf(cmd.id)).toEqual(["pending>dispatched"]);
			observer.close();
		}
		// The right epoch and a seq inside the log is an ordinary resume.
		const same = await Observer.attach(agentId, { since: latest, epoch: live.epoch });
		expect(same.frames.map((f) => f.type)).toEqual(["observing"]);
		same.close();
		agent.close();
	});

	it("needs an operator key, and observers cannot send commands", async () => {
		const agentId = uniqueAgentId();
		const res = await exports.default.fetch(`${BASE}/v1/agents/${agentId}/stream`, { headers: { upgrade: "websocket" } });
		expect(res.status).toBe(401);
		const bad = await exports.default.fetch(`${BASE}/v1/agents/${agentId}/stream?since=-1`, {
			headers: { upgrade: "websocket", authorization: `Bearer ${API_KEY}` },
		});
		expect(bad.status).toBe(400);
		const badEpoch = await exports.default.fetch(`${BASE}/v1/agents/${agentId}/stream?since=1&epoch=not-a-uuid`, {
			headers: { upgrade: "websocket", authorization: `Bearer ${API_KEY}` },
		});
		expect(badEpoch.status).toBe(400);
		const observer = await Observer.attach(agentId);
		observer.ws.send(JSON.stringify({ type: "result", id: crypto.randomUUID(), status: "completed" }));
		await waitFor(() => observer.frames.some((f) => f.type === "error"), "error frame");
		observer.close();
	});

	it("a client cannot smuggle the object's internal headers through the agent socket", async () => {
		const agentId = uniqueAgentId();
		const { tokenFor } = await import("../helpers/worker/harness");
		const res = await exports.default.fetch(`${BASE}/v1/agents/${agentId}/connect`, {
			headers: {
				upgrade: "websocket",
				authorization: `Bearer ${await tokenFor(agentId)}`,
				"x-switchyard-observe-resume": "{}",
			},
		});
		res.webSocket?.accept();
		const frames: { type: string }[] = [];
		res.webSocket?.addEventListener("message", (e) => {
			frames.push(JSON.parse(String(e.data)));
		});
		await waitFor(() => frames.length > 0, "first frame");
		expect(frames[0]?.type).toBe("welcome"); // an agent socket, not an observer
		res.webSocket?.close(1000);
	});
});

describe("audit trail", () => {
	it("records every transition with who caused it", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "audited" });
		await agent.next("command");
		agent.send({ type: "ack", id: cmd.id });
		await waitForStatus(cmd.id, "acknowledged");
		expect((await api(`/v1/commands/${cmd.id}/cancel`, { method: "POST" })).status).toBe(202);
		agent.send({ type: "result", id: cmd.id, status: "cancelled" });
		await waitForStatus(cmd.id, "cancelled");

		const res = await api(`/v1/commands/${cmd.id}/events`);
		const { items } = await res.json<{ items: { from: string | null; to: string; actor: string }[] }>();
		expect(items.map((e) => [e.from, e.to])).toEqual([
			[null, "pending"],
			["pending", "dispatched"],
			["dispatched", "acknowledged"],
			["acknowledged", "cancelled"],
		]);
		expect(items[0]?.actor).toMatch(/^api:[0-9a-f]{16}$/);
		expect(items[1]?.actor).toBe("system");
		expect(items[2]?.actor).toBe(`agent:${agentId}`);
		// The agent carried the cancel out; the operator who asked for it caused it.
		expect(items[3]?.actor).toBe(items[0]?.actor);
		expect((await api(`/v1/commands/${crypto.randomUUID()}/events`)).status).toBe(404);
	});

	it("names the operator who cancelled a pending command", async () => {
		const agentId = uniqueAgentId();
		const cmd = await enqueue(agentId, { action: "doomed" });
		await api(`/v1/commands/${cmd.id}/cancel`, { method: "POST", key: "test-second-key" });
		const items = await waitFor(async () => {
			const r = await (await api(`/v1/commands/${cmd.id}/events`)).json<{ items: { to: string; actor: string }[] }>();
			return r.items.length === 2 ? r.items : undefined;
		}, "cancel event");
		expect(items[1]?.to).toBe("cancelled");
		expect(items[1]?.actor).toMatch(/^api:[0-9a-f]{16}$/);
		expect(items[1]?.actor).not.toBe(items[0]?.actor); // another key than the one that enqueued
	});

	it("names the operator who cancelled a command the agent already held, however it ended", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId, { hello: { concurrency: 2 } });
		const stopped = await enqueue(agentId, { action: "stopped_on_request" });
		const finishedAnyway = await enqueue(agentId, { action: "finished_anyway" });
		await agent.commands(2);
		for (const c of [stopped, finishedAnyway]) {
			agent.send({ type: "ack", id: c.id });
			await waitFor(async () => (await apiCommand(c.id)).status === "acknowledged", "acknowledged");
			const res = await api(`/v1/commands/${c.id}/cancel`, { method: "POST", key: "test-second-key" });
			expect(res.status).toBe(202);
		}
		agent.send({ type: "result", id: stopped.id, status: "cancelled" });
		agent.send({ type: "result", id: finishedAnyway.id, status: "completed" });
		await waitForStatus(stopped.id, "cancelled");
		await waitForStatus(finishedAnyway.id, "completed");
		const trail = async (id: string) =>
			(await (await api(`/v1/commands/${id}/events`)).json<{ items: { to: string; actor: string; detail: Record<string, unknown> }[] }>()).items;
		const [enqueuedBy] = await trail(stopped.id);
		const operator = (await trail(stopped.id)).at(-1);
		expect(operator?.to).toBe("cancelled");
		expect(operator?.actor).toMatch(/^api:[0-9a-f]{16}$/);
		expect(operator?.actor).not.toBe(enqueuedBy?.actor);
		expect(operator?.detail.cancelRequestedBy).toBe(operator?.actor);
		const completed = (await trail(finishedAnyway.id)).at(-1);
		expect(completed).toMatchObject({ to: "completed", actor: `agent:${agentId}`, detail: { cancelRequestedBy: operator?.actor } });
		agent.close();
	});
});

describe("retention", () => {
	it("deletes finished commands (and their events) older than the period, and nothing else", async () => {
		const agentId = uniqueAgentId("ret");
		const rows = await query<{ id: string; action: string }>(sql`
			insert into agent_commands (agent_id, action, status, created_at, completed_at) values
				(${agentId}, 'old_done', 'completed', now() - interval '40 days', now() - interval '40 days'),
				(${agentId}, 'old_failed', 'failed', now() - interval '40 days', now() - interval '31 days'),
				(${agentId}, 'recent_done', 'completed', now() - interval '2 days', now() - interval '2 days'),
				(${agentId}, 'old_pending', 'pending', now() - interval '90 days', null),
				(${agentId}, 'old_running', 'acknowledged', now() - interval '90 days', null)
			returning id, action`);
		const idOf = (a: string) => rows.find((r) => r.action === a)?.id ?? "";
		await query(sql`insert into command_events (command_id, from_status, to_status) values (${idOf("old_done")}, null, 'pending')`);

		await deleteExpired(env, { days: 30 });
		const left = await query<{ action: string }>(sql`select action from agent_commands where agent_id = ${agentId} order by action`);
		expect(left.map((r) => r.action)).toEqual(["old_pending", "old_running", "recent_done"]);
		const orphanEvents = await query(sql`select 1 from command_events where command_id = ${idOf("old_done")}`);
		expect(orphanEvents).toEqual([]);
	});

	/** `due` finished commands past a 365-day period, each with two events, beside rows it must keep. */
	async function history(agentId: string, due: number): Promise<void> {
		// Nothing else due first, so the counts below are this agent's.
		await deleteExpired(env, { days: 365 });
		await query(sql`
			insert into agent_commands (agent_id, action, status, created_at, completed_at)
			select ${agentId}, 'old', (array['completed','failed','cancelled','expired'])[1 + i % 4],
				now() - interval '401 days', now() - interval '400 days' - make_interval(secs => i)
			from generate_series(1, ${due}) i`);
		await query(sql`
			insert into command_events (command_id, from_status, to_status)
			select id, s.f, s.t from agent_commands, (values (null, 'pending'), ('pending', 'dispatched')) s(f, t)
			where agent_id = ${agentId}`);
		await query(sql`
			insert into agent_commands (agent_id, action, status, created_at, completed_at) values
				(${agentId}, 'keep_recent', 'completed', now() - interval '2 days', now() - interval '2 days'),
				(${agentId}, 'keep_pending', 'pending', now() - interval '900 days', null),
				(${agentId}, 'keep_dispatched', 'dispatched', now() - interval '900 days', null),
				(${agentId}, 'keep_running', 'acknowledged', now() - interval '900 days', null)`);
	}

	const left = async (agentId: string) =>
		(await query<{ action: string }>(sql`select action from agent_commands where agent_id = ${agentId} order by action`)).map((r) => r.action);

	// The old run stopped after 20 batches (20,000 rows a minute, ~333/s) whatever was due.
	it("one run deletes everything due, past the old 20-batch cap, and keeps open and recent commands", async () => {
		const agentId = uniqueAgentId("ret-all");
		await history(agentId, 45);
		expect(await deleteExpired(env, { days: 365, batchSize: 2, budgetMs: 60_000 })).toBe(45);
		expect(await left(agentId)).toEqual(["keep_dispatched", "keep_pending", "keep_recent", "keep_running"]);
		const events = await query(sql`
			select 1 from command_events e left join agent_commands c on c.id = e.command_id where c.id is null`);
		expect(events).toEqual([]);
	});

	it("a run whose budget is spent stops after its batch; the next run goes on", async () => {
		const agentId = uniqueAgentId("ret-budget");
		await history(agentId, 7);
		expect(await deleteExpired(env, { days: 365, batchSize: 3, budgetMs: 0 })).toBe(3);
		expect((await left(agentId)).filter((a) => a === "old")).toHaveLength(4);
		expect(await deleteExpired(env, { days: 365, batchSize: 3 })).toBe(4);
		expect(await left(agentId)).toEqual(["keep_dispatched", "keep_pending", "keep_recent", "keep_running"]);
	});
});

describe("Analytics Engine", () => {
	it("gets one data point per status change Postgres accepted, when the dataset is bound", async () => {
		const agentId = uniqueAgentId();
		const points: AnalyticsEngineDataPoint[] = [];
		const stub = agentHub(env, agentId);
		const cmd = await enqueue(agentId, { action: "counted" });
		// Local Analytics Engine discards writes; give the object a dataset that records them.
		await runInDurableObject(stub, (instance: AgentHub) => {
			// SAFETY: test-only swap of the object's env for one with the optional binding.
			const { core } = instance as unknown as { core: { env: Env & { ANALYTICS?: AnalyticsEngineDataset } } };
			core.env = { ...core.env, ANALYTICS: { writeDataPoint: (p?: AnalyticsEngineDataPoint) => p && points.push(p) } };
		});
		const agent = await AgentSocket.connect(agentId);
		await agent.next("command");
		agent.send({ type: "result", id: cmd.id, status: "completed" });
		await waitForStatus(cmd.id, "completed");
		await waitFor(() => points.some((p) => p.blobs?.[1] === "completed"), "completed data point");
		expect(points.map((p) => p.blobs?.slice(0, 3))).toEqual([
			[agentId, "dispatched", "pending"],
			[agentId, "completed", "dispatched"],
		]);
		expect(points.every((p) => p.indexes?.[0] === agentId)).toBe(true);
		agent.close();
	});
});

describe("metrics", () => {
	function value(text: string, series: string): number {
		const line = text.split("\n").find((l) => l.startsWith(`${series} `));
		if (!line) throw new Error(`no series ${series}`);
		return Number(line.slice(series.length + 1));
	}

	/** The test database under a URL no scrape has used, so this isolate has no snapshot cached for it. */
	function freshUrl(): string {
		const url = new URL(env.DATABASE_URL);
		url.searchParams.set("application_name", `metrics-${crypto.randomUUID().slice(0, 8)}`);
		return url.toString();
	}

	/** A scrape that reads Postgres now (`url` fresh), or shares the isolate's snapshot for `url`. */
	async function scrape(url = freshUrl()): Promise<string> {
		const req = new Request(`${BASE}/metrics`, { headers: { authorization: `Bearer ${API_KEY}` } });
		const res = await app.fetch(req, { ...env, DATABASE_URL: url }, createExecutionContext());
		expect(res.status).toBe(200);
		expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
		return res.text();
	}

	it("reflect a known sequence of commands", async () => {
		const before = await scrape();
		const agentId = uniqueAgentId("metrics");
		const agent = await AgentSocket.connect(agentId);
		const ok1 = await enqueue(agentId, { action: "m1" });
		const ok2 = await enqueue(agentId, { action: "m2" });
		const bad = await enqueue(agentId, { action: "m3" });
		const waiting = await enqueue(uniqueAgentId("metrics-offline"), { action: "m4" });
		for (const f of await agent.commands(3)) {
			agent.send(f.id === bad.id ? { type: "result", id: f.id, status: "failed", error: "x" } : { type: "result", id: f.id, status: "completed" });
		}
		for (const c of [ok1, ok2]) await waitForStatus(c.id, "completed");
		await waitForStatus(bad.id, "failed");
		await waitFor(async () => value(await scrape(), "switchyard_agents_connected") >= 1, "agent online");
		const after = await scrape();
		agent.close();

		const delta = (series: string) => value(after, series) - value(before, series);
		expect(delta('switchyard_command_transitions_total{to="pending"}')).toBe(4);
		expect(delta('switchyard_command_transitions_total{to="dispatched"}')).toBe(3);
		expect(delta('switchyard_command_transitions_total{to="completed"}')).toBe(2);
		expect(delta('switchyard_command_transitions_total{to="failed"}')).toBe(1);
		// Open statuses are gauged; finished ones are counted by transitions_total.
		expect(delta('switchyard_commands{status="pending"}')).toBe(1);
		expect(after).not.toMatch(/switchyard_commands\{status="(completed|failed|cancelled|expired)"\}/);
		expect(delta("switchyard_pending_backlog")).toBe(1);
		expect(delta("switchyard_enqueue_to_dispatch_seconds_count")).toBe(3);
		expect(delta("switchyard_dispatch_to_completion_seconds_count")).toBe(3);
		expect(value(after, 'switchyard_enqueue_to_dispatch_seconds_bucket{le="+Inf"}')).toBe(
			value(after, "switchyard_enqueue_to_dispatch_seconds_count"),
		);
		expect(value(after, "switchyard_pending_oldest_seconds")).toBeGreaterThanOrEqual(0);
		expect(waiting.status).toBe("pending");
	});

	it("answer from the last snapshot, with its age, while a refresh cannot reach the database", async () => {
		const url = freshUrl();
		const live = httpDb({ ...env, DATABASE_URL: url });
		// Scrapes of the same database (the cache's key) after it went away: every statement fails.
		const gone = httpDb({ ...env, DATABASE_URL: env.TEST_DEAD_DATABASE_URL });
		const refreshes: Promise<unknown>[] = [];
		const t0 = Date.now();
		const first = await exposition(url, live, (p) => refreshes.push(p), t0);
		expect(first.at).toBe(t0);
		// Stale but within METRICS_STALE_MS: answered at once from the first snapshot, one refresh tried beside it.
		const stale = await exposition(url, gone, (p) => refreshes.push(p), t0 + METRICS_CACHE_MS + 1);
		expect(stale).toBe(first);
		expect(refreshes).toHaveLength(1);
		await Promise.all(refreshes);
		// The failed refresh left the snapshot in place.
		expect(await exposition(url, gone, (p) => refreshes.push(p), t0 + METRICS_CACHE_MS + 2)).toBe(first);
		// Too old to serve: the scrape waits for the database, and gets its error (a 503 through the API).
		await expect(exposition(url, gone, () => {}, t0 + METRICS_STALE_MS + 1)).rejects.toBeInstanceOf(DbUnavailableError);
		// And the route reports the age of what it answers with.
		const text = await scrape(url);
		expect(value(text, "switchyard_metrics_snapshot_age_seconds")).toBeGreaterThanOrEqual(0);
	});

	it("counters and histograms never step down when retention deletes the rows they counted", async () => {
		const agentId = uniqueAgentId("metrics-retained");
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "soon_deleted" });
		await agent.next("command");
		agent.send({ type: "result", id: cmd.id, status: "completed" });
		await waitForStatus(cmd.id, "completed");
		agent.close();
		const before = await scrape();
		await query(sql`update agent_commands set completed_at = now() - interval '400 days' where id = ${cmd.id}`);
		expect(await deleteExpired(env, { days: 365 })).toBeGreaterThanOrEqual(1);
		expect(await query(sql`select 1 from agent_commands where id = ${cmd.id}`)).toEqual([]);
		const after = await scrape();
		for (const series of [
			'switchyard_command_transitions_total{to="completed"}',
			'switchyard_command_transitions_total{to="pending"}',
			"switchyard_enqueue_to_dispatch_seconds_count",
			"switchyard_dispatch_to_completion_seconds_count",
			"switchyard_dispatch_to_completion_seconds_sum",
		]) {
			expect(value(after, series), series).toBeGreaterThanOrEqual(value(before, series));
		}
	});

	it("put each latency in the right bucket, whoever wrote the row (plain SQL included)", async () => {
		const bounds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];
		// One latency inside each bucket, and one past the last bound.
		const latencies = [...bounds.map((b) => b * 0.9), 400];
		const agentId = uniqueAgentId("metrics-buckets");
		const before = await scrape();
		const rows = await query<{ id: string }>(sql`
			insert into agent_commands (agent_id, action, created_at)
			select ${agentId}, 'bucketed', now() - interval '1 hour' from generate_series(1, ${latencies.length})
			returning id`);
		let after: string;
		try {
			// A statement that first sets first_dispatched_at is what the histogram observes.
			for (const [i, row] of rows.entries()) {
				await query(sql`update agent_commands set first_dispatched_at = created_at + make_interval(secs => ${latencies[i]})
					where id = ${row.id}`);
			}
			after = await scrape();
			// A second statement touching the same rows observes nothing again.
			await query(sql`update agent_commands set updated_at = now() where agent_id = ${agentId}`);
		} finally {
			await query(sql`delete from agent_commands where agent_id = ${agentId}`);
		}
		const delta = (series: string) => value(after, series) - value(before, series);
		const name = "switchyard_enqueue_to_dispatch_seconds";
		bounds.forEach((le, i) => expect(delta(`${name}_bucket{le="${le}"}`), `le=${le}`).toBe(i + 1));
		expect(delta(`${name}_bucket{le="+Inf"}`)).toBe(latencies.length);
		expect(delta(`${name}_count`)).toBe(latencies.length);
		expect(delta(`${name}_sum`)).toBeCloseTo(latencies.reduce((a, b) => a + b, 0), 3);
		expect(value(await scrape(), `${name}_count`)).toBe(value(after, `${name}_count`));
	});

	it("gauges count exactly the open commands, the connected agents and the outbox, whoever wrote the rows", async () => {
		const expected = {
			switchyard_agents_connected: 1,
			switchyard_outbox_depth: 7,
			'switchyard_commands{status="pending"}': 1,
			'switchyard_commands{status="dispatched"}': 1,
			'switchyard_commands{status="acknowledged"}': 2,
			switchyard_pending_backlog: 1,
		};
		// Objects left by earlier tests may still flush a presence or a status
		// between two scrapes; a measurement they disturbed is taken again.
		let deltas: Record<string, number> = {};
		let oldest = 0;
		for (let attempt = 0; attempt < 5; attempt++) {
			const agentId = uniqueAgentId("metrics-gauges");
			const before = await scrape();
			await query(sql`insert into agents (id, connected, outbox_depth) values (${agentId}, true, 7)`);
			await query(sql`
				insert into agent_commands (agent_id, action, status, created_at, completed_at) values
					(${agentId}, 'g', 'pending', now() - interval '1 day', null),
					(${agentId}, 'g', 'dispatched', now(), null),
					(${agentId}, 'g', 'acknowledged', now(), null),
					(${agentId}, 'g', 'acknowledged', now(), null),
					(${agentId}, 'g', 'completed', now(), now()),
					(${agentId}, 'g', 'expired', now(), now())`);
			let after: string;
			try {
				after = await scrape();
			} finally {
				await query(sql`delete from agent_commands where agent_id = ${agentId}`);
				await query(sql`delete from agents where id = ${agentId}`);
			}
			deltas = Object.fromEntries(Object.keys(expected).map((k) => [k, value(after, k) - value(before, k)]));
			oldest = value(after, "switchyard_pending_oldest_seconds");
			if (Object.entries(expected).every(([k, v]) => deltas[k] === v)) break;
		}
		expect(deltas).toEqual(expected);
		expect(oldest).toBeGreaterThanOrEqual(86_400);
	});

	it("send Postgres one query per isolate however often they are scraped", async () => {
		const sqlRequests = async () => Number(await (await fetch(`${env.TEST_RELAY_CONTROL}/sql-requests`)).text());
		const url = freshUrl();
		const before = await sqlRequests();
		// Concurrent scrapes share the query under way; later ones reuse its snapshot.
		const first = await Promise.all(Array.from({ length: 5 }, () => scrape(url)));
		const later: string[] = [];
		for (let i = 0; i < 5; i++) later.push(await scrape(url));
		expect((await sqlRequests()) - before).toBe(1);
		// The same snapshot; only its reported age moves.
		const snapshotOf = (text: string) => text.replace(/^switchyard_metrics_snapshot_age_seconds .*$/m, "");
		for (const text of [...first, ...later]) expect(snapshotOf(text)).toBe(snapshotOf(first[0] ?? ""));
	});

	it("need an operator key", async () => {
		expect((await api("/metrics", { key: null })).status).toBe(401);
	});
});
