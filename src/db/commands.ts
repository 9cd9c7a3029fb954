import { and, desc, eq, inArray, lt, sql } from "drizzle-orm";
import { z } from "zod";
import {
	type Command,
	CommandStatus,
	type EnqueueRequest,
	OPEN_STATUSES,
	type OpenStatus,
} from "../protocol";
import type { Db } from "./client";
import { agentCommands } from "./schema";

// Query-builder selects give Dates; raw `execute` gives Postgres' text form.
const Timestamp = z.union([z.date(), z.string().transform((s) => new Date(s))]).pipe(z.date());

/** A command row as read back from Postgres, validated: rows are a boundary too. */
export const CommandRecord = z.object({
	id: z.uuid(),
	seq: z.coerce.number().int(),
	agentId: z.string(),
	sessionId: z.string().nullable(),
	action: z.string(),
	payload: z.json(),
	status: CommandStatus,
	priority: z.number().int(),
	attempts: z.number().int(),
	result: z.json().nullable(),
	error: z.string().nullable(),
	createdAt: Timestamp,
	updatedAt: Timestamp,
	dispatchedAt: Timestamp.nullable(),
	acknowledgedAt: Timestamp.nullable(),
	completedAt: Timestamp.nullable(),
});
export type CommandRecord = z.infer<typeof CommandRecord>;

const iso = (d: Date | null) => (d ? d.toISOString() : null);

export function toApiCommand(r: CommandRecord): Command {
	return {
		id: r.id,
		agentId: r.agentId,
		sessionId: r.sessionId,
		action: r.action,
		payload: r.payload,
		status: r.status,
		priority: r.priority,
		attempts: r.attempts,
		result: r.result,
		error: r.error,
		createdAt: r.createdAt.toISOString(),
		updatedAt: r.updatedAt.toISOString(),
		dispatchedAt: iso(r.dispatchedAt),
		acknowledgedAt: iso(r.acknowledgedAt),
		completedAt: iso(r.completedAt),
	};
}

function parseRow(row: unknown): CommandRecord {
	// A row that does not match the schema means the table and this code disagree:
	// fail loudly instead of handing half-typed data on.
	return CommandRecord.parse(row);
}

/**
 * Inserts the command, its agent (if new) and its first audit event in one
 * statement: one round trip, and no command ever exists without its event.
 */
export async function insertCommand(
	db: Db,
	agentId: string,
	req: EnqueueRequest,
): Promise<CommandRecord> {
	const result = await db.execute(sql`
		with agent as (
			insert into agents (id) values (${agentId}) on conflict (id) do nothing
		), cmd as (
			insert into agent_commands (agent_id, session_id, action, payload, priority)
			values (${agentId}, ${req.sessionId}, ${req.action}, ${JSON.stringify(req.payload)}::jsonb, ${req.priority})
			returning *
		), event as (
			insert into command_events (command_id, from_status, to_status, at, detail)
			select id, null, 'pending', created_at, '{"reason":"enqueued"}'::jsonb from cmd
		)
		select
			id, seq, agent_id as "agentId", session_id as "sessionId", action, payload, status,
			priority, attempts, result, error, created_at as "createdAt", updated_at as "updatedAt",
			dispatched_at as "dispatchedAt", acknowledged_at as "acknowledgedAt", completed_at as "completedAt"
		from cmd
	`);
	return parseRow(result.rows[0]);
}

export async function getCommand(db: Db, id: string): Promise<CommandRecord | undefined> {
	const rows = await db.select().from(agentCommands).where(eq(agentCommands.id, id)).limit(1);
	return rows[0] ? parseRow(rows[0]) : undefined;
}

export interface Page<T> {
	items: T[];
	nextCursor: string | null;
}

/** Newest first. The cursor is the last row's seq, opaque to clients. */
export async function listCommands(
	db: Db,
	agentId: string,
	opts: { status?: CommandStatus; limit: number; beforeSeq?: number },
): Promise<Page<CommandRecord>> {
	const rows = await db
		.select()
		.from(agentCommands)
		.where(
			and(
				eq(agentCommands.agentId, agentId),
				opts.status ? eq(agentCommands.status, opts.status) : undefined,
				opts.beforeSeq !== undefined ? lt(agentCommands.seq, opts.beforeSeq) : undefined,
			),
		)
		.orderBy(desc(agentCommands.seq))
		.limit(opts.limit + 1);
	const items = rows.slice(0, opts.limit).map(parseRow);
	const last = items.at(-1);
	return {
		items,
		nextCursor: rows.length > opts.limit && last ? encodeCursor(last.seq) : null,
	};
}

export function encodeCursor(seq: number): string {
	return btoa(`s:${seq}`).replace(/=+$/, "");
}

/** Returns undefined for anything that is not a cursor this API issued. */
export function decodeCursor(cursor: string): number | undefined {
	try {
		const m = /^s:(\d{1,18})$/.exec(atob(cursor));
		return m ? Number(m[1]) : undefined;
	} catch {
		return undefined;
	}
}

/** Every command the agent's Durable Object still owes work on, in delivery order. */
export async function listOpenCommands(db: Db, agentId: string): Promise<CommandRecord[]> {
	const rows = await db
		.select()
		.from(agentCommands)
		.where(
			and(
				eq(agentCommands.agentId, agentId),
				inArray(agentCommands.status, [...OPEN_STATUSES] as OpenStatus[]),
			),
		)
		.orderBy(desc(agentCommands.priority), agentCommands.seq);
	return rows.map(parseRow);
}
