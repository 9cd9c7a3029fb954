import { describe, expect, it } from "vitest";
import { Agent } from "../../src/sdk/agent.ts";
import { Backoff } from "../../src/sdk/backoff.ts";
import { Recent } from "../../src/sdk/recent.ts";
import { fakeConnector, tick, until } from "./fake-socket.ts";

const ID1 = "11111111-1111-4111-8111-111111111111";
const ID2 = "22222222-2222-4222-8222-222222222222";

function makeAgent(extra: Partial<ConstructorParameters<typeof Agent>[0]> = {}) {
	const conn = fakeConnector();
	const agent = new Agent({
		url: "http://switchyard.test",
		agentId: "a",
		token: "t",
		concurrency: 2,
		backoff: { initialMs: 5, maxMs: 20 },
		connect: conn.connect,
		...extra,
	});
	return { agent, conn };
}

describe("backoff", () => {
	it("grows exponentially between 1 s and 60 s with full jitter, and resets", () => {
		const lowest = new Backoff({ random: () => 0 });
		const highest = new Backoff({ random: () => 0.999999 });
		expect(Array.from({ length: 8 }, () => lowest.next())).toEqual(Array(8).fill(1000));
		expect(Array.from({ length: 8 }, () => highest.next())).toEqual([1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
		highest.reset();
		expect(highest.next()).toBe(1000);
		const mid = new Backoff({ random: () => 0.5 });
		mid.next();
		expect(mid.next()).toBe(1500);
	});
});

describe("recent results", () => {
	it("keeps the newest `capacity` ids", () => {
		const r = new Recent<number>(2);
		r.set("a", 1);
		r.set("b", 2);
		r.set("a", 3); // refresh a
		r.set("c", 4); // evicts b
		expect([r.has("a"), r.has("b"), r.has("c"), r.size]).toEqual([true, false, true, 2]);
	});
});

describe("agent", () => {
	it("announces hello with its concurrency and reports a quick handler's result with no separate ack", async () => {
		const { agent, conn } = makeAgent();
		agent.handle("echo", (payload) => ({ got: payload }));
		agent.start();
		const ws = await conn.next();
		ws.open();
		expect(ws.of("hello")).toEqual([{ type: "hello", concurrency: 2, running: [], actions: ["echo"] }]);
		ws.command(ID1, "echo", { x: 1 });
		await until(() => ws.of("result").length === 1, "result");
		expect(ws.of("result")[0]).toEqual({ type: "result", id: ID1, status: "completed", result: { got: { x: 1 } } });
		await tick(10);
		expect(ws.of("ack")).toEqual([]);
		await agent.stop();
	});

	it.each([
		["rate_limited", 1],
		["invalid_frame", 1],
		["internal", 1],
		["unknown_command", 2],
		["not_dispatched", 2],
	])("after an error frame %s naming a finished command, a redelivery runs it %i time(s) in all", async (code, expectedRuns) => {
		const { agent, conn } = makeAgent();
		let runs = 0;
		agent.handle("work", () => ++runs);
		agent.start();
		const ws = await conn.next();
		ws.open();
		ws.command(ID1, "work");
		await until(() => ws.of("result").length === 1, "result");
		// Only unknown_command and not_dispatched say the server does not hold the command as sent.
		ws.deliver({ type: "error", code, message: "refused", id: ID1 });
		ws.command(ID1, "work", {}, 2);
		await until(() => ws.of("result").length >= 2, "the redelivery's answer");
		expect(runs).toBe(expectedRuns);
		expect(ws.of("result").at(-1)).toEqual({ type: "result", id: ID1, status: "completed", result: expectedRuns });
		await agent.stop();
	});

	it("sends a result again, once, when the server failed handling a frame of that command", async () => {
		const { agent, conn } = makeAgent();
		agent.handle("work", () => "done");
		agent.start();
		const ws = await conn.next();
		ws.open();
		ws.command(ID1, "work");
		await until(() => ws.of("result").length === 1, "result");
		ws.deliver({ type: "error", code: "internal", message: "failed", id: ID1 });
		ws.deliver({ type: "error", code: "internal", message: "failed", id: ID1 });
		expect(ws.of("result")).toEqual([
			{ type: "result", id: ID1, status: "completed", result: "done" },
			{ type: "result", id: ID1, status: "completed", result: "done" },
		]);
		await agent.stop();
	});

	it("acks a command whose handler is still running, before its result", async () => {
		const { agent, conn } = makeAgent();
		agent.handle("slow", () => new Promise((r) => setTimeout(() => r("ok"), 30)));
		agent.start();
		const ws = await conn.next();
		ws.open();
		ws.command(ID1, "slow");
		await until(() => ws.of("ack").length === 1, "ack");
		expect(ws.of("result")).toEqual([]);
		await until(() => ws.of("result").length === 1, "result");
		const types = ws.sent.map((f) => f.type).filter((t) => t === "ack" || t === "result");
		expect(types).toEqual(["ack", "result"]);
		await agent.stop();
	});

	it("never runs the same command id twice: a redelivery gets the first result again", async () => {
		const { agent, conn } = makeAgent();
		let runs = 0;
		agent.handle("work", async () => {
			runs++;
			await tick(20);
			return runs;
		});
		agent.start();
		const ws = await conn.next();
		ws.open();
		ws.command(ID1, "work");
		ws.command(ID1, "work", {}, 2); // while running
		await until(() => ws.of("result").length === 1, "first result");
		ws.command(ID1, "work", {}, 3); // after finishing
		expect(runs).toBe(1);
		expect(ws.of("result")).toEqual([
			{ type: "result", id: ID1, status: "completed", result: 1 },
			{ type: "result", id: ID1, status: "completed", result: 1 },
		]);
		// The first delivery and the one during the run are acked; the one after is answered by its result.
		expect(ws.of("ack")).toHaveLength(2);
		await agent.stop();
	});

	it("reports failed with the error's message, and a clear error for an unknown action", async () => {
		const { agent, conn } = makeAgent();
		agent.handle("boom", () => {
			throw new Error("disk full");
		});
		agent.start();
		const ws = await conn.next();
		ws.open();
		ws.command(ID1, "boom");
		ws.command(ID2, "nope");
		await until(() => ws.of("result").length === 2, "results");
		expect(ws.of("result")).toContainEqual({ type: "result", id: ID1, status: "failed", error: "disk full" });
		expect(ws.of("result")).toContainEqual({
			type: "result",
			id: ID2,
			status: "failed",
			error: 'unknown action "nope" (this agent handles: boom)',
		});
		await agent.stop();
	});

	it("a cancel frame aborts ctx.signal and the command ends as cancelled", async () => {
		const { agent, conn } = makeAgent();
		agent.handle("wait", (_p, ctx) => new Promise((_r, reject) => ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason))));
		agent.start();
		const ws = await conn.next();
		ws.open();
		ws.command(ID1, "wait");
		await tick(5);
		ws.deliver({ type: "cancel", id: ID1, reason: "requested" });
		await until(() => ws.of("result").length === 1, "result");
		expect(ws.of("result")[0]).toMatchObject({ id: ID1, status: "cancelled" });
		// A cancel for something it is not running is answered so the server can stop waiting.
		ws.deliver({ type: "cancel", id: ID2, reason: "timeout" });
		expect(ws.of("result")[1]).toEqual({ type: "result", id: ID2, status: "cancelled" });
		await agent.stop();
	});

	it("describes itself in hello: labels, version, platform and the actions it has handlers for", async () => {
		const { agent, conn } = makeAgent({ labels: { env: "prod", region: "eu" }, version: "2.0.1", platform: "linux/amd64" });
		agent.handle("build", () => null).handle("test", () => null);
		agent.start();
		const ws = await conn.next();
		ws.open();
		expect(ws.of("hello")).toEqual([
			{
				type: "hello",
				concurrency: 2,
				running: [],
				version: "2.0.1",
				platform: "linux/amd64",
				labels: { env: "prod", region: "eu" },
				actions: ["build", "test"],
			},
		]);
		await agent.stop({ graceMs: 0 });
	});

	it("refuses a description the server would refuse, when it is made", () => {
		expect(() => makeAgent({ labels: { "not a key": "v" } })).toThrow(/labels/);
		expect(() => makeAgent({ version: "" })).toThrow(/version/);
		expect(() => makeAgent({ labels: Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, "v"])) })).toThrow(/at most 32/);
	});

	it("results finished while disconnected are sent first on the next connection, before hello", async () => {
		const { agent, conn } = makeAgent();
		let release = () => {};
		agent.handle("slow", () => new Promise((r) => (release = () => r("done"))));
		agent.start();
		const first = await conn.next();
		first.open();
		first.command(ID1, "slow");
		await tick(5);
		const second = conn.next();
		first.close(1006, "network");
		release();
		const ws = await second;
		ws.open(2);
		expect(ws.sent.map((f) => f.type)).toEqual(["result", "hello"]);
		expect(ws.of("hello")[0]).toMatchObject({ running: [] });
		await agent.stop();
	});

	it("reconnects with backoff after a drop, and stops for good when replaced (4001)", async () => {
		const { agent, conn } = makeAgent();
		const events: string[] = [];
		agent.on("reconnecting", () => events.push("reconnecting"));
		agent.on("stopped", (e) => events.push(`stopped: ${e.reason}`));
		agent.start();
		const first = await conn.next();
		first.open();
		const again = conn.next();
		first.close(1006, "");
		const second = await again;
		second.open(2);
		second.close(4001, "replaced by a newer connection for this agent");
		await tick(50);
		expect(conn.sockets).toHaveLength(2);
		expect(events).toEqual(["reconnecting", "stopped: closed by the server with 4001 (replaced by a newer connection for this agent)"]);
		expect(agent.state).toBe("stopped");
	});

	it("stops for good when the server refuses its token, instead of retrying forever", async () => {
		const { ConnectRefused } = await import("../../src/sdk/transport.ts");
		const { agent, conn } = makeAgent({
			probe: async () => new ConnectRefused(401, "agent token expired"),
		});
		const stopped = new Promise<string>((r) => agent.on("stopped", (e) => r(e.reason)));
		agent.start();
		const ws = await conn.next();
		ws.close(1006, ""); // the upgrade failed before the socket opened
		expect(await stopped).toBe("connection refused (HTTP 401): agent token expired");
		await tick(30);
		expect(conn.sockets).toHaveLength(1);
	});

	it("retries a connection that failed before opening when the token was not the reason", async () => {
		const { agent, conn } = makeAgent({ probe: async () => undefined });
		agent.start();
		(await conn.next()).close(1006, "");
		const second = await conn.next();
		second.open();
		expect(agent.state).toBe("open");
		await agent.stop();
	});

	it("a stop() while a connection attempt is under way stays stopped", async () => {
		let release: (t: string) => void = () => {};
		const { agent, conn } = makeAgent({ token: () => new Promise<string>((r) => (release = r)) });
		agent.start();
		await tick(5);
		await agent.stop();
		release("late-token");
		await tick(20);
		expect(agent.state).toBe("stopped");
		// The attempt may have produced a socket; it must not have been used.
		expect(conn.sockets.every((ws) => ws.sent.length === 0)).toBe(true);
	});

	it("a result that finishes between socket open and welcome is sent at welcome", async () => {
		const { agent, conn } = makeAgent();
		let release = () => {};
		agent.handle("slow", () => new Promise((r) => (release = () => r("late"))));
		agent.start();
		const first = await conn.next();
		first.open();
		first.command(ID1, "slow");
		await tick(5);
		const again = conn.next();
		first.close(1006, "");
		const ws = await again;
		ws.openOnly(); // hello goes out listing the running command
		expect(ws.of("hello")[0]).toMatchObject({ running: [ID1] });
		release();
		await tick(5);
		expect(ws.of("result")).toEqual([]);
		ws.welcome(2);
		await until(() => ws.of("result").length === 1, "result at welcome");
		expect(ws.of("result")[0]).toMatchObject({ id: ID1, status: "completed", result: "late" });
		await agent.stop();
	});

	it("error text the server could not store is cleaned, not lost", async () => {
		const { agent, conn } = makeAgent();
		agent.handle("nul", () => {
			throw new Error("bad\u0000byte and half a pair \ud83d");
		});
		agent.start();
		const ws = await conn.next();
		ws.open();
		ws.command(ID1, "nul");
		await until(() => ws.of("result").length === 1, "result");
		expect(ws.of("result")[0]).toEqual({ type: "result", id: ID1, status: "failed", error: "badbyte and half a pair \ufffd" });
		await agent.stop();
	});

	it("drains on stop: takes no new commands, lets running ones finish, then closes", async () => {
		const { agent, conn } = makeAgent();
		agent.handle("slow", () => new Promise((r) => setTimeout(() => r("ok"), 40)));
		agent.start();
		const ws = await conn.next();
		ws.open();
		ws.command(ID1, "slow");
		const stopping = agent.stop({ graceMs: 5_000 });
		ws.command(ID2, "slow"); // arrives during the drain
		await stopping;
		expect(ws.of("result")).toEqual([{ type: "result", id: ID1, status: "completed", result: "ok" }]);
		expect(ws.of("ack")).toEqual([{ type: "ack", id: ID1 }]);
		expect(ws.readyState).toBe(3);
		expect(agent.state).toBe("stopped");
	});

	it("abandons, unreported, what is still running when the grace period ends", async () => {
		const { agent, conn } = makeAgent();
		agent.handle("forever", (_p, ctx) => new Promise((_r, reject) => ctx.signal.addEventListener("abort", () => reject(new Error("x")))));
		agent.start();
		const ws = await conn.next();
		ws.open();
		ws.command(ID1, "forever");
		await agent.stop({ graceMs: 30 });
		await tick(5);
		expect(ws.of("result")).toEqual([]);
	});

	it("sends pings and closes a connection the server stopped answering", async () => {
		const { agent, conn } = makeAgent({ heartbeatMs: 10 });
		agent.start();
		const ws = await conn.next();
		ws.open();
		const again = conn.next();
		await tick(15);
		expect(ws.sent).toContainEqual({ type: "ping" });
		expect(await again).toBeDefined(); // silent for 3 intervals: gave up and reconnected
		await agent.stop();
	});

	it("refuses to report a result Postgres could not store, with a clear error", async () => {
		const { agent, conn } = makeAgent();
		agent.handle("bad", () => ({ text: "a\u0000b" }));
		agent.start();
		const ws = await conn.next();
		ws.open();
		ws.command(ID1, "bad");
		await until(() => ws.of("result").length === 1, "result");
		expect(ws.of("result")[0]).toMatchObject({ status: "failed", error: expect.stringContaining("NUL") });
		await agent.stop();
	});
});

