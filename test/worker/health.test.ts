/**
 * Liveness and readiness. /healthz must not touch Postgres (a load balancer
 * polling it opened a connection per poll, and it answered late or 503 while
 * the workers were fine); /readyz asks Postgres at most once per isolate
 * every READY_PROBE_MS, however often it is polled.
 */
import { createExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { app } from "../../src/app";
import { BASE } from "../helpers/worker/harness";

async function sqlRequests(): Promise<number> {
	return Number(await (await fetch(`${env.TEST_RELAY_CONTROL}/sql-requests`)).text());
}

function get(path: string, overrides: Partial<Env> = {}): Promise<Response> {
	return Promise.resolve(app.fetch(new Request(`${BASE}${path}`), { ...env, ...overrides }, createExecutionContext()));
}

/** The test database under a URL no other test uses, so this isolate has no probe cached for it. */
function freshUrl(): string {
	const url = new URL(env.DATABASE_URL);
	url.searchParams.set("application_name", `probe-${crypto.randomUUID().slice(0, 8)}`);
	return url.toString();
}

describe("health", () => {
	it("/healthz answers without the database, and sends it nothing", async () => {
		const before = await sqlRequests();
		const dead = await get("/healthz", { DATABASE_URL: env.TEST_DEAD_DATABASE_URL });
		expect(dead.status).toBe(200);
		expect(await dead.json()).toEqual({ ok: true });
		await fetch(`${env.TEST_RELAY_CONTROL}/down`);
		try {
			const down = await get("/healthz");
			expect(down.status).toBe(200);
		} finally {
			await fetch(`${env.TEST_RELAY_CONTROL}/up`);
		}
		expect(await sqlRequests()).toBe(before);
	});

	it("/readyz reports a database that cannot be reached as 503", async () => {
		const res = await get("/readyz", { DATABASE_URL: env.TEST_DEAD_DATABASE_URL });
		expect(res.status).toBe(503);
		expect(res.headers.get("retry-after")).toBe("5");
		expect(await res.json()).toEqual({ ok: false, db: "unreachable" });
	});

	it("/readyz reports the relay's outage too", async () => {
		const url = freshUrl();
		await fetch(`${env.TEST_RELAY_CONTROL}/down`);
		try {
			expect((await get("/readyz", { DATABASE_URL: url })).status).toBe(503);
		} finally {
			await fetch(`${env.TEST_RELAY_CONTROL}/up`);
		}
	});

	it("/readyz sends one probe however often it is polled", async () => {
		const url = freshUrl();
		const before = await sqlRequests();
		// Concurrent polls share the probe under way; later ones reuse its answer.
		const first = await Promise.all(Array.from({ length: 5 }, () => get("/readyz", { DATABASE_URL: url })));
		const later = [];
		for (let i = 0; i < 5; i++) later.push(await get("/readyz", { DATABASE_URL: url }));
		for (const res of [...first, ...later]) {
			expect(res.status).toBe(200);
			expect(await res.json()).toEqual({ ok: true, db: "ok" });
		}
		expect((await sqlRequests()) - before).toBe(1);
	});
});
