/**
 * PgBouncer in front of the machine's PostgreSQL, as Neon's pooled endpoint
 * sits in front of Neon's. The worker opens one connection per request and
 * per Durable Object event; without a pooler the shared server's
 * max_connections (100) is exhausted at a few dozen requests per second and
 * the API answers 503 (see docs/performance.md). Transaction pooling, the
 * mode of Neon's pooled endpoint: a client holds a server connection only
 * while a statement or transaction runs, and otherwise waits for one instead
 * of being refused.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, tcpOpen, track, waitUntil } from "./procs.ts";

export const POOL_SIZE = 40;

export interface Bouncer {
	port: number;
	/** The pgbouncer process, for its CPU time. */
	pid: number | undefined;
	url: string;
	/**
	 * Times PgBouncer exited on its own, each with the last FATAL line of its
	 * log. It is started again a second later, as systemd's Restart= would.
	 */
	crashes: { at: number; fatal: string }[];
	/** Kills PgBouncer with SIGKILL (no shutdown) and starts it again on the same port and config. */
	restart(downMs?: number): Promise<void>;
	stop(): Promise<void>;
}

/** Installs Debian's pgbouncer when it is missing and this may (root, apt-get), as .ci/run does for PostgreSQL. */
function ensureInstalled(): void {
	if (!spawnSync("pgbouncer", ["--version"]).error) return;
	const canApt = process.getuid?.() === 0 && !spawnSync("apt-get", ["--version"]).error;
	if (canApt) {
		process.stdout.write("[bench] pgbouncer is not installed: installing Debian's package\n");
		const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
		spawnSync("apt-get", ["update", "-qq"], { stdio: "inherit", env });
		spawnSync("apt-get", ["install", "-y", "-qq", "pgbouncer"], { stdio: "inherit", env });
		// The package starts its own service on 6432; the harness runs its own on a free port.
		spawnSync("sh", ["-c", "service pgbouncer stop >/dev/null 2>&1 || pkill -x pgbouncer || true"]);
	}
	if (spawnSync("pgbouncer", ["--version"]).error) {
		throw new Error("pgbouncer is not on the PATH: install it (Debian: apt-get install pgbouncer) to bench real PostgreSQL");
	}
}

/** `pgPort`: the PostgreSQL it pools (the machine's on 5432 unless told). */
export async function startPgBouncer(database: string, pgPort = 5432): Promise<Bouncer> {
	ensureInstalled();
	const dir = mkdtempSync(join(tmpdir(), "switchyard-bench-pgbouncer-"));
	// Readable and writable by the postgres user PgBouncer drops to (its log file).
	chmodSync(dir, 0o777);
	const port = await freePort();
	writeFileSync(join(dir, "users.txt"), '"postgres" ""\n');
	writeFileSync(
		join(dir, "pgbouncer.ini"),
		[
			"[databases]",
			`${database} = host=127.0.0.1 port=${pgPort} dbname=${database}`,
			"[pgbouncer]",
			"listen_addr = 127.0.0.1",
			`listen_port = ${port}`,
			"unix_socket_dir =",
			"auth_type = trust",
			`auth_file = ${join(dir, "users.txt")}`,
			"pool_mode = transaction",
			"max_client_conn = 20000",
			`default_pool_size = ${POOL_SIZE}`,
			"ignore_startup_parameters = extra_float_digits,options",
			`logfile = ${join(dir, "pgbouncer.log")}`,
			"",
		].join("\n"),
	);
	// PgBouncer refuses to run as root; -u drops to the postgres user.
	const launch = async () => {
		const c: ChildProcess = track(spawn("pgbouncer", ...[process.getuid?.() === 0 ? ["-u", "postgres", join(dir, "pgbouncer.ini")] : [join(dir, "pgbouncer.ini")]], {
			stdio: "ignore",
		}));
		await waitUntil(() => tcpOpen(port), "pgbouncer", 20_000);
		return c;
	};
	const exited = (c: ChildProcess) => (c.exitCode !== null || c.signalCode !== null ? Promise.resolve() : new Promise<void>((r) => c.once("exit", () => r())));
	const logFile = join(dir, "pgbouncer.log");
	const lastFatal = () => (existsSync(logFile) ? (readFileSync(logFile, "utf8").split("\n").findLast((l) => l.includes("FATAL")) ?? "") : "");
	let stopping = false;
	let restarting = false;
	let child: ChildProcess;
	// A crash restarts it, so a scenario measures Switchyard's recovery rather than
	// a dead pooler, and is recorded: the chaos run fails on one.
	const supervise = (c: ChildProcess) =>
		c.once("exit", () => {
			if (stopping || restarting || c !== child) return;
			bouncer.crashes.push({ at: Date.now(), fatal: lastFatal() });
			setTimeout(() => {
				if (stopping || restarting || c !== child) return;
				launch().then(
					(next) => {
						child = next;
						bouncer.pid = next.pid;
						supervise(next);
					},
					(err: unknown) => bouncer.crashes.push({ at: Date.now(), fatal: `not started again: ${String(err)}` }),
				);
			}, 1_000);
		});
	child = await launch();
	supervise(child);
	const bouncer: Bouncer = {
		port,
		pid: child.pid,
		url: `postgres://postgres@127.0.0.1:${port}/${database}`,
		crashes: [],
		restart: async (downMs = 0) => {
			restarting = true;
			child.kill("SIGKILL");
			await exited(child);
			if (downMs) await new Promise((r) => setTimeout(r, downMs));
			child = await launch();
			restarting = false;
			supervise(child);
			bouncer.pid = child.pid;
		},
		stop: async () => {
			stopping = true;
			child.kill("SIGINT");
			await new Promise((r) => setTimeout(r, 300));
			if (child.exitCode === null) child.kill("SIGKILL");
			rmSync(dir, { recursive: true, force: true });
		},
	};
	return bouncer;
}
