/**
 * PGlite runs no autovacuum: left alone, the embedded database's planner
 * never learns how large a table has grown and keeps choosing plans for an
 * empty one (sequential scans whose cost grows with every command). The
 * embedded server refreshes statistics itself, between clients' turns.
 */
import pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import { type EmbeddedPostgres, startEmbeddedPostgres } from "../../src/dev/embedded-postgres.ts";

let embedded: EmbeddedPostgres | undefined;
let client: pg.Client | undefined;

afterEach(async () => {
	await client?.end();
	await embedded?.stop();
	client = undefined;
	embedded = undefined;
});

async function until<T>(fn: () => Promise<T | undefined>, what: string, ms = 10_000): Promise<T> {
	const deadline = Date.now() + ms;
	for (;;) {
		const v = await fn();
		if (v !== undefined) return v;
		if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
		await new Promise((r) => setTimeout(r, 50));
	}
}

describe("the embedded Postgres", () => {
	it("learns how many rows a table holds without anyone running ANALYZE, and plans by key once it is large", async () => {
		embedded = await startEmbeddedPostgres({ analyzeEveryMs: 100 });
		client = new pg.Client({ connectionString: embedded.url });
		await client.connect();
		await client.query("create table items (id int primary key, body text not null)");
		await client.query("insert into items select n, repeat('x', 200) from generate_series(1, 20000) as n");

		const rows = await until(async () => {
			const { rows } = await client!.query<{ reltuples: number }>("select reltuples from pg_class where relname = 'items'");
			const n = Number(rows[0]?.reltuples);
			return n > 0 ? n : undefined;
		}, "statistics for the table");
		expect(rows).toBe(20000);
		// A lookup of a few keys from a set the planner cannot size, as the status write makes.
		const { rows: plan } = await client.query<{ "QUERY PLAN": string }>(
			"explain select * from jsonb_to_recordset('[{\"id\": 7}]') as u(id int) join items i on i.id = u.id",
		);
		expect(plan.map((r) => r["QUERY PLAN"]).join("\n")).toMatch(/Index Scan using items_pkey/);
	});
});
