/**
 * The relay's `POST /sql` against Neon's driver: the worker's production
 * query path (`neon()`, drizzle's neon-http) must get from the local
 * Postgres, embedded or real, what it gets from Neon. Each query's answer is
 * compared with the same query over the WebSocket `Pool` (the Postgres wire
 * protocol itself), and with the values the API relies on.
 */
import { env } from "cloudflare:workers";
import { type FullQueryResults, neon, neonConfig, type NeonQueryFunction, Pool } from "@neondatabase/serverless";
import { beforeAll, describe, expect, it } from "vitest";
import { DbQueryError, DbUnavailableError, withDb } from "../../src/db/client";
import { httpDb, relaySqlEndpoint } from "../../src/db/http";
import { agents } from "../../src/db/schema";
import { api, sql, uniqueAgentId } from "../helpers/worker/harness";

let http: NeonQueryFunction<false, true>;

beforeAll(async () => {
	// Leaves neonConfig set up for the relay's WebSocket path too (see overPool).
	await withDb(env, (db) => db.execute(sql`select 1`));
	const endpoint = relaySqlEndpoint(env.NEON_WS_PROXY);
	if (!endpoint) throw new Error("the tests run against the relay: NEON_WS_PROXY is not set");
	neonConfig.fetchEndpoint = () => endpoint;
	http = neon(env.DATABASE_URL, { fullResults: true });
});

/** The same statement over the WebSocket Pool: what Postgres itself answers. */
async function overPool(text: string, params: unknown[] = []) {
	const pool = new Pool({ connectionString: env.DATABASE_URL, max: 1 });
	pool.on("error", () => {});
	try {
		return await pool.query(text, params);
	} finally {
		await pool.end();
	}
}

async function overHttp(text: string, params: unknown[] = []): Promise<FullQueryResults<false>> {
	return http.query(text, params);
}

/** The error the driver raises, with the fields a caller reads. */
async function failure(p: Promise<unknown>): Promise<Record<string, unknown>> {
	const err = await p.then(
		() => undefined,
		(e: unknown) => e,
	);
	expect(err, "the statement should have failed").toBeInstanceOf(Error);
	const e = err as Record<string, unknown>;
	return {
		message: e.message,
		code: e.code,
		severity: e.severity,
		detail: e.detail,
		constraint: e.constraint,
		table: e.table,
		schema: e.schema,
		position: e.position,
	};
}

const TYPES = `select
	1::int2 as i2, 2::int4 as i4, 9007199254740993::int8 as i8, 1.25::numeric as num, 1.5::float4 as f4,
	2.5::float8 as f8, true as t, false as f, 'text ✓'::text as s, 'x'::varchar(3) as vc, 'c'::char(2) as ch,
	'{"a":[1,null,{"b":"c"}],"n":null}'::jsonb as jb, '{"k":1}'::json as js, 'null'::jsonb as jnull,
	'2024-02-29T12:34:56.789Z'::timestamptz as tz, '2024-02-29 12:34:56.789'::timestamp as ts,
	'2024-02-29'::date as d, '1 day 02:03:04'::interval as iv, '00000000-0000-4000-8000-000000000001'::uuid as u,
	'\\x00ff10'::bytea as by, array[1,2,3]::int4[] as ai, array['a',null,'b c','"q"']::text[] as at,
	array['{"x":1}']::jsonb[] as aj, null::int4 as nul, null::text as nuls, null::jsonb as nulj,
	'{}'::int4[] as aempty`;

