/**
 * CPU time per process, from /proc/<pid>/stat (utime + stime), grouped by
 * the role each process plays in a stack: under wrangler dev, the workerd
 * runtime apart from wrangler's proxy (a second workerd process, the one
 * that listens on the public port) and from wrangler's Node process; for a
 * peer, its server and its broker. A figure divides the CPU seconds each
 * role spent over a run by the commands that run completed.
 */
import { readdirSync, readFileSync } from "node:fs";
import { descendants } from "../../test/helpers/node/processes.ts";
import { listeningPorts } from "./procs.ts";

/** Clock ticks per second of utime/stime: 100 on Linux (`getconf CLK_TCK`). */
const TICKS = 100;

/** Role → pids; a function, since pids change (a restart, a Postgres backend). */
export type Roles = () => Record<string, number[]>;

function comm(pid: number): string {
	try {
		return readFileSync(`/proc/${pid}/comm`, "utf8").trim();
	} catch {
		return "";
	}
}

/** utime + stime of one process, in seconds; undefined once it has exited. */
export function cpuSeconds(pid: number): number | undefined {
	try {
		const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
		// Fields after the ")" of comm: state is field 3, utime 14, stime 15.
		const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
		return (Number(f[11]) + Number(f[12])) / TICKS;
	} catch {
		return undefined;
	}
}

/**
 * The processes of a `wrangler dev` started by the harness (`root`, its
 * shell), by role: `runtime` (workerd serving the worker), `proxy`
 * (wrangler dev's proxy, the workerd on the public port), `wrangler`
 * (Node), anything else by its command name.
 */
export function wranglerRoles(root: () => number, publicPort: number): Roles {
	const proxyPid = new Map<number, boolean>();
	return () => {
		const out: Record<string, number[]> = {};
		const r = root();
		if (r < 0) return out;
		for (const pid of [r, ...descendants(r)]) {
			const name = comm(pid);
			let role: string;
			if (name === "workerd") {
				let isProxy = proxyPid.get(pid);
				if (isProxy === undefined) {
					try {
						isProxy = listeningPorts(pid).includes(publicPort);
						proxyPid.set(pid, isProxy);
					} catch {
						continue;
					}
				}
				role = isProxy ? "proxy (workerd)" : "runtime (workerd)";
			} else if (name === "sh") continue;
			else if (name === "node" || name === "MainThread") role = "wrangler (node)";
			else role = name;
			(out[role] ??= []).push(pid);
		}
		return out;
	};
}

/** Joins role maps; the same role in two maps adds its pids. */
export function joinRoles(...parts: Roles[]): Roles {
	return () => {
		const out: Record<string, number[]> = {};
		for (const p of parts) for (const [role, pids] of Object.entries(p())) (out[role] ??= []).push(...pids);
		return out;
	};
}

export function fixedRoles(roles: Record<string, (number | undefined)[]>): Roles {
	return () => Object.fromEntries(Object.entries(roles).map(([k, v]) => [k, v.filter((p): p is number => p !== undefined)]));
}

export interface CpuMeter {
	/** CPU seconds by role since the meter started. A process gone before the end counts up to its last reading. */
	stop(): Record<string, number>;
}

/**
 * Starts counting. Pids are re-read every second, so a process that starts
 * during the run (a Postgres backend) is counted from its first reading.
 */
export function startCpu(roles: Roles): CpuMeter {
	const first = new Map<number, number>();
	const last = new Map<number, { role: string; seconds: number }>();
	const read = (initial: boolean) => {
		for (const [role, pids] of Object.entries(roles())) {
			for (const pid of pids) {
				const s = cpuSeconds(pid);
				if (s === undefined) continue;
				if (!first.has(pid)) first.set(pid, initial ? s : 0);
				last.set(pid, { role, seconds: s });
			}
		}
	};
	read(true);
	const timer = setInterval(() => read(false), 1_000);
	return {
		stop() {
			clearInterval(timer);
			read(false);
			const out: Record<string, number> = {};
			for (const [pid, l] of last) out[l.role] = (out[l.role] ?? 0) + l.seconds - (first.get(pid) ?? 0);
			return out;
		},
	};
}

/** CPU milliseconds per command, by role, rounded to 0.01 ms. */
export function perCommandMs(seconds: Record<string, number>, commands: number): Record<string, number> {
	return Object.fromEntries(
		Object.entries(seconds)
			.sort(([, a], [, b]) => b - a)
			.map(([role, s]) => [role, commands > 0 ? Math.round((s / commands) * 100_000) / 100 : Number.NaN]),
	);
}

/** Anything with a `query` method, as `pg.Pool` and `pg.Client` have. */
interface Queryable {
	query<R extends Record<string, unknown>>(sql: string, params?: unknown[]): Promise<{ rows: R[] }>;
}

/**
 * The backends of one database on the machine's PostgreSQL (role
 * `postgres backends`), read every second from pg_stat_activity. The
 * harness's own connections set application_name `switchyard-bench` and
 * are left out.
 */
export function postgresBackends(db: Queryable, database: string): { roles: Roles; stop(): void } {
	let pids: number[] = [];
	const refresh = () =>
		db
			.query<{ pid: number }>("select pid from pg_stat_activity where datname = $1 and application_name <> 'switchyard-bench' and pid <> pg_backend_pid()", [database])
			.then((r) => {
				pids = r.rows.map((x) => Number(x.pid));
			})
			.catch(() => {});
	void refresh();
	const timer = setInterval(() => void refresh(), 1_000);
	return { roles: () => ({ "postgres backends": [...pids] }), stop: () => clearInterval(timer) };
}

/** Pids of processes named `name` (the machine's own servers, e.g. nats-server), for reading CPU only. */
export function pidsNamed(name: string): number[] {
	return readdirSync("/proc")
		.filter((e) => /^\d+$/.test(e))
		.map(Number)
		.filter((pid) => comm(pid) === name);
}
