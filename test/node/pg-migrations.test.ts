/**
 * A deployed database is upgraded, never recreated: a migration that changes
 * what stored rows mean must carry the old rows over. Checked by applying
 * the migrations up to the one before, writing data the old way, then
 * upgrading to the current set, on the embedded Postgres (and on a real
 * server too when SWITCHYARD_TEST_PG_URL names one).
 */
import type { Pool } from "@neondatabase/serverless";
import { drizzle } from "drizzle-orm/neon-serverless";
import { migrate } from "drizzle-orm/neon-serverless/migrator";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Histogram, LATENCY_BUCKETS, snapshot } from "../../src/db/metrics.ts";
import { startEmbeddedPostgres } from "../../src/dev/embedded-postgres.ts";
import { MIGRATIONS_DIR, withNodePool } from "../../src/dev/migrate.ts";

/** The migrations folder as it was before `tag`: journal and files up to the one before it. */
function migrationsBefore(tag: string): string {
	const dir = mkdtempSync(join(tmpdir(), "switchyard-migrations-"));
	cpSync(MIGRATIONS_DIR, dir, { recursive: true });
	const journalPath = join(dir, "meta", "_journal.json");
	const journal = JSON.parse(readFileSync(journalPath, "utf8")) as { entries: { tag: string }[] };
	const at = journal.entries.findIndex((e) => e.tag === tag);
	if (at < 0) throw new Error(`no migration ${tag}`);
	journal.entries = journal.entries.slice(0, at);
	writeFileSync(journalPath, JSON.stringify(journal));
	return dir;
}

/** Commands dispatched `seconds` after they were created, and completed as long again after: the triggers observe both. */
async function observe(pool: Pool, seconds: number[]): Promise<void> {
	for (const d of seconds) {
		const { rows } = await pool.query<{ id: string }>(
			"insert into agent_commands (agent_id, action, created_at) values ('upgrade-agent', 'probe', now() - make_interval(secs => $1::float8 * 2)) returning id",
			[d],
		);
		const id = rows[0]?.id;
		await pool.query("update agent_commands set status = 'dispatched', first_dispatched_at = created_at + make_interval(secs => $2::float8) where id = $1", [id, d]);
		await pool.query("update agent_commands set status = 'completed', completed_at = first_dispatched_at + make_interval(secs => $2::float8) where id = $1", [id, d]);
	}
}

/** A histogram as migration 0005 stored it: one cumulative row per bound, plus count and sum. */
async function cumulativeRows(pool: Pool, name: string): Promise<Histogram> {
	const { rows } = await pool.query<{ label: string; value: number }>(
		"select label, sum(value)::float8 as value from metric_counters where name = $1 group by label",
		[name],
	);
	const get = (label: string) => rows.find((r) => r.label === label)?.value ?? 0;
	return { buckets: LATENCY_BUCKETS.map((le) => get(String(le))), count: get("count"), sum: get("sum") };
}

interface Server {
	url: string;
	stop(): Promise<void>;
}
const servers: { kind: string; start: () => Promise<Server> }[] = [{ kind: "embedded", start: () => startEmbeddedPostgres({}) }];
const realServer = process.env.SWITCHYARD_TEST_PG_URL;
if (realServer) {
	servers.push({
		kind: "postgres",
		start: async () => {
			const name = `${process.env.SWITCHYARD_TEST_DB ?? "switchyard_test"}_upgrade`;
			await withNodePool(realServer, async (pool) => {
				await pool.query(`drop database if exists ${name} with (force)`);
				await pool.query(`create database ${name}`);
			});
			const url = new URL(realServer);
			url.pathname = `/${name}`;
			return { url: url.toString(), stop: async () => {} };
		},
	});
}

describe.each(servers)("upgrading a database in use ($kind)", ({ start }) => {
	let server: Server;
	let url: string;
	let before: string;
	beforeAll(async () => {
		server = await start();
		url = server.url;
		before = migrationsBefore("0006_latency_buckets");
	});
	afterAll(async () => {
		rmSync(before, { recursive: true, force: true });
		await server?.stop();
	});

	it("keeps every latency already observed when the histogram changes to one row per bucket", async () => {
		const latencies = [0.003, 0.02, 0.02, 0.7, 4, 400];
		const old = await withNodePool(url, async (pool) => {
			await migrate(drizzle({ client: pool }), { migrationsFolder: before });
			await observe(pool, latencies);
			return cumulativeRows(pool, "dispatch_to_completion_seconds");
		});
		expect(old.count).toBe(latencies.length);

		const after = await withNodePool(url, async (pool) => {
			await migrate(drizzle({ client: pool }), { migrationsFolder: MIGRATIONS_DIR });
			const db = drizzle({ client: pool });
			const upgraded = await snapshot(db);
			await observe(pool, [0.04]);
			return { upgraded, next: await snapshot(db) };
		});
		for (const h of [after.upgraded.dispatchToCompletion, after.upgraded.enqueueToDispatch]) {
			expect(h.buckets).toEqual(old.buckets);
			expect(h.count).toBe(old.count);
			expect(h.sum).toBeCloseTo(old.sum, 6);
		}
		// And it goes on counting: 0.04 s lands in le=0.05 and every bucket above it.
		const next = after.next.dispatchToCompletion;
		const grew = LATENCY_BUCKETS.map((le, i) => (next.buckets[i] ?? 0) - (old.buckets[i] ?? 0));
		expect(grew).toEqual(LATENCY_BUCKETS.map((le) => (le >= 0.05 ? 1 : 0)));
		expect(next.count).toBe(latencies.length + 1);
		expect(next.sum).toBeCloseTo(old.sum + 0.04, 6);
	});

	it("that upgrade applied every migration, 0008's scan indexes included", async () => {
		const { rows } = await withNodePool(url, (pool) =>
			pool.query<{ indexname: string }>("select indexname from pg_indexes where schemaname = 'public' order by indexname"),
		);
		expect(rows.map((r) => r.indexname)).toEqual(
			expect.arrayContaining(["agent_commands_finished_idx", "agent_commands_open_status_idx", "agents_connected_idx", "agents_outbox_idx"]),
		);
	});
});

// drizzle's migrator applies only the migrations whose `when` is later than
// the last one a database has: one stamped earlier than its predecessor (as
// drizzle-kit stamps a migration made on a branch while a later one was
// merged) would be skipped on every database already past that predecessor.
it("each migration in the journal is stamped later than the one before", () => {
	const journal = JSON.parse(readFileSync(join(MIGRATIONS_DIR, "meta", "_journal.json"), "utf8")) as { entries: { tag: string; when: number }[] };
	const late = journal.entries.filter((e, i) => i > 0 && e.when <= (journal.entries[i - 1]?.when ?? 0)).map((e) => e.tag);
	expect(late).toEqual([]);
});
