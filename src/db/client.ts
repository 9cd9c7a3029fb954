import { Pool, neonConfig } from "@neondatabase/serverless";
import { DrizzleQueryError } from "drizzle-orm/errors";
import type { NeonHttpDatabase } from "drizzle-orm/neon-http";
import { drizzle, type NeonDatabase } from "drizzle-orm/neon-serverless";
import { ConnectGate, GateFullError, type Priority } from "./connect-gate";

/**
 * What queries run on: a `Pool` connection (the agent objects, scheduled
 * jobs) or Neon's HTTP path (the worker's requests, http.ts). The queries in
 * this folder are written once for both.
 */
export type Db = PoolDb | NeonHttpDatabase;
/**
 * A `Pool` connection's database, which also runs interactive transactions.
 * Neither kind is given the schema: nothing here uses drizzle's relational
 * queries, and building their config walked every table on each request.
 */
export type PoolDb = NeonDatabase;

export interface DbConfig {
	/** Postgres connection string (Neon's in production). */
	DATABASE_URL: string;
	/**
	 * `host:port[/path]` of a WebSocket-to-TCP relay, for a plain Postgres that
	 * has no Neon WebSocket endpoint (the local stack, CI). Empty or absent in
	 * production, where the driver talks to Neon directly.
	 */
	NEON_WS_PROXY?: string;
	/**
	 * How long to wait for a connection before answering 503 (milliseconds,
	 * 1,000 to 60,000; default 10,000). Behind a busy pooler or a Neon compute
	 * waking from zero, waiting is cheaper than failing and retrying.
	 */
	DB_CONNECT_TIMEOUT_MS?: string;
	/**
	 * How long one statement may run before the caller abandons it and
	 * answers 503 or retries (milliseconds, 100 to 300,000; default 15,000).
	 * See `statementTimeout`.
	 */
	DB_STATEMENT_TIMEOUT_MS?: string;
}

const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
/** An object's connection closes after this long unused, so the object can hibernate. */
const OBJECT_IDLE_MS = 2_000;
/**
 * How long an object's read or flush waits for a turn to connect. Far longer
 * than a request may: nobody is waiting on the answer, and a turn that comes
 * is far cheaper than a failure retried on the object's alarm. When a whole
 * fleet reconnects at once, the last in the queue wait for all the others.
 */
const OBJECT_WAIT_MS = 300_000;

export function connectTimeout(config: DbConfig): number {
	const ms = Number(config.DB_CONNECT_TIMEOUT_MS);
	return Number.isInteger(ms) && ms >= 1_000 && ms <= 60_000 ? ms : DEFAULT_CONNECT_TIMEOUT_MS;
}

const DEFAULT_STATEMENT_TIMEOUT_MS = 15_000;

/**
 * How long one statement may take before the caller gives up on it
 * (DB_STATEMENT_TIMEOUT_MS, 100 to 300,000; default 15,000). A statement past
 * it is abandoned and reported as the database being unavailable: a request
 * answers 503 with Retry-After, an object retries its read or flush on its
 * backoff. A hung query then costs one retry, not a stalled request or object.
 */
export function statementTimeout(config: DbConfig): number {
	const ms = Number(config.DB_STATEMENT_TIMEOUT_MS);
	return Number.isInteger(ms) && ms >= 100 && ms <= 300_000 ? ms : DEFAULT_STATEMENT_TIMEOUT_MS;
}

function configureDriver(proxy: string | undefined): void {
	// neonConfig is module-global; every caller in one isolate sees the same
	// env, so setting it each time is idempotent, not a race.
	if (proxy) {
		neonConfig.wsProxy = (host, port) => `${proxy}?address=${host}:${port}`;
		neonConfig.useSecureWebSocket = false;
		neonConfig.pipelineTLS = false;
		neonConfig.pipelineConnect = false;
	} else {
		neonConfig.wsProxy = (host) => `${host}/v2`;
		neonConfig.useSecureWebSocket = true;
		neonConfig.pipelineTLS = false;
		neonConfig.pipelineConnect = "password";
	}
}

function openPool(config: DbConfig, options: { max: number; idleTimeoutMillis?: number }): Pool {
	configureDriver(config.NEON_WS_PROXY || undefined);
	const pool = new Pool({
		connectionString: config.DATABASE_URL,
		connectionTimeoutMillis: connectTimeout(config),
		...options,
	});
	// A pool with no listener turns a dropped socket into an uncaught error.
	pool.on("error", () => {});
	return pool;
}

/**
 * A `Pool` database opened on first use and ended by `close()`. How long it
 * lives is the caller's: one Durable Object (`objectDb`) or one call
 * (`withDb`: scheduled jobs, tests). The worker's HTTP requests use Neon's
 * HTTP path instead (http.ts).
 */
export class Database {
	private pool: Pool | undefined;
	private db: PoolDb | undefined;

