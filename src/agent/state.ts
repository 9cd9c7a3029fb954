/**
 * The agent object's small typed state (connection generation, presence,
 * window, timers, token version), kept in its `meta` table so it survives
 * hibernation and eviction.
 *
 * The table is read once per isolate into memory; only this object writes
 * it, so the copy stays true. Writes collect in memory and reach the table
 * in one statement when the event's transaction commits (`commit`); a
 * transaction that rolls back drops the copy (`forget`), so no value it set
 * outlives it.
 *
 * A few values are facts that only ever move forward and are safe to lose
 * with the isolate (what Postgres confirmed, when the agent was last heard):
 * `defer` keeps them for the next commit that writes anything else, so
 * recording them does not cost a transaction of its own (a commit is the
 * largest cost of an event in the object; docs/performance.md).
 *
 * Two keys of the table are not state and are kept with plain SQL where
 * they are used: `schema_version` (storage.ts) and `events_pruned_through`
 * (events.ts).
 */

interface Codec<T> {
	decode(text: string): T;
	encode(value: T): string;
}
const num: Codec<number> = { decode: Number, encode: String };
const flag: Codec<boolean> = { decode: (t) => t === "1", encode: (v) => (v ? "1" : "0") };
const text: Codec<string> = { decode: (t) => t, encode: (v) => v };
// SAFETY: only this module writes the key, from a string[].
const ids: Codec<string[]> = { decode: (t) => JSON.parse(t) as string[], encode: (v) => JSON.stringify(v) };

/** Named deadlines that share the object's one alarm with the commands' own. */
export const TIMERS = ["hello", "catch_up", "flush", "payloads", "token_expiry", "parked"] as const;
export type TimerName = (typeof TIMERS)[number];

/** Every key the object keeps, with its type. */
const SCHEMA = {
	/** Counts connections; a frame from a socket of an older generation has no say. */
	generation: num,
	connected: flag,
	last_connected_at: num,
	/** The last frame (or JSON ping) the object took, in ms; edge-answered pings are read from the socket. */
	last_seen_at: num,
	/** Presence changed since Postgres last heard. */
	presence_dirty: flag,
	/** The agent's window, from its hello. */
	concurrency: num,
	/** The connection whose hello was taken, and what it said it runs (for a catch-up that lands later). */
	hello_generation: num,
	hello_running: ids,
	token_version: num,
	/** Set while dispatch is paused (ms since epoch): nothing new is sent until resume. */
	paused_at: num,
	/** The action names the last hello declared; absent, the agent takes any. Kept across connections. */
	actions: ids,
	/** What the last hello said of the agent (db/status-writes.ts AgentInfo), as JSON. */
	agent_info: text,
	/** agent_info has not reached Postgres yet: the next presence write carries it. */
	agent_info_dirty: flag,
	/** A random id of this storage: outbox keys and observers' resume points carry it. */
	epoch: text,
	/** The last journal entry observers were sent. */
	published_seq: num,
	/** The last journal entry Postgres confirmed. */
	synced_through: num,
	catch_up_failures: num,
	flush_failures: num,
	payloads_failures: num,
	"timer:hello": num,
	"timer:catch_up": num,
	"timer:flush": num,
	"timer:payloads": num,
	"timer:token_expiry": num,
	"timer:parked": num,
} satisfies Record<string, Codec<never> | Codec<number> | Codec<boolean> | Codec<string> | Codec<string[]>>;

export type StateKey = keyof typeof SCHEMA;
type ValueOf<K extends StateKey> = (typeof SCHEMA)[K] extends Codec<infer T> ? T : never;

function isKey(key: string): key is StateKey {
	return Object.hasOwn(SCHEMA, key);
}

export class State {
	private values: Map<StateKey, unknown> | undefined;
	/** Encoded values to write at commit; null deletes the key. */
	private readonly dirty = new Map<StateKey, string | null>();
	/** Encoded values that ride with the next commit that writes; kept across a rollback. */
	private readonly deferred = new Map<StateKey, string>();

	constructor(private readonly sql: SqlStorage) {}

