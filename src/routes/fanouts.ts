import { Hono } from "hono";
import { z } from "zod";
import type { AppEnv } from "../app-env";
import { agentHub, boundedAll, forward } from "../agent/stub";
import { readAccess, writeAccess } from "../auth/api-key";
import { decodeCursor } from "../db/commands";
import { backlogLimit } from "../db/enqueue";
import { fanoutCounts, fanoutTarget, fanoutTargets, getFanout, insertFanout, requestFanoutCancel } from "../db/fanouts";
import { ApiError } from "../errors";
import { errorFields, log } from "../log";
import { enqueueRateLimit } from "../rate-limit";
import { ErrorCode, FANOUT_MAX_TARGETS, FanoutQuery, FanoutRequest, OPEN_STATUSES } from "../protocol";
import { jsonBody, params, query } from "../validation";

/** Agents' objects asked at once to cancel a fan-out's commands. */
const CANCEL_PARALLEL = 50;

const FanoutParam = z.object({ id: z.uuid() });

export const fanoutRoutes = new Hono<AppEnv>()
	/**
	 * One command per target, written in one statement before any object is
	 * called; then, after the answer, the objects are called 50 at a time, and
	 * one that cannot be reached leaves its command pending for the recovery path.
	 */
	.post("/fanouts", writeAccess, jsonBody(FanoutRequest), enqueueRateLimit, async (c) => {
		const body = c.req.valid("json");
		const limit = backlogLimit(c.env);
		const out = await c.var.db.run((db) => insertFanout(db, body, c.get("apiKeyId"), limit));
		switch (out.kind) {
			case "no_targets":
				throw new ApiError(
					400,
					ErrorCode.NO_TARGETS,
					body.selector
						? "selector: no agent matches it now; check the labels (GET /v1/agents?label=k=v) or drop online"
						: "agentIds: no agent given",
				);
			case "too_many":
				throw new ApiError(
					400,
					ErrorCode.TOO_MANY_TARGETS,
					out.byPayload
						? `${body.selector ? "selector" : "agentIds"}: more than ${out.cap} targets for a payload this large ` +
								"(payload bytes times targets may not pass 64 MiB); narrow the selector or split the fan-out"
						: `${body.selector ? "selector" : "agentIds"}: more than ${FANOUT_MAX_TARGETS} targets (FANOUT_MAX_TARGETS); ` +
								"narrow the selector or split the fan-out",
				);
			case "full":
				log("warn", "api.fanout_backlog_full", { count: out.count, limit: out.limit });
				throw new ApiError(
					429,
					ErrorCode.AGENT_BACKLOG_FULL,
					`${out.count} target(s) have ${out.limit} open commands, their backlog quota (AGENT_BACKLOG_LIMIT): ` +
						`${out.agents.join(", ")}${out.count > out.agents.length ? ", …" : ""}; nothing was enqueued. ` +
						"Retry once they have worked some off, or leave them out (agentIds)",
					undefined,
					{ "retry-after": "30" },
				);
			case "reused":
				throw new ApiError(
					422,
					ErrorCode.IDEMPOTENCY_KEY_REUSED,
					`idempotency key "${body.idempotencyKey}" already names fan-out ${out.id}, created with another target, ` +
						"action, payload or options; send that same request to get it back, or use a new key",
				);
			case "replayed":
				return c.json({ id: out.id, targetCount: out.targetCount, commands: out.commands }, 200);
			case "created": {
				log("info", "fanout.created", { fanoutId: out.id, action: body.action, targets: out.targetCount });
				// The rows are committed: answer now, and hand them to their objects after
				// the answer (a thousand objects take seconds). What this does not reach
				// before the request's time runs out stays pending for the recovery cron.
				c.executionCtx.waitUntil(forward(c.env, out.commands));
				const commands = out.commands.map((r) => ({ agentId: r.agentId, commandId: r.id }));
				return c.json({ id: out.id, targetCount: out.targetCount, commands }, 201);
			}
		}
	})
	.get("/fanouts/:id", readAccess, params(FanoutParam), query(FanoutQuery), async (c) => {
		const { id } = c.req.valid("param");
		const q = c.req.valid("query");
		const afterSeq = q.cursor === undefined ? undefined : decodeCursor(q.cursor);
		if (q.cursor !== undefined && afterSeq === undefined) {
			throw new ApiError(400, ErrorCode.VALIDATION_FAILED, "invalid query: cursor is not one this API issued");
		}
		const found = await c.var.db.run(async (db) => {
			const fanout = await getFanout(db, id);
			if (!fanout) return undefined;
			const [counts, targets] = await Promise.all([fanoutCounts(db, id), fanoutTargets(db, id, { limit: q.limit, afterSeq })]);
			return { fanout, counts, targets };
		});
		if (!found) throw new ApiError(404, ErrorCode.NOT_FOUND, `no fan-out with id ${id}`);
		const { fanout, counts, targets } = found;
		return c.json({
			id: fanout.id,
			createdAt: fanout.createdAt.toISOString(),
			action: fanout.action,
			// SAFETY: the fan-out's own row, written by insertFanout from a validated request.
			target: fanout.target as ReturnType<typeof fanoutTarget>,
			targetCount: fanout.targetCount,
			counts,
			done: OPEN_STATUSES.every((s) => !counts[s]),
			cancelRequestedAt: fanout.cancelRequestedAt?.toISOString() ?? null,
			targets,
		});
	})
	/**
	 * Cancels what is still open, each command as POST /v1/commands/{id}/cancel
	 * does: queued ones end `cancelled`, running ones get the cancel frame.
	 */
	.post("/fanouts/:id/cancel", writeAccess, params(FanoutParam), async (c) => {
		const { id } = c.req.valid("param");
		const open = await c.var.db.run((db) => requestFanoutCancel(db, id));
		if (!open) throw new ApiError(404, ErrorCode.NOT_FOUND, `no fan-out with id ${id}`);
		const actor = c.get("apiKeyId");
		const results = await boundedAll(open, CANCEL_PARALLEL, async (t) => (await agentHub(c.env, t.agentId).cancel(t.commandId, actor)).outcome);
		let cancelled = 0;
		let cancelRequested = 0;
		const unreached: { agentId: string; commandId: string; error: string }[] = [];
		results.forEach((r, i) => {
			const t = open[i];
			if (!t) return;
			if (r.status === "rejected") {
				log("warn", "fanout.cancel_unreached", { fanoutId: id, agentId: t.agentId, ...errorFields(r.reason) });
				unreached.push({ ...t, error: "the agent's object is unavailable; cancel again shortly" });
			} else if (r.value === "cancelled") cancelled++;
			else if (r.value === "cancel_requested") cancelRequested++;
			else if (r.value === "unavailable") unreached.push({ ...t, error: "the database is unavailable; cancel again shortly" });
		});
		log("info", "fanout.cancel", { fanoutId: id, open: open.length, cancelled, cancelRequested, unreached: unreached.length });
		return c.json({ id, cancelled, cancelRequested, unreached });
	});
