import { Hono } from "hono";
import { endTime, startTime, timing } from "hono/timing";
import type { AppEnv } from "../app-env";
import { z } from "zod";
import { agentHub, forward } from "../agent/stub";
import { readAccess, writeAccess } from "../auth/api-key";
import { enqueueRateLimit } from "../rate-limit";
import {
	type CommandRecord,
	decodeCursor,
	getCommand,
	getOutput,
	listCommands,
	listEvents,
	searchCommands,
	toApiCommand,
} from "../db/commands";
import { backlogLimit, type Enqueued, insertBatch, insertCommand } from "../db/enqueue";
import { ApiError } from "../errors";
import { errorFields, log, logs, payloadFields } from "../log";
import {
	AgentId,
	BatchEnqueueRequest,
	CommandId,
	EnqueueRequest,
	ErrorCode,
	ListCommandsQuery,
	SearchCommandsQuery,
	TERMINAL_STATUSES,
} from "../protocol";
import { jsonBody, params, query } from "../validation";

/** An agent object that cannot be reached is a transient condition, like a database outage. */
async function callHub<T>(agentId: string, call: () => Promise<T>): Promise<T> {
	try {
		return await call();
	} catch (err) {
		log("warn", "agent.unreachable", { agentId, ...errorFields(err) });
		throw new ApiError(503, ErrorCode.AGENT_UNAVAILABLE, "the agent's object is unavailable; retry shortly");
	}
}

/**
 * An enqueue says where its time went (`Server-Timing: db, agent, total`):
 * the durable write, then the agent's object taking it. Browsers' devtools
 * and `curl -i` show it; docs/performance.md reads it.
 */
const enqueueTiming = timing({ totalDescription: "enqueue" });

function keyReused(reused: NonNullable<Enqueued["reused"]>): { code: ErrorCode; message: string } {
	return {
		code: ErrorCode.IDEMPOTENCY_KEY_REUSED,
		message:
			`idempotency key "${reused.key}" already names command ${reused.commandId}, enqueued with a different ` +
			"action, payload or options; send that same command to get it back, or use a new key",
	};
}

/** A full backlog drains as fast as its agent works: this is a guess, not a promise. */
const BACKLOG_RETRY_AFTER_SECONDS = 30;

function backlogFull(full: NonNullable<Enqueued["full"]>): { code: ErrorCode; message: string } {
	return {
		code: ErrorCode.AGENT_BACKLOG_FULL,
		message:
			`agent ${full.agentId} has ${full.limit} open commands, its backlog quota (AGENT_BACKLOG_LIMIT); ` +
			`retry once it has worked some off (after ${BACKLOG_RETRY_AFTER_SECONDS} s, say)`,
	};
}

/** What a retry enqueues: the command's action, payload and options, its ttl counted from its own creation. */
function retryRequest(r: CommandRecord): EnqueueRequest {
	const ttl = r.expiresAt ? Math.max(1, Math.round((r.expiresAt.getTime() - r.createdAt.getTime()) / 1000)) : undefined;
	return {
		action: r.action,
		payload: r.payload,
		sessionId: r.sessionId,
		priority: r.priority,
		ttlSeconds: ttl,
		timeoutSeconds: r.timeoutSeconds ?? undefined,
		maxAttempts: r.maxAttempts,
		ackTimeoutSeconds: r.ackTimeoutSeconds,
	};
}

const RETRYABLE: ReadonlySet<string> = new Set(["failed", "cancelled", "expired"]);

function cursorSeq(cursor: string | undefined): number | undefined {
	const seq = cursor === undefined ? undefined : decodeCursor(cursor);
	if (cursor !== undefined && seq === undefined) {
		throw new ApiError(400, ErrorCode.VALIDATION_FAILED, "invalid query: cursor is not one this API issued");
	}
	return seq;
}

