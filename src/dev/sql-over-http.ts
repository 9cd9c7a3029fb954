/**
 * Neon's SQL-over-HTTP protocol (`POST /sql`, what `neon()` in
 * @neondatabase/serverless speaks), served against a plain Postgres: the
 * embedded one or a real server. With it the worker runs the same query path
 * locally and in tests as against Neon in production.
 *
 * The wire format follows the driver (node_modules/@neondatabase/serverless):
 * - request: `{query, params}`, or `{queries: [{query, params}, ...]}` for
 *   `transaction()`, which runs them in one transaction; headers
 *   `Neon-Connection-String`, `Neon-Raw-Text-Output`, `Neon-Array-Mode` and,
 *   for a transaction, `Neon-Batch-Isolation-Level`, `-Read-Only`, `-Deferrable`.
 * - response: `{command, rowCount, rows, fields, rowAsArray}` (or
 *   `{results: [...]}`), every value in Postgres' text form and `fields`
 *   carrying each column's type OID, from which the driver parses them.
 * - a statement Postgres refuses: HTTP 400 with the error's fields (`code`,
 *   `message`, `detail`, `constraint`, ...), which the driver copies onto its
 *   NeonDbError. Postgres unreachable: HTTP 503 (the driver reports it
 *   without a SQLSTATE).
 * A request whose client goes away (the worker's statement deadline) has its
 * statement cancelled with a Postgres CancelRequest, and its connection
 * dropped if the statement still runs `abandonMs` later; a request whose
 * client left while it waited for a connection never runs its statement.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import net from "node:net";
import pg from "pg";

export interface SqlOverHttpOptions {
	/** Which Postgres servers a request may name in its connection string. */
	allow: (host: string, port: number) => boolean;
	/** While true, every request is answered as if Postgres were unreachable (tests). */
	isDown: () => boolean;
	limits?: Partial<SqlOverHttpLimits>;
}

export interface SqlOverHttpLimits {
	/** Connections kept per connection string. */
	poolSize: number;
	/** How long a request waits for a connection before it is answered 503. */
	connectTimeoutMs: number;
	/**
	 * How long a statement may run on after its caller left and its cancel was
	 * sent before the connection is dropped. A cancel that never lands (the
	 * link to Postgres is silent) must not hold a pooled connection for good.
	 */
	abandonMs: number;
}

const DEFAULT_LIMITS: SqlOverHttpLimits = { poolSize: 20, connectTimeoutMs: 10_000, abandonMs: 15_000 };
/** How long a CancelRequest's socket waits for the server to close it. */
const CANCEL_WAIT_MS = 10_000;

export interface SqlOverHttp {
	handle(req: IncomingMessage, res: ServerResponse): void;
	/** Requests served since start, for tests. */
	requests(): number;
	/** Ends every connection to Postgres (and, with `down`, the ones in use). */
	dropConnections(): Promise<void>;
	close(): Promise<void>;
}

const MAX_BODY_BYTES = 32 * 1024 * 1024;
/** Values stay in Postgres' text form: the driver parses them by type OID, as it does Neon's. */
const rawText = { getTypeParser: () => (value: string) => value };

interface Statement {
	query: string;
	params: unknown[];
}

class BadRequest extends Error {}

