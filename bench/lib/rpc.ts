/**
 * Load generators run in their own processes (so the harness never competes
 * with them for its event loop). Each child exposes a table of async methods;
 * the harness calls them over the IPC channel.
 */
import { type ChildProcess, fork, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

type Methods = Record<string, (arg: never) => Promise<unknown>>;

interface Request {
	id: number;
	method: string;
	arg: unknown;
}
type Reply = { id: number; ok: true; value: unknown } | { id: number; ok: false; error: string };

/** In the child: answer the harness's calls until it disconnects. */
export function serve(methods: Methods): void {
	process.on("message", (msg: Request) => {
		const fn = methods[msg.method];
		const reply = (r: Reply) => process.send?.(r);
		if (!fn) {
			reply({ id: msg.id, ok: false, error: `no method ${msg.method}` });
			return;
		}
		fn(msg.arg as never).then(
			(value) => reply({ id: msg.id, ok: true, value }),
			(err: unknown) => reply({ id: msg.id, ok: false, error: err instanceof Error ? (err.stack ?? err.message) : String(err) }),
		);
	});
	process.on("disconnect", () => process.exit(0));
}

export interface Child {
	proc: ChildProcess;
	call<T>(method: string, arg?: unknown): Promise<T>;
	stop(): void;
}

/**
 * Forks `module` (a .ts file under bench/) with tsx, so children run the same
 * TypeScript. `wrapper` runs it under another command that execs it, keeping
 * the IPC channel (e.g. `ip netns exec <ns>`: the chaos suite's partition).
 */
export function spawnChild(module: string, env: Record<string, string> = {}, wrapper: string[] = []): Child {
	const file = fileURLToPath(new URL(`../${module}`, import.meta.url));
	const options = { env: { ...process.env, ...env }, stdio: ["ignore", "inherit", "inherit", "ipc"] as ("ignore" | "inherit" | "ipc")[] };
	const [cmd, ...args] = wrapper;
	const proc = cmd
		? spawn(cmd, [...args, process.execPath, "--import", "tsx", file], options)
		: fork(file, [], { ...options, execArgv: ["--import", "tsx"] });
	let next = 1;
	const waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
	proc.on("message", (r: Reply) => {
		const w = waiting.get(r.id);
		if (!w) return;
		waiting.delete(r.id);
		if (r.ok) w.resolve(r.value);
		else w.reject(new Error(r.error));
	});
	proc.on("exit", (code, signal) => {
		for (const w of waiting.values()) w.reject(new Error(`${module} exited (${signal ?? code})`));
		waiting.clear();
	});
	return {
		proc,
		call: <T>(method: string, arg?: unknown) =>
			new Promise<T>((resolve, reject) => {
				const id = next++;
				waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
				proc.send({ id, method, arg } satisfies Request);
			}),
		stop: () => {
			if (proc.connected) proc.disconnect();
			setTimeout(() => proc.exitCode === null && proc.kill("SIGKILL"), 3000).unref();
		},
	};
}