export const commandRoutes = new Hono<AppEnv>()
	.post(
		"/agents/:agentId/commands",
		enqueueTiming,
		writeAccess,
		params(z.object({ agentId: AgentId })),
		jsonBody(EnqueueRequest),
		enqueueRateLimit,
		async (c) => {
			const { agentId } = c.req.valid("param");
			const body = c.req.valid("json");
			startTime(c, "db", "durable write");
			const limit = backlogLimit(c.env);
			const enqueued = await c.var.db.run((db) => insertCommand(db, agentId, body, c.get("apiKeyId"), limit));
			endTime(c, "db");
			if (enqueued.reused) {
				const { code, message } = keyReused(enqueued.reused);
				throw new ApiError(422, code, message);
			}
			if (enqueued.full) {
				const { code, message } = backlogFull(enqueued.full);
				log("warn", "api.backlog_full", { agentId, limit });
				throw new ApiError(429, code, message, undefined, { "retry-after": String(BACKLOG_RETRY_AFTER_SECONDS) });
			}
			const { command, created } = enqueued;
			// A command logs one info line, when it ends (in its object); the rest is in its events.
			if (logs("debug")) {
				log("debug", created ? "command.enqueued" : "command.enqueue_replayed", {
					agentId,
					commandId: command.id,
					action: command.action,
					priority: command.priority,
					...(await payloadFields(command.payload)),
				});
			}
			// A replay forwards again: harmless for the object, and it heals a first forward that failed.
			startTime(c, "agent", "agent's object");
			if (!TERMINAL_STATUSES.has(command.status)) await forward(c.env, [command]);
			endTime(c, "agent");
			return c.json(toApiCommand(command), created ? 201 : 200);
		},
	)
	.post("/commands/batch", enqueueTiming, writeAccess, jsonBody(BatchEnqueueRequest), enqueueRateLimit, async (c) => {
		const body = c.req.valid("json");
		startTime(c, "db", "durable write");
		const limit = backlogLimit(c.env);
		const results = await c.var.db.run((db) => insertBatch(db, body, c.get("apiKeyId"), limit));
		endTime(c, "db");
		const commands = results.flatMap((r) => (r.command ? [r.command] : []));
		const fresh = commands.filter((command) => !TERMINAL_STATUSES.has(command.status));
		log("debug", "command.batch_enqueued", {
			count: results.length,
			created: results.filter((r) => r.created === true).length,
			refused: results.length - commands.length,
			agents: new Set(fresh.map((f) => f.agentId)).size,
		});
		startTime(c, "agent", "agents' objects");
		await forward(c.env, fresh);
		endTime(c, "agent");
		// An item that reuses a key, or is past its agent's quota, is refused alone: the others
		// are written already, and failing the whole batch would have a retry duplicate the
		// ones without a key.
		const items = results.map((r) =>
			r.reused
				? { created: false as const, error: keyReused(r.reused) }
				: r.full
					? { created: false as const, error: backlogFull(r.full) }
					: { created: r.created, command: toApiCommand(r.command) },
		);
		return c.json({ items }, 201);
	})
	.get(
		"/agents/:agentId/commands",
		readAccess,
		params(z.object({ agentId: AgentId })),
		query(ListCommandsQuery),
		async (c) => {
			const { agentId } = c.req.valid("param");
			const q = c.req.valid("query");
			const beforeSeq = cursorSeq(q.cursor);
			const page = await c.var.db.run((db) =>
				listCommands(db, agentId, { status: q.status, limit: q.limit, beforeSeq }),
			);
			return c.json({ items: page.items.map(toApiCommand), nextCursor: page.nextCursor });
		},
	)
	/** Commands across agents, any of the filters (all must match), newest first. */
	.get("/commands", readAccess, query(SearchCommandsQuery), async (c) => {
		const { cursor, ...q } = c.req.valid("query");
		const beforeSeq = cursorSeq(cursor);
		const page = await c.var.db.run((db) => searchCommands(db, { ...q, beforeSeq }));
		return c.json({ items: page.items.map(toApiCommand), nextCursor: page.nextCursor });
	})
	/**
	 * A new command with the same action, payload and options as a failed,
	 * cancelled or expired one, for the same agent, linked both ways.
	 */
	.post("/commands/:id/retry", writeAccess, params(z.object({ id: CommandId })), enqueueRateLimit, async (c) => {
		const { id } = c.req.valid("param");
		const old = await c.var.db.run((db) => getCommand(db, id));
		if (!old) throw new ApiError(404, ErrorCode.NOT_FOUND, `no command with id ${id}`);
		if (!TERMINAL_STATUSES.has(old.status)) {
			// Postgres trails the object by one flush: a command cancelled a moment ago is
			// still open there. The object's word decides; one it cannot give leaves Postgres'.
			const held = await agentHub(c.env, old.agentId)
				.commandStatus(id)
				.catch(() => null);
			if (held && TERMINAL_STATUSES.has(held)) old.status = held;
		}
		if (!RETRYABLE.has(old.status)) {
			throw new ApiError(
				409,
				ErrorCode.NOT_RETRYABLE,
				old.status === "completed"
					? "command completed; only a failed, cancelled or expired command can be retried"
					: `command is still ${old.status}; cancel it first, or wait for it to finish`,
			);
		}
		const limit = backlogLimit(c.env);
		const enqueued = await c.var.db.run((db) => insertCommand(db, old.agentId, retryRequest(old), c.get("apiKeyId"), limit, id));
		if (enqueued.full) {
			const { code, message } = backlogFull(enqueued.full);
			throw new ApiError(429, code, message, undefined, { "retry-after": String(BACKLOG_RETRY_AFTER_SECONDS) });
		}
		if (!enqueued.command) throw new Error("retry enqueued no command");
		log("info", "command.retried", { agentId: old.agentId, commandId: enqueued.command.id, retryOf: id });
		// An agent that is gone keeps it pending, like any enqueue: forward() only logs a failure.
		await forward(c.env, [enqueued.command]);
		return c.json(toApiCommand(enqueued.command), 201);
	})
	.get("/commands/:id", readAccess, params(z.object({ id: CommandId })), async (c) => {
		const { id } = c.req.valid("param");
		const cmd = await c.var.db.run((db) => getCommand(db, id));
		if (!cmd) throw new ApiError(404, ErrorCode.NOT_FOUND, `no command with id ${id}`);
		return c.json(toApiCommand(cmd));
	})
	/**
	 * 200 `cancelled`: it had not been sent and never will be. 202
	 * `cancel_requested`: the agent has it and was asked to stop. 409: already finished.
	 */
	.post("/commands/:id/cancel", writeAccess, params(z.object({ id: CommandId })), async (c) => {
		const { id } = c.req.valid("param");
		const before = await c.var.db.run((db) => getCommand(db, id));
		if (!before) throw new ApiError(404, ErrorCode.NOT_FOUND, `no command with id ${id}`);
		if (TERMINAL_STATUSES.has(before.status)) {
			throw new ApiError(409, ErrorCode.ALREADY_FINISHED, `command is already ${before.status}`);
		}
		const { outcome } = await callHub(before.agentId, () =>
			agentHub(c.env, before.agentId).cancel(id, c.get("apiKeyId")),
		);
		if (outcome === "unavailable") {
			throw new ApiError(503, ErrorCode.DB_UNAVAILABLE, "the database is unavailable; retry shortly");
		}
		if (outcome === "already_finished" || outcome === "unknown") {
			// The object finished it before Postgres heard (or it just ended).
			throw new ApiError(409, ErrorCode.ALREADY_FINISHED, "command already finished");
		}
		const after = await c.var.db.run((db) => getCommand(db, id));
		const command = toApiCommand(after ?? before);
		// Postgres trails the object by one flush; report the object's verdict.
		if (outcome === "cancelled") {
			return c.json({ outcome, command: { ...command, status: "cancelled" as const, blockedReason: null } }, 200);
		}
		return c.json({ outcome, command: { ...command, blockedReason: "cancel_requested" as const } }, 202);
	})
	.get("/commands/:id/output", readAccess, params(z.object({ id: CommandId })), async (c) => {
		const { id } = c.req.valid("param");
		const out = await c.var.db.run((db) => getOutput(db, id));
		if (!out) throw new ApiError(404, ErrorCode.NOT_FOUND, `no command with id ${id}`);
		return c.json(out);
	})
	.get("/commands/:id/events", readAccess, params(z.object({ id: CommandId })), async (c) => {
		const { id } = c.req.valid("param");
		const found = await c.var.db.run(async (db) => ((await getCommand(db, id)) ? listEvents(db, id) : undefined));
		if (!found) throw new ApiError(404, ErrorCode.NOT_FOUND, `no command with id ${id}`);
		return c.json({ items: found });
	})
	.post("/agents/:agentId/reconcile", writeAccess, params(z.object({ agentId: AgentId })), async (c) => {
		const { agentId } = c.req.valid("param");
		const { added } = await callHub(agentId, () => agentHub(c.env, agentId).reconcile());
		return c.json({ agentId, added });
	});
