/**
 * Deletes finished commands (and, by cascade, their events) older than the
 * retention period. Commands that are not finished are never touched, however
 * old. Each batch is one short statement, so no lock is held for long; a run
 * keeps going until nothing is due or its time budget is spent, so retention
 * keeps up with what enqueue admits (rate measured in docs/operations.md).
 */
import { type SQL, sql } from "drizzle-orm";
import { z } from "zod";
import { type DbConfig, requestDb } from "./db/client";
import { log } from "./log";

export const DEFAULT_RETENTION_DAYS = 30;
/** Rows per statement: each statement holds its row locks for tens of milliseconds at most. */
export const RETENTION_BATCH = 1000;
/**
 * Wall-clock time one run may spend starting batches. The cron fires every
 * minute and Cloudflare stops a scheduled invocation after 15 minutes of wall
 * time, and one on a schedule under an hour after 30 s of CPU time
 * (https://developers.cloudflare.com/workers/platform/limits/, "Duration" and
 * "CPU time"). Waiting on Postgres costs no CPU; 20 s leaves the recovery
 * pass its share of the minute and keeps one run from overlapping the next.
 */
export const RETENTION_BUDGET_MS = 20_000;

/** What a run reads of the worker's env (bench/tools/retention-rate.ts runs it from Node). */
export type RetentionEnv = DbConfig & { RETENTION_DAYS?: string };

export interface RetentionOptions {
	days?: number;
	batchSize?: number;
	/** No batch starts after this many ms; the first always runs. */
	budgetMs?: number;
}

export function retentionDays(env: RetentionEnv): number {
	const n = Number(env.RETENTION_DAYS);
	return Number.isFinite(n) && n >= 1 ? Math.floor(n) : DEFAULT_RETENTION_DAYS;
}

/**
 * One batch: the oldest due rows, read through agent_commands_finished_idx
 * (its predicate is this one), deleted by primary key. SKIP LOCKED lets two
 * runs that overlap share the work instead of queueing on each other's rows.
 * test/worker/query-plans.test.ts checks that an index serves it.
 */
export function retentionBatchQuery(days: number, batchSize: number): SQL {
	return sql`
		with doomed as (
			select id from agent_commands
			where status in ('completed','failed','cancelled','expired')
				and completed_at < now() - make_interval(days => ${days})
			order by completed_at
			limit ${batchSize}
			for update skip locked
		)
		delete from agent_commands where id in (select id from doomed) returning 1 as x`;
}

export async function deleteExpired(env: RetentionEnv, options: RetentionOptions = {}): Promise<number> {
	const days = options.days ?? retentionDays(env);
	const batchSize = options.batchSize ?? RETENTION_BATCH;
	const budgetMs = options.budgetMs ?? RETENTION_BUDGET_MS;
	const started = Date.now();
	let deleted = 0;
	let batches = 0;
	let more = true;
	// One connection for the whole run (one setup, not one per batch); each
	// batch is its own call, so the statement timeout bounds a batch, not the run.
	const database = requestDb(env);
	try {
		do {
			const res = await database.run((db) => db.execute(retentionBatchQuery(days, batchSize)));
			const n = z.array(z.unknown()).parse(res.rows).length;
			deleted += n;
			batches++;
			more = n === batchSize;
		} while (more && Date.now() - started < budgetMs);
	} finally {
		await database.close();
	}
	// `more`: the budget ran out with rows still due; the next minute's run goes on.
	if (deleted > 0) log(more ? "warn" : "info", "retention.run", { deleted, batches, days, more, ms: Date.now() - started });
	return deleted;
}
