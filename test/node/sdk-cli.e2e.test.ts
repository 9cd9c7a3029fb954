/**
 * What agents and operators run, against the real local stack: two SDK
 * agents, driven through the `switchyard` CLI (as a subprocess) and through
 * the typed client; and the README's quick start, line for line.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Agent } from "../../src/sdk/agent.ts";
import { SwitchyardClient } from "../../src/sdk/client.ts";
import { runCli } from "../helpers/node/cli.ts";
import { type LocalStack, startLocalStack } from "../helpers/node/local-stack.ts";

let stack: LocalStack;
let client: SwitchyardClient;
const agents: Agent[] = [];
const children: ChildProcess[] = [];

/** Runs the CLI as a user would, against this stack. */
function cli(args: string[]) {
	return runCli(stack, args);
}

async function startAgent(agentId: string, concurrency: number, setup: (a: Agent) => void): Promise<Agent> {
	const agent = new Agent({
		url: stack.base,
		agentId,
		token: async () => (await client.token(agentId)).token,
		concurrency,
	});
	setup(agent);
	agents.push(agent);
	agent.start();
	await agent.whenOpen();
	return agent;
}

const sleepHandler = (payload: unknown, ctx: { signal: AbortSignal }) =>
	new Promise((resolve, reject) => {
		const t = setTimeout(() => resolve("slept"), Number((payload as { seconds?: number }).seconds ?? 1) * 1000);
		ctx.signal.addEventListener("abort", () => {
			clearTimeout(t);
			reject(new Error("stopped"));
		});
	});

beforeAll(async () => {
	stack = await startLocalStack();
	client = new SwitchyardClient({ baseUrl: stack.base, apiKey: stack.apiKey });
});

afterAll(async () => {
	for (const c of children) c.kill("SIGKILL");
	await Promise.all(agents.map((a) => a.stop({ graceMs: 1_000 })));
	await stack.stop();
});

