/**
 * Durability floor, in its own process: single-row INSERTs through the same
 * driver (@neondatabase/serverless Pool) and the same relay (src/dev/relay.ts)
 * the worker uses. Sequential latency, then sequential and concurrent rates.
 */
import { Pool } from "@neondatabase/serverless";
import { useRelay } from "../../src/dev/migrate.ts";
import { loopbackOnly, startRelay } from "../../src/dev/relay.ts";
import { makePayload } from "../lib/payload.ts";
import { serve } from "../lib/rpc.ts";
import { wallNow } from "../lib/stats.ts";

const TABLE = "bench_insert_floor";

async function run(a: { url: string; count: number; concurrency: number; durationMs: number; freshPool: boolean }) {
	const target = new URL(a.url);
	const relay = await startRelay({ allow: (h) => loopbackOnly(h) && h === target.hostname });
	useRelay(relay.proxy);
	const pool = new Pool({ connectionString: a.url, max: a.concurrency });
	pool.on("error", () => {});
	try {
		await pool.query(`create table if not exists ${TABLE} (id uuid primary key default gen_random_uuid(), agent_id text not null, payload jsonb not null, created_at timestamptz not null default now())`);
		await pool.query(`truncate ${TABLE}`);
		const insert = (p: Pool, i: number) =>
			p.query(`insert into ${TABLE} (agent_id, payload) values ($1, $2)`, [`agent-${i % 100}`, JSON.stringify(makePayload(i))]);
		// Latency: one at a time on a warm pool.
		const latency: number[] = [];
		const seqStart = wallNow();
		for (let i = 0; i < a.count; i++) {
			const t = wallNow();
			await insert(pool, i);
			latency.push(wallNow() - t);
		}
		const sequentialRate = (a.count / (wallNow() - seqStart)) * 1000;
		// Like the worker: a pool opened and closed around each statement (a new relay socket and Postgres session).
		const fresh: number[] = [];
		for (let i = 0; i < Math.min(200, a.count); i++) {
			const t = wallNow();
			const p = new Pool({ connectionString: a.url, max: 1 });
			p.on("error", () => {});
			await insert(p, i);
			await p.end();
			fresh.push(wallNow() - t);
		}
		// Concurrent rate: `concurrency` connections inserting flat out.
		let done = 0;
		const start = wallNow();
		await Promise.all(
			Array.from({ length: a.concurrency }, async () => {
				while (wallNow() - start < a.durationMs) await insert(pool, done++);
			}),
		);
		const concurrentRate = (done / (wallNow() - start)) * 1000;
		const { rows } = await pool.query(`select count(*)::int as n from ${TABLE}`);
		return { latency, fresh, sequentialRate, concurrentRate, rows: (rows[0] as { n: number }).n, concurrency: a.concurrency };
	} finally {
		await pool.query(`drop table if exists ${TABLE}`).catch(() => {});
		await pool.end().catch(() => {});
		await relay.close();
	}
}

serve({ run });