describe("tokens", () => {
	it("trades its token in before it expires and reconnects with the new one", async () => {
		const { agent, conn } = makeAgent();
		agent.start();
		const ws = await conn.next();
		ws.openOnly();
		ws.deliver({ type: "welcome", protocol: 1, agentId: "a", generation: 1, tokenExpiresAt: new Date(Date.now() + 1_500).toISOString() });
		// At 80% of its remaining life.
		await until(() => ws.of("auth.refresh").length === 1, "auth.refresh", 3_000);
		expect(ws.of("auth.refresh")[0]).toEqual({ type: "auth.refresh", token: "t" });
		ws.deliver({ type: "auth.refreshed", token: "t2", expiresAt: new Date(Date.now() + 3_600_000).toISOString() });
		ws.close(1006, "network");
		const next = await conn.next();
		expect(conn.tokens).toEqual(["t", "t2"]);
		next.open(2);
		await agent.stop();
	});

	it("stops for good when its tokens are revoked (4004), and reconnects after a token expiry (4003)", async () => {
		const { agent, conn } = makeAgent();
		agent.start();
		const first = await conn.next();
		first.open();
		first.close(4003, "agent token expired");
		const second = await conn.next();
		second.open(2);
		second.close(4004, "agent tokens revoked");
		await until(() => agent.state === "stopped", "stopped");
		expect(agent.stoppedReason).toMatch(/4004/);
		expect(conn.sockets).toHaveLength(2);
	});
});

describe("output pacing", () => {
	it("coalesces output beyond its frame budget, keeps it in order, and sends all of it before the result", async () => {
		const { agent, conn } = makeAgent({ outputFramesPerSecond: 10 });
		agent.handle("chatty", (_p, ctx) => {
			for (let i = 0; i < 100; i++) ctx.output(`${i},`);
			return "done";
		});
		agent.start();
		const ws = await conn.next();
		ws.open();
		ws.command(ID1, "chatty");
		await until(() => ws.of("result").length === 1, "result");
		const outputs = ws.of("output");
		expect(outputs.map((f) => f.data).join("")).toBe(Array.from({ length: 100 }, (_, i) => `${i},`).join(""));
		expect(outputs.map((f) => f.seq)).toEqual(outputs.map((_, i) => i));
		// Ten frames of budget, then the rest in one frame flushed ahead of the result.
		expect(outputs.length).toBeLessThanOrEqual(11);
		const order = ws.sent.map((f) => f.type).filter((t) => t === "output" || t === "result");
		expect(order.at(-1)).toBe("result");
		await agent.stop();
	});
});