describe("two SDK agents, the typed client and the CLI", () => {
	const alpha = `alpha-${Date.now()}`;
	const beta = `beta-${Date.now()}`;

	beforeAll(async () => {
		await startAgent(alpha, 2, (a) => a.handle("echo", (p) => ({ alpha: p })).handle("sleep", sleepHandler));
		await startAgent(beta, 1, (a) => a.handle("echo", (p) => ({ beta: p })));
	});

	it("the typed client enqueues, waits, batches, lists and reads agents", async () => {
		const one = await client.enqueue(alpha, { action: "echo", payload: { n: 1 } });
		expect(one.status).toBe("pending");
		expect(await client.wait(one.id)).toMatchObject({ status: "completed", result: { alpha: { n: 1 } } });

		const batch = await client.batch([
			{ agentId: alpha, action: "echo", payload: "a" },
			{ agentId: beta, action: "echo", payload: "b" },
		]);
		// An item is a command, or an error of its own (a reused idempotency key): the type says which.
		const ids = batch.items.map((i) => ("command" in i ? i.command.id : i.error.code));
		const results = await Promise.all(ids.map((id) => client.wait(id)));
		expect(results.map((r) => r.result)).toEqual([{ alpha: "a" }, { beta: "b" }]);

		const page = await client.list(alpha, { status: "completed" });
		expect(page.items.map((c) => c.id)).toContain(one.id);
		const fleet = await client.agents({ limit: "200" });
		expect(fleet.items.filter((a) => a.id === alpha || a.id === beta).every((a) => a.online)).toBe(true);
		expect((await client.agent(alpha)).commands.completed).toBe(2);
	});

	it("an agent with a token for another agent id stops, saying why", async () => {
		const wrong = (await client.token(beta)).token;
		const agent = new Agent({ url: stack.base, agentId: `gamma-${Date.now()}`, token: wrong });
		const stopped = new Promise<string>((r) => agent.on("stopped", (e) => r(e.reason)));
		agent.start();
		expect(await stopped).toBe("connection refused (HTTP 401): agent token was issued for another agent");
	});

	it("an action the agent has no handler for waits (action_unsupported) instead of being sent to fail", async () => {
		const cmd = await client.enqueue(beta, { action: "reboot" });
		const deadline = Date.now() + 10_000;
		while ((await client.get(cmd.id)).blockedReason !== "action_unsupported") {
			if (Date.now() > deadline) throw new Error("the command never showed action_unsupported");
			await new Promise((r) => setTimeout(r, 100));
		}
		expect(await client.get(cmd.id)).toMatchObject({ status: "pending", attempts: 0 });
		expect((await client.cancel(cmd.id)).outcome).toBe("cancelled");
	});

	it("the CLI sends and waits, cancels a running command, watches it end, and lists", async () => {
		const sent = await cli(["command", "send", beta, "echo", "--payload", '{"via":"cli"}', "--wait", "--json"]);
		expect(sent.code).toBe(0);
		expect(JSON.parse(sent.stdout)).toMatchObject({ status: "completed", result: { beta: { via: "cli" } } });

		const long = await cli(["command", "send", alpha, "sleep", "--payload", '{"seconds":60}', "--json"]);
		expect(long.code).toBe(0);
		const id = JSON.parse(long.stdout).id as string;
		const deadline = Date.now() + 10_000;
		while ((await client.get(id)).status !== "acknowledged") {
			if (Date.now() > deadline) throw new Error("the sleep command was never acknowledged");
			await new Promise((r) => setTimeout(r, 100));
		}

		const cancelled = await cli(["command", "cancel", id]);
		expect(cancelled.code).toBe(0);
		expect(cancelled.stdout).toContain("cancel requested");
		const watched = await cli(["command", "watch", id, "--json"]);
		expect(watched.code).toBe(1); // ended cancelled
		expect(JSON.parse(watched.stdout)).toMatchObject({ id, status: "cancelled" });

		const listed = await cli(["command", "list", alpha, "--json"]);
		expect(JSON.parse(listed.stdout).items.map((c: { id: string }) => c.id)).toContain(id);
		const table = await cli(["agent", "list"]);
		expect(table.stdout).toMatch(new RegExp(`${beta}\\s+true`));
	}, 60_000);

	it("the CLI revokes an agent: the SDK agent stops for good (4004) and its tokens no longer connect", async () => {
		const delta = `delta-${Date.now()}`;
		const agent = await startAgent(delta, 1, (a) => a.handle("echo", (p) => p));
		const oldToken = (await client.token(delta)).token;
		const stopped = new Promise<string>((r) => agent.on("stopped", (e) => r(e.reason)));
		const revoked = await cli(["agent", "revoke", delta, "--json"]);
		expect(revoked.code).toBe(0);
		expect(JSON.parse(revoked.stdout)).toMatchObject({ agentId: delta, revoked: true, socketClosed: true });
		expect(await stopped).toMatch(/4004/);
		const retry = new Agent({ url: stack.base, agentId: delta, token: oldToken });
		const refused = new Promise<string>((r) => retry.on("stopped", (e) => r(e.reason)));
		retry.start();
		expect(await refused).toMatch(/HTTP 401.*revoked/);
	});

	it("the CLI's errors say what failed, with documented exit codes", async () => {
		const notFound = await cli(["command", "get", crypto.randomUUID()]);
		expect(notFound.code).toBe(3);
		expect(notFound.stderr).toContain("not_found");
		const usage = await cli(["command", "send", alpha]);
		expect(usage.code).toBe(2);
		expect(usage.stderr).toContain("missing <action>");
		const badKey = await cli(["agent", "list", "--api-key", "wrong"]);
		expect(badKey.code).toBe(3);
		expect(badKey.stderr).toContain("check --api-key");
		const down = await cli(["agent", "list", "--url", "http://127.0.0.1:1"]);
		expect(down.code).toBe(4);
		expect(down.stderr).toContain("cannot reach the server");
	});
});

