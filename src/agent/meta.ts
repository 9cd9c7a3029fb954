/**
 * Small typed key/value state of the agent object (its id, connection
 * generation, presence, timers), kept in SQLite so it survives hibernation
 * and eviction; nothing important lives only in memory.
 *
 * Every frame and every connect reads a dozen of these keys, several of them
 * more than once, and each read was its own SQL statement: the largest cost
 * of a connect. So the table (a few dozen short rows) is read once into
 * memory and writes go to both. The copy is dropped with `forget()`, which
 * the object calls as each event starts (so a write made to the table by
 * other means, a test's, is seen) and when a transaction rolls back (so no
 * value it wrote outlives it). Two keys of the table are written and read
 * with plain SQL where they are kept, never through this class:
 * `schema_version` (storage.ts) and `events_pruned_through` (events.ts).
 */
export class Meta {
	private cache: Map<string, string> | undefined;

	constructor(private readonly sql: SqlStorage) {}

	private values(): Map<string, string> {
		this.cache ??= new Map(
			this.sql
				.exec<{ key: string; value: string }>("select key, value from meta")
				.toArray()
				.map((r) => [r.key, r.value]),
		);
		return this.cache;
	}

	/** Drops the in-memory copy; the next read loads the table again. */
	forget(): void {
		this.cache = undefined;
	}

	get(key: string): string | undefined {
		return this.values().get(key);
	}

	getNumber(key: string): number | undefined {
		const v = this.get(key);
		return v === undefined ? undefined : Number(v);
	}

	set(key: string, value: string | number | boolean): void {
		const text = String(typeof value === "boolean" ? Number(value) : value);
		const values = this.values();
		if (values.get(key) === text) return;
		this.sql.exec(
			"insert into meta (key, value) values (?, ?) on conflict (key) do update set value = excluded.value",
			key,
			text,
		);
		values.set(key, text);
	}

	delete(key: string): void {
		const values = this.values();
		if (!values.has(key)) return;
		this.sql.exec("delete from meta where key = ?", key);
		values.delete(key);
	}

	/**
	 * A random id for this object's storage, minted once. Outbox keys carry it
	 * (unique across a storage reset), and observers resume against it (a
	 * sequence number means nothing in another epoch's log).
	 */
	epoch(): string {
		let epoch = this.get("epoch");
		if (!epoch) {
			epoch = crypto.randomUUID();
			this.set("epoch", epoch);
		}
		return epoch;
	}

	/** Named deadlines sharing the object's single alarm slot. */
	timers(): Map<string, number> {
		const timers = new Map<string, number>();
		for (const [key, value] of this.values()) {
			if (key.startsWith("timer:")) timers.set(key.slice("timer:".length), Number(value));
		}
		return timers;
	}

	setTimer(name: string, at: number): void {
		this.set(`timer:${name}`, at);
	}

	clearTimer(name: string): void {
		this.delete(`timer:${name}`);
	}
}
