/**
 * The object's one alarm, shared by every deadline it keeps: the commands'
 * own (ack, run, cancel, ttl), its named timers (hello grace, token expiry,
 * the background jobs' retries and safety nets) and the agent's silence
 * check. Concerns only say when they next need a wake; this decides.
 *
 * On the hot path the alarm only ever moves earlier, and only when a new
 * deadline needs it (`require`). A deadline that goes away (an ack clears
 * its ack deadline) marks the alarm stale; it is set exactly again at a
 * quiet moment (`settle`, when the outbox drains, and when the alarm runs),
 * not on every frame. Staleness that only answered commands left (an ack
 * deadline, seconds out) may instead be left to fire once while the agent
 * is connected (./flush.ts, `drained`).
 */

/** The earliest of `deadlines`, or null when there is none. */
export function nextWake(deadlines: Iterable<number | null | undefined>): number | null {
	let next: number | null = null;
	for (const at of deadlines) {
		if (at !== null && at !== undefined && Number.isFinite(at) && (next === null || at < next)) next = at;
	}
	return next;
}

export class Alarm {
	/** The alarm as this object last set it; undefined until read (a new instance, or one that just fired). */
	private armedAt: number | null | undefined;
	/** Why a deadline the alarm may be set for went away since it was last settled; null: it is exact. */
	private staleBy: "answered" | "other" | null = null;

	constructor(private readonly storage: DurableObjectStorage) {}

	/** Whether a deadline the alarm may have been set for went away since it was last settled. */
	get isStale(): boolean {
		return this.staleBy !== null;
	}

	/** Stale only because commands were answered before their ack deadlines. */
	get staleOnlyFromAnswers(): boolean {
		return this.staleBy === "answered";
	}

	/** A deadline went away: `answered` when it was a command's, answered by the agent. */
	markStale(cause: "answered" | "other" = "other"): void {
		if (this.staleBy !== "other") this.staleBy = cause;
	}

	/** The alarm that fired is spent. */
	fired(): void {
		this.armedAt = undefined;
		this.markStale();
	}

	/** Something is due at `at`: move the alarm earlier if it is later or unset. */
	async require(at: number): Promise<void> {
		const current = await this.current();
		// Decided and written with no await in between: two events arming at
		// once cannot leave the alarm later than either needed.
		if (current === null || at < current) {
			this.armedAt = at;
			await this.storage.setAlarm(at);
		}
	}

	/** Sets the alarm to exactly `at` (null: none), from a full reckoning of the deadlines. */
	async settle(at: number | null): Promise<void> {
		const current = await this.current();
		this.staleBy = null;
		if (at === current) return;
		this.armedAt = at;
		if (at === null) await this.storage.deleteAlarm();
		else await this.storage.setAlarm(at);
	}

	private async current(): Promise<number | null> {
		if (this.armedAt === undefined) {
			const stored = await this.storage.getAlarm();
			// Another event may have set it while this one read.
			if (this.armedAt === undefined) this.armedAt = stored;
		}
		return this.armedAt;
	}
}
