/**
 * The database the suites run against: the embedded one by default, or a real
 * PostgreSQL server when SWITCHYARD_TEST_PG_URL names one (CI does both). On a
 * real server the suite recreates its own database, `switchyard_test` (or the
 * name in SWITCHYARD_TEST_DB, so two checkouts can run against one server
 * without dropping each other's database mid-run), and touches nothing else.
 */
import { startEmbeddedPostgres } from "../../../src/dev/embedded-postgres.ts";
import { runMigrations, withNodePool } from "../../../src/dev/migrate.ts";
import { freePort } from "./processes.ts";

export interface TestDatabase {
	url: string;
	kind: "embedded" | "postgres";
	stop(): Promise<void>;
}

const TEST_DB = process.env.SWITCHYARD_TEST_DB ?? "switchyard_test";
if (!/^[a-z_][a-z0-9_]*$/.test(TEST_DB)) throw new Error(`SWITCHYARD_TEST_DB must be a plain identifier, got ${TEST_DB}`);

export async function startTestDatabase(): Promise<TestDatabase> {
	const server = process.env.SWITCHYARD_TEST_PG_URL;
	if (!server) {
		// Without the periodic ANALYZE: test/worker/query-plans.test.ts describes the
		// plans of a database without statistics, and a run must not change them midway.
		const pg = await startEmbeddedPostgres({ analyzeEveryMs: null });
		await runMigrations(pg.url);
		return { url: pg.url, kind: "embedded", stop: pg.stop };
	}
	await withNodePool(server, async (pool) => {
		await pool.query(`drop database if exists ${TEST_DB} with (force)`);
		await pool.query(`create database ${TEST_DB}`);
	});
	const url = new URL(server);
	url.pathname = `/${TEST_DB}`;
	await runMigrations(url.toString());
	return { url: url.toString(), kind: "postgres", stop: async () => {} };
}

/** A loopback port with nothing listening: a database that is down. */
export const deadPort = freePort;
