/**
 * A status write whose commit landed but whose reply was lost (the
 * connection cut after COMMIT, or the runtime killed before the object
 * marked its outbox flushed) is sent again, as it must be. Transitions were
 * always kept once (command_events.dedup_key); output was appended again
 * until migration 0013, so the stored output held the same chunks twice
 * (found by the chaos suite's `unclear` and `crashloop` scenarios). This
 * runs the same outbox batch twice, as the object's retry does, and then a
 * batch that repeats it and carries one chunk more.
 */
import type { Pool } from "@neondatabase/serverless";
import { drizzle } from "drizzle-orm/neon-serverless";
import { afterAll, beforeAll, expect, it } from "vitest";
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

it("keeps a command's output once when the same status write is retried after an unclear commit", async () => {
	await withNodePool(pg.url, async (pool: Pool) => {
		const { rows } = await pool.query<{ id: string }>("insert into agent_commands (agent_id, action) values ('retry-agent', 'probe') returning id");
		const id = rows[0]?.id ?? "";
		const at = new Date().toISOString();
		const batch: KeyedEntry[] = [
			// Keys as the object's journal makes them: <storage epoch>:j<outbox seq>.
			{ kind: "output", commandId: id, at, data: "out:1\n", key: "e1:j7" },
			{ kind: "output", commandId: id, at, data: "end\n", key: "e1:j8" },
		];
		const db = drizzle({ client: pool });
		await writeStatus(db, batch, null, "retry-agent");
		// The reply to the first was lost: the object cannot tell it landed, and sends it again.
		await writeStatus(db, batch, null, "retry-agent");
		const output = async () => (await pool.query<{ output: string | null }>("select output from agent_commands where id = $1", [id])).rows[0]?.output;
		expect(await output()).toBe("out:1\nend\n");
		// Lost again, and meanwhile one more chunk came: the retry carries all three; only the new one lands.
		await writeStatus(db, [...batch, { kind: "output", commandId: id, at, data: "more\n", key: "e1:j9" }], null, "retry-agent");
		expect(await output()).toBe("out:1\nend\nmore\n");
		// A new object lifetime (its storage lost) counts from 1 again: its chunks are new.
		await writeStatus(db, [{ kind: "output", commandId: id, at, data: "after\n", key: "e2:j1" }], null, "retry-agent");
		expect(await output()).toBe("out:1\nend\nmore\nafter\n");
	});
});
