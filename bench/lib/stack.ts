/**
 * The real local stack, put together from the launcher's own parts
 * (src/dev: embedded Postgres, the relay, migrations, `wrangler dev` with the
 * same flags). The harness composes them itself rather than running the
 * launcher so that figure 4 can kill wrangler dev alone and bring it back on
 * the same port while Postgres stays up.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { buildConsole } from "../../src/dev/build-console.ts";
import { ensureDevVars, parseDevVars } from "../../src/dev/dev-vars.ts";
import { type EmbeddedPostgres, startEmbeddedPostgres } from "../../src/dev/embedded-postgres.ts";
import { runMigrations } from "../../src/dev/migrate.ts";
import { type Relay, startRelay } from "../../src/dev/relay.ts";
import { fixedRoles, joinRoles, postgresBackends, type Roles, wranglerRoles } from "./cpu.ts";
import { type FaultProxy, startFaultProxy } from "./fault-proxy.ts";
import { type Bouncer, POOL_SIZE, startPgBouncer } from "./pgbouncer.ts";
import { freePort, runtimeWsBase, startWrangler, waitHealthy, type Wrangler, workerdNofile, workerdOpenFiles, workerdRss, wranglerSettings } from "./procs.ts";

export type DbKind = "embedded" | "real";

/** Rate limits the security work adds; the benchmark measures the path, not the limiter. */
export const BENCH_VARS = { AGENT_FRAME_RATE_LIMIT: "0", ENQUEUE_RATE_LIMIT: "off" };

export const REAL_PG_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres";

/** Drops and creates a database on the machine's PostgreSQL (or the one on `port`); returns its URL. */
export async function freshDatabase(name: string, port = 5432): Promise<string> {
	const adminUrl = REAL_PG_ADMIN.replace(":5432/", `:${port}/`);
	const admin = new pg.Client({ connectionString: adminUrl });
	await admin.connect();
	try {
		await admin.query(`drop database if exists ${name} with (force)`);
		await admin.query(`create database ${name}`);
	} finally {
		await admin.end();
	}
	return adminUrl.replace(/\/postgres$/, `/${name}`);
}

export interface Stack {
	db: DbKind;
	base: string;
	wsBase: string;
	apiKey: string;
	secret: string;
	databaseUrl: string;
	/** Direct `pg` pool for verification queries (application_name `switchyard-bench`). */
	pg: pg.Pool;
	/** Processes by role, for CPU per command (lib/cpu.ts). */
	roles: Roles;
	/** What this stack ran with, for the results file. */
	settings: Record<string, unknown>;
	workerdRss(): number;
	workerdOpenFiles(): { open: number; limit: number | undefined };
	/**
	 * ws:// of the workerd runtime itself, behind wrangler dev's proxy (a new
	 * random port after every start). The proxy holds four descriptors per
	 * agent socket and the runtime two, so figures 3 and 4 connect here to
	 * reach twice the agents under one open-file limit; see docs/performance.md.
	 */
	runtimeWsBase(): Promise<string>;
	/** The tail of wrangler dev's output (logs), for diagnosing a broken figure. */
	output(): string;
	nofile(): number | undefined;
	/** Kills wrangler dev's process group (workerd included); `graceMs` 0 sends SIGKILL at once, a crash. */
	stopWrangler(graceMs?: number): Promise<void>;
	/** The relay drops every database connection and refuses new ones while down: a Postgres outage. */
	setDbDown(down: boolean): void;
	/** The fault-injecting proxy between the relay and PgBouncer, when asked for (`faultProxy`). */
	dbLink?: FaultProxy;
	/** PgBouncer (real PostgreSQL only), for a restart. */
	bouncer?: Bouncer;
	/** Starts wrangler dev again on the same port and state; resolves when healthy (within 120 s unless told). */
	startWrangler(healthyWithinMs?: number): Promise<void>;
	/**
	 * Restarts wrangler dev signing agent tokens with `current` and still
	 * accepting `previous` (when given), as a deploy with new secrets would;
	 * `secret` follows.
	 */
	setTokenSecrets(current: string, previous?: string): Promise<void>;
	stop(): Promise<void>;
}

export interface StackOptions {
	/** Port of the PostgreSQL to use (the machine's, 5432, unless told): the chaos suite runs its own cluster. */
	pgPort?: number;
	/** Puts a fault-injecting TCP proxy (lib/fault-proxy.ts) between the relay and PgBouncer. */
	faultProxy?: boolean;
}

/**
 * The filesystem a path is on (the longest mount point over it), because
 * the objects' SQLite commits with an fsync on the runtime's one thread
 * locally: on tmpfs (TMPDIR=/dev/shm) the same run goes faster, and its
 * results file must say so. docs/performance.md has the A/B.
 */
function filesystemOf(path: string): string {
	let best = { at: "", type: "unknown" };
	for (const line of readFileSync("/proc/mounts", "utf8").split("\n")) {
		const [, at, type] = line.split(" ");
		if (!at || !type) continue;
		const over = at === "/" || path === at || path.startsWith(`${at}/`);
		if (over && at.length > best.at.length) best = { at, type };
	}
	return best.type;
}

