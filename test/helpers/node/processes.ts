/** Process and port helpers for the Node end-to-end tests. */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import net from "node:net";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

export async function freePort(): Promise<number> {
	const srv = net.createServer();
	await new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r()));
	const port = (srv.address() as net.AddressInfo).port;
	await new Promise<void>((r) => srv.close(() => r()));
	return port;
}

/** Every pid below `root`, read from /proc. */
export function descendants(root: number): number[] {
	const children = new Map<number, number[]>();
	for (const entry of readdirSync("/proc")) {
		if (!/^\d+$/.test(entry)) continue;
		try {
			const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
			const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
			children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)]);
		} catch {
			// ended while we looked
		}
	}
	const out: number[] = [];
	const walk = (p: number) => {
		for (const c of children.get(p) ?? []) {
			out.push(c);
			walk(c);
		}
	};
	walk(root);
	return out;
}

export function alive(pid: number): boolean {
	try {
		process.kill(pid, 0);
		return true;
	} catch {
		return false;
	}
}

export async function waitUntil(check: () => boolean | Promise<boolean>, what: string, timeoutMs: number): Promise<void> {
	const deadline = Date.now() + timeoutMs;
	while (!(await check())) {
		if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
		await new Promise((r) => setTimeout(r, 100));
	}
}

/** `wrangler dev` in its own process group, so a kill reaches workerd too. */
export function startWranglerDev(opts: { port: number; persistTo: string; vars: Record<string, string> }): {
	child: ChildProcess;
	output: () => string;
} {
	const bin = join(dirname(createRequire(import.meta.url).resolve("wrangler/package.json")), "bin", "wrangler.js");
	const args = [bin, "dev", "--ip", "127.0.0.1", "--port", String(opts.port), "--persist-to", opts.persistTo];
	args.push("--show-interactive-dev-session=false");
	for (const [k, v] of Object.entries(opts.vars)) args.push("--var", `${k}:${v}`);
	const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"], detached: true });
	let out = "";
	child.stdout?.on("data", (d: Buffer) => {
		out += d.toString();
	});
	child.stderr?.on("data", (d: Buffer) => {
		out += d.toString();
	});
	return { child, output: () => out };
}

export function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
	if (child.pid === undefined) return;
	try {
		process.kill(-child.pid, signal);
	} catch {
		// already gone
	}
}

/** Until the worker answers and reaches Postgres (`/readyz`). */
export async function waitHealthy(base: string, timeoutMs = 90_000): Promise<void> {
	await waitUntil(
		async () => {
			try {
				return (await fetch(`${base}/readyz`)).ok;
			} catch {
				return false;
			}
		},
		`${base}/readyz`,
		timeoutMs,
	);
}