	private loaded(): Map<StateKey, unknown> {
		if (!this.values) {
			this.values = new Map();
			for (const r of this.sql.exec<{ key: string; value: string }>("select key, value from meta")) {
				if (isKey(r.key)) this.values.set(r.key, SCHEMA[r.key].decode(r.value));
			}
			for (const [key, value] of this.deferred) this.values.set(key, SCHEMA[key].decode(value));
		}
		return this.values;
	}

	get<K extends StateKey>(key: K): ValueOf<K> | undefined {
		return this.loaded().get(key) as ValueOf<K> | undefined;
	}

	set<K extends StateKey>(key: K, value: ValueOf<K>): void {
		const values = this.loaded();
		if (values.get(key) === value) return;
		values.set(key, value);
		this.dirty.set(key, (SCHEMA[key] as Codec<ValueOf<K>>).encode(value));
		this.deferred.delete(key);
	}

	delete(key: StateKey): void {
		const values = this.loaded();
		if (!values.has(key)) return;
		values.delete(key);
		this.dirty.set(key, null);
		this.deferred.delete(key);
	}

	/**
	 * Sets a value that may reach the table late: with the next commit that
	 * writes anything, or `flushDeferred`. Only for a value whose older copy
	 * is a safe thing to wake up with (the object then redoes a little work,
	 * never skips any).
	 */
	defer<K extends StateKey>(key: K, value: ValueOf<K>): void {
		const values = this.loaded();
		if (values.get(key) === value) return;
		values.set(key, value);
		const encoded = (SCHEMA[key] as Codec<ValueOf<K>>).encode(value);
		if (this.dirty.has(key)) this.dirty.set(key, encoded);
		else this.deferred.set(key, encoded);
	}

	/** Whether deferred values wait for a commit. */
	get hasDeferred(): boolean {
		return this.deferred.size > 0;
	}

	/** Makes the deferred values part of the transaction under way. */
	flushDeferred(): void {
		for (const [key, value] of this.deferred) if (!this.dirty.has(key)) this.dirty.set(key, value);
		this.deferred.clear();
	}

	timer(name: TimerName): number | undefined {
		return this.get(`timer:${name}`);
	}

	setTimer(name: TimerName, at: number): void {
		this.set(`timer:${name}`, at);
	}

	clearTimer(name: TimerName): void {
		this.delete(`timer:${name}`);
	}

	/** Every timer that is set, by name. */
	timers(): Map<TimerName, number> {
		const out = new Map<TimerName, number>();
		for (const name of TIMERS) {
			const at = this.timer(name);
			if (at !== undefined) out.set(name, at);
		}
		return out;
	}

	/**
	 * The storage epoch, minted on first use (set, so it is written with the
	 * transaction that first needs it).
	 */
	epoch(): string {
		let epoch = this.get("epoch");
		if (!epoch) {
			epoch = crypto.randomUUID();
			this.set("epoch", epoch);
		}
		return epoch;
	}

	/**
	 * Writes what changed, deferred values with it: one upsert and at most one
	 * delete. Called inside the event's transaction; `writing` says the
	 * transaction writes rows anyway, so deferred values ride with it even if
	 * nothing else changed.
	 */
	commit(writing = false): void {
		if (this.dirty.size === 0 && !(writing && this.hasDeferred)) return;
		this.flushDeferred();
		const upserts: [string, string][] = [];
		const deletes: string[] = [];
		for (const [key, value] of this.dirty) {
			if (value === null) deletes.push(key);
			else upserts.push([key, value]);
		}
		this.dirty.clear();
		if (upserts.length > 0) {
			this.sql.exec(
				`insert into meta (key, value) select json_extract(value, '$[0]'), json_extract(value, '$[1]') from json_each(?)
				 where true on conflict (key) do update set value = excluded.value`,
				JSON.stringify(upserts),
			);
		}
		if (deletes.length > 0) this.sql.exec("delete from meta where key in (select value from json_each(?))", JSON.stringify(deletes));
	}

	/** Drops the copy and anything not yet written but the deferred values; the next read loads the table again. */
	forget(): void {
		this.values = undefined;
		this.dirty.clear();
	}

	/** Drops everything held in memory, deferred values too: the table, edited by hand, is the truth. */
	reload(): void {
		this.forget();
		this.deferred.clear();
	}
}
