/**
 * PL/pgSQL keeps a statement's generic plan for the life of the server
 * connection, and poolers keep connections for hours, so the status write
 * runs for a long time on a plan made when its tables were smaller. Made on
 * a young table with the planner's guess of 100 input rows, that plan hashed
 * the whole primary-key index for every write, and each write got dearer as
 * the table grew (migrations/0016; found by pg_stat_statements and
 * auto_explain under the bench). Here the plan is made on an empty table
 * (no statistics are refreshed: the embedded server's ANALYZE is off) and
 * then used on one of a few thousand rows, through the production driver.
 */
import type { Pool } from "@neondatabase/serverless";
import { drizzle } from "drizzle-orm/neon-serverless";
import { afterAll, beforeAll, expect, it } from "vitest";
import { type KeyedEntry, writeStatus } from "../../src/db/status-writes.ts";
import { type EmbeddedPostgres, startEmbeddedPostgres } from "../../src/dev/embedded-postgres.ts";
import { runMigrations, withNodePool } from "../../src/dev/migrate.ts";

const GROWN_TO = 3_000;

let pg: EmbeddedPostgres;

beforeAll(async () => {
	pg = await startEmbeddedPostgres({ analyzeEveryMs: null });
	await runMigrations(pg.url);
});

afterAll(async () => {
	await pg.stop();
});

/** A dispatch and a result for a new command of `agentId`, as one flush carries them. */
async function oneCommandFlush(pool: Pool, agentId: string): Promise<{ id: string; entries: KeyedEntry[] }> {
	const { rows } = await pool.query<{ id: string }>("insert into agent_commands (agent_id, action) values ($1, 'probe') returning id", [agentId]);
	const id = rows[0]?.id ?? "";
	const at = new Date().toISOString();
	return {
		id,
		entries: [
			{ kind: "transition", commandId: id, from: "pending", to: "dispatched", at, attempts: 1, key: `stale:${id}:1` },
			{ kind: "transition", commandId: id, from: "dispatched", to: "completed", at, attempts: 1, result: { ok: true }, key: `stale:${id}:2` },
		],
	};
}

it("a status write planned on a young table still reads its command by key once the table has grown", async () => {
	await withNodePool(pg.url, async (pool) => {
		const db = drizzle({ client: pool });
		// Past the plan cache's five custom plans, so what follows runs on its generic plan.
		for (let i = 0; i < 8; i++) {
			const { entries } = await oneCommandFlush(pool, "young");
			await writeStatus(db, entries, null, "young");
		}
		await pool.query(`insert into agent_commands (agent_id, action, status) select 'old-' || g, 'filler', 'completed' from generate_series(1, ${GROWN_TO}) g`);

		const { id, entries } = await oneCommandFlush(pool, "grown");
		const client = await pool.connect();
		try {
			// Counted as differences: PGlite's per-transaction counters also hold its earlier work.
			const read = async () => {
				const { rows } = await client.query<{ n: string }>(
					"select (coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0))::text as n from pg_stat_xact_user_tables where relname = 'agent_commands'",
				);
				return Number(rows[0]?.n ?? 0);
			};
			await client.query("begin");
			const before = await read();
			// Over one client, so the counters are this transaction's.
			await writeStatus(drizzle({ client }), entries, null, "grown");
			const after = await read();
			await client.query("commit");
			// The one row, its update and its events' key check: a few probes, not the table.
			expect(after - before).toBeLessThan(20);
		} finally {
			client.release();
		}
		const { rows } = await pool.query<{ status: string }>("select status from agent_commands where id = $1", [id]);
		expect(rows[0]?.status).toBe("completed");
	});
});
