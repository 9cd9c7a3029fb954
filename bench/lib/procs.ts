/** Processes the harness starts: wrangler dev in its own group, with a raised file limit. */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { appendFileSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { createConnection } from "node:net";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { devtoolsOn, wranglerEnv } from "../../src/dev/wrangler-env.ts";
import { descendants, killGroup } from "../../test/helpers/node/processes.ts";

export { freePort, killGroup, waitHealthy, waitUntil } from "../../test/helpers/node/processes.ts";

/** Every process group the harness started, so an abort can stop them all (and only them). */
const started = new Set<ChildProcess>();

/** Agent sockets need one descriptor each; the soft limit is raised up to the hard one. */
export const NOFILE = 65_536;

export interface Wrangler {
	child: ChildProcess;
	output(): string;
	stop(graceMs?: number): Promise<void>;
}

/**
 * `wrangler dev` as the launcher runs it (own process group, the launcher's
 * environment: local observability off unless SWITCHYARD_LOCAL_OBSERVABILITY=1),
 * for a config and vars.
 */
export function startWrangler(opts: { port: number; persistTo: string; config?: string; vars: Record<string, string> }): Wrangler {
	const bin = join(dirname(createRequire(import.meta.url).resolve("wrangler/package.json")), "bin", "wrangler.js");
	const args = [bin, "dev", "--ip", "127.0.0.1", "--port", String(opts.port), "--persist-to", opts.persistTo];
	if (opts.config) args.push("--config", opts.config);
	args.push("--show-interactive-dev-session=false");
	for (const [k, v] of Object.entries(opts.vars)) args.push("--var", `${k}:${v}`);
	// `ulimit` in a shell that then becomes node: workerd inherits the limit.
	const child = spawn("sh", ["-c", `ulimit -n ${NOFILE} 2>/dev/null || ulimit -n $(ulimit -Hn); exec "$@"`, "sh", process.execPath, ...args], {
		env: wranglerEnv(process.env),
		stdio: ["ignore", "pipe", "pipe"],
		detached: true,
	});
	started.add(child);
	let out = "";
	// BENCH_WRANGLER_LOG=<file> keeps the whole log (every restart appended) for diagnosis.
	const logFile = process.env.BENCH_WRANGLER_LOG;
	const keep = (d: Buffer) => {
		out = (out + d.toString()).slice(-200_000);
		if (logFile) appendFileSync(logFile, d);
	};
	child.stdout?.on("data", keep);
	child.stderr?.on("data", keep);
	return { child, output: () => out, stop: (graceMs?: number) => stopGroup(child, graceMs) };
}

/**
 * SIGTERM to the group, SIGKILL after a grace: the node shim does not pass
 * SIGTERM on (NOTES.md). A grace of 0 is a crash: SIGKILL alone, so nothing
 * gets to shut down cleanly.
 */
export async function stopGroup(child: ChildProcess, graceMs = 3_000): Promise<void> {
	if (child.exitCode === null && child.signalCode === null) {
		const exited = new Promise<void>((r) => child.once("exit", () => r()));
		killGroup(child, graceMs === 0 ? "SIGKILL" : "SIGTERM");
		const timer = setTimeout(() => killGroup(child, "SIGKILL"), graceMs);
		await exited;
		clearTimeout(timer);
	}
	// wrangler can exit before its workerd child does.
	killGroup(child, "SIGKILL");
	started.delete(child);
}

/** Servers started without their own group (pgbouncer, redis-server): stopped by pid on an abort. */
const plain = new Set<ChildProcess>();

export function track(child: ChildProcess): ChildProcess {
	plain.add(child);
	child.once("exit", () => plain.delete(child));
	return child;
}

export function stopAllGroups(): void {
	for (const child of started) killGroup(child, "SIGKILL");
	started.clear();
	for (const child of plain) child.kill("SIGKILL");
	plain.clear();
}

/**
 * Runs a harness's `main` (bench, chaos) and exits: every process group it
 * started is stopped on exit, on SIGINT or SIGTERM, and on a failure, so no
 * workerd outlives it.
 */
export function runHarness(tag: string, main: () => Promise<void>): void {
	for (const sig of ["SIGINT", "SIGTERM"] as const) {
		process.on(sig, () => {
			stopAllGroups();
			process.exit(130);
		});
	}
	process.on("exit", stopAllGroups);
	main().then(
		() => process.exit(),
		(err: unknown) => {
			process.stderr.write(`[${tag}] failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
			stopAllGroups();
			process.exit(1);
		},
	);
}

/** The workerd processes under `root`. */
export function workerdPids(root: number): number[] {
	return descendants(root).filter((pid) => {
		try {
			return readFileSync(`/proc/${pid}/comm`, "utf8").trim() === "workerd";
		} catch {
			return false;
		}
	});
}

function statusField(pid: number, field: string): number {
	try {
		const m = new RegExp(`^${field}:\\s+(\\d+)`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
		return Number(m?.[1] ?? 0);
	} catch {
		return 0;
	}
}

/** Resident memory of the workerd processes under `root`, in bytes (VmRSS). */
export function workerdRss(root: number): number {
	return workerdPids(root).reduce((sum, pid) => sum + statusField(pid, "VmRSS") * 1024, 0);
}

/**
 * Open file descriptors of the busiest workerd process under `root`, and its
 * limit. workerd holds two descriptors for each TCP connection (both seen in
 * /proc for one socket inode), and wrangler dev's proxy in front of the
 * runtime holds two connections per agent, so this, not memory, is what caps
 * the agents a local stack can hold on a machine whose hard limit cannot be
 * raised.
 */
export function workerdOpenFiles(root: number): { open: number; limit: number | undefined } {
	let open = 0;
	for (const pid of workerdPids(root)) {
		try {
			open = Math.max(open, readdirSync(`/proc/${pid}/fd`).length);
		} catch {
			// exited meanwhile
		}
	}
	return { open, limit: workerdNofile(root) };
}

/** TCP ports a process listens on: its socket descriptors matched against the listening sockets in /proc. */
export function listeningPorts(pid: number): number[] {
	const inodes = new Set<string>();
	for (const fd of readdirSync(`/proc/${pid}/fd`)) {
		try {
			const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
			if (m?.[1]) inodes.add(m[1]);
		} catch {
			// closed meanwhile
		}
	}
	const ports = new Set<number>();
	for (const table of ["tcp", "tcp6"]) {
		let text = "";
		try {
			text = readFileSync(`/proc/${pid}/net/${table}`, "utf8");
		} catch {
			continue;
		}
		for (const line of text.split("\n").slice(1)) {
			const f = line.trim().split(/\s+/);
			// st 0A is LISTEN; local_address is HEX_IP:HEX_PORT
			if (f[3] === "0A" && f[9] && inodes.has(f[9])) ports.add(Number.parseInt(f[1]?.split(":")[1] ?? "", 16));
		}
	}
	return [...ports];
}

/**
 * The workerd runtime's own WebSocket address under wrangler dev (`ws://127.0.0.1:N`),
 * behind the dev proxy that listens on the public port. wrangler gives the
 * runtime a random port at every start, so it is found, not configured: a
 * listener of the workerd process that does not hold `publicPort` (the
 * proxy's) and answers /healthz.
 */
export async function runtimeWsBase(root: number, publicPort: number, timeoutMs = 60_000): Promise<string> {
	const deadline = Date.now() + timeoutMs;
	while (Date.now() < deadline) {
		for (const pid of workerdPids(root)) {
			let ports: number[] = [];
			try {
				ports = listeningPorts(pid);
			} catch {
				continue;
			}
			if (ports.includes(publicPort)) continue;
			for (const port of ports) {
				try {
					const res = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(5_000) });
					const body = (await res.json()) as { ok?: unknown };
					if (typeof body.ok === "boolean") return `ws://127.0.0.1:${port}`;
				} catch {
					// the inspector, the loopback service, or not up yet
				}
			}
		}
		await new Promise((r) => setTimeout(r, 200));
	}
	throw new Error(`no workerd runtime answered /healthz within ${timeoutMs} ms`);
}

/** The open-file limit workerd actually runs with. */
export function workerdNofile(root: number): number | undefined {
	const pid = workerdPids(root)[0];
	if (pid === undefined) return undefined;
	const m = /^Max open files\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/limits`, "utf8"));
	return m?.[1] ? Number(m[1]) : undefined;
}

/** The wrangler settings every stack in a run gets (see startWrangler), for the results file. */
export function wranglerSettings(): Record<string, string | undefined> {
	const env = wranglerEnv(process.env);
	return {
		X_LOCAL_OBSERVABILITY: env.X_LOCAL_OBSERVABILITY,
		WRANGLER_WRITE_LOGS: env.WRANGLER_WRITE_LOGS,
		WRANGLER_LOG: env.WRANGLER_LOG ?? "log (default)",
		devtoolsSession: devtoolsOn(env) ? "on (console.log relayed to wrangler)" : "off (SWITCHYARD_DEVTOOLS unset)",
	};
}

export function loadAverage(): number[] {
	return readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).map(Number);
}

/** A command's first line of output, or undefined when it is not installed. */
export function versionOf(cmd: string, args: string[]): string | undefined {
	try {
		return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 20_000 }).trim().split("\n")[0];
	} catch {
		return undefined;
	}
}

/** Whether something accepts TCP connections on 127.0.0.1:`port`. */
export function tcpOpen(port: number): Promise<boolean> {
	return new Promise<boolean>((resolve) => {
		const s = createConnection(port, "127.0.0.1", () => {
			s.end();
			resolve(true);
		}).on("error", () => resolve(false));
	});
}
