/** Starts `npm run dev` on a free port and a private state folder. */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "./processes.ts";

export interface LocalStack {
	base: string;
	apiKey: string;
	launcher: ChildProcess;
	output(): string;
	stop(): Promise<void>;
}

/** `env` adds to the launcher's environment, after the test's own (e.g. `SWITCHYARD_VAR_READ_API_KEYS`). */
export async function startLocalStack(env: Record<string, string> = {}): Promise<LocalStack> {
	const stateDir = mkdtempSync(join(tmpdir(), "switchyard-e2e-"));
	const port = await freePort();
	// `npm run dev` itself, as the README has users run it: a signal to npm
	// must reach the launcher (a shell or tsx's CLI in between once swallowed
	// SIGTERM and left wrangler and workerd running).
	const launcher = spawn("npm", ["run", "--silent", "dev"], {
		env: { ...process.env, PORT: String(port), SWITCHYARD_STATE_DIR: stateDir, DATABASE_URL: "", ...env },
		stdio: ["ignore", "pipe", "pipe"],
	});
	let out = "";
	launcher.stdout?.on("data", (d: Buffer) => {
		out += d.toString();
	});
	launcher.stderr?.on("data", (d: Buffer) => {
		out += d.toString();
	});
	const deadline = Date.now() + 150_000;
	while (!/\[switchyard\] ready at (\S+)/.test(out)) {
		if (Date.now() > deadline || launcher.exitCode !== null) throw new Error(`launcher did not start:\n${out}`);
		await new Promise((r) => setTimeout(r, 200));
	}
	return {
		base: /\[switchyard\] ready at (\S+)/.exec(out)?.[1] ?? "",
		apiKey: /\[switchyard\] API key: (\S+)/.exec(out)?.[1] ?? "",
		launcher,
		output: () => out,
		stop: async () => {
			if (launcher.exitCode === null) {
				const exited = new Promise((r) => launcher.once("exit", r));
				launcher.kill("SIGTERM");
				await exited;
			}
			rmSync(stateDir, { recursive: true, force: true });
		},
	};
}
