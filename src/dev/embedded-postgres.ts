/**
 * The local default database: PGlite (Postgres compiled to WASM, in this
 * process) served on the Postgres wire protocol, so the worker reaches it
 * through the relay with the same driver it uses against Neon.
 */
import { PGlite } from "@electric-sql/pglite";
import { serveWire } from "./pglite-wire-server.ts";

export interface EmbeddedPostgres {
	url: string;
	port: number;
	stop(): Promise<void>;
}

/**
 * How often the embedded database refreshes its planner statistics. PGlite
 * runs no autovacuum, so without this the planner never learns how large a
 * table has grown and keeps planning for an empty one: joins by sequential
 * scan, whose cost grows with every command (the bench's embedded figures
 * fell from 4.5 to 10.1 ms of PGlite CPU per command as its tables filled;
 * docs/performance.md). A real Postgres's autovacuum does this on its own.
 */
export const ANALYZE_EVERY_MS = 30_000;

/**
 * @param dataDir a folder to persist to, or undefined for an in-memory database.
 * @param port 0 picks a free port. Never 5432: that belongs to a real Postgres.
 * @param analyzeEveryMs how often statistics are refreshed; null never (the worker suite's
 *   database, whose query-plan tests describe plans without statistics).
 */
export async function startEmbeddedPostgres(opts: {
	dataDir?: string;
	port?: number;
	analyzeEveryMs?: number | null;
}): Promise<EmbeddedPostgres> {
	if (opts.port === 5432) throw new Error("the embedded Postgres never takes port 5432");
	const db = await PGlite.create(opts.dataDir);
	const server = await serveWire(db, { host: "127.0.0.1", port: opts.port ?? 0 });
	const port = server.port;
	// Between clients' turns, one at a time; a failure (a table dropped meanwhile) waits for the next.
	let analyzing: Promise<unknown> = Promise.resolve();
	const analyze =
		opts.analyzeEveryMs === null
			? undefined
			: setInterval(() => {
					analyzing = analyzing.then(() => server.exclusive(() => db.exec("analyze")).catch(() => {}));
				}, opts.analyzeEveryMs ?? ANALYZE_EVERY_MS);
	analyze?.unref();
	return {
		url: `postgres://postgres@127.0.0.1:${port}/postgres`,
		port,
		stop: async () => {
			clearInterval(analyze);
			await analyzing;
			await server.close();
			await db.close();
		},
	};
}