	constructor(
		private readonly config: DbConfig,
		private readonly options: { max: number; idleTimeoutMillis?: number; waitMs: number; priority: Priority },
	) {}
	/** The setup under way and its pool, so concurrent callers wait for one connection instead of each queueing for its own. */
	private connecting: { pool: Pool; setup: Promise<void> } | undefined;

	async run<T>(fn: (db: PoolDb) => Promise<T>): Promise<T> {
		if (!this.pool || !this.db) {
			this.pool = openPool(this.config, { max: this.options.max, idleTimeoutMillis: this.options.idleTimeoutMillis });
			this.db = drizzle({ client: this.pool });
		}
		// This call's pool: `close()` may end it and a later call open another while this one waits.
		const { pool, db } = this;
		try {
			if (pool.totalCount === 0) {
				if (this.connecting?.pool !== pool) {
					const setup = connectThroughGate(pool, this.options.waitMs, this.options.priority).finally(() => {
						if (this.connecting?.setup === setup) this.connecting = undefined;
					});
					this.connecting = { pool, setup };
				}
				await this.connecting.setup;
				if (this.pool !== pool) throw new DbUnavailableError(new Error("database closed while connecting"));
			}
			// A drizzle query is a thenable that runs its statement on every
			// then(): resolve it once here, or withDeadline's two would run it twice.
			return await this.withDeadline(pool, Promise.resolve(fn(db)));
		} catch (err) {
			// The pool drops a broken connection itself; the next call opens a new one.
			throw classifyDbError(err);
		}
	}

	/**
	 * `work`, or DbUnavailableError once it has run past the statement
	 * timeout. The connection it holds is dropped then: the late statement's
	 * reply may yet come, and the next call must not queue behind it.
	 */
	private async withDeadline<T>(pool: Pool, work: Promise<T>): Promise<T> {
		const ms = statementTimeout(this.config);
		let timer: ReturnType<typeof setTimeout> | undefined;
		const expired = new Promise<never>((_, reject) => {
			timer = setTimeout(() => {
				if (this.pool === pool) void this.close();
				reject(new DbUnavailableError(new Error(`statement still running after ${ms} ms`)));
			}, ms);
		});
		// The abandoned work fails once its connection is dropped; nobody waits for it.
		work.catch(() => {});
		try {
			return await Promise.race([work, expired]);
		} finally {
			if (timer !== undefined) clearTimeout(timer);
		}
	}

	async close(): Promise<void> {
		const pool = this.pool;
		this.pool = undefined;
		this.db = undefined;
		this.connecting = undefined;
		await pool?.end().catch(() => {});
	}
}

/** At most this many connection setups run at once in one isolate (see connect-gate.ts)… */
const MAX_CONNECTING = 16;
/** …and this many of them are kept for requests, which a fleet's catch-ups never take. */
const RESERVED_FOR_REQUESTS = 4;
const gate = new ConnectGate(MAX_CONNECTING, RESERVED_FOR_REQUESTS);

async function connectThroughGate(pool: Pool, waitMs: number, priority: Priority): Promise<void> {
	try {
		// Opened here and handed back idle: the caller's queries take it from the pool.
		await gate.run(Date.now() + waitMs, async () => (await pool.connect()).release(), priority);
	} catch (err) {
		if (err instanceof GateFullError) throw new DbBusyError(err.retryInMs);
		throw err;
	}
}

/**
 * A database for one call that someone waits on (a scheduled job, a test):
 * at the gate it goes ahead of objects' background work. Outside an object,
 * a socket belongs to the event that opened it, so the caller closes it when
 * done (`withDb`). Queries of one call share its connection.
 */
export function requestDb(config: DbConfig): Database {
	return new Database(config, { max: 4, waitMs: connectTimeout(config), priority: "request" });
}

/**
 * One Durable Object's database: at most one connection, kept between the
 * object's events and closed after it has gone unused for a moment.
 *
 * Unlike a stateless request, every event of one object runs in the same I/O
 * context, so a socket opened in one event may serve the next. An agent's
 * reconnect (catch-up read, then presence flush) and a busy agent's stream of
 * status flushes then cost one connection setup instead of one each, which
 * is what a fleet reconnecting at once runs out of. One connection per object
 * also bounds what a fleet can ask of the pooler: the number of objects busy
 * in the last couple of seconds. Queries queue on it in the order made. The
 * idle close lets the object hibernate.
 */
export function objectDb(config: DbConfig): Database {
	return new Database(config, { max: 1, idleTimeoutMillis: OBJECT_IDLE_MS, waitMs: OBJECT_WAIT_MS, priority: "background" });
}

/** Runs `fn` with a database that lives only for this call (scheduled jobs, tests). */
export async function withDb<T>(config: DbConfig, fn: (db: PoolDb) => Promise<T>): Promise<T> {
	const db = requestDb(config);
	try {
		return await db.run(fn);
	} finally {
		await db.close();
	}
}

