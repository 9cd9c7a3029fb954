/**
 * The outbox flush: writes the journal's unconfirmed entries and the
 * agent's presence to Postgres, many commands' changes in one statement
 * (db/status-writes.ts), then marks them confirmed. Entries that arrive
 * while a write is under way leave with the next one, so an ack and a
 * result close together cost one write.
 */
import { DbConflictError, DbQueryError } from "../db/client";
import { type KeyedEntry, type Presence, writeStatus } from "../db/status-writes";
import { log } from "../log";
import type { AgentCore } from "./core";
import { recordAnalytics, salvage, tryWrite } from "./outbox-writes";
import * as parked from "./parked";
import { prune } from "./storage";

const BATCH = 500;
/** Output and results carried by one status write, past its first entry (a statement of a few MiB at most). */
export const BATCH_CHARS = 2 * 1024 * 1024;
/**
 * How long a write with no ending in it may wait for one, so a command that
 * finishes quickly costs Postgres one status write instead of two or three
 * (2.34 to 1.33 writes per command on the flood profile, docs/performance.md).
 * Observers hear every change at once; only the API's reads lag by this.
 */
export const LINGER_MS = 100;
/** While commands flow, the agent's last_seen_at in Postgres is at most this stale. */
export const PRESENCE_REFRESH_MS = 30_000;
/** Finished rows and stale stops are pruned at most this often. */
const PRUNE_EVERY_MS = 60_000;

type FlushHost = Pick<
	AgentCore,
	| "name"
	| "env"
	| "db"
	| "state"
	| "journal"
	| "sql"
	| "atomically"
	| "presence"
	| "rememberHeard"
	| "writeDeferredSoon"
	| "alarm"
	| "settleAlarm"
	| "counts"
	| "currentSocket"
>;

/**
 * Forgets finished rows once nothing can bring them back: Postgres has every
 * journaled change (so it knows they finished) and no catch-up read that
 * began before it did is still under way.
 */
export function pruneSettled(sql: SqlStorage, now: number, settled: { unsynced: number; reading: boolean }): number {
	if (settled.unsynced > 0 || settled.reading) return 0;
	return prune(sql, now);
}

export class Flush {
	/** The first prune waits a minute into the isolate's life, like every later one. */
	private prunedAt = Date.now();
	/** The last presence Postgres took from this isolate. */
	private presenceWritten = { at: 0, outboxDepth: -1 };
	/** Ends a linger early: something that should not wait was journaled. */
	private wake: (() => void) | null = null;

	constructor(
		private readonly host: FlushHost,
		/** Whether finished rows may be pruned now (not while a catch-up reads). */
		private readonly mayPrune: () => boolean,
	) {}

	async run(): Promise<void> {
		const host = this.host;
		for (;;) {
			await this.linger();
			const { through, entries } = host.journal.peek(BATCH, BATCH_CHARS);
			if (entries.length === 0 && host.state.get("presence_dirty") !== true) break;
			const sent = host.presence();
			const infoSent = sent.info ? host.state.get("agent_info") : undefined;
			const presence = this.presenceDue(sent, host.journal.unsynced() - entries.length + this.parkedCount());
			const { refused, error } = await this.write(entries, presence);
			if (presence) this.presenceWritten = { at: Date.now(), outboxDepth: presence.outboxDepth };
			recordAnalytics(host.env, host.name, refused.length ? entries.filter((e) => !refused.includes(e)) : entries);
			// Deferred, like the last-heard time: a confirmation costs no commit of
			// its own, only a presence change or a refusal does.
			host.journal.confirm(through);
			host.rememberHeard();
			// Presence written above is stale if it changed during the await.
			const now = host.presence();
			// A hello that came during the await leaves its description for the next write.
			const infoLeft = host.state.get("agent_info_dirty") === true && !(presence?.info && host.state.get("agent_info") === infoSent);
			const presenceLeft = now.lastSeenAt !== sent.lastSeenAt || now.connected !== sent.connected || infoLeft;
			const settled = (!infoLeft && host.state.get("agent_info_dirty")) || (!presenceLeft && host.state.get("presence_dirty"));
			if (refused.length > 0 || settled) {
				host.atomically(() => {
					if (refused.length > 0) this.park(refused, error);
					if (!infoLeft) host.state.delete("agent_info_dirty");
					if (!presenceLeft) host.state.delete("presence_dirty");
				});
			}
			host.writeDeferredSoon();
			if (refused.length > 0) await this.wakeForParked();
			// After parking, once more: the outbox depth Postgres shows now counts them.
			if (entries.length < BATCH && host.journal.unsynced() === 0 && refused.length === 0) break;
		}
		// Written ones change the outbox depth Postgres shows: one more pass writes it.
		if (await this.retryParked()) return this.run();
		await this.drained();
	}

