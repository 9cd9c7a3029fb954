/**
 * Regression: a Postgres (or PgBouncer) that drops a connection while the
 * relay's SQL-over-HTTP path holds it checked out for a query took the whole
 * relay process down. pg's Pool listens for `error` only on idle clients;
 * a checked-out client's connection ending emits `error` with no listener,
 * an uncaught exception (found by the chaos suite's Postgres restart). The
 * request must answer 503 and the relay keep serving.
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import { type Relay, startRelay } from "../../src/dev/relay.ts";
import { type ScriptedPostgres, scriptedPostgres } from "../helpers/node/scripted-postgres.ts";

let pg: ScriptedPostgres;
let relay: Relay;

beforeAll(async () => {
	// A "Postgres" that accepts the start-up, then drops the connection at the first query.
	pg = await scriptedPostgres({ onQuery: (q) => void q.conn.socket.destroy() });
	relay = await startRelay({ allow: () => true });
});

afterAll(async () => {
	await relay.close();
	await pg.close();
});

it("answers 503 when Postgres drops the connection mid-query, and keeps serving", async () => {
	const uncaught: unknown[] = [];
	const onUncaught = (err: unknown) => uncaught.push(err);
	process.on("uncaughtException", onUncaught);
	try {
		for (let i = 0; i < 2; i++) {
			const res = await fetch(`http://127.0.0.1:${relay.port}/sql`, {
				method: "POST",
				headers: { "content-type": "application/json", "neon-connection-string": pg.url },
				body: JSON.stringify({ query: "select 1", params: [] }),
			});
			expect(res.status).toBe(503);
		}
		await new Promise((r) => setTimeout(r, 100));
	} finally {
		process.off("uncaughtException", onUncaught);
	}
	expect(uncaught.map(String)).toEqual([]);
});
