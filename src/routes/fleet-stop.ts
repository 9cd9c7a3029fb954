/**
 * The fleet's emergency stop (POST /v1/agents/stop): every agent a selector
 * matches, paged through by id so a fleet of any size costs one page of ids
 * in memory, and each page's objects called with bounded parallelism.
 */
import { agentHub, boundedAll } from "../agent/stub";
import { cancelUntaken, matchingAgentIds, setPausedAt } from "../db/agents";
import type { HttpDatabase } from "../db/http";
import { errorFields, log } from "../log";
import type { StopFleetRequest } from "../protocol";
import type { z } from "zod";

/** Agent ids read per page of the selector. */
const PAGE = 500;
/** Objects called at once. */
const PARALLEL = 50;
/** Unreached agents listed in the answer at most; the count is always whole. */
const MAX_UNREACHED_LISTED = 1000;

export interface FleetStopAnswer {
	matched: number;
	reached: number;
	unreached: { agentId: string; error: string }[];
	cancelled: number;
	cancelRequested: number;
	paused: boolean;
}

export async function stopFleet(
	env: Env,
	db: HttpDatabase,
	req: z.output<typeof StopFleetRequest>,
	actor: string,
): Promise<FleetStopAnswer> {
	const filter = { labels: req.selector.labels, online: req.selector.online };
	const answer: FleetStopAnswer = { matched: 0, reached: 0, unreached: [], cancelled: 0, cancelRequested: 0, paused: req.pause };
	let afterId: string | undefined;
	for (;;) {
		const ids = await db.run((d) => matchingAgentIds(d, filter, { limit: PAGE, afterId }));
		if (ids.length === 0) break;
		answer.matched += ids.length;
		const results = await boundedAll(ids, PARALLEL, (id) => agentHub(env, id).stop({ pause: req.pause, actor }));
		const paused: { id: string; pausedAt: number | null }[] = [];
		// Commands these objects did not (or could not) read from Postgres must not be delivered later.
		const untaken: string[] = [];
		results.forEach((r, i) => {
			const agentId = ids[i] ?? "";
			if (r.status === "fulfilled") {
				answer.reached++;
				answer.cancelled += r.value.cancelled;
				answer.cancelRequested += r.value.cancelRequested;
				if (req.pause) paused.push({ id: agentId, pausedAt: r.value.pausedAt });
				if (!r.value.complete) untaken.push(agentId);
			} else {
				log("warn", "agent.unreachable", { agentId, ...errorFields(r.reason) });
				untaken.push(agentId);
				if (answer.unreached.length < MAX_UNREACHED_LISTED) {
					answer.unreached.push({ agentId, error: "the agent's object is unavailable; stop it again shortly" });
				}
			}
		});
		await db.run(async (d) => {
			await setPausedAt(d, paused);
			await cancelUntaken(d, untaken);
		});
		if (ids.length < PAGE) break;
		afterId = ids.at(-1);
	}
	return answer;
}
