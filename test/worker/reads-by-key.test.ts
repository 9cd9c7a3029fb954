/**
 * The two statements every command pays for, the enqueue's insert and the
 * object's status write, touch rows by key. Postgres cannot know how many
 * rows their JSON input holds (it guesses 100, or 1,000 for a function's
 * table) and with that guess, on tables of a few thousand rows (every new
 * deployment), planned whole-table scans and hash joins that it then kept
 * for the life of the connection (migrations/0015, 0016). Checked through
 * the same driver path the worker and the objects use, by the rows Postgres
 * counted as read, in a transaction that fills the tables first and is
 * rolled back.
 */
import { sql } from "drizzle-orm";
import { describe, expect, it } from "vitest";
import type { Db } from "../../src/db/client";
import { insertCommand } from "../../src/db/enqueue";
import { writeStatus } from "../../src/db/status-writes";
import { EnqueueRequest } from "../../src/protocol";
import { db, uniqueAgentId } from "../helpers/worker/harness";

const FILLER = 3_000;

interface Reads {
	agents: number;
	commands: number;
}

class RolledBack extends Error {
	constructor(readonly value: unknown) {
		super("rolled back on purpose");
	}
}

/** Runs `fn` in a transaction that is rolled back afterwards, with `FILLER` more agents and finished commands. */
async function inFilledTables<T>(fn: (tx: Db) => Promise<T>): Promise<T> {
	try {
		await db((d) =>
			d.transaction(async (tx) => {
				const filler = `filler-${crypto.randomUUID()}`;
				await tx.execute(sql`insert into agents (id) select ${filler} || g from generate_series(1, ${FILLER}) g`);
				await tx.execute(sql`insert into agent_commands (agent_id, action, status, completed_at)
					select ${filler} || g, 'filler', 'completed', now() from generate_series(1, ${FILLER}) g`);
				// SAFETY: the code under test only calls execute(), which a transaction has.
				throw new RolledBack(await fn(tx as unknown as Db));
			}),
		);
	} catch (err) {
		// SAFETY: only this function throws RolledBack, with fn's result.
		if (err instanceof RolledBack) return err.value as T;
		throw err;
	}
	throw new Error("the transaction was meant to roll back");
}

/** Rows read from agents and agent_commands so far in this transaction, by any scan. */
async function reads(tx: Db): Promise<Reads> {
	const { rows } = await tx.execute<{ relname: string; n: string }>(sql`
		select relname, (coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0))::text as n
		from pg_stat_xact_user_tables where relname in ('agents', 'agent_commands')`);
	const of = (name: string) => Number(rows.find((r) => r.relname === name)?.n ?? 0);
	return { agents: of("agents"), commands: of("agent_commands") };
}

const readBetween = (before: Reads, after: Reads): Reads => ({
	agents: after.agents - before.agents,
	commands: after.commands - before.commands,
});

describe("the statements every command pays for", () => {
	it("an enqueue reads its agent by key, not the whole agents table", async () => {
		const agentId = uniqueAgentId();
		const { read, created } = await inFilledTables(async (tx) => {
			const before = await reads(tx);
			const res = await insertCommand(tx, agentId, EnqueueRequest.parse({ action: "probe" }), "test", 10_000);
			return { read: readBetween(before, await reads(tx)), created: res.created };
		});
		expect(created).toBe(true);
		// The agent's row, once, and the backlog count over its open commands (none).
		expect(read.agents, JSON.stringify(read)).toBeLessThan(10);
		expect(read.commands, JSON.stringify(read)).toBeLessThan(10);
	});

	it("a status write reads its commands by key, however the table grew", async () => {
		const agentId = uniqueAgentId();
		const { read, status } = await inFilledTables(async (tx) => {
			const enqueued = await insertCommand(tx, agentId, EnqueueRequest.parse({ action: "probe" }), "test", 10_000);
			const id = enqueued.command?.id ?? "";
			const at = new Date().toISOString();
			const before = await reads(tx);
			await writeStatus(
				tx,
				[
					{ kind: "transition", commandId: id, from: "pending", to: "dispatched", at, attempts: 1, key: `plan-test:${id}:1` },
					{ kind: "transition", commandId: id, from: "dispatched", to: "completed", at, attempts: 1, result: { ok: true }, key: `plan-test:${id}:2` },
				],
				{ agentId, connected: true, lastConnectedAt: at, lastSeenAt: at, outboxDepth: 0 },
			);
			const read = readBetween(before, await reads(tx));
			const { rows } = await tx.execute<{ status: string }>(sql`select status from agent_commands where id = ${id}`);
			return { read, status: rows[0]?.status };
		});
		expect(status).toBe("completed");
		// A few probes of the one row (its update, its events' key check), not thousands.
		expect(read.commands, JSON.stringify(read)).toBeLessThan(20);
		expect(read.agents, JSON.stringify(read)).toBeLessThan(10);
	});
});