/** The database could not be reached or refused service; callers answer 503 and retry later. */
export class DbUnavailableError extends Error {
	override name = "DbUnavailableError";
	constructor(cause: unknown, message = "database unavailable") {
		super(message, { cause });
	}
}

/**
 * The database lacks a table, column or function this code uses: it was not
 * migrated before this version was deployed. Not the statement's fault, so
 * treated like an outage (503, or an object's retry on its backoff) rather
 * than a refusal, which would salvage the batch and drop what it could not
 * write. It ends when `npm run db:migrate` has run.
 */
export class DbSchemaBehindError extends DbUnavailableError {
	override name = "DbSchemaBehindError";
	constructor(
		readonly sqlState: string,
		cause: unknown,
	) {
		super(cause, "the database is missing a migration this version needs (run npm run db:migrate)");
	}
}

/** Too many connections are being set up in this isolate; like an outage, retried later. */
export class DbBusyError extends DbUnavailableError {
	override name = "DbBusyError";
	constructor(
		/** When a turn would have come: retrying sooner only queues again. */
		readonly retryInMs: number,
	) {
		super(new Error("too many database connections being set up at once"));
	}
}

/** Postgres refused a statement (a bug or a constraint), as opposed to being unreachable. */
export class DbQueryError extends Error {
	override name = "DbQueryError";
	constructor(
		readonly sqlState: string,
		cause: unknown,
	) {
		super(`database rejected a statement (SQLSTATE ${sqlState})`, { cause });
	}
}

/**
 * Postgres gave up on a statement because of other transactions and rolled
 * it back (isConflictState); the same statement may succeed when run again.
 * Still a DbQueryError: the agent objects' paths treat it as they did.
 */
export class DbConflictError extends DbQueryError {
	override name = "DbConflictError";
}

/** serialization_failure, deadlock_detected, lock_not_available (a lock_timeout or NOWAIT). */
const CONFLICT_STATES = new Set(["40001", "40P01", "55P03"]);

export function isConflictState(sqlState: string): boolean {
	return CONFLICT_STATES.has(sqlState);
}

/** undefined_table, undefined_column, undefined_function: see DbSchemaBehindError. */
const SCHEMA_BEHIND_STATES = new Set(["42P01", "42703", "42883"]);

// SQLSTATE classes that mean "the server is not serving you right now".
const UNAVAILABLE_CLASSES = ["08", "53", "57"];

function isDriverError(err: unknown): boolean {
	if (sqlStateOf(err) !== undefined) return true;
	for (let e: unknown = err, depth = 0; e && depth < 5; depth++) {
		const name = (e as { name?: unknown }).name;
		const message = String((e as { message?: unknown }).message ?? "");
		// The driver's connection failures are plain Errors or ErrorEvents about sockets.
		if (name === "NeonDbError" || name === "DatabaseError") return true;
		if (/connect|socket|websocket|terminat|timeout|ECONN|closed|network/i.test(message)) return true;
		if (typeof Event !== "undefined" && e instanceof Event) return true;
		e = (e as { cause?: unknown }).cause;
	}
	return false;
}

function sqlStateOf(err: unknown): string | undefined {
	for (let e: unknown = err, depth = 0; e && depth < 5; depth++) {
		const code = (e as { code?: unknown }).code;
		// SQLSTATE classes start 0-5, F, H, P or X; errno codes such as EPIPE must not pass.
		if (typeof code === "string" && /^[0-5FHPX][0-9A-Z]{4}$/.test(code)) return code;
		e = (e as { cause?: unknown }).cause;
	}
	return undefined;
}

/**
 * Sorts what escaped a `withDb` callback: Postgres refusing a statement,
 * Postgres unreachable, or (anything with neither mark) our own code failing,
 * which is passed through untouched so it is not mistaken for an outage.
 */
export function classifyDbError(caught: unknown): unknown {
	let err = caught;
	if (err instanceof DbUnavailableError || err instanceof DbQueryError) return err;
	// drizzle's wrapper message carries the statement's parameters (payloads):
	// keep only the driver's error underneath, so logs never see them.
	const wrapped = err instanceof DrizzleQueryError;
	if (err instanceof DrizzleQueryError) err = err.cause ?? new Error("query failed");
	if (!wrapped && !isDriverError(err)) return err;
	const state = sqlStateOf(err);
	if (state && isConflictState(state)) return new DbConflictError(state, err);
	if (state && SCHEMA_BEHIND_STATES.has(state)) return new DbSchemaBehindError(state, err);
	if (state && !UNAVAILABLE_CLASSES.includes(state.slice(0, 2))) return new DbQueryError(state, err);
	// No SQLSTATE: the socket, the relay or DNS failed before Postgres answered.
	return new DbUnavailableError(err);
}
