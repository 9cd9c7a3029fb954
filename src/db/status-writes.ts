import { sql } from "drizzle-orm";
import type { CommandStatus } from "../protocol";
import type { Db } from "./client";

/** One status change of one command, as the agent's Durable Object saw it. */
export interface Transition {
	commandId: string;
	from: CommandStatus | null;
	to: CommandStatus;
	/** ISO time the change happened in the object, not the time it reached Postgres. */
	at: string;
	attempts: number;
	result?: unknown;
	error?: string | null;
	detail?: Record<string, unknown>;
}

/** The agent's connection state, written as a whole: the newest one wins. */
export interface Presence {
	agentId: string;
	connected: boolean;
	lastConnectedAt: string | null;
	lastSeenAt: string;
}

/**
 * Writes a batch of transitions (in order) and the agent's presence in one
 * statement, so a flush is all-or-nothing and costs one round trip however
 * many frames it carries. Transitions for commands Postgres does not know
 * are skipped rather than failing the batch: one bad row must not wedge the
 * whole outbox behind it.
 */
export async function writeStatus(
	db: Db,
	transitions: readonly Transition[],
	presence: Presence | null,
): Promise<void> {
	const rows = transitions.map((t, ord) => ({
		ord,
		command_id: t.commandId,
		from_status: t.from,
		to_status: t.to,
		at: t.at,
		attempts: t.attempts,
		has_result: t.result !== undefined,
		result: t.result === undefined ? null : t.result,
		error: t.error ?? null,
		detail: t.detail ?? null,
	}));
	const presenceCte = presence
		? sql`, agent as (
			insert into agents (id, connected, last_connected_at, last_seen_at)
			values (${presence.agentId}, ${presence.connected}, ${presence.lastConnectedAt}::timestamptz, ${presence.lastSeenAt}::timestamptz)
			on conflict (id) do update set
				connected = excluded.connected,
				last_connected_at = coalesce(excluded.last_connected_at, agents.last_connected_at),
				last_seen_at = greatest(agents.last_seen_at, excluded.last_seen_at)
		)`
		: sql``;
	await db.execute(sql`
		with t as (
			select * from jsonb_to_recordset(${JSON.stringify(rows)}::jsonb) as t(
				ord int, command_id uuid, from_status text, to_status text, at timestamptz,
				attempts int, has_result boolean, result jsonb, error text, detail jsonb)
			where exists (select 1 from agent_commands c where c.id = t.command_id)
		), latest as (
			select distinct on (command_id) * from t order by command_id, ord desc
		), upd as (
			update agent_commands c set
				status = l.to_status,
				attempts = greatest(c.attempts, l.attempts),
				updated_at = l.at,
				dispatched_at = coalesce(
					(select max(x.at) from t x where x.command_id = c.id and x.to_status = 'dispatched'),
					c.dispatched_at),
				acknowledged_at = coalesce(
					(select max(x.at) from t x where x.command_id = c.id and x.to_status = 'acknowledged'),
					c.acknowledged_at),
				completed_at = case
					when l.to_status in ('completed','failed','cancelled','expired') then l.at
					else c.completed_at end,
				result = case when l.has_result then l.result else c.result end,
				error = coalesce(l.error, c.error)
			from latest l where c.id = l.command_id
		), events as (
			insert into command_events (command_id, from_status, to_status, at, detail)
			select command_id, from_status, to_status, at, detail from t order by ord
		)${presenceCte}
		select 1
	`);
}
