import { asc, count, eq, gt, inArray, sql } from "drizzle-orm";
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

/**
 * Raises the agent's token version in Postgres (revocation's durable half,
 * written before its object is told) and returns it. An agent with no row
 * yet gets one: tokens may be minted and revoked before it ever connects.
 */
export async function raiseTokenVersion(db: Db, id: string): Promise<number> {
	const result = await db.execute(sql`
		insert into agents (id, token_version) values (${id}, 1)
		on conflict (id) do update set token_version = agents.token_version + 1
		returning token_version`);
	return TokenVersionRow.parse(result.rows[0]).token_version;
}

/** Raises the mirror to the object's version when the object was ahead (revocations from before the mirror). */
export async function mirrorTokenVersion(db: Db, id: string, version: number): Promise<void> {
	await db.execute(sql`update agents set token_version = greatest(token_version, ${version}) where id = ${id}`);
}

const TokenVersionRow = z.object({ token_version: z.number().int() });

/** The mirrored token version; 0 for an agent Postgres has no row for. */
export async function readTokenVersion(db: Db, id: string): Promise<number> {
	const result = await db.execute(sql`select token_version from agents where id = ${id}`);
	return result.rows[0] ? TokenVersionRow.parse(result.rows[0]).token_version : 0;
}
