/**
 * KNOWN BUG (issue 15, found by the chaos suite's `unclear` and `crashloop`
 * scenarios): a status write whose commit landed but whose reply was lost
 * (the connection cut after COMMIT, or the runtime killed before the object
 * marked its outbox flushed) is sent again, as it must be; transitions are
 * kept once (command_events.dedup_key), but output is appended again, so the
 * stored output holds the same chunks twice. This runs the same outbox batch
 * twice, as the object's retry does, against the embedded Postgres.
 *
 * `it.fails` while the bug stands: fixing it makes this fail, so drop `.fails`.
 */
import type { Pool } from "@neondatabase/serverless";
import { drizzle } from "drizzle-orm/neon-serverless";
import { afterAll, beforeAll, expect, it } from "vitest";
import type { Db } from "../../src/db/client.ts";
import * as schema from "../../src/db/schema.ts";
import { type KeyedEntry, writeStatus } from "../../src/db/status-writes.ts";
import { type EmbeddedPostgres, startEmbeddedPostgres } from "../../src/dev/embedded-postgres.ts";
import { runMigrations, withNodePool } from "../../src/dev/migrate.ts";

let pg: EmbeddedPostgres;

beforeAll(async () => {
	pg = await startEmbeddedPostgres({});
	await runMigrations(pg.url);
});

afterAll(async () => {
	await pg.stop();
});

it.fails("keeps a command's output once when the same status write is retried after an unclear commit", async () => {
	await withNodePool(pg.url, async (pool: Pool) => {
		const { rows } = await pool.query<{ id: string }>("insert into agent_commands (agent_id, action) values ('retry-agent', 'probe') returning id");
		const id = rows[0]?.id ?? "";
		const at = new Date().toISOString();
		const batch: KeyedEntry[] = [
			{ kind: "output", commandId: id, at, data: "out:1\n", key: "k-1" },
			{ kind: "output", commandId: id, at, data: "end\n", key: "k-2" },
		];
		// SAFETY: writeStatus takes the Pool flavour of Db, which this is.
		const db = drizzle({ client: pool, schema }) as unknown as Db;
		await writeStatus(db, batch, null, "retry-agent");
		// The reply to the first was lost: the object cannot tell it landed, and sends it again.
		await writeStatus(db, batch, null, "retry-agent");
		const out = await pool.query<{ output: string | null }>("select output from agent_commands where id = $1", [id]);
		expect(out.rows[0]?.output).toBe("out:1\nend\n");
	});
});
