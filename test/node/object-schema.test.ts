/**
 * A new agent object creates its tables from SCHEMA in one statement; an
 * object created before gets there through MIGRATIONS. Both must end with
 * the same tables, columns, defaults and indexes, or a new object's SQL and
 * an old one's would disagree. Checked on SQLite itself (Node's built-in
 * module), through the same `migrate` the object runs.
 */
import { DatabaseSync } from "node:sqlite";
import { describe, expect, it } from "vitest";
import { MIGRATIONS, migrate } from "../../src/agent/storage.ts";

/** The slice of SqlStorage that migrate uses, over an in-memory SQLite. */
function sqlStorage(db: DatabaseSync): SqlStorage {
	const exec = (query: string, ...params: SqlStorageValue[]) => {
		const values = params as (string | number | null)[];
		let rows: Record<string, unknown>[] = [];
		if (/^\s*(select|pragma)/i.test(query)) rows = db.prepare(query).all(...values);
		else if (values.length > 0) db.prepare(query).run(...values);
		else db.exec(query); // several statements

		return { toArray: () => rows, one: () => rows[0] };
	};
	// SAFETY: migrate only calls exec(...).toArray(), which this provides.
	return { exec } as unknown as SqlStorage;
}

function shape(db: DatabaseSync) {
	const tables = db.prepare("select name from sqlite_master where type = 'table' and name not like 'sqlite_%' order by name").all();
	return tables.map((t) => {
		const name = String(t.name);
		return {
			name,
			columns: db.prepare(`pragma table_info(${name})`).all(),
			indexes: db
				.prepare(`pragma index_list(${name})`)
				.all()
				.map((i) => ({ name: i.name, unique: i.unique, columns: db.prepare(`pragma index_xinfo(${String(i.name)})`).all() })),
		};
	});
}

describe("agent object schema", () => {
	it("a new object's schema is the one the migrations build, column for column", () => {
		const fresh = new DatabaseSync(":memory:");
		migrate(sqlStorage(fresh));

		const migrated = new DatabaseSync(":memory:");
		const old = sqlStorage(migrated);
		// An object from before: its tables made by the migrations one at a time.
		migrated.exec("create table meta (key text primary key, value text not null)");
		for (const step of MIGRATIONS) migrated.exec(step);
		migrated.exec(`insert into meta (key, value) values ('schema_version', '${MIGRATIONS.length}')`);
		migrate(old);

		expect(shape(fresh).map((t) => t.name)).toEqual(["commands", "events", "meta", "parked", "stops"]);
		expect(shape(fresh)).toEqual(shape(migrated));
	});

	it("an object part way through the migrations is brought up to date, keeping its rows", () => {
		const db = new DatabaseSync(":memory:");
		db.exec("create table meta (key text primary key, value text not null)");
		for (const step of MIGRATIONS.slice(0, 2)) db.exec(step);
		db.exec("insert into meta (key, value) values ('schema_version', '2')");
		db.exec("insert into commands (id, seq, action, payload, priority, status) values ('c1', 1, 'a', '{}', 5, 'pending')");
		migrate(sqlStorage(db));

		const version = db.prepare("select value from meta where key = 'schema_version'").all()[0]?.value;
		expect(Number(version)).toBe(MIGRATIONS.length);
		const row = db.prepare("select id, cancel_actor, synced_at from commands").all();
		expect(row).toEqual([{ id: "c1", cancel_actor: null, synced_at: null }]);
		const fresh = new DatabaseSync(":memory:");
		migrate(sqlStorage(fresh));
		expect(shape(db)).toEqual(shape(fresh));
	});

	it("an object's unflushed outbox moves into the journal, after its events, under the keys it was being written with", () => {
		const db = new DatabaseSync(":memory:");
		db.exec("create table meta (key text primary key, value text not null)");
		// The step that turned the outbox into the journal's sync column.
		const before = MIGRATIONS.findIndex((step) => step.includes("drop table outbox"));
		for (const step of MIGRATIONS.slice(0, before)) db.exec(step);
		db.exec(`insert into meta (key, value) values ('schema_version', '${before}'), ('epoch', 'e1')`);
		db.exec(`insert into events (at, body, size) values (1, '{"type":"presence"}', 19), (2, '{"type":"status"}', 17)`);
		db.exec(`insert into outbox (body) values ('{"kind":"taken","commandId":"c1"}'), ('{"kind":"output","commandId":"c1","data":"x"}')`);
		migrate(sqlStorage(db));

		const rows = db.prepare("select seq, body, sync, event_seq from events order by seq").all();
		expect(rows.map((r) => r.event_seq)).toEqual([1, 2, null, null]);
		expect(rows.slice(2).map((r) => JSON.parse(String(r.sync)))).toEqual([
			{ kind: "taken", commandId: "c1", key: "e1:1" },
			{ kind: "output", commandId: "c1", data: "x", key: "e1:2" },
		]);
		// What was already logged is not for Postgres; the moved entries are.
		expect(db.prepare("select value from meta where key = 'synced_through'").all()[0]?.value).toBe("2");
	});
});