export function sqlOverHttp(opts: SqlOverHttpOptions): SqlOverHttp {
	const limits = { ...DEFAULT_LIMITS, ...opts.limits };
	const pools = new Map<string, pg.Pool>();
	let served = 0;

	function poolFor(connectionString: string): pg.Pool {
		let pool = pools.get(connectionString);
		if (!pool) {
			// Like Neon's proxy, connections are kept between requests.
			pool = new pg.Pool({
				connectionString,
				max: limits.poolSize,
				connectionTimeoutMillis: limits.connectTimeoutMs,
				idleTimeoutMillis: 10_000,
				types: rawText,
			});
			pool.on("error", () => {});
			pools.set(connectionString, pool);
		}
		return pool;
	}

	async function serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
		served++;
		if (req.method !== "POST" || new URL(req.url ?? "/", "http://relay").pathname !== "/sql") {
			return reply(res, 404, { message: "not found: this relay serves POST /sql" });
		}
		const connectionString = header(req, "neon-connection-string");
		let target: URL;
		try {
			target = new URL(connectionString ?? "");
		} catch {
			return reply(res, 400, { message: "missing or invalid Neon-Connection-String header" });
		}
		const host = target.hostname.replace(/^\[|\]$/g, "");
		if (!opts.allow(host, Number(target.port || 5432))) {
			return reply(res, 400, { message: `target not allowed: ${target.host}` });
		}
		let body: unknown;
		try {
			body = JSON.parse(await readBody(req));
		} catch (err) {
			return reply(res, 400, { message: err instanceof BadRequest ? err.message : "request body is not valid JSON" });
		}
		const batch = parseBody(body);
		if (!batch) return reply(res, 400, { message: "body must be {query, params} or {queries: [{query, params}]}" });
		if (opts.isDown()) return reply(res, 503, { message: "database unavailable (relay is down)" });

		const arrayMode = header(req, "neon-array-mode") === "true";
		// Registered before the wait for a connection: a caller that gave up
		// while it waited must not have its statement run later for nobody.
		let callerGone = false;
		let client: pg.PoolClient | undefined;
		let done = false;
		res.on("close", () => {
			callerGone = true;
			// The caller gave up (its statement deadline) while its statement runs:
			// stop it, as a hung query must not hold a connection nobody waits on.
			if (!client || done) return;
			const held = client;
			void cancel(held, target);
			setTimeout(() => {
				// Still running: the cancel never landed (a silent link). Ending the socket
				// rejects the statement, which releases the client as broken below.
				if (!done) socketOf(held)?.destroy();
			}, limits.abandonMs).unref();
		});
		try {
			client = await poolFor(connectionString ?? "").connect();
		} catch (err) {
			return reply(res, 503, { message: `could not connect to Postgres: ${messageOf(err)}` });
		}
		if (callerGone) {
			client.release();
			return;
		}
		// The pool listens for errors only on idle clients: a connection that dies while
		// checked out emits `error` with no listener, an uncaught exception that takes the
		// relay down. The query under way rejects with the same error, answered 503 below.
		const swallow = () => {};
		client.on("error", swallow);
		try {
			if ("queries" in batch) {
				await client.query(beginStatement(req));
				const results = [];
				for (const s of batch.queries) results.push(toNeonResult(await run(client, s, arrayMode), arrayMode));
				await client.query("commit");
				reply(res, 200, { results });
			} else {
				reply(res, 200, toNeonResult(await run(client, batch, arrayMode), arrayMode));
			}
			client.off("error", swallow);
			client.release();
		} catch (err) {
			if (err instanceof pg.DatabaseError) {
				// A refused statement: roll back whatever the transaction did, keep the connection.
				await client.query("rollback").catch(() => {});
				client.off("error", swallow);
				client.release();
				reply(res, 400, errorBody(err));
			} else {
				client.release(err instanceof Error ? err : new Error(String(err)));
				reply(res, 503, { message: `Postgres connection failed: ${messageOf(err)}` });
			}
		} finally {
			done = true;
		}
	}

	return {
		handle(req, res) {
			serve(req, res).catch((err: unknown) => {
				if (!res.headersSent) reply(res, 500, { message: `relay error: ${messageOf(err)}` });
				else res.destroy();
			});
		},
		requests: () => served,
		async dropConnections() {
			const all = [...pools.values()];
			pools.clear();
			await Promise.all(all.map((p) => p.end().catch(() => {})));
		},
		async close() {
			await this.dropConnections();
		},
	};
}

function header(req: IncomingMessage, name: string): string | undefined {
	const v = req.headers[name];
	return Array.isArray(v) ? v[0] : v;
}

function messageOf(err: unknown): string {
	return err instanceof Error ? err.message : String(err);
}

function readBody(req: IncomingMessage): Promise<string> {
	return new Promise((resolve, reject) => {
		const chunks: Buffer[] = [];
		let size = 0;
		req.on("data", (chunk: Buffer) => {
			size += chunk.length;
			if (size > MAX_BODY_BYTES) {
				reject(new BadRequest(`request body is over ${MAX_BODY_BYTES} bytes`));
				req.destroy();
			} else chunks.push(chunk);
		});
		req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
		req.on("error", reject);
	});
}

function parseStatement(s: unknown): Statement | undefined {
	if (typeof s !== "object" || s === null) return undefined;
	const { query, params } = s as { query?: unknown; params?: unknown };
	if (typeof query !== "string") return undefined;
	if (params !== undefined && !Array.isArray(params)) return undefined;
	return { query, params: params ?? [] };
}

