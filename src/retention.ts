/**
 * Deletes finished commands (and, by cascade, their events) older than the
 * retention period, in bounded batches so one run never holds a long lock.
 * Commands that are not finished are never touched, however old.
 */
import { sql } from "drizzle-orm";
import { z } from "zod";
import { withDb } from "./db/client";
import { log } from "./log";

export const DEFAULT_RETENTION_DAYS = 30;
const BATCH = 1000;
const MAX_BATCHES_PER_RUN = 20;

export function retentionDays(env: Env): number {
	const n = Number(env.RETENTION_DAYS);
	return Number.isFinite(n) && n >= 1 ? Math.floor(n) : DEFAULT_RETENTION_DAYS;
}

export async function deleteExpired(env: Env, days = retentionDays(env)): Promise<number> {
	let deleted = 0;
	for (let i = 0; i < MAX_BATCHES_PER_RUN; i++) {
		const n = await withDb(env, async (db) => {
			const res = await db.execute(sql`
				with doomed as (
					select id from agent_commands
					where status in ('completed','failed','cancelled','expired')
						and completed_at < now() - make_interval(days => ${days})
					limit ${BATCH}
				)
				delete from agent_commands where id in (select id from doomed) returning 1 as x`);
			return z.array(z.unknown()).parse(res.rows).length;
		});
		deleted += n;
		if (n < BATCH) break;
	}
	if (deleted > 0) log("info", "retention.run", { deleted, days });
	return deleted;
}
