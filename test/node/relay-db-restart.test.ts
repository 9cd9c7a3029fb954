/**
 * Regression: a Postgres (or PgBouncer) that drops a connection while the
 * relay's SQL-over-HTTP path holds it checked out for a query took the whole
 * relay process down. pg's Pool listens for `error` only on idle clients;
 * a checked-out client's connection ending emits `error` with no listener,
 * an uncaught exception (found by the chaos suite's Postgres restart). The
 * request must answer 503 and the relay keep serving.
 */
import net from "node:net";
import { afterAll, beforeAll, expect, it } from "vitest";
import { type Relay, startRelay } from "../../src/dev/relay.ts";

/** A "Postgres" that accepts the startup, then drops the connection at the first query. */
function dyingPostgres(): Promise<net.Server> {
	const msg = (type: string, body: Buffer) => {
		const b = Buffer.alloc(5 + body.length);
		b.write(type, 0, "latin1");
		b.writeInt32BE(4 + body.length, 1);
		body.copy(b, 5);
		return b;
	};
	const server = net.createServer((socket) => {
		let startup = true;
		socket.on("error", () => {});
		socket.on("data", () => {
			if (!startup) return void socket.destroy();
			startup = false;
			const authOk = msg("R", Buffer.from([0, 0, 0, 0]));
			const ready = msg("Z", Buffer.from("I"));
			socket.write(Buffer.concat([authOk, ready]));
		});
	});
	return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

let pgServer: net.Server;
let relay: Relay;
let url: string;

beforeAll(async () => {
	pgServer = await dyingPostgres();
	const port = (pgServer.address() as net.AddressInfo).port;
	url = `postgres://postgres@127.0.0.1:${port}/db`;
	relay = await startRelay({ allow: () => true });
});

afterAll(async () => {
	await relay.close();
	await new Promise((r) => pgServer.close(r));
});

it("answers 503 when Postgres drops the connection mid-query, and keeps serving", async () => {
	const uncaught: unknown[] = [];
	const onUncaught = (err: unknown) => uncaught.push(err);
	process.on("uncaughtException", onUncaught);
	try {
		for (let i = 0; i < 2; i++) {
			const res = await fetch(`http://127.0.0.1:${relay.port}/sql`, {
				method: "POST",
				headers: { "content-type": "application/json", "neon-connection-string": url },
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
