import { asc, count, eq, gt, inArray } from "drizzle-orm";
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

export type StatusCounts = Record<CommandStatus, number>;
export type AgentWithCounts = Agent & { commands: StatusCounts };

function zeroCounts(): StatusCounts {
	// SAFETY: built from COMMAND_STATUSES, so every status is a key.
	return Object.fromEntries(COMMAND_STATUSES.map((s) => [s, 0])) as StatusCounts;
}

/** Command counts by status for these agents, in one grouped query. */
async function countsFor(db: Db, ids: string[]): Promise<Map<string, StatusCounts>> {
	const out = new Map(ids.map((id) => [id, zeroCounts()]));
	if (ids.length === 0) return out;
	const rows = await db
		.select({ agentId: agentCommands.agentId, status: agentCommands.status, n: count() })
		.from(agentCommands)
		.where(inArray(agentCommands.agentId, ids))
		.groupBy(agentCommands.agentId, agentCommands.status);
	for (const r of rows) {
		const c = out.get(r.agentId);
		if (c) c[r.status as CommandStatus] = Number(r.n);
	}
	return out;
}

export async function listAgents(
	db: Db,
	opts: { limit: number; afterId?: string },
): Promise<{ items: AgentWithCounts[]; nextCursor: string | null }> {
	const rows = await db
		.select()
		.from(agents)
		.where(opts.afterId ? gt(agents.id, opts.afterId) : undefined)
		.orderBy(asc(agents.id))
		.limit(opts.limit + 1);
	const page = rows.slice(0, opts.limit).map((r) => toApiAgent(AgentRecord.parse(r)));
	const counts = await countsFor(db, page.map((a) => a.id));
	const items = page.map((a) => ({ ...a, commands: counts.get(a.id) ?? zeroCounts() }));
	return {
		items,
		nextCursor: rows.length > opts.limit ? (items.at(-1)?.id ?? null) : null,
	};
}

export async function getAgent(db: Db, id: string): Promise<AgentWithCounts | undefined> {
	const [row] = await db.select().from(agents).where(eq(agents.id, id)).limit(1);
	if (!row) return undefined;
	const counts = await countsFor(db, [id]);
	return { ...toApiAgent(AgentRecord.parse(row)), commands: counts.get(id) ?? zeroCounts() };
}
