/**
 * `switchyard agent run <id>`: an agent with built-in actions, so a new user
 * sees the whole loop in two terminals. `exec` runs shell commands and only
 * exists with --allow-exec.
 */
import { spawn } from "node:child_process";
import { Agent } from "../sdk/agent.ts";
import type { SwitchyardClient } from "../sdk/client.ts";

export interface DemoAgentOptions {
	client: SwitchyardClient;
	url: string;
	agentId: string;
	concurrency: number;
	allowExec: boolean;
	log: (line: string) => void;
}

function object(payload: unknown): Record<string, unknown> {
	return typeof payload === "object" && payload !== null && !Array.isArray(payload)
		? (payload as Record<string, unknown>)
		: {};
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
	return new Promise((resolve, reject) => {
		if (signal.aborted) return reject(signal.reason);
		const t = setTimeout(resolve, ms);
		signal.addEventListener("abort", () => {
			clearTimeout(t);
			reject(signal.reason);
		});
	});
}

export function demoAgent(opts: DemoAgentOptions): Agent {
	const agent = new Agent({
		url: opts.url,
		agentId: opts.agentId,
		// A fresh token for every connection attempt, minted with the operator key.
		token: async () => (await opts.client.token(opts.agentId, 3600)).token,
		concurrency: opts.concurrency,
	});
	agent.handle("echo", (payload) => payload);
	agent.handle("sleep", async (payload, ctx) => {
		const seconds = Number(object(payload).seconds ?? 1);
		if (!Number.isFinite(seconds) || seconds < 0 || seconds > 3600) throw new Error("sleep: seconds must be 0-3600");
		await sleep(seconds * 1000, ctx.signal);
		return { slept: seconds };
	});
	// Streams numbered lines in ANSI colours: output to watch in the console's terminal view.
	agent.handle("lines", async (payload, ctx) => {
		const count = Number(object(payload).count ?? 20);
		const delayMs = Number(object(payload).delayMs ?? 100);
		if (!Number.isInteger(count) || count < 1 || count > 100_000) throw new Error("lines: count must be 1-100000");
		if (!Number.isFinite(delayMs) || delayMs < 0 || delayMs > 10_000) throw new Error("lines: delayMs must be 0-10000");
		for (let i = 1; i <= count; i++) {
			ctx.output(`\x1b[3${(i % 6) + 1}mline ${i}\x1b[0m of ${count}\n`);
			if (delayMs > 0) await sleep(delayMs, ctx.signal);
			else if (ctx.signal.aborted) throw ctx.signal.reason;
		}
		return { lines: count };
	});
	agent.handle("fail", (payload) => {
		throw new Error(String(object(payload).message ?? "failed on purpose"));
	});
	if (opts.allowExec) {
		agent.handle("exec", (payload, ctx) => {
			const command = object(payload).command;
			if (typeof command !== "string" || command.length === 0) throw new Error('exec: payload needs {"command": "..."}');
			return new Promise((resolve, reject) => {
				const child = spawn("sh", ["-c", command], { stdio: ["ignore", "pipe", "pipe"] });
				let tail = "";
				const take = (d: Buffer) => {
					const text = d.toString();
					ctx.output(text);
					tail = (tail + text).slice(-4096);
				};
				child.stdout.on("data", take);
				child.stderr.on("data", take);
				ctx.signal.addEventListener("abort", () => child.kill("SIGTERM"));
				child.on("error", reject);
				child.on("close", (code, signal) => {
					if (ctx.signal.aborted) reject(new Error(`exec: stopped (${signal ?? code})`));
					else if (code === 0) resolve({ exitCode: 0, output: tail });
					else reject(new Error(`exec: exit code ${code ?? signal}: ${tail.slice(-500)}`));
				});
			});
		});
	}
	agent.on("connecting", (e) => opts.log(`connecting to ${opts.url} (attempt ${e.attempt})`));
	agent.on("open", (e) => opts.log(`connected as ${opts.agentId} (connection ${e.generation})`));
	agent.on("reconnecting", (e) => opts.log(`reconnecting in ${(e.delayMs / 1000).toFixed(1)} s`));
	agent.on("command", (e) => opts.log(`running ${e.action} ${e.id}${e.attempt > 1 ? ` (attempt ${e.attempt})` : ""}`));
	agent.on("result", (e) => opts.log(`${e.status} ${e.id}`));
	agent.on("stopped", (e) => opts.log(`stopped: ${e.reason}`));
	agent.on("error", (e) => opts.log(`error: ${e.error.message}`));
	return agent;
}
