/**
 * The worker's database: Neon's HTTP query path (`neon()` in
 * @neondatabase/serverless, drizzle's `neon-http`). Each statement is one
 * HTTPS request to Neon's proxy, which keeps warm connections to Postgres,
 * so a request pays no WebSocket, TLS or Postgres start-up of its own (see
 * docs/architecture.md, "The database path"). Statements that must commit
 * together go in one `transaction()` (drizzle: `db.batch`), one request too.
 *
 * Locally the relay (src/dev/relay.ts) serves the same protocol at
 * `POST /sql` against a plain Postgres, so tests run this code path.
 */
import { neon, neonConfig } from "@neondatabase/serverless";
import { drizzle, type NeonHttpDatabase } from "drizzle-orm/neon-http";
import { classifyDbError, type DbConfig, DbUnavailableError, statementTimeout } from "./client";
import { conflictRetryingFetch } from "./retry";

export type HttpDb = NeonHttpDatabase;

/** Neon's own endpoint, kept so production's setting is restored if an isolate ever saw a relay. */
const neonFetchEndpoint = neonConfig.fetchEndpoint;

/**
 * `http://host:port/sql` of the local relay when NEON_WS_PROXY names one
 * (`host:port/v1`); the relay serves the WebSocket and the HTTP protocol on
 * one port. Undefined in production.
 */
export function relaySqlEndpoint(proxy: string | undefined): string | undefined {
	if (!proxy) return undefined;
	const hostPort = proxy.split("/")[0];
	return hostPort ? `http://${hostPort}/sql` : undefined;
}

/** Each call's statement deadline, under the abort signal its requests carry. */
const deadlines = new WeakMap<AbortSignal, number>();
const retryingFetch = conflictRetryingFetch(deadlines);

function configureFetch(proxy: string | undefined): void {
	// neonConfig is module-global; every caller in one isolate has the same env.
	const relay = relaySqlEndpoint(proxy);
	neonConfig.fetchEndpoint = relay ? () => relay : neonFetchEndpoint;
	// A statement Postgres rolled back for a conflict is sent again (retry.ts).
	neonConfig.fetchFunction = retryingFetch;
}

/**
 * One HTTP request's database. Nothing to open or close: each statement is
 * its own request, bounded by the statement timeout.
 */
export class HttpDatabase {
	private readonly timeoutMs: number;

	constructor(private readonly config: DbConfig) {
		this.timeoutMs = statementTimeout(config);
	}

	async run<T>(fn: (db: HttpDb) => Promise<T>): Promise<T> {
		configureFetch(this.config.NEON_WS_PROXY || undefined);
		// One deadline for the call's statements (most calls make one): a
		// statement that hangs is abandoned, and the relay or Neon's proxy
		// sees the request go away.
		const deadline = AbortSignal.timeout(this.timeoutMs);
		deadlines.set(deadline, Date.now() + this.timeoutMs);
		const client = neon(this.config.DATABASE_URL, { fetchOptions: { signal: deadline } });
		try {
			// Built per call (the client carries this call's deadline), and so
			// without the schema: see PoolDb in client.ts.
			return await fn(drizzle({ client }));
		} catch (err) {
			if (deadline.aborted) {
				throw new DbUnavailableError(new Error(`statement still running after ${this.timeoutMs} ms`, { cause: err }));
			}
			throw classifyDbError(err);
		}
	}
}

export function httpDb(config: DbConfig): HttpDatabase {
	return new HttpDatabase(config);
}
