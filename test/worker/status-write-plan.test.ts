/**
 * The object's status write touches commands by key. Postgres cannot know
 * how many rows its JSON input holds and guessed 100, so on a table of a
 * few thousand rows (every new deployment) it scanned the whole table for
 * each write (migrations/0015). Checked through the same driver path the
 * objects use, by what Postgres counted for the transaction.
 */
import { sql } from "drizzle-orm";
import { describe, expect, it } from "vitest";
import type { Db } from "../../src/db/client";
import { writeStatus } from "../../src/db/status-writes";
import { db, enqueue, query, uniqueAgentId } from "../helpers/worker/harness";

describe("a status write", () => {
	it("reads agent_commands by key, never by scanning it, however small the table", async () => {
		const agentId = uniqueAgentId();
		const cmd = await enqueue(agentId, { action: "probe" });
		const at = new Date().toISOString();
		const scans = await db((d) =>
			d.transaction(async (tx) => {
				await writeStatus(
					// SAFETY: writeStatus only calls execute(), which a transaction has.
					tx as unknown as Db,
					[{ kind: "transition", commandId: cmd.id, from: "pending", to: "dispatched", at, attempts: 1, key: `plan-test:${cmd.id}` }],
					null,
					agentId,
				);
				const { rows } = await tx.execute<{ seq_scan: string; idx_scan: string }>(
					sql`select seq_scan::text, idx_scan::text from pg_stat_xact_user_tables where relname = 'agent_commands'`,
				);
				return rows[0];
			}),
		);
		const [row] = await query<{ status: string }>(sql`select status from agent_commands where id = ${cmd.id}`);
		expect(row?.status).toBe("dispatched");
		expect(Number(scans?.idx_scan)).toBeGreaterThan(0);
		expect(Number(scans?.seq_scan)).toBe(0);
	});
});
