import { asc, count, eq, gt } from "drizzle-orm";
import { z } from "zod";
import { type Agent, COMMAND_STATUSES, type CommandStatus } from "../protocol";
import type { Db } from "./client";
import { agentCommands, agents } from "./schema";

const AgentRecord = z.object({
	id: z.string(),
	createdAt: z.date(),
	connected: z.boolean(),
	lastConnectedAt: z.date().nullable(),
	lastSeenAt: z.date().nullable(),
});
type AgentRecord = z.infer<typeof AgentRecord>;

export function toApiAgent(r: AgentRecord): Agent {
	return {
		id: r.id,
		online: r.connected,
		createdAt: r.createdAt.toISOString(),
		connectedSince: r.connected && r.lastConnectedAt ? r.lastConnectedAt.toISOString() : null,
		lastConnectedAt: r.lastConnectedAt?.toISOString() ?? null,
		lastSeenAt: r.lastSeenAt?.toISOString() ?? null,
	};
}

export async function listAgents(
	db: Db,
	opts: { limit: number; afterId?: string },
): Promise<{ items: Agent[]; nextCursor: string | null }> {
	const rows = await db
		.select()
		.from(agents)
		.where(opts.afterId ? gt(agents.id, opts.afterId) : undefined)
		.orderBy(asc(agents.id))
		.limit(opts.limit + 1);
	const items = rows.slice(0, opts.limit).map((r) => toApiAgent(AgentRecord.parse(r)));
	return {
		items,
		nextCursor: rows.length > opts.limit ? (items.at(-1)?.id ?? null) : null,
	};
}

export type StatusCounts = Record<CommandStatus, number>;

export async function getAgent(
	db: Db,
	id: string,
): Promise<(Agent & { commands: StatusCounts }) | undefined> {
	const [row] = await db.select().from(agents).where(eq(agents.id, id)).limit(1);
	if (!row) return undefined;
	const counts = await db
		.select({ status: agentCommands.status, n: count() })
		.from(agentCommands)
		.where(eq(agentCommands.agentId, id))
		.groupBy(agentCommands.status);
	const commands = Object.fromEntries(COMMAND_STATUSES.map((s) => [s, 0])) as StatusCounts;
	for (const c of counts) commands[c.status as CommandStatus] = Number(c.n);
	return { ...toApiAgent(AgentRecord.parse(row)), commands };
}