	/**
	 * One statement for the batch. Refused (not an outage, not a conflict,
	 * which are thrown for the job to retry on its backoff): entry by entry,
	 * and what Postgres refuses even so comes back to be parked.
	 */
	private async write(entries: KeyedEntry[], presence: Presence | null): Promise<{ refused: KeyedEntry[]; error: string }> {
		const host = this.host;
		try {
			await host.db.run((db) => writeStatus(db, entries, presence, host.name));
			return { refused: [], error: "" };
		} catch (err) {
			if (!(err instanceof DbQueryError) || err instanceof DbConflictError) throw err;
			const { refused, error } = await salvage(host.db, host.name, entries, presence, err);
			return { refused, error: describe(error) };
		}
	}

	private parkedKnown: number | undefined;

	private parkedCount(): number {
		this.parkedKnown ??= parked.parkedCount(this.host.sql);
		return this.parkedKnown;
	}

	private park(entries: KeyedEntry[], error: string): void {
		const now = Date.now();
		parked.park(this.host.sql, entries, error, now);
		this.parkedKnown = this.parkedCount() + entries.length;
		for (const e of entries) log("error", "outbox.entry_parked", { agentId: this.host.name, commandId: e.commandId, error });
		this.armParked();
		this.host.state.set("presence_dirty", true);
	}

	/** Due parked entries, one statement each: written ones leave, refused ones wait longer. Says whether any left. */
	private async retryParked(): Promise<boolean> {
		const host = this.host;
		if (this.parkedCount() === 0) return false;
		const due = parked.dueParked(host.sql, Date.now());
		if (due.length === 0) return false;
		const outcomes = await host.db.run(async (db) => {
			const out: { p: parked.Parked; refusal: DbQueryError | null }[] = [];
			for (const p of due) out.push({ p, refusal: await tryWrite(db, p.entry, host.name) });
			return out;
		});
		host.atomically(() => {
			const now = Date.now();
			for (const { p, refusal } of outcomes) {
				if (refusal) parked.deferParked(host.sql, p, describe(refusal), now);
				else parked.unpark(host.sql, p.seq);
			}
			this.parkedKnown = parked.parkedCount(host.sql);
			if (this.parkedKnown > 0) this.armParked();
			else host.state.clearTimer("parked");
			// The outbox depth operators see has changed.
			host.state.set("presence_dirty", true);
		});
		await this.wakeForParked();
		const written = outcomes.filter((o) => o.refusal === null).length;
		if (written > 0) log("info", "outbox.parked_written", { agentId: host.name, written, left: this.parkedKnown });
		return written > 0;
	}

	/** The next parked entry's retry, as a timer; the caller commits it, then `wakeForParked`. */
	private armParked(): void {
		const at = parked.nextParkedAt(this.host.sql);
		if (at !== null) this.host.state.setTimer("parked", at);
	}

	private async wakeForParked(): Promise<void> {
		const at = this.host.state.timer("parked");
		if (at !== undefined) await this.host.alarm.require(at);
	}

	/**
	 * The agent's row is written when its connection or outbox depth changed,
	 * and otherwise only to refresh last_seen_at now and then: rewriting it on
	 * every status write was one more row updated per command, on the one row
	 * all the agent's writes share.
	 */
	private presenceDue(sent: Omit<Presence, "outboxDepth">, outboxDepth: number): Presence | null {
		const changed = this.host.state.get("presence_dirty") === true || outboxDepth !== this.presenceWritten.outboxDepth;
		if (!changed && Date.now() - this.presenceWritten.at < PRESENCE_REFRESH_MS) return null;
		return { ...sent, outboxDepth };
	}

	/** The journal changed: a linger under way looks again at what it holds. */
	nudge(): void {
		this.wake?.();
	}

	private async linger(): Promise<void> {
		for (;;) {
			const pending = this.host.journal.pending();
			const left = pending && !pending.ending ? pending.oldestAt + LINGER_MS - Date.now() : 0;
			if (left <= 0) return;
			await new Promise<void>((resolve) => {
				const timer = setTimeout(resolve, left);
				this.wake = () => {
					clearTimeout(timer);
					resolve();
				};
			});
			this.wake = null;
		}
	}

	/**
	 * A quiet moment: prune now and then, and once no command is open, set the
	 * alarm exactly if a deadline went away. While the agent is connected, an
	 * alarm stale only from answered commands (an ack deadline seconds out)
	 * is left to fire once and re-arm: moving it back after every command
	 * made two alarm writes of each, storage writes (and here an fsync on the
	 * runtime's thread). An agent that left has it set exactly, so its object
	 * sleeps; so does staleness of any other kind (a connect's timers).
	 */
	private async drained(): Promise<void> {
		const now = Date.now();
		if (now - this.prunedAt >= PRUNE_EVERY_MS) {
			this.prunedAt = now;
			const settled = { unsynced: this.host.journal.unsynced(), reading: !this.mayPrune() };
			this.host.atomically(() => pruneSettled(this.host.sql, now, settled));
		}
		const { alarm } = this.host;
		const leave = alarm.staleOnlyFromAnswers && this.host.currentSocket() !== undefined;
		if (alarm.isStale && !leave && this.host.counts.open === 0) await this.host.settleAlarm();
	}
}

/** What Postgres said, for the parked row: the driver's message names the SQLSTATE, its cause the reason. */
function describe(err: Error): string {
	return err.cause instanceof Error ? `${err.message}: ${err.cause.message}` : err.message;
}
