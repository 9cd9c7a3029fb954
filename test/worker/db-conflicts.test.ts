/**
 * Postgres gives up on a transaction because of others (serialization
 * failure 40001, deadlock 40P01, lock timeout 55P03) and rolls it back: the
 * same statement may well succeed a moment later. The worker's path runs it
 * again a few times, and if the conflict outlasts that, answers 503 with
 * Retry-After, never a bare 500.
 */
import { createExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { DrizzleQueryError } from "drizzle-orm/errors";
import { describe, expect, it } from "vitest";
import { app } from "../../src/app";
import { classifyDbError, DbConflictError, DbQueryError, DbUnavailableError } from "../../src/db/client";
import { CONFLICT_RETRY, conflictRetryingFetch } from "../../src/db/retry";
import { API_KEY, BASE, expectError, query, sql, uniqueAgentId, waitFor, withDbHeld } from "../helpers/worker/harness";

function driverError(code: string): Error {
	// What the Neon driver throws for a statement Postgres refused, as drizzle wraps it.
	const cause = Object.assign(new Error("refused"), { name: "NeonDbError", code });
	return new DrizzleQueryError("insert into agent_commands …", [], cause);
}

describe("classifying what Postgres refused", () => {
	it.each(["40001", "40P01", "55P03"])("%s is a conflict, still a refusal to the object's salvage path", (code) => {
		const err = classifyDbError(driverError(code));
		expect(err).toBeInstanceOf(DbConflictError);
		expect(err).toBeInstanceOf(DbQueryError);
		expect((err as DbConflictError).sqlState).toBe(code);
	});

	it("a constraint is a refusal, not a conflict; a shutdown is an outage", () => {
		const unique = classifyDbError(driverError("23505"));
		expect(unique).toBeInstanceOf(DbQueryError);
		expect(unique).not.toBeInstanceOf(DbConflictError);
		expect(classifyDbError(driverError("57P01"))).toBeInstanceOf(DbUnavailableError);
	});
});

/** A fake /sql endpoint answering with `codes` in turn (null: success), recording each wait. */
function scripted(codes: (string | null)[]) {
	const calls: number[] = [];
	const waits: number[] = [];
	let clock = 0;
	const fetchFn = async (): Promise<Response> => {
		calls.push(clock);
		const code = codes[Math.min(calls.length - 1, codes.length - 1)];
		return code
			? Response.json({ message: "conflict", code }, { status: 400 })
			: Response.json({ command: "SELECT", rows: [] }, { status: 200 });
	};
	const deadlines = new WeakMap<AbortSignal, number>();
	const retrying = conflictRetryingFetch(deadlines, {
		fetch: fetchFn,
		now: () => clock,
		sleep: async (ms) => {
			waits.push(ms);
			clock += ms;
		},
		random: () => 1,
	});
	const run = async (deadlineAt = 15_000) => {
		const signal = new AbortController().signal;
		deadlines.set(signal, deadlineAt);
		return (await retrying("http://db/sql", { method: "POST", body: "{}", signal })).status;
	};
	return { run, calls, waits };
}

describe("the worker's retry of a conflict", () => {
	it("sends the statement again after a conflict, and returns the first success", async () => {
		const s = scripted(["40P01", "55P03", null]);
		expect(await s.run()).toBe(200);
		expect(s.calls).toHaveLength(3);
	});

	it("backs off exponentially with full jitter, capped, for a bounded number of attempts", async () => {
		const s = scripted(["40001"]);
		expect(await s.run()).toBe(400);
		expect(s.calls).toHaveLength(CONFLICT_RETRY.attempts);
		expect(s.waits).toEqual(
			Array.from({ length: CONFLICT_RETRY.attempts - 1 }, (_, i) =>
				Math.min(CONFLICT_RETRY.capMs, CONFLICT_RETRY.baseMs * 2 ** i),
			),
		);
	});

	it("never waits past the statement deadline", async () => {
		const s = scripted(["40001"]);
		expect(await s.run(CONFLICT_RETRY.baseMs)).toBe(400);
		expect(s.calls).toHaveLength(1);
		expect(s.waits).toEqual([]);
	});

	it("does not repeat a statement refused for any other reason, or one that succeeded", async () => {
		const refused = scripted(["23505", null]);
		expect(await refused.run()).toBe(400);
		expect(refused.calls).toHaveLength(1);
		const ok = scripted([null]);
		expect(await ok.run()).toBe(200);
		expect(ok.calls).toHaveLength(1);
	});
});

/** Requests to the relay's /sql (the worker's HTTP query path) so far. */
async function sqlRequests(): Promise<number> {
	return Number(await (await fetch(`${env.TEST_RELAY_CONTROL}/sql-requests`)).text());
}

/** The worker's env with every statement it sends giving up on a lock after `ms` (55P03). */
function lockTimeoutEnv(ms: number) {
	const url = new URL(env.DATABASE_URL);
	url.searchParams.set("options", `-c lock_timeout=${ms}`);
	return { ...env, DATABASE_URL: url.toString() };
}

async function enqueueWith(workerEnv: Env, agentId: string): Promise<Response> {
	return app.fetch(
		new Request(`${BASE}/v1/agents/${agentId}/commands`, {
			method: "POST",
			headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
			body: JSON.stringify({ action: "contended" }),
		}),
		workerEnv,
		createExecutionContext(),
	);
}

// The embedded database is one session: a lock held by one connection blocks
// every statement of the others until it ends, so no lock wait times out there.
describe.skipIf(env.TEST_DATABASE_KIND !== "postgres")("a request that meets a lock (real Postgres)", () => {
	it("an enqueue that timed out on a lock is sent again, and written once (201)", async () => {
		const agentId = uniqueAgentId("contended");
		const before = await sqlRequests();
		const { pending } = await withDbHeld(sql`lock table agents in access exclusive mode`, async () => {
			const pending = enqueueWith(lockTimeoutEnv(1_000), agentId);
			// A second statement starts only after the first gave up on the lock: release it then.
			await waitFor(async () => (await sqlRequests()) >= before + 2, "the statement to be sent again");
			return { pending };
		});
		expect((await pending).status).toBe(201);
		const [row] = await query<{ n: number }>(sql`select count(*)::int as n from agent_commands where agent_id = ${agentId}`);
		expect(row?.n).toBe(1);
	});

	it("a lock held past every attempt answers 503 db_conflict with Retry-After, and writes nothing", async () => {
		const agentId = uniqueAgentId("contended");
		const before = await sqlRequests();
		const res = await withDbHeld(sql`lock table agents in access exclusive mode`, () =>
			enqueueWith(lockTimeoutEnv(100), agentId),
		);
		expect(res.headers.get("retry-after")).toBe("1");
		await expectError(res, 503, "db_conflict");
		expect((await sqlRequests()) - before).toBe(CONFLICT_RETRY.attempts);
		const [row] = await query<{ n: number }>(sql`select count(*)::int as n from agent_commands where agent_id = ${agentId}`);
		expect(row?.n).toBe(0);
	});
});