function parseBody(body: unknown): Statement | { queries: Statement[] } | undefined {
	if (typeof body === "object" && body !== null && "queries" in body) {
		const queries = (body as { queries: unknown }).queries;
		if (!Array.isArray(queries)) return undefined;
		const parsed = queries.map(parseStatement);
		return parsed.every((s): s is Statement => s !== undefined) ? { queries: parsed } : undefined;
	}
	return parseStatement(body);
}

const ISOLATION: Record<string, string> = {
	ReadUncommitted: "read uncommitted",
	ReadCommitted: "read committed",
	RepeatableRead: "repeatable read",
	Serializable: "serializable",
};

/** `begin` with the transaction options the driver sends as headers. */
function beginStatement(req: IncomingMessage): string {
	const parts = ["begin"];
	const level = ISOLATION[header(req, "neon-batch-isolation-level") ?? ""];
	if (level) parts.push(`isolation level ${level}`);
	const readOnly = header(req, "neon-batch-read-only");
	if (readOnly === "true") parts.push("read only");
	else if (readOnly === "false") parts.push("read write");
	const deferrable = header(req, "neon-batch-deferrable");
	if (deferrable === "true") parts.push("deferrable");
	else if (deferrable === "false") parts.push("not deferrable");
	return parts.join(" ");
}

function run(client: pg.PoolClient, s: Statement, arrayMode: boolean): Promise<pg.QueryResult> {
	return arrayMode
		? client.query({ text: s.query, values: s.params, rowMode: "array" })
		: client.query({ text: s.query, values: s.params });
}

function toNeonResult(r: pg.QueryResult, arrayMode: boolean) {
	return {
		command: r.command,
		rowCount: r.rowCount,
		rows: r.rows,
		fields: r.fields.map((f) => ({
			name: f.name,
			tableID: f.tableID,
			columnID: f.columnID,
			dataTypeID: f.dataTypeID,
			dataTypeSize: f.dataTypeSize,
			dataTypeModifier: f.dataTypeModifier,
			format: "text",
		})),
		rowAsArray: arrayMode,
	};
}

/** The fields Neon answers a refused statement with; the driver copies them onto its error. */
const ERROR_FIELDS = [
	"severity",
	"code",
	"detail",
	"hint",
	"position",
	"internalPosition",
	"internalQuery",
	"where",
	"schema",
	"table",
	"column",
	"dataType",
	"constraint",
	"file",
	"line",
	"routine",
] as const;

function errorBody(err: pg.DatabaseError): Record<string, unknown> {
	const out: Record<string, unknown> = { message: err.message };
	for (const k of ERROR_FIELDS) if (err[k] !== undefined) out[k] = err[k];
	return out;
}

function reply(res: ServerResponse, status: number, body: unknown): void {
	if (res.headersSent || res.destroyed) return;
	const text = JSON.stringify(body);
	res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
	res.end(text);
}

function socketOf(client: pg.PoolClient): net.Socket | undefined {
	// SAFETY: pg's Client keeps its socket on `connection.stream`.
	return (client as unknown as { connection?: { stream?: net.Socket } }).connection?.stream;
}

/**
 * Asks Postgres to stop the statement `client` is running: the wire
 * protocol's CancelRequest on a new connection, which the server closes once
 * it has acted on it. The socket stays open until then, as libpq keeps it:
 * PgBouncer 1.18 exits (FATAL "bad client state: 0", pgbouncer/pgbouncer#801)
 * when a cancel's client hangs up before the cancel it forwarded is done,
 * which took the chaos suite's whole database path down after a blackhole.
 */
async function cancel(client: pg.PoolClient, target: URL): Promise<void> {
	// SAFETY: pg keeps the backend's key data on the client; absent (an embedded server that sends none), there is nothing to cancel.
	const { processID, secretKey } = client as unknown as { processID?: number; secretKey?: number };
	if (processID === undefined || secretKey === undefined) return;
	await new Promise<void>((resolve) => {
		const socket = net.connect({ host: target.hostname.replace(/^\[|\]$/g, ""), port: Number(target.port || 5432) });
		const packet = Buffer.alloc(16);
		packet.writeInt32BE(16, 0);
		packet.writeInt32BE(80877102, 4);
		packet.writeInt32BE(processID, 8);
		packet.writeInt32BE(secretKey, 12);
		socket.setTimeout(CANCEL_WAIT_MS, () => socket.destroy());
		socket.on("connect", () => socket.write(packet));
		socket.on("close", () => resolve());
		socket.on("error", () => resolve());
	});
}