describe("fleet operations on agents, through the typed client and the CLI", () => {
	const tag = `t${Date.now()}`;
	const edge1 = `edge1-${tag}`;
	const edge2 = `edge2-${tag}`;

	beforeAll(async () => {
		for (const id of [edge1, edge2]) {
			const agent = new Agent({
				url: stack.base,
				agentId: id,
				token: async () => (await client.token(id)).token,
				concurrency: 1,
				labels: { fleet: tag, role: "edge" },
				version: "3.1.0",
				platform: "linux/arm64",
			});
			agent.handle("sleep", sleepHandler).handle("echo", (p) => p);
			agents.push(agent);
			agent.start();
			await agent.whenOpen();
		}
	});

	it("lists agents by label with what their hello said, and labels them", async () => {
		const deadline = Date.now() + 10_000;
		let page = await client.listAgents({ labels: { fleet: tag }, online: true });
		while (page.items.length < 2 || page.items.some((a) => a.version === null)) {
			if (Date.now() > deadline) throw new Error("the agents' hellos never reached their records");
			await new Promise((r) => setTimeout(r, 100));
			page = await client.listAgents({ labels: { fleet: tag }, online: true });
		}
		expect(page.items.map((a) => a.id)).toEqual([edge1, edge2]);
		expect(page.items[0]).toMatchObject({ version: "3.1.0", platform: "linux/arm64", actions: ["sleep", "echo"], concurrency: 1, paused: false });

		const labelled = await cli(["agent", "label", edge2, "role=canary", "owner=sre", "--json"]);
		expect(labelled.code).toBe(0);
		expect(JSON.parse(labelled.stdout)).toMatchObject({ operatorLabels: { role: "canary", owner: "sre" }, labels: { fleet: tag, role: "canary" } });
		const removed = await cli(["agent", "label", edge2, "owner="]);
		expect(removed.code).toBe(0);
		expect(removed.stdout).toContain("role=canary");
		expect(removed.stdout).not.toContain("owner");

		const listed = await cli(["agent", "list", "--label", `fleet=${tag}`, "--label", "role=edge", "--online", "--json"]);
		expect(JSON.parse(listed.stdout).items.map((a: { id: string }) => a.id)).toEqual([edge1]);
		const table = await cli(["agent", "list", "--label", `fleet=${tag}`]);
		expect(table.stdout).toMatch(new RegExp(`${edge1}\\s+true\\s+3\\.1\\.0`));
		const bad = await cli(["agent", "label", edge2, "novalue"]);
		expect(bad.code).toBe(2);
	});

	it("pauses, resumes and stops an agent from the CLI", async () => {
		const paused = await cli(["agent", "pause", edge1]);
		expect(paused.code).toBe(0);
		expect(paused.stdout).toContain("paused");
		const cmd = await client.enqueue(edge1, { action: "echo", payload: "after pause" });
		await new Promise((r) => setTimeout(r, 500));
		expect(await client.get(cmd.id)).toMatchObject({ status: "pending", blockedReason: "agent_paused", queuePosition: 0 });
		expect((await cli(["agent", "resume", edge1])).code).toBe(0);
		expect(await client.wait(cmd.id, { timeoutMs: 10_000 })).toMatchObject({ status: "completed", result: "after pause" });

		const long = await client.enqueue(edge1, { action: "sleep", payload: { seconds: 60 } });
		const queued = await client.enqueue(edge1, { action: "echo" });
		const deadline = Date.now() + 10_000;
		while ((await client.get(long.id)).status !== "acknowledged") {
			if (Date.now() > deadline) throw new Error("the sleep command was never acknowledged");
			await new Promise((r) => setTimeout(r, 100));
		}
		const stopped = await cli(["agent", "stop", edge1, "--pause", "--json"]);
		expect(stopped.code).toBe(0);
		expect(JSON.parse(stopped.stdout)).toEqual({ agentId: edge1, cancelled: 1, cancelRequested: 1, paused: true });
		expect(await client.wait(long.id, { timeoutMs: 10_000 })).toMatchObject({ status: "cancelled" });
		expect(await client.wait(queued.id, { timeoutMs: 10_000 })).toMatchObject({ status: "cancelled" });
		expect((await client.agent(edge1)).paused).toBe(true);
		await client.resume(edge1);
	}, 60_000);

	it("fleet stop refuses without --yes off a terminal, and stops every matching agent with it", async () => {
		const long = await client.enqueue(edge2, { action: "sleep", payload: { seconds: 60 } });
		const refused = await cli(["fleet", "stop", "--label", `fleet=${tag}`]);
		expect(refused.code).toBe(2);
		expect(refused.stderr).toContain("--yes");
		expect((await cli(["fleet", "stop", "--yes"])).code).toBe(2);

		const deadline = Date.now() + 10_000;
		while ((await client.get(long.id)).status !== "acknowledged") {
			if (Date.now() > deadline) throw new Error("the sleep command was never acknowledged");
			await new Promise((r) => setTimeout(r, 100));
		}
		const stopped = await cli(["fleet", "stop", "--label", `fleet=${tag}`, "--yes", "--json"]);
		expect(stopped.code).toBe(0);
		expect(JSON.parse(stopped.stdout)).toEqual({ matched: 2, reached: 2, unreached: [], cancelled: 0, cancelRequested: 1, paused: false });
		expect(await client.wait(long.id, { timeoutMs: 10_000 })).toMatchObject({ status: "cancelled" });
		const viaClient = await client.stopFleet({ labels: { fleet: tag } }, { pause: true });
		expect(viaClient).toMatchObject({ matched: 2, reached: 2, paused: true });
		expect((await client.listAgents({ labels: { fleet: tag } })).items.every((a) => a.paused)).toBe(true);
	}, 60_000);
});

