/**
 * The outbox flush: writes the journal's unconfirmed entries and the
 * agent's presence to Postgres, many commands' changes in one statement
 * (db/status-writes.ts), then marks them confirmed. Entries that arrive
 * while a write is under way leave with the next one, so an ack and a
 * result close together cost one write.
 */
import { DbQueryError } from "../db/client";
import { writeStatus } from "../db/status-writes";
import type { AgentCore } from "./core";
import { recordAnalytics, salvage } from "./outbox-writes";
import { prune } from "./storage";

const BATCH = 500;
/** Finished rows and stale stops are pruned at most this often. */
const PRUNE_EVERY_MS = 60_000;

type FlushHost = Pick<
	AgentCore,
	"name" | "env" | "db" | "state" | "journal" | "sql" | "atomically" | "presence" | "rememberHeard" | "alarm" | "settleAlarm" | "counts"
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

	constructor(
		private readonly host: FlushHost,
		/** Whether finished rows may be pruned now (not while a catch-up reads). */
		private readonly mayPrune: () => boolean,
	) {}

	async run(): Promise<void> {
		const host = this.host;
		for (;;) {
			const { through, entries } = host.journal.peek(BATCH);
			if (entries.length === 0 && host.state.get("presence_dirty") !== true) break;
			const sent = host.presence();
			const presence = { ...sent, outboxDepth: host.journal.unsynced() - entries.length };
			await host.db
				.run((db) => writeStatus(db, entries, presence, host.name))
				.catch((err: unknown) => {
					if (!(err instanceof DbQueryError)) throw err;
					return salvage(host.db, entries, presence, err);
				});
			recordAnalytics(host.env, host.name, entries);
			host.atomically(() => {
				host.journal.confirm(through);
				host.rememberHeard();
				// Presence written above is stale if it changed during the await.
				const now = host.presence();
				if (now.lastSeenAt === sent.lastSeenAt && now.connected === sent.connected) host.state.delete("presence_dirty");
			});
			if (entries.length < BATCH && host.journal.unsynced() === 0) break;
		}
		await this.drained();
	}

	/**
	 * A quiet moment: prune now and then, and once no command is open, set the
	 * alarm exactly if a deadline went away. While commands flow a stale alarm
	 * (an answered command's ack deadline) is left to fire once and re-arm:
	 * cheaper than moving it on every command.
	 */
	private async drained(): Promise<void> {
		const now = Date.now();
		if (now - this.prunedAt >= PRUNE_EVERY_MS) {
			this.prunedAt = now;
			const settled = { unsynced: this.host.journal.unsynced(), reading: !this.mayPrune() };
			this.host.atomically(() => pruneSettled(this.host.sql, now, settled));
		}
		if (this.host.alarm.isStale && this.host.counts.open === 0) await this.host.settleAlarm();
	}
}
