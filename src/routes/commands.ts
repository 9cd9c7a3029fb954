import { Hono } from "hono";
import { z } from "zod";
import type { AgentHub } from "../agent/agent-hub";
import { requireApiKey } from "../auth/api-key";
import { type DbConfig, withDb } from "../db/client";
import {
	type CommandRecord,
	decodeCursor,
	getCommand,
	insertCommand,
	listCommands,
	toApiCommand,
} from "../db/commands";
import { ApiError } from "../errors";
import { errorFields, log } from "../log";
import { AgentId, CommandId, EnqueueRequest, ErrorCode, ListCommandsQuery } from "../protocol";
import { jsonBody, params, query } from "../validation";

export function agentHub(env: Env, agentId: string): DurableObjectStub<AgentHub> {
	return env.AGENT_HUB.get(env.AGENT_HUB.idFromName(agentId));
}

/**
 * Hands a committed command to its agent's object. A failure here is logged,
 * not raised: the row is already durable and `pending`, and the object reads
 * it from Postgres on the agent's next connect.
 */
async function forward(env: Env, cmd: CommandRecord): Promise<void> {
	try {
		await agentHub(env, cmd.agentId).enqueue({
			agentId: cmd.agentId,
			id: cmd.id,
			seq: cmd.seq,
			action: cmd.action,
			payload: cmd.payload,
			sessionId: cmd.sessionId,
			priority: cmd.priority,
			status: "pending",
			attempts: 0,
		});
	} catch (err) {
		log("warn", "command.forward_failed", { agentId: cmd.agentId, commandId: cmd.id, ...errorFields(err) });
	}
}

export const commandRoutes = new Hono<{ Bindings: Env }>()
	.post(
		"/agents/:agentId/commands",
		requireApiKey,
		params(z.object({ agentId: AgentId })),
		jsonBody(EnqueueRequest),
		async (c) => {
			const { agentId } = c.req.valid("param");
			const body = c.req.valid("json");
			const cmd = await withDb(c.env satisfies DbConfig, (db) => insertCommand(db, agentId, body));
			log("info", "command.enqueued", { agentId, commandId: cmd.id, action: cmd.action, priority: cmd.priority });
			await forward(c.env, cmd);
			return c.json(toApiCommand(cmd), 201);
		},
	)
	.get(
		"/agents/:agentId/commands",
		requireApiKey,
		params(z.object({ agentId: AgentId })),
		query(ListCommandsQuery),
		async (c) => {
			const { agentId } = c.req.valid("param");
			const q = c.req.valid("query");
			const beforeSeq = q.cursor === undefined ? undefined : decodeCursor(q.cursor);
			if (q.cursor !== undefined && beforeSeq === undefined) {
				throw new ApiError(400, ErrorCode.VALIDATION_FAILED, "invalid query: cursor is not one this API issued");
			}
			const page = await withDb(c.env, (db) =>
				listCommands(db, agentId, { status: q.status, limit: q.limit, beforeSeq }),
			);
			return c.json({ items: page.items.map(toApiCommand), nextCursor: page.nextCursor });
		},
	)
	.get("/commands/:id", requireApiKey, params(z.object({ id: CommandId })), async (c) => {
		const { id } = c.req.valid("param");
		const cmd = await withDb(c.env, (db) => getCommand(db, id));
		if (!cmd) throw new ApiError(404, ErrorCode.NOT_FOUND, `no command with id ${id}`);
		return c.json(toApiCommand(cmd));
	});
