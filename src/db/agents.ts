import { and, asc, count, eq, gt, inArray, type SQL, sql } from "drizzle-orm";
import { z } from "zod";
import { type Agent, COMMAND_STATUSES, type CommandStatus, MAX_LABELS } from "../protocol";
import type { Db } from "./client";
import { agentCommands, agents } from "./schema";

const Labels = z.record(z.string(), z.string());

const AgentRecord = z.object({
	id: z.string(),
	createdAt: z.date(),
	connected: z.boolean(),
	lastConnectedAt: z.date().nullable(),
	lastSeenAt: z.date().nullable(),
	version: z.string().nullable(),
	platform: z.string().nullable(),
	concurrency: z.number().int().nullable(),
	actions: z.array(z.string()).nullable(),
	agentLabels: Labels,
	operatorLabels: Labels,
	labels: Labels,
	pausedAt: z.date().nullable(),
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
		version: r.version,
		platform: r.platform,
		actions: r.actions,
		labels: r.labels,
		agentLabels: r.agentLabels,
		operatorLabels: r.operatorLabels,
		paused: r.pausedAt !== null,
		pausedAt: r.pausedAt?.toISOString() ?? null,
		concurrency: r.concurrency,
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

/** Which agents a list or a fleet operation takes. */
export interface AgentFilter {
	/** Every pair must match the merged labels (one containment test on agents_labels_idx). */
	labels?: Record<string, string>;
	online?: boolean;
	/** Agents whose id starts with this. */
	prefix?: string;
}

/** The condition every agent selector uses (exported for the query-plan test). */
export function filterWhere(f: AgentFilter, afterId?: string): SQL | undefined {
	const labels = f.labels && Object.keys(f.labels).length > 0 ? f.labels : undefined;
	return and(
		afterId ? gt(agents.id, afterId) : undefined,
		labels ? sql`${agents.labels} @> ${JSON.stringify(labels)}::jsonb` : undefined,
		f.online === undefined ? undefined : eq(agents.connected, f.online),
		// Not LIKE: an id may hold `_`, which LIKE would take as a wildcard.
		f.prefix ? sql`starts_with(${agents.id}, ${f.prefix})` : undefined,
	);
}

/** One page of agent ids matching `filter`, by id after `afterId` (fleet operations walk them this way). */
export async function matchingAgentIds(db: Db, filter: AgentFilter, opts: { limit: number; afterId?: string }): Promise<string[]> {
	const rows = await db
		.select({ id: agents.id })
		.from(agents)
		.where(filterWhere(filter, opts.afterId))
		.orderBy(asc(agents.id))
		.limit(opts.limit);
	return rows.map((r) => r.id);
}

export async function listAgents(
	db: Db,
	opts: { limit: number; afterId?: string; filter?: AgentFilter },
): Promise<{ items: AgentWithCounts[]; nextCursor: string | null }> {
	const rows = await db
		.select()
		.from(agents)
		.where(filterWhere(opts.filter ?? {}, opts.afterId))
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
 * Sets and removes (null) operator labels in one statement, creating the row
 * of an agent that never connected. Returns false when the result would hold
 * more than MAX_LABELS labels (nothing is written).
 */
export async function patchOperatorLabels(db: Db, id: string, changes: Record<string, string | null>): Promise<boolean> {
	const set = Object.fromEntries(Object.entries(changes).filter((e): e is [string, string] => e[1] !== null));
	const removed = Object.keys(changes).filter((k) => changes[k] === null);
	const next = sql`(agents.operator_labels - array(select jsonb_array_elements_text(${JSON.stringify(removed)}::jsonb)))
		|| ${JSON.stringify(set)}::jsonb`;
	const rows = await db.execute(sql`
		insert into agents (id, operator_labels) values (${id}, ${JSON.stringify(set)}::jsonb)
		on conflict (id) do update set operator_labels = ${next}
		where (select count(*) from jsonb_object_keys(${next})) <= ${MAX_LABELS}
		returning id`);
	return rows.rows.length > 0;
}

/**
 * Records pauses (a time) and their ends (null) for the API's reads; each
 * agent's object is where they take effect. Creates the row of an agent
 * that never connected.
 */
export async function setPausedAt(db: Db, entries: readonly { id: string; pausedAt: number | null }[]): Promise<void> {
	if (entries.length === 0) return;
	const rows = entries.map((e) => ({ id: e.id, paused_at: e.pausedAt === null ? null : new Date(e.pausedAt).toISOString() }));
	await db.execute(sql`
		insert into agents (id, paused_at)
		select id, paused_at from jsonb_to_recordset(${JSON.stringify(rows)}::jsonb) as x(id text, paused_at timestamptz)
		on conflict (id) do update set paused_at = excluded.paused_at`);
}

/**
 * Marks the agents' commands that no object has taken yet as cancel
 * requested, for a stop whose object could not read them: whichever path
 * takes them later (a connect's catch-up, the recovery cron) cancels them
 * on intake instead of delivering them (agent/buffer.ts, addCommand).
 * Returns how many it marked.
 */
export async function cancelUntaken(db: Db, ids: readonly string[]): Promise<number> {
	if (ids.length === 0) return 0;
	const result = await db.execute(sql`
		update agent_commands set cancel_requested_at = now(), updated_at = now()
		where agent_id in (select jsonb_array_elements_text(${JSON.stringify(ids)}::jsonb))
			and status = 'pending' and taken_at is null and cancel_requested_at is null
		returning id`);
	return result.rows.length;
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
