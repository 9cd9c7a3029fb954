/**
 * How fast retention deletes, on a real PostgreSQL. Recreates one database,
 * migrates it, seeds finished commands past the period (each with its audit
 * events) beside recent finished and open ones, then calls deleteExpired as
 * the minute cron does (same code, same Neon driver, through the local relay)
 * until nothing is due, and prints each run's rows, time and rate.
 *
 *   npx tsx bench/tools/retention-rate.ts --rows 300000 --events 4 \
 *     --server postgres://postgres:postgres@127.0.0.1:5432/postgres --db switchyard_retention_bench
 *
 * Flags: --batch (rows per statement), --budget (ms per run), --keep (recent
 * finished rows to seed, untouched), --drop (drop the database at the end),
 * --seed-only (stop before deleting).
 */
import { runMigrations, withNodePool } from "../../src/dev/migrate.ts";
import { loopbackOnly, startRelay } from "../../src/dev/relay.ts";
import { deleteExpired, RETENTION_BATCH, RETENTION_BUDGET_MS } from "../../src/retention.ts";

const arg = (name: string, dflt: string) => {
	const i = process.argv.indexOf(`--${name}`);
	return i > 0 ? (process.argv[i + 1] ?? dflt) : dflt;
};
const rows = Number(arg("rows", "300000"));
const events = Number(arg("events", "4"));
const keep = Number(arg("keep", "100000"));
const batchSize = Number(arg("batch", String(RETENTION_BATCH)));
const budgetMs = Number(arg("budget", String(RETENTION_BUDGET_MS)));
const server = arg("server", "postgres://postgres:postgres@127.0.0.1:5432/postgres");
const name = arg("db", "switchyard_retention_bench");
if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`--db must be a plain identifier, got ${name}`);
if (!name.includes("bench")) throw new Error(`--db ${name}: refusing to drop a database whose name does not say bench`);

const url = new URL(server);
url.pathname = `/${name}`;
await withNodePool(server, async (pool) => {
	await pool.query(`drop database if exists ${name} with (force)`);
	await pool.query(`create database ${name}`);
});
await runMigrations(url.toString());

const seedStarted = performance.now();
await withNodePool(url.toString(), async (pool) => {
	const chunk = 50_000;
	const finished = ["completed", "failed", "cancelled", "expired"];
	const seed = async (count: number, ageDays: number, status: (i: number) => string) => {
		for (let from = 0; from < count; from += chunk) {
			const n = Math.min(chunk, count - from);
			const statuses = Array.from({ length: n }, (_, i) => status(from + i));
			// Commands of 1,000 agents, finished at spread-out times, with the payload
			// and result a small command carries; then `events` events each.
			await pool.query(
				`with c as (
					insert into agent_commands (agent_id, action, payload, status, attempts, result, created_at, updated_at, first_dispatched_at, completed_at)
					select 'bench-' || (i % 1000), 'deploy', '{"service":"api","version":"1.2.3"}'::jsonb, s, 1, '{"ok":true}'::jsonb,
						t - interval '2 seconds', t, t - interval '1 second', t
					from unnest($1::text[]) with ordinality u(s, i),
						lateral (select now() - make_interval(days => $2) - make_interval(secs => i::float8 * 5)) x(t)
					returning id, completed_at
				)
				insert into command_events (command_id, from_status, to_status, at, actor)
				select c.id, e.f, e.t, c.completed_at, 'system'
				from c, (select * from (values (null, 'pending'), ('pending', 'dispatched'), ('dispatched', 'acknowledged'), ('acknowledged', 'completed'),
					('completed', 'completed'), ('completed', 'completed')) v(f, t) limit $3) e`,
				[statuses, ageDays, events],
			);
		}
	};
	await seed(rows, 45, (i) => finished[i % 4] ?? "completed");
	await seed(keep, 2, () => "completed");
	await seed(1000, 90, (i) => (i % 2 ? "pending" : "acknowledged"));
	// Open rows have no completed_at.
	await pool.query("update agent_commands set completed_at = null where status in ('pending','dispatched','acknowledged')");
	await pool.query("vacuum analyze agent_commands");
	await pool.query("vacuum analyze command_events");
	const { rows: counts } = await pool.query<{ commands: string; events: string }>(
		"select (select count(*) from agent_commands) as commands, (select count(*) from command_events) as events",
	);
	console.log(`seeded in ${((performance.now() - seedStarted) / 1000).toFixed(1)} s:`, counts[0]);
});

if (process.argv.includes("--seed-only")) process.exit(0);
const relay = await startRelay({ allow: (h) => loopbackOnly(h) });
const env = { DATABASE_URL: url.toString(), NEON_WS_PROXY: relay.proxy };
try {
	let total = 0;
	let ms = 0;
	for (let run = 1; ; run++) {
		const started = performance.now();
		const n = await deleteExpired(env, { days: 30, batchSize, budgetMs });
		const took = performance.now() - started;
		total += n;
		ms += took;
		console.log(`run ${run}: ${n} rows in ${(took / 1000).toFixed(2)} s = ${Math.round(n / (took / 1000))} rows/s`);
		if (n === 0) break;
	}
	console.log(
		`retention: ${total} commands (${events} events each) in ${(ms / 1000).toFixed(1)} s = ${Math.round(total / (ms / 1000))} rows/s` +
			` (batch ${batchSize}, budget ${budgetMs} ms)`,
	);
	await withNodePool(url.toString(), async (pool) => {
		const { rows: left } = await pool.query<{ status: string; n: string }>(
			"select status, count(*) as n from agent_commands group by status order by status",
		);
		console.log("left:", left.map((r) => `${r.status} ${r.n}`).join(", "));
	});
	if (process.argv.includes("--drop")) await withNodePool(server, (pool) => pool.query(`drop database ${name} with (force)`));
} finally {
	await relay.close();
}
