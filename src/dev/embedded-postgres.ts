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
 * @param dataDir a folder to persist to, or undefined for an in-memory database.
 * @param port 0 picks a free port. Never 5432: that belongs to a real Postgres.
 */
export async function startEmbeddedPostgres(opts: {
	dataDir?: string;
	port?: number;
}): Promise<EmbeddedPostgres> {
	if (opts.port === 5432) throw new Error("the embedded Postgres never takes port 5432");
	const db = await PGlite.create(opts.dataDir);
	const server = await serveWire(db, { host: "127.0.0.1", port: opts.port ?? 0 });
	const port = server.port;
	return {
		url: `postgres://postgres@127.0.0.1:${port}/postgres`,
		port,
		stop: async () => {
			await server.close();
			await db.close();
		},
	};
}
