/**
 * `npm run dev` without wrangler's tracing tax (issue 14): by default the
 * launcher starts wrangler with local observability off, no debug log file
 * and no DevTools session on the runtime, the worker's logs still reach the
 * terminal as JSON lines, and SWITCHYARD_LOCAL_OBSERVABILITY=1 and
 * SWITCHYARD_DEVTOOLS=1 turn tracing and the session back on. What is checked is
 * what a user can see: the log folder, the terminal, the environment the
 * wrangler process runs with. No timing.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { type LocalStack, startLocalStack } from "../helpers/node/local-stack.ts";
import { descendants } from "../helpers/node/processes.ts";

let stack: LocalStack | undefined;
let logDir = "";

afterEach(async () => {
	await stack?.stop();
	stack = undefined;
	if (logDir) rmSync(logDir, { recursive: true, force: true });
});

/** The environment of the `wrangler dev` process under the launcher. */
function wranglerEnvironment(s: LocalStack): Map<string, string> {
	const pid = descendants(s.launcher.pid ?? -1).find((p) => {
		try {
			return readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0").some((arg) => arg.endsWith("wrangler.js"));
		} catch {
			return false;
		}
	});
	if (pid === undefined) throw new Error("no wrangler process under the launcher");
	const env = new Map<string, string>();
	for (const kv of readFileSync(`/proc/${pid}/environ`, "utf8").split("\0")) {
		const i = kv.indexOf("=");
		if (i > 0) env.set(kv.slice(0, i), kv.slice(i + 1));
	}
	return env;
}

/** Connects one agent, so the worker logs `agent.connected`. */
async function connectAgent(s: LocalStack, agentId: string): Promise<void> {
	const res = await fetch(`${s.base}/v1/agents/${agentId}/token`, { method: "POST", headers: { authorization: `Bearer ${s.apiKey}` } });
	const { token } = (await res.json()) as { token: string };
	const ws = new WebSocket(`${s.base.replace("http", "ws")}/v1/agents/${agentId}/connect`, {
		headers: { authorization: `Bearer ${token}` },
		perMessageDeflate: false,
	});
	await new Promise<void>((resolve, reject) => {
		ws.on("message", (d) => {
			if ((JSON.parse(String(d)) as { type: string }).type === "welcome") resolve();
		});
		ws.on("error", reject);
	});
	ws.close();
}

function jsonLines(out: string): Record<string, unknown>[] {
	return out.split("\n").flatMap((line) => {
		const i = line.indexOf("{");
		if (i < 0) return [];
		try {
			return [JSON.parse(line.slice(i)) as Record<string, unknown>];
		} catch {
			return [];
		}
	});
}

describe("npm run dev and wrangler's local observability", () => {
	it("runs wrangler without tracing or a log file, and still prints JSON log lines", async () => {
		logDir = mkdtempSync(join(tmpdir(), "switchyard-wrangler-logs-"));
		stack = await startLocalStack({
			WRANGLER_LOG_PATH: logDir,
			SWITCHYARD_LOCAL_OBSERVABILITY: "",
			WRANGLER_WRITE_LOGS: "",
			SWITCHYARD_DEVTOOLS: "",
			VSCODE_INSPECTOR_OPTIONS: "",
		});
		const s = stack;
		expect(s.output()).toContain("wrangler local observability: off");
		expect(s.output()).toContain("wrangler DevTools session: off");
		const env = wranglerEnvironment(s);
		expect(env.get("X_LOCAL_OBSERVABILITY")).toBe("false");
		expect(env.get("WRANGLER_WRITE_LOGS")).toBe("false");
		// wrangler's only way to leave its DevTools session off the runtime.
		expect(env.get("VSCODE_INSPECTOR_OPTIONS")).toBeTruthy();

		const agentId = `obs-${Date.now()}`;
		await connectAgent(s, agentId);
		const deadline = Date.now() + 10_000;
		while (!jsonLines(s.output()).some((l) => l.event === "agent.connected" && l.agentId === agentId) && Date.now() < deadline) {
			await new Promise((r) => setTimeout(r, 100));
		}
		expect(jsonLines(s.output())).toContainEqual(expect.objectContaining({ level: "info", event: "agent.connected", agentId }));
		// wrangler would have written wrangler-<date>.log here by now.
		expect(readdirSync(logDir)).toEqual([]);
	});

	it("turns tracing and the DevTools session back on with SWITCHYARD_LOCAL_OBSERVABILITY=1 and SWITCHYARD_DEVTOOLS=1", async () => {
		logDir = mkdtempSync(join(tmpdir(), "switchyard-wrangler-logs-"));
		stack = await startLocalStack({
			WRANGLER_LOG_PATH: logDir,
			SWITCHYARD_LOCAL_OBSERVABILITY: "1",
			WRANGLER_WRITE_LOGS: "",
			SWITCHYARD_DEVTOOLS: "1",
			VSCODE_INSPECTOR_OPTIONS: "",
		});
		expect(stack.output()).toContain("wrangler local observability: on");
		expect(stack.output()).toContain("wrangler DevTools session: on");
		const env = wranglerEnvironment(stack);
		expect(env.get("X_LOCAL_OBSERVABILITY")).toBe("true");
		expect(env.get("VSCODE_INSPECTOR_OPTIONS") ?? "").toBe("");
	});
});
