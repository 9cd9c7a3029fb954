import { Pool, neonConfig } from "@neondatabase/serverless";
import { DrizzleQueryError } from "drizzle-orm/errors";
import { drizzle, type NeonDatabase } from "drizzle-orm/neon-serverless";
import * as schema from "./schema";

export type Db = NeonDatabase<typeof schema>;

export interface DbConfig {
	/** Postgres connection string (Neon's in production). */
	DATABASE_URL: string;
	/**
	 * `host:port[/path]` of a WebSocket-to-TCP relay, for a plain Postgres that
	 * has no Neon WebSocket endpoint (the local stack, CI). Empty or absent in
	 * production, where the driver talks to Neon directly.
	 */
	NEON_WS_PROXY?: string;
}

const CONNECT_TIMEOUT_MS = 5_000;

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

/**
 * Runs `fn` with a database that lives only for this call. Neon's WebSocket
 * pool must not outlive the request or Durable Object event that made it, so
 * nothing here is cached across calls.
 */
export async function withDb<T>(config: DbConfig, fn: (db: Db) => Promise<T>): Promise<T> {
	configureDriver(config.NEON_WS_PROXY || undefined);
	const pool = new Pool({
		connectionString: config.DATABASE_URL,
		connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
		max: 4,
	});
	// A pool with no listener turns a dropped socket into an uncaught error.
	pool.on("error", () => {});
	try {
		return await fn(drizzle({ client: pool, schema }));
	} catch (err) {
		throw classifyDbError(err);
	} finally {
		await pool.end().catch(() => {});
	}
}

/** The database could not be reached or refused service; callers answer 503 and retry later. */
export class DbUnavailableError extends Error {
	override name = "DbUnavailableError";
	constructor(cause: unknown) {
		super("database unavailable", { cause });
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
	if (state && !UNAVAILABLE_CLASSES.includes(state.slice(0, 2))) return new DbQueryError(state, err);
	// No SQLSTATE: the socket, the relay or DNS failed before Postgres answered.
	return new DbUnavailableError(err);
}