describe("POST /sql against the driver", () => {
	it("answers every type as Postgres does, NULLs included", async () => {
		const [viaHttp, viaPool] = await Promise.all([overHttp(TYPES), overPool(TYPES)]);
		expect(viaHttp.rows).toEqual(viaPool.rows);
		expect(viaHttp.fields.map((f) => [f.name, f.dataTypeID])).toEqual(viaPool.fields.map((f) => [f.name, f.dataTypeID]));
		expect(viaHttp.command).toBe("SELECT");
		expect(viaHttp.rowCount).toBe(1);
		const row = viaHttp.rows[0] ?? {};
		expect(row).toMatchObject({
			i2: 1,
			i4: 2,
			i8: "9007199254740993",
			t: true,
			f: false,
			s: "text ✓",
			jb: { a: [1, null, { b: "c" }], n: null },
			js: { k: 1 },
			ai: [1, 2, 3],
			at: ["a", null, "b c", '"q"'],
			aj: [{ x: 1 }],
			nul: null,
			nuls: null,
			nulj: null,
			aempty: [],
		});
		expect(row.jnull).toBeNull();
		// A Date, or Postgres' text once drizzle has set its parsers; the API's parsers take either.
		const tz = row.tz instanceof Date ? row.tz : new Date(String(row.tz));
		expect(tz.toISOString()).toBe("2024-02-29T12:34:56.789Z");
	});

	it("binds parameters as Postgres does: text, numbers, NULL, JSON, arrays, dates, bytes", async () => {
		const q = `select $1::text as s, $2::int as i, $3::text as n, $4::jsonb as j, $5::int[] as a,
			$6::timestamptz as tz, $7::bytea as b, $8::boolean as t`;
		const params = ["it's \\ \"quoted\"", 42, null, JSON.stringify({ k: ["v", 1] }), [1, null, 3], new Date("2025-01-02T03:04:05.006Z"), new Uint8Array([0, 1, 255]), true];
		const [viaHttp, viaPool] = await Promise.all([overHttp(q, params), overPool(q, params)]);
		expect(viaHttp.rows).toEqual(viaPool.rows);
		expect(viaHttp.rows[0]).toMatchObject({ s: "it's \\ \"quoted\"", i: 42, n: null, j: { k: ["v", 1] }, a: [1, null, 3], t: true });
	});

	it("reports what a write did: command and row count", async () => {
		const id = uniqueAgentId();
		const insert = await overHttp("insert into agents (id) values ($1), ($2)", [id, `${id}-b`]);
		expect(insert).toMatchObject({ command: "INSERT", rowCount: 2, rows: [] });
		const update = await overHttp("update agents set connected = false where id like $1 returning id", [`${id}%`]);
		expect(update.command).toBe("UPDATE");
		expect(update.rowCount).toBe(2);
		expect(update.rows.map((r) => r.id).sort()).toEqual([id, `${id}-b`]);
	});

	it("answers a refused statement with Postgres' code, message and detail", async () => {
		const id = uniqueAgentId();
		await overHttp("insert into agents (id) values ($1)", [id]);
		for (const [text, params] of [
			["insert into agents (id) values ($1)", [id]], // unique violation
			["select 1/0", []],
			["select * from no_such_table", []],
			["selec 1", []],
			["select $1::int", ["not a number"]],
		] as const) {
			const [viaHttp, viaPool] = await Promise.all([failure(overHttp(text, [...params])), failure(overPool(text, [...params]))]);
			expect(viaHttp, text).toEqual(viaPool);
		}
		const dup = await failure(overHttp("insert into agents (id) values ($1)", [id]));
		expect(dup).toMatchObject({ code: "23505", constraint: "agents_pkey", table: "agents", detail: `Key (id)=(${id}) already exists.` });
	});

	it("runs transaction() in one transaction: all or nothing", async () => {
		const id = uniqueAgentId();
		const results = await http.transaction((q) => [
			q.query("insert into agents (id) values ($1)", [id]),
			q.query("select count(*)::int as n from agents where id = $1", [id]),
		]);
		expect(results[1]?.rows).toEqual([{ n: 1 }]);
		const other = uniqueAgentId();
		const err = await failure(
			http.transaction((q) => [q.query("insert into agents (id) values ($1)", [other]), q.query("select 1/0")]),
		);
		expect(err.code).toBe("22012");
		// The first insert was rolled back with the failed statement.
		expect((await overHttp("select id from agents where id = $1", [other])).rows).toEqual([]);
	});

	it("honours transaction()'s isolation level and read-only options", async () => {
		const [level, readOnly] = await http.transaction(
			(q) => [q.query("show transaction_isolation"), q.query("show transaction_read_only")],
			{ isolationLevel: "Serializable", readOnly: true },
		);
		expect(level?.rows).toEqual([{ transaction_isolation: "serializable" }]);
		expect(readOnly?.rows).toEqual([{ transaction_read_only: "on" }]);
		const refused = await failure(
			http.transaction((q) => [q.query("insert into agents (id) values ($1)", [uniqueAgentId()])], { readOnly: true }),
		);
		expect(refused.code).toBe("25006");
	});

	it("the worker's database sorts refusals from outages", async () => {
		const id = uniqueAgentId();
		await httpDb(env).run((db) => db.insert(agents).values({ id }));
		const dup = await httpDb(env)
			.run((db) => db.insert(agents).values({ id }))
			.catch((e: unknown) => e);
		expect(dup).toBeInstanceOf(DbQueryError);
		expect((dup as DbQueryError).sqlState).toBe("23505");
		const dead = await httpDb({ ...env, DATABASE_URL: env.TEST_DEAD_DATABASE_URL })
			.run((db) => db.execute(sql`select 1`))
			.catch((e: unknown) => e);
		expect(dead).toBeInstanceOf(DbUnavailableError);
	});

	it("drizzle's batch runs as one transaction over HTTP", async () => {
		const id = uniqueAgentId();
		const [inserted, read] = await httpDb(env).run((db) =>
			db.batch([db.insert(agents).values({ id }).returning(), db.select().from(agents).where(sql`${agents.id} = ${id}`)]),
		);
		expect(inserted.map((r) => r.id)).toEqual([id]);
		expect(read[0]?.createdAt).toBeInstanceOf(Date);
	});
});

describe("idempotency over the HTTP path", () => {
	it("a repeated key replays the first command (200), also when both race", async () => {
		const agentId = uniqueAgentId();
		const body = { action: "echo", idempotencyKey: "once" };
		const first = await api(`/v1/agents/${agentId}/commands`, { method: "POST", json: body });
		expect(first.status).toBe(201);
		const again = await api(`/v1/agents/${agentId}/commands`, { method: "POST", json: body });
		expect(again.status).toBe(200);
		const firstId = (await first.json<{ id: string }>()).id;
		expect((await again.json<{ id: string }>()).id).toBe(firstId);

		const racing = { action: "echo", idempotencyKey: "race" };
		const both = await Promise.all([0, 1].map(() => api(`/v1/agents/${agentId}/commands`, { method: "POST", json: racing })));
		expect(both.map((r) => r.status).sort()).toEqual([200, 201]);
		const ids = await Promise.all(both.map((r) => r.json<{ id: string }>()));
		expect(ids[0]?.id).toBe(ids[1]?.id);
	});
});
