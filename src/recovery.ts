/**
 * The recovery path beside push: every minute, find pending commands that no
 * agent object has taken (a crash between insert and forward, a row inserted
 * by SQL) and hand each agent's object the job of reading them. Nothing
 * depends on a one-time startup scan.
 */
import { withDb } from "./db/client";
import { agentsWithUntakenCommands } from "./db/commands";
import { errorFields, log } from "./log";
import { deleteExpired } from "./retention";
import { agentHub } from "./agent/stub";

/** Younger rows are most likely still on their way through the normal forward. */
export const UNTAKEN_AFTER_SECONDS = 5;
const AGENTS_PER_RUN = 1000;
const PARALLEL = 25;

export async function recoverUntaken(env: Env): Promise<{ agents: number; added: number; failed: number }> {
	const agentIds = await withDb(env, (db) => agentsWithUntakenCommands(db, UNTAKEN_AFTER_SECONDS, AGENTS_PER_RUN));
	let added = 0;
	let failed = 0;
	for (let i = 0; i < agentIds.length; i += PARALLEL) {
		const results = await Promise.allSettled(
			agentIds.slice(i, i + PARALLEL).map((id) => agentHub(env, id).reconcile()),
		);
		for (const r of results) {
			if (r.status === "fulfilled") added += r.value.added;
			else failed++;
		}
	}
	const summary = { agents: agentIds.length, added, failed };
	if (agentIds.length > 0) log(failed ? "warn" : "info", "recovery.run", summary);
	return summary;
}

/** The every-minute cron: recovery, then retention. One failing does not stop the other. */
export async function scheduled(env: Env): Promise<void> {
	try {
		await recoverUntaken(env);
	} catch (err) {
		log("error", "recovery.failed", errorFields(err));
	}
	try {
		await deleteExpired(env);
	} catch (err) {
		log("error", "retention.failed", errorFields(err));
	}
}
