/**
 * The README's quick start, as a user runs it: the launcher starts embedded
 * Postgres, the relay and wrangler dev; an agent written only from
 * docs/protocol.md (raw `ws`, no SDK) receives, acks and completes a command;
 * SIGTERM stops every process, workerd included.
 */
import type { ChildProcess } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { type LocalStack, startLocalStack } from "../helpers/node/local-stack.ts";
import { alive, descendants } from "../helpers/node/processes.ts";

let stack: LocalStack;
let launcher: ChildProcess;
let base = "";
let apiKey = "";

async function api(path: string, init: RequestInit = {}): Promise<Response> {
	return fetch(`${base}${path}`, {
		...init,
		headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json", ...init.headers },
	});
}

beforeAll(async () => {
	stack = await startLocalStack();
	({ base, apiKey, launcher } = stack);
});

afterAll(async () => {
	if (launcher.exitCode === null) launcher.kill("SIGKILL");
	await stack.stop();
});

describe("local stack (npm run dev)", () => {
	it("prints a working API key and enqueue line", () => {
		expect(base).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
		expect(apiKey).toMatch(/\S{16,}/);
		expect(stack.output()).toContain(`curl -s -X POST ${base}/v1/agents/demo/commands`);
	});

	it("runs the whole loop for an agent written from the protocol document alone", async () => {
		const agentId = `e2e-${Date.now()}`;
		const queued = await (await api(`/v1/agents/${agentId}/commands`, { method: "POST", body: JSON.stringify({ action: "echo", payload: { text: "queued" }, priority: 1 }) })).json();
		const tokenRes = await api(`/v1/agents/${agentId}/token`, { method: "POST" });
		expect(tokenRes.status).toBe(201);
		const { token } = (await tokenRes.json()) as { token: string };

		const ws = new WebSocket(`${base.replace("http", "ws")}/v1/agents/${agentId}/connect`, {
			headers: { authorization: `Bearer ${token}` },
			perMessageDeflate: false,
		});
		const frames: Record<string, unknown>[] = [];
		ws.on("message", (data) => {
			const frame = JSON.parse(String(data)) as Record<string, unknown>;
			frames.push(frame);
			if (frame.type === "command") {
				ws.send(JSON.stringify({ type: "ack", id: frame.id }));
				ws.send(JSON.stringify({ type: "result", id: frame.id, status: "completed", result: { echoed: frame.payload } }));
			}
		});
		await new Promise<void>((resolve, reject) => {
			ws.once("open", () => resolve());
			ws.once("error", reject);
		});
		const live = (await (await api(`/v1/agents/${agentId}/commands`, { method: "POST", body: JSON.stringify({ action: "echo", payload: { text: "live" }, priority: 9 }) })).json()) as { id: string };

		for (const id of [(queued as { id: string }).id, live.id]) {
			const deadline = Date.now() + 15_000;
			let cmd: Record<string, unknown> = {};
			while (Date.now() < deadline) {
				cmd = (await (await api(`/v1/commands/${id}`)).json()) as Record<string, unknown>;
				if (cmd.status === "completed") break;
				await new Promise((r) => setTimeout(r, 100));
			}
			expect(cmd.status).toBe("completed");
			expect(cmd.acknowledgedAt).not.toBeNull();
		}
		expect(frames[0]).toMatchObject({ type: "welcome", protocol: 1, agentId });
		ws.send('{"type":"ping"}');
		await new Promise((r) => setTimeout(r, 200));
		expect(frames.some((f) => f.type === "pong")).toBe(true);
		ws.close();
	});

	it("SIGTERM to `npm run dev` stops every process it started, workerd included", async () => {
		const tree = descendants(launcher.pid ?? -1);
		expect(tree.length).toBeGreaterThan(0);
		const exited = new Promise<number | null>((r) => launcher.once("exit", (code) => r(code)));
		launcher.kill("SIGTERM");
		expect(await exited).toBe(0);
		const deadline = Date.now() + 10_000;
		while (tree.some(alive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
		expect(tree.filter(alive)).toEqual([]);
		expect(stack.output()).toContain("[switchyard] stopped");
	});
});
