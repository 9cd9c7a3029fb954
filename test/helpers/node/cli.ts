import { spawn } from "node:child_process";

export interface CliRun {
	code: number;
	stdout: string;
	stderr: string;
}

/** Runs the CLI as a user would, against a stack at `base` with `apiKey` in the environment. */
export function runCli(target: { base: string; apiKey: string }, args: string[]): Promise<CliRun> {
	return new Promise((resolve) => {
		const child = spawn(process.execPath, ["bin/switchyard.mjs", ...args], {
			env: { ...process.env, SWITCHYARD_URL: target.base, SWITCHYARD_API_KEY: target.apiKey },
		});
		let stdout = "";
		let stderr = "";
		child.stdout.on("data", (d: Buffer) => {
			stdout += d.toString();
		});
		child.stderr.on("data", (d: Buffer) => {
			stderr += d.toString();
		});
		child.on("close", (code) => resolve({ code: code ?? -1, stdout, stderr }));
	});
}