describe("the README quick start", () => {
	it("works as written", async () => {
		const readme = readFileSync("README.md", "utf8");
		const block = readme.slice(readme.indexOf("<!-- quickstart")).split("```sh")[1]?.split("```")[0] ?? "";
		const lines = block.split("\n").filter((l) => l.startsWith("npx switchyard "));
		expect(lines).toHaveLength(2);
		const words = (line: string) =>
			[...line.replace(/^npx switchyard /, "").matchAll(/'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2] ?? "");

		const [runAgent, send] = lines.map(words);
		const agent = spawn(process.execPath, ["bin/switchyard.mjs", ...(runAgent ?? [])], {
			env: { ...process.env, SWITCHYARD_URL: stack.base },
		});
		children.push(agent);
		let agentLog = "";
		agent.stderr.on("data", (d: Buffer) => {
			agentLog += d.toString();
		});
		const deadline = Date.now() + 30_000;
		while (!agentLog.includes("connected as demo")) {
			if (Date.now() > deadline) throw new Error(`demo agent did not connect:\n${agentLog}`);
			await new Promise((r) => setTimeout(r, 100));
		}
		// The CLI finds the key in .dev.vars, as the README says.
		const result = await new Promise<{ code: number; out: string }>((resolve) => {
			const child = spawn(process.execPath, ["bin/switchyard.mjs", ...(send ?? [])], {
				env: { ...process.env, SWITCHYARD_URL: stack.base, SWITCHYARD_API_KEY: "" },
			});
			let out = "";
			child.stdout.on("data", (d: Buffer) => {
				out += d.toString();
			});
			child.on("close", (code) => resolve({ code: code ?? -1, out }));
		});
		expect(result.code).toBe(0);
		expect(result.out).toMatch(/status\s+completed/);
		expect(result.out).toContain('{"text":"hello"}');
		agent.kill("SIGINT");
		await new Promise((r) => agent.once("close", r));
		expect(agentLog).toContain("stopped: stopped by the agent");
	}, 60_000);
});
