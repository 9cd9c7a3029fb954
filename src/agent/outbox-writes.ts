/**
 * What happens to an outbox batch besides the normal write: the salvage
 * path when Postgres refuses a batch, and the Analytics Engine data points
 * for what it accepted. Plain functions of the batch, outside the object.
 */
import { type Database, DbQueryError } from "../db/client";
import { type KeyedEntry, type Presence, writeStatus } from "../db/status-writes";
import { errorFields, log } from "../log";

/**
 * Postgres refused a batch (not an outage): write it entry by entry so one
 * bad entry cannot wedge the outbox. A result Postgres cannot store is
 * replaced by an explanation, so the status still lands; an entry refused
 * even then is logged and skipped. Frames are checked on arrival, so this
 * is a backstop.
 */
export async function salvage(
	database: Database,
	agentId: string,
	entries: KeyedEntry[],
	presence: Presence | null,
	cause: DbQueryError,
): Promise<void> {
	log("error", "outbox.batch_refused", { agentId, size: entries.length, ...errorFields(cause) });
	await database.run(async (db) => {
		if (presence) await writeStatus(db, [], presence);
		for (const entry of entries) {
			try {
				await writeStatus(db, [entry], null, agentId);
			} catch (err) {
				if (!(err instanceof DbQueryError)) throw err;
				if (entry.kind !== "transition") {
					log("error", "outbox.entry_dropped", { agentId, commandId: entry.commandId, ...errorFields(err) });
					continue;
				}
				const plain = {
					...entry,
					result: entry.result === undefined ? undefined : null,
					error: "the agent's result could not be stored",
					detail: { ...entry.detail, unstorable: true },
				};
				await writeStatus(db, [plain], null, agentId).catch((again: unknown) => {
					if (!(again instanceof DbQueryError)) throw again;
					log("error", "outbox.entry_dropped", { agentId, commandId: entry.commandId, ...errorFields(again) });
				});
			}
		}
	});
}

/**
 * Fleet-wide dashboards: when an Analytics Engine dataset is bound as
 * ANALYTICS, each transition Postgres accepted becomes a data point
 * (blobs: agent, to, from, errorCode; doubles: attempts; index: agent).
 */
export function recordAnalytics(env: Env, agentId: string, entries: readonly KeyedEntry[]): void {
	const dataset = (env as Env & { ANALYTICS?: AnalyticsEngineDataset }).ANALYTICS;
	if (!dataset) return;
	for (const e of entries) {
		if (e.kind !== "transition") continue;
		dataset.writeDataPoint({
			blobs: [agentId, e.to, e.from ?? "", e.errorCode ?? ""],
			doubles: [e.attempts],
			indexes: [agentId],
		});
	}
}
