/**
 * What the relay's `/sql` does when the worker stops waiting (its statement
 * deadline): the statement is cancelled the way libpq cancels, a statement
 * still queued for a connection never runs, and a connection whose statement
 * outlives its caller is dropped rather than held. Found by the chaos suite:
 * a 60 s blackhole between the relay and PgBouncer ended with PgBouncer 1.18
 * dead (its cancel bug, pgbouncer/pgbouncer#801) and the local stack's
 * database path down for good.
 */
import { afterEach, expect, it } from "vitest";
import { type Relay, startRelay } from "../../src/dev/relay.ts";
import { type Script, type ScriptedPostgres, scriptedPostgres } from "../helpers/node/scripted-postgres.ts";

let pg: ScriptedPostgres | undefined;
let relay: Relay | undefined;

afterEach(async () => {
	await relay?.close();
	await pg?.close();
	relay = pg = undefined;
});

async function start(script: Script, limits: { poolSize?: number; abandonMs?: number } = {}) {
	pg = await scriptedPostgres(script);
	relay = await startRelay({ allow: () => true, sqlLimits: limits });
	return { pg, relay };
}

function post(query: string, signal?: AbortSignal): Promise<Response> {
	if (!relay || !pg) throw new Error("start() first");
	return fetch(`http://127.0.0.1:${relay.port}/sql`, {
		method: "POST",
		headers: { "content-type": "application/json", "neon-connection-string": pg.url },
		body: JSON.stringify({ query, params: [] }),
		signal,
	});
}

/** Sends a query and gives up on it after `ms`, as the worker's deadline does. */
async function giveUpAfter(query: string, ms: number): Promise<void> {
	const res = await post(query, AbortSignal.timeout(ms)).catch((err: unknown) => err);
	expect(res).toBeInstanceOf(Error);
}

async function until(cond: () => boolean, what: string, ms = 5_000): Promise<void> {
	const end = Date.now() + ms;
	while (!cond()) {
		if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
		await new Promise((r) => setTimeout(r, 20));
	}
}

const hangs: Script["onQuery"] = (q) => {
	if (!q.text.startsWith("hang")) q.conn.answer();
};

it("keeps a cancel's socket open until the server has acted on it", async () => {
	await start({ onQuery: hangs, onCancel: (c) => c.refuse("57014", "canceling statement due to user request"), cancelCloseMs: 300 });
	await giveUpAfter("hang", 100);
	await until(() => pg?.cancels.length === 1, "the cancel");
	// Past the server's 300 ms to act on it: the relay's side must still have been open.
	await new Promise((r) => setTimeout(r, 400));
	expect(pg?.cancels).toEqual([{ processID: pg?.queries[0]?.conn.processID, clientHungUpFirst: false }]);
	// The cancelled statement's connection went back to the pool and serves the next one.
	expect((await post("select 1")).status).toBe(200);
	expect(pg?.queries.map((q) => q.text)).toEqual(["hang", "rollback", "select 1"]);
});

it("never runs a statement whose caller left while it waited for a connection", async () => {
	await start({ onQuery: hangs, onCancel: (c) => c.refuse("57014", "canceling statement due to user request") }, { poolSize: 1 });
	const first = post("hang");
	await until(() => pg?.queries.length === 1, "the first statement");
	await giveUpAfter("select queued", 100);
	await pg?.queries[0]?.conn.refuse("57014", "canceling statement due to user request");
	expect((await first).status).toBe(400);
	expect((await post("select after")).status).toBe(200);
	expect(pg?.queries.map((q) => q.text)).toEqual(["hang", "rollback", "select after"]);
});

it("drops a connection whose statement outlives its caller and its cancel", async () => {
	await start({ onQuery: hangs }, { poolSize: 1, abandonMs: 200 });
	await giveUpAfter("hang", 100);
	const held = pg?.queries[0]?.conn.processID;
	await until(() => pg?.cancels.length === 1, "the cancel");
	await until(() => pg?.closed.includes(held ?? -1) === true, "the abandoned connection to close", 3_000);
	// With the only pooled connection dropped, the next statement gets a new one.
	expect((await post("select 1")).status).toBe(200);
	expect(pg?.queries.at(-1)?.conn.processID).not.toBe(held);
});
