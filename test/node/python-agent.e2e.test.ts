/**
 * Interop: test/agents/python_agent.py, an agent written in Python from
 * docs/protocol.md alone (standard library only, its own RFC 6455 client),
 * runs commands against the real local stack (`npm run dev`). The test reads
 * what a user would: statuses, results, errors and stored output over the
 * HTTP API, and the agent's exit code.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type LocalStack, startLocalStack } from "../helpers/node/local-stack.ts";
import { waitUntil } from "../helpers/node/processes.ts";

const AGENT_SCRIPT = "test/agents/python_agent.py";
const FINISHED = new Set(["completed", "failed", "cancelled", "expired"]);

let stack: LocalStack;
const pythons: ChildProcess[] = [];

type Json = Record<string, unknown>;

async function api(path: string, init: RequestInit = {}): Promise<Response> {
	return fetch(`${stack.base}${path}`, {
		...init,
		headers: { authorization: `Bearer ${stack.apiKey}`, "content-type": "application/json", ...init.headers },
	});
}

async function enqueue(agentId: string, action: string, payload: unknown): Promise<string> {
	const res = await api(`/v1/agents/${agentId}/commands`, { method: "POST", body: JSON.stringify({ action, payload }) });
	expect(res.status).toBe(201);
	return ((await res.json()) as { id: string }).id;
}

async function command(id: string): Promise<Json> {
	return (await (await api(`/v1/commands/${id}`)).json()) as Json;
}

async function online(agentId: string): Promise<boolean> {
	const res = await api(`/v1/agents/${agentId}`);
	return res.ok && ((await res.json()) as { online: boolean }).online;
}

/** Spawns the Python agent with a fresh token; resolves its exit code when it ends. */
async function startPythonAgent(agentId: string, args: string[] = []) {
	const res = await api(`/v1/agents/${agentId}/token`, { method: "POST" });
	expect(res.status).toBe(201);
	const { token } = (await res.json()) as { token: string };
	const child = spawn("python3", [AGENT_SCRIPT, "--url", stack.base, "--agent", agentId, ...args], {
		env: { ...process.env, SWITCHYARD_TOKEN: token },
		stdio: ["ignore", "pipe", "pipe"],
	});
	pythons.push(child);
	let log = "";
	child.stdout?.on("data", (d: Buffer) => {
		log += d.toString();
	});
	child.stderr?.on("data", (d: Buffer) => {
		log += d.toString();
	});
	const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
	await waitUntil(
		async () => {
			if (child.exitCode !== null) throw new Error(`python agent exited with ${child.exitCode}:\n${log}`);
			return online(agentId);
		},
		`${agentId} (python) to be online`,
		30_000,
	);
	return { child, exited, log: () => log };
}

beforeAll(async () => {
	// No silent skip: this test exists to prove the Python example works.
	const probe = spawnSync("python3", ["--version"], { encoding: "utf8" });
	if (probe.error || probe.status !== 0) {
		throw new Error(
			`python3 is required for ${AGENT_SCRIPT} (standard library only, no pip packages) but could not be run: ${probe.error?.message ?? probe.stderr}. Install Python 3 and put python3 on PATH.`,
		);
	}
	stack = await startLocalStack();
});

afterAll(async () => {
	for (const child of pythons) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
	await stack?.stop();
});

describe("an agent in Python, from docs/protocol.md alone", () => {
	it("completes, fails, streams output and confirms a cancel, then exits 0", async () => {
		const agentId = `py-${Date.now()}`;
		// Queued while the agent is offline: delivered when it connects. Over
		// 64 KiB, so the frame uses the 8-byte length both ways (the 2-byte
		// length is used by every other command frame).
		const big = { text: "queued", unicode: "héllo ✓ 🚀", nested: [1, { deep: [true, null] }], blob: "x".repeat(70_000) };
		const echoId = await enqueue(agentId, "echo", big);

		const agent = await startPythonAgent(agentId, ["--exit-after", "4"]);
		const withLog = (e: Error) => {
			throw new Error(`${e.message}\n--- python agent ---\n${agent.log()}`);
		};
		// The sleep goes first and holds its slot: the two after it finish
		// only because the server took `hello` (concurrency 4, `"running": null`);
		// without it the window is 1.
		const sleepId = await enqueue(agentId, "sleep", { seconds: 600 });
		const failId = await enqueue(agentId, "fail", { message: "disk full" });
		const outputId = await enqueue(agentId, "output", { lines: ["line one", "line two", "ünïcode ✓"] });
		const done = async (ids: string[]) => (await Promise.all(ids.map(command))).every((c) => FINISHED.has(String(c.status)));
		await waitUntil(() => done([echoId, failId, outputId]), "echo, fail and output to finish beside the sleep", 60_000).catch(withLog);

		// The agent holds the sleep: it must answer the cancel frame with a
		// cancelled result.
		await waitUntil(async () => (await command(sleepId)).status === "acknowledged", "the sleep to be acknowledged", 30_000).catch(withLog);
		const cancel = await api(`/v1/commands/${sleepId}/cancel`, { method: "POST" });
		expect(cancel.status).toBe(202);
		expect(await cancel.json()).toMatchObject({ outcome: "cancel_requested" });
		await waitUntil(() => done([sleepId]), "the sleep to be cancelled", 60_000).catch(withLog);
		const [echo, fail, output, sleep] = [await command(echoId), await command(failId), await command(outputId), await command(sleepId)];

		expect(echo).toMatchObject({ status: "completed", result: big, error: null, errorCode: null });
		expect(echo.acknowledgedAt).not.toBeNull();
		expect(fail).toMatchObject({ status: "failed", result: null, error: "disk full", errorCode: null });
		expect(output).toMatchObject({ status: "completed", result: { lines: 3 }, error: null });
		// errorCode null: the agent confirmed the cancel (unanswered, it would be cancel_unconfirmed).
		expect(sleep).toMatchObject({ status: "cancelled", errorCode: null });
		expect(sleep.acknowledgedAt).not.toBeNull();

		// Output is written beside the result; poll rather than assume it landed first.
		const expected = { id: outputId, status: "completed", output: "line one\nline two\nünïcode ✓\n", truncated: false };
		let stored: Json = {};
		await waitUntil(
			async () => {
				stored = (await (await api(`/v1/commands/${outputId}/output`)).json()) as Json;
				return stored.output === expected.output;
			},
			"the streamed output to be stored",
			30_000,
		).catch((e: Error) => {
			throw new Error(`${e.message}; last read: ${JSON.stringify(stored)}`);
		});
		expect(stored).toEqual(expected);

		// --exit-after 4: closes with 1000 once the fourth result is sent.
		expect(await agent.exited, agent.log()).toBe(0);
		expect(agent.log()).not.toContain("server refused a frame");
		await waitUntil(async () => !(await online(agentId)), `${agentId} to be offline`, 30_000);
	});

	it("closes its socket and exits 0 on SIGTERM", async () => {
		const agentId = `py-term-${Date.now()}`;
		const agent = await startPythonAgent(agentId);
		agent.child.kill("SIGTERM");
		expect(await agent.exited, agent.log()).toBe(0);
		expect(agent.log()).toContain("closed");
		await waitUntil(async () => !(await online(agentId)), `${agentId} to be offline`, 30_000);
	});
});
