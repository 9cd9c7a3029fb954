/**
 * Every statement is bounded in time (DB_STATEMENT_TIMEOUT_MS): a hung query
 * becomes a 503 the client retries, or a retry in the agent's object, never
 * a request or an object waiting on it for as long as it hangs.
 */
import { createExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { app } from "../../src/app";
import { DbUnavailableError, objectDb, statementTimeout, withDb } from "../../src/db/client";
import { httpDb } from "../../src/db/http";
import { API_KEY, BASE, expectError, query, sql, uniqueAgentId } from "../helpers/worker/harness";

const SLOW_SECONDS = 2;
const short = { ...env, DB_STATEMENT_TIMEOUT_MS: "300" };

/**
 * Holds the `agents` table for SLOW_SECONDS from another connection: a real
 * server blocks statements on the lock, the embedded one (one session) blocks
 * every statement until the transaction ends.
 */
function holdAgentsTable(): Promise<unknown> {
	return withDb(env, (db) =>
		db.transaction(async (tx) => {
			await tx.execute(sql`lock table agents in access exclusive mode`);
			await tx.execute(sql`select pg_sleep(${SLOW_SECONDS})`);
		}),
	);
}

describe("statement timeout", () => {
	it("reads DB_STATEMENT_TIMEOUT_MS: 100 ms to 300 s, otherwise 15 s", () => {
		expect(statementTimeout({ DATABASE_URL: "", DB_STATEMENT_TIMEOUT_MS: "250" })).toBe(250);
		for (const bad of [undefined, "", "0", "99", "300001", "1.5", "abc"]) {
			expect(statementTimeout({ DATABASE_URL: "", DB_STATEMENT_TIMEOUT_MS: bad })).toBe(15_000);
		}
	});

	it("the worker's path abandons a slow statement as the database being unavailable", async () => {
		const started = Date.now();
		const err = await httpDb(short)
			.run((db) => db.execute(sql`select pg_sleep(${SLOW_SECONDS})`))
			.catch((e: unknown) => e);
		expect(err).toBeInstanceOf(DbUnavailableError);
		// Without the deadline it would return after the whole sleep.
		expect(Date.now() - started).toBeLessThan(SLOW_SECONDS * 1000);
	});

	it("a request whose statement hangs answers 503 with Retry-After, in JSON", async () => {
		const holder = holdAgentsTable();
		try {
			await new Promise((r) => setTimeout(r, 200)); // the lock is taken
			const started = Date.now();
			const res = await app.fetch(
				new Request(`${BASE}/v1/agents?limit=1`, { headers: { authorization: `Bearer ${API_KEY}` } }),
				short,
				createExecutionContext(),
			);
			expect(Date.now() - started).toBeLessThan(SLOW_SECONDS * 1000);
			expect(res.headers.get("retry-after")).toBe("5");
			await expectError(res, 503, "db_unavailable");
		} finally {
			await holder;
		}
	});

	it("the object's path abandons a slow statement and drops its connection", async () => {
		const db = objectDb(short);
		try {
			const started = Date.now();
			const err = await db.run((d) => d.execute(sql`select pg_sleep(${SLOW_SECONDS})`)).catch((e: unknown) => e);
			expect(err).toBeInstanceOf(DbUnavailableError);
			expect(Date.now() - started).toBeLessThan(SLOW_SECONDS * 1000);
			// The next statement gets a connection of its own, not the one still sleeping.
			const after = await db.run((d) => d.execute(sql`select 1 as one`));
			expect(after.rows).toEqual([{ one: 1 }]);
		} finally {
			await db.close();
		}
	});

	// A drizzle query runs its statement on every then(); the deadline race
	// awaited it twice, so a retention batch deleted two batches and counted one.
	it("the object's path runs a drizzle query it is handed once, not twice", async () => {
		const db = objectDb(env);
		const agentId = uniqueAgentId("once");
		try {
			await db.run((d) => d.execute(sql`insert into agents (id) select ${agentId} || '-' || (select count(*) from agents where id like ${`${agentId}-%`})`));
		} finally {
			await db.close();
		}
		const rows = await query<{ id: string }>(sql`select id from agents where id like ${`${agentId}-%`}`);
		await query(sql`delete from agents where id like ${`${agentId}-%`}`);
		expect(rows.map((r) => r.id)).toEqual([`${agentId}-0`]);
	});
});
