/**
 * Applies migrations/ through the same Neon driver the worker uses. Against
 * a loopback Postgres it starts a throwaway relay; against Neon it connects
 * directly.
 */
import { Pool, neonConfig } from "@neondatabase/serverless";
import { drizzle } from "drizzle-orm/neon-serverless";
import { migrate } from "drizzle-orm/neon-serverless/migrator";
import { fileURLToPath } from "node:url";
import ws from "ws";
import { loopbackOnly, startRelay } from "./relay.ts";

export const MIGRATIONS_DIR = fileURLToPath(new URL("../../migrations", import.meta.url));

export function useRelay(proxy: string): void {
	neonConfig.webSocketConstructor = ws;
	neonConfig.wsProxy = (host, port) => `${proxy}?address=${host}:${port}`;
	neonConfig.useSecureWebSocket = false;
	neonConfig.pipelineTLS = false;
	neonConfig.pipelineConnect = false;
}

/** Runs `fn` with a Neon Pool for `url`, relaying when the database is on this machine. */
export async function withNodePool<T>(url: string, fn: (pool: Pool) => Promise<T>): Promise<T> {
	neonConfig.webSocketConstructor = ws;
	const host = new URL(url).hostname;
	const relay = loopbackOnly(host) ? await startRelay({ allow: (h) => loopbackOnly(h) }) : undefined;
	if (relay) useRelay(relay.proxy);
	const pool = new Pool({ connectionString: url, connectionTimeoutMillis: 10_000 });
	pool.on("error", () => {});
	try {
		return await fn(pool);
	} finally {
		await pool.end().catch(() => {});
		await relay?.close();
	}
}

export async function runMigrations(url: string): Promise<void> {
	await withNodePool(url, (pool) => migrate(drizzle({ client: pool }), { migrationsFolder: MIGRATIONS_DIR }));
}

// `npm run db:migrate`
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
	const url = process.env.DATABASE_URL;
	if (!url) {
		console.error("db:migrate: set DATABASE_URL (for example your Neon connection string)");
		process.exit(2);
	}
	runMigrations(url).then(
		() => console.log(`db:migrate: migrations applied to ${new URL(url).host}`),
		(err: unknown) => {
			console.error(`db:migrate: failed: ${err instanceof Error ? err.message : String(err)}`);
			process.exit(1);
		},
	);
}
