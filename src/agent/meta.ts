/**
 * Small typed key/value state of the agent object (its id, connection
 * generation, presence, timers), kept in SQLite so it survives hibernation
 * and eviction; nothing important lives only in memory.
 */
export class Meta {
	constructor(private readonly sql: SqlStorage) {}

	get(key: string): string | undefined {
		return this.sql
			.exec<{ value: string }>("select value from meta where key = ?", key)
			.toArray()[0]?.value;
	}

	getNumber(key: string): number | undefined {
		const v = this.get(key);
		return v === undefined ? undefined : Number(v);
	}

	set(key: string, value: string | number | boolean): void {
		this.sql.exec(
			"insert into meta (key, value) values (?, ?) on conflict (key) do update set value = excluded.value",
			key,
			String(typeof value === "boolean" ? Number(value) : value),
		);
	}

	delete(key: string): void {
		this.sql.exec("delete from meta where key = ?", key);
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
		const rows = this.sql
			.exec<{ key: string; value: string }>("select key, value from meta where key like 'timer:%'")
			.toArray();
		return new Map(rows.map((r) => [r.key.slice("timer:".length), Number(r.value)]));
	}

	setTimer(name: string, at: number): void {
		this.set(`timer:${name}`, at);
	}

	clearTimer(name: string): void {
		this.delete(`timer:${name}`);
	}
}