/** `database`: the real PostgreSQL database to recreate, so two harnesses on one server keep apart. */
export async function startSwitchyard(db: DbKind, database = "switchyard_bench", opts: StackOptions = {}): Promise<Stack> {
	const root = process.cwd();
	const stateDir = mkdtempSync(join(tmpdir(), `switchyard-bench-${db}-`));
	ensureDevVars(join(root, ".dev.vars"));
	const vars = parseDevVars(readFileSync(join(root, ".dev.vars"), "utf8"));
	const apiKey = (vars.get("API_KEYS") ?? "").split(",")[0]?.trim() ?? "";
	const secret = vars.get("AGENT_TOKEN_SECRET") ?? "";

	let embedded: EmbeddedPostgres | undefined;
	let bouncer: Bouncer | undefined;
	/** What the harness verifies against (direct); the worker may reach it through PgBouncer. */
	let databaseUrl: string;
	let workerUrl: string;
	if (db === "embedded") {
		embedded = await startEmbeddedPostgres({ dataDir: join(stateDir, "pgdata") });
		databaseUrl = embedded.url;
		workerUrl = databaseUrl;
	} else {
		databaseUrl = await freshDatabase(database, opts.pgPort);
		bouncer = await startPgBouncer(database, opts.pgPort);
		workerUrl = bouncer.url;
	}
	let dbLink: FaultProxy | undefined;
	if (opts.faultProxy) {
		const b = new URL(workerUrl);
		dbLink = await startFaultProxy({ host: b.hostname, port: Number(b.port || 5432) });
		b.port = String(dbLink.port);
		workerUrl = b.toString();
	}
	const target = new URL(workerUrl);
	const relay: Relay = await startRelay({
		allow: (h, p) => h === target.hostname && p === Number(target.port || 5432),
	});
	await runMigrations(databaseUrl);
	// The worker imports the built console (wrangler.toml's alias).
	await buildConsole({ quiet: true });

	const port = await freePort();
	let wrangler: Wrangler | undefined;
	const base = `http://127.0.0.1:${port}`;
	/** Token secrets set by `setTokenSecrets` (over .dev.vars), kept across restarts. */
	let secretVars: Record<string, string> = {};
	const start = async (healthyWithinMs = 120_000) => {
		wrangler = startWrangler({
			port,
			persistTo: join(stateDir, "wrangler"),
			vars: { DATABASE_URL: workerUrl, NEON_WS_PROXY: relay.proxy, ...BENCH_VARS, ...secretVars },
		});
		try {
			await waitHealthy(base, healthyWithinMs);
		} catch (err) {
			throw new Error(`${err instanceof Error ? err.message : String(err)}\n${wrangler.output().slice(-3000)}`);
		}
	};
	await start();
	const pool = new pg.Pool({ connectionString: databaseUrl, max: 2, application_name: "switchyard-bench" });
	pool.on("error", () => {});
	const pid = () => wrangler?.child.pid ?? -1;
	const backends = db === "real" ? postgresBackends(pool, database) : undefined;
	const roles = joinRoles(
		wranglerRoles(pid, port),
		fixedRoles({ pgbouncer: [bouncer?.pid], [db === "embedded" ? "harness (relay, PGlite, checks)" : "harness (relay, checks)"]: [process.pid] }),
		backends?.roles ?? (() => ({})),
	);
	const settings = {
		wrangler: wranglerSettings(),
		workerVars: BENCH_VARS,
		logLevel: vars.get("LOG_LEVEL") ?? "info (wrangler.toml)",
		objectStorage: `${stateDir} (${filesystemOf(stateDir)}); TMPDIR moves it`,
		postgres:
			db === "embedded"
				? "embedded: PGlite in the harness process, wire protocol, through the relay"
				: `real: PostgreSQL on port ${opts.pgPort ?? 5432}, through the relay${dbLink ? ", a fault-injecting TCP proxy" : ""} and PgBouncer (transaction pooling, ${POOL_SIZE} server connections)`,
	};
	const stack: Stack = {
		db,
		base,
		wsBase: base.replace(/^http/, "ws"),
		apiKey,
		secret,
		databaseUrl,
		pg: pool,
		roles,
		settings,
		workerdRss: () => workerdRss(pid()),
		workerdOpenFiles: () => workerdOpenFiles(pid()),
		runtimeWsBase: () => runtimeWsBase(pid(), port),
		output: () => wrangler?.output() ?? "",
		nofile: () => workerdNofile(pid()),
		stopWrangler: async (graceMs?: number) => {
			await wrangler?.stop(graceMs);
		},
		setDbDown: (down) => relay.setDown(down),
		dbLink,
		bouncer,
		startWrangler: start,
		setTokenSecrets: async (current, previous) => {
			await wrangler?.stop();
			// .dev.vars (ensureDevVars) holds no previous secret, so leaving it out drops it.
			secretVars = previous ? { AGENT_TOKEN_SECRET: current, AGENT_TOKEN_SECRET_PREVIOUS: previous } : { AGENT_TOKEN_SECRET: current };
			await start();
			stack.secret = current;
		},
		stop: async () => {
			backends?.stop();
			await wrangler?.stop();
			await pool.end().catch(() => {});
			await relay.close();
			await dbLink?.close();
			await embedded?.stop().catch(() => {});
			await bouncer?.stop();
			rmSync(stateDir, { recursive: true, force: true });
		},
	};
	return stack;
}
