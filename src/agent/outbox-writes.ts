/**
 * What happens to an outbox batch besides the normal write: the salvage
 * path when Postgres refuses a batch, and the Analytics Engine data points
 * for what it accepted. Plain functions of the batch, outside the object.
 */
import { classifyDbError, type Database, type Db, DbConflictError, DbQueryError } from "../db/client";
import { type KeyedEntry, type Presence, writeStatus } from "../db/status-writes";
import { errorFields, log } from "../log";

/**
 * Postgres refused a batch (not an outage): write it entry by entry so one
 * bad entry cannot wedge the outbox. A result Postgres cannot store is
 * replaced by an explanation, so the status still lands; the entries
 * refused even then are returned, for the caller to park (./parked.ts).
 * Frames are checked on arrival, so this is a backstop.
 */
export async function salvage(
	database: Database,
	agentId: string,
	entries: KeyedEntry[],
	presence: Presence | null,
	cause: DbQueryError,
): Promise<{ refused: KeyedEntry[]; error: DbQueryError }> {
	log("error", "outbox.batch_refused", { agentId, size: entries.length, ...errorFields(cause) });
	const refused: KeyedEntry[] = [];
	let error = cause;
	await database.run(async (db) => {
		if (presence) await writeStatus(db, [], presence);
		for (const entry of entries) {
			const failed = await tryWrite(db, entry, agentId);
			if (!failed) continue;
			error = failed;
			if (entry.kind === "transition") refused.push(entry);
			else log("error", "outbox.entry_dropped", { agentId, commandId: entry.commandId, ...errorFields(failed) });
		}
	});
	return { refused, error };
}

/**
 * One entry on its own, then (a transition) with its result replaced by an
 * explanation. Returns what Postgres said if it refused both; a conflict or
 * an outage is thrown, for the flush to retry it all.
 */
export async function tryWrite(db: Db, entry: KeyedEntry, agentId: string): Promise<DbQueryError | null> {
	// Inside a run the driver's own errors arrive unclassified.
	const refusal = (caught: unknown) => {
		const err = classifyDbError(caught);
		if (!(err instanceof DbQueryError) || err instanceof DbConflictError) throw err;
		return err;
	};
	try {
		await writeStatus(db, [entry], null, agentId);
		return null;
	} catch (err) {
		const first = refusal(err);
		if (entry.kind !== "transition") return first;
	}
	const plain = {
		...entry,
		result: entry.result === undefined ? undefined : null,
		error: "the agent's result could not be stored",
		detail: { ...entry.detail, unstorable: true },
	};
	try {
		await writeStatus(db, [plain], null, agentId);
		return null;
	} catch (err) {
		return refusal(err);
	}
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
