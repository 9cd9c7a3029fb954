import { type SQL, sql } from "drizzle-orm";
import { z } from "zod";
import {
	type BlockedReason,
	Command,
	CommandStatus,
	OUTPUT_TRUNCATION_MARKER,
	type SearchCommandsQuery,
	TERMINAL_STATUSES,
} from "../protocol";
import type { Db } from "./client";

// Raw `execute` gives Postgres' text form for timestamps; normalise to Date.
const Timestamp = z.union([z.date(), z.string().transform((s) => new Date(s))]).pipe(z.date());

const When = Timestamp.nullable();

/**
 * A command row as read back from Postgres, validated: rows are a boundary too.
 * It is the API's `Command` with Dates for its times, less what is derived from
 * the row (`blockedReason`, `nextAttemptAt`), plus the columns only the server reads.
 */
export const CommandRecord = Command.omit({ blockedReason: true, nextAttemptAt: true, queuePosition: true }).extend({
	seq: z.coerce.number().int(),
	// The table takes any text (a row may come from SQL, not the API); reading it must not fail.
	agentId: z.string(),
	expiresAt: When,
	cancelRequestedAt: When,
	createdAt: Timestamp,
	updatedAt: Timestamp,
	dispatchedAt: When,
	firstDispatchedAt: When,
	acknowledgedAt: When,
	completedAt: When,
	/** Whether the agent was connected when the row was read (from `agents`). */
	online: z.boolean(),
	/** Whether its agent was paused, and what actions it declared, when the row was read (from `agents`). */
	agentPaused: z.boolean().default(false),
	agentActions: z.array(z.string()).nullable().default(null),
	/** See `QUEUE_POSITION`; only the API's reads select it. */
	queuePosition: z.coerce.number().int().nullable().default(null),
	/** Only the API's reads select it; a row just inserted has none. */
	retriedBy: z.array(z.string()).default([]),
});
export type CommandRecord = z.infer<typeof CommandRecord>;

/** Every column a read of commands selects but the payload (a megabyte, perhaps). */
const FIELDS = `
	c.id, c.seq, c.agent_id as "agentId", c.session_id as "sessionId", c.action, c.status,
	c.priority, c.attempts, c.result, c.error, c.error_code as "errorCode",
	c.idempotency_key as "idempotencyKey", c.max_attempts as "maxAttempts",
	c.ack_timeout_seconds as "ackTimeoutSeconds", c.timeout_seconds as "timeoutSeconds",
	c.expires_at as "expiresAt", c.cancel_requested_at as "cancelRequestedAt",
	c.created_at as "createdAt", c.updated_at as "updatedAt", c.dispatched_at as "dispatchedAt", c.first_dispatched_at as "firstDispatchedAt",
	c.acknowledged_at as "acknowledgedAt", c.completed_at as "completedAt",
	c.fanout_id as "fanoutId", c.retry_of as "retryOf",
	coalesce(a.connected, false) as online`;

/**
 * A pending command's place in its agent's queue: the open commands that go
 * before it in delivery order (priority desc, then seq). Two ranges of
 * agent_commands_open_idx, counted at read time, so no write per command
 * keeps it. Postgres trails the object by one flush.
 */
export const QUEUE_POSITION = `case when c.status = 'pending' then
		(select count(*) from agent_commands o where o.agent_id = c.agent_id
			and o.status in ('pending', 'dispatched', 'acknowledged') and o.priority > c.priority)
		+ (select count(*) from agent_commands o where o.agent_id = c.agent_id
			and o.status in ('pending', 'dispatched', 'acknowledged') and o.priority = c.priority and o.seq < c.seq)
	end as "queuePosition"`;

/** The retries of each row, through agent_commands_retry_of_idx; only the API's reads need them. */
const RETRIED_BY = `array(select r.id from agent_commands r where r.retry_of = c.id order by r.seq) as "retriedBy"`;

/** What the agent's row says of each command's wait (see blockedReason). */
const AGENT_FIELDS = `a.paused_at is not null as "agentPaused", a.actions as "agentActions"`;

/** Every read of commands selects these, so one parser serves all of them. */
export const COLUMNS = sql.raw(`${FIELDS}, ${AGENT_FIELDS}, ${QUEUE_POSITION}, ${RETRIED_BY}, c.payload`);
/**
 * What an insert returns: a new row has no retries, and its queue position
 * is left to reads (null here). Counting the agent's open commands once per
 * row inserted would make a batch or a fan-out to a deep backlog quadratic.
 */
export const INSERTED_COLUMNS = sql.raw(`${FIELDS}, ${AGENT_FIELDS}, c.payload`);
/** INSERTED_COLUMNS less the payload, for inserts of many rows with one payload (a fan-out). */
export const INSERTED_COLUMNS_WITHOUT_PAYLOAD = sql.raw(`${FIELDS}, ${AGENT_FIELDS}`);

const iso = (d: Date | null) => (d ? d.toISOString() : null);

/**
 * Why a command is waiting, derived from its row and its agent's presence.
 * Postgres trails the agent's object by at most one outbox flush.
 */
export function blockedReason(
	r: Pick<CommandRecord, "status" | "cancelRequestedAt" | "online" | "agentPaused" | "agentActions" | "action">,
): BlockedReason | null {
	if (TERMINAL_STATUSES.has(r.status)) return null;
	if (r.cancelRequestedAt) return "cancel_requested";
	if (r.status === "dispatched") return "awaiting_ack";
	if (r.status === "acknowledged") return "running";
	if (r.agentPaused) return "agent_paused";
	if (r.agentActions && r.agentActions.length > 0 && !r.agentActions.includes(r.action)) return "action_unsupported";
	return r.online ? "concurrency_full" : "agent_offline";
}

export function toApiCommand(r: CommandRecord): Command {
	const { seq: _seq, firstDispatchedAt: _first, online: _online, agentPaused: _paused, agentActions: _actions, ...fields } = r;
	const awaitingAck = r.status === "dispatched" && r.dispatchedAt && !r.cancelRequestedAt;
	return {
		...fields,
		expiresAt: iso(r.expiresAt),
		cancelRequestedAt: iso(r.cancelRequestedAt),
		blockedReason: blockedReason(r),
		nextAttemptAt:
			awaitingAck && r.dispatchedAt
				? new Date(r.dispatchedAt.getTime() + r.ackTimeoutSeconds * 1000).toISOString()
				: null,
		createdAt: r.createdAt.toISOString(),
		updatedAt: r.updatedAt.toISOString(),
		dispatchedAt: iso(r.dispatchedAt),
		acknowledgedAt: iso(r.acknowledgedAt),
		completedAt: iso(r.completedAt),
	};
}

async function selectCommands(db: Db, where: SQL, tail: SQL = sql``): Promise<CommandRecord[]> {
	const result = await db.execute(sql`
		select ${COLUMNS} from agent_commands c left join agents a on a.id = c.agent_id
		where ${where} ${tail}`);
	// A row that does not parse means the table and this code disagree: fail loudly.
	return result.rows.map((row) => CommandRecord.parse(row));
}

export async function getCommand(db: Db, id: string): Promise<CommandRecord | undefined> {
	const [row] = await selectCommands(db, sql`c.id = ${id}`, sql`limit 1`);
	return row;
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
	const rows = await selectCommands(
		db,
		sql`c.agent_id = ${agentId}
			${opts.status ? sql`and c.status = ${opts.status}` : sql``}
			${opts.beforeSeq !== undefined ? sql`and c.seq < ${opts.beforeSeq}` : sql``}`,
		sql`order by c.seq desc limit ${opts.limit + 1}`,
	);
	const items = rows.slice(0, opts.limit);
	const last = items.at(-1);
	return {
		items,
		nextCursor: rows.length > opts.limit && last ? encodeCursor(last.seq) : null,
	};
}

/** GET /v1/commands: commands across agents, any filters, newest first; the same cursor as listCommands. */
export async function searchCommands(
	db: Db,
	q: Omit<SearchCommandsQuery, "cursor"> & { beforeSeq?: number },
): Promise<Page<CommandRecord>> {
	const where: SQL[] = [];
	if (q.agentId !== undefined) where.push(sql`c.agent_id = ${q.agentId}`);
	if (q.status?.length === 1) where.push(sql`c.status = ${q.status[0]}`);
	else if (q.status?.length) where.push(sql`c.status in (${sql.join(q.status.map((s) => sql`${s}`), sql`, `)})`);
	if (q.action !== undefined) where.push(sql`c.action = ${q.action}`);
	if (q.sessionId !== undefined) where.push(sql`c.session_id = ${q.sessionId}`);
	if (q.fanoutId !== undefined) where.push(sql`c.fanout_id = ${q.fanoutId}`);
	if (q.createdAfter !== undefined) where.push(sql`c.created_at >= ${q.createdAfter}`);
	if (q.createdBefore !== undefined) where.push(sql`c.created_at < ${q.createdBefore}`);
	if (q.label?.length) {
		// The agents' labels through agents_labels_idx (GIN), then their rows by agent.
		const each = q.label.map(([k, v]) => sql`l.labels @> ${JSON.stringify({ [k]: v })}::jsonb`);
		where.push(sql`c.agent_id in (select l.id from agents l where ${sql.join(each, sql` and `)})`);
	}
	if (q.beforeSeq !== undefined) where.push(sql`c.seq < ${q.beforeSeq}`);
	const rows = await selectCommands(
		db,
		where.length ? sql.join(where, sql` and `) : sql`true`,
		sql`order by c.seq desc limit ${q.limit + 1}`,
	);
	const items = rows.slice(0, q.limit);
	const last = items.at(-1);
	return { items, nextCursor: rows.length > q.limit && last ? encodeCursor(last.seq) : null };
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

/** An open command as the agent's object takes it: without its payload, which it reads only to send it. */
export const OpenCommand = CommandRecord.omit({ payload: true, retriedBy: true });
export type OpenCommand = z.infer<typeof OpenCommand>;

/** Where a page of open commands ends, in delivery order: the next page starts after it. */
export interface OpenKey {
	priority: number;
	seq: number;
}

/**
 * One page of the commands the agent's Durable Object still owes work on,
 * in delivery order, after `after`. Paged by the key agent_commands_open_idx
 * holds (agent, priority desc, seq), so a page costs the same however long
 * the backlog; payloads stay behind (see readPayloads).
 */
export async function listOpenCommands(db: Db, agentId: string, opts: { after: OpenKey | null; limit: number }): Promise<OpenCommand[]> {
	const { after, limit } = opts;
	const open = sql`c.agent_id = ${agentId} and c.status in ('pending', 'dispatched', 'acknowledged')`;
	const from = sql`from agent_commands c left join agents a on a.id = c.agent_id`;
	// Two exact ranges of the index (the rest of this priority, then the lower ones), each
	// scanned in order and stopped at the limit; one range with an OR in it is scanned whole.
	const result = after
		? await db.execute(sql`
			select * from (
				(select ${sql.raw(FIELDS)} ${from} where ${open} and c.priority = ${after.priority} and c.seq > ${after.seq}
					order by c.seq limit ${limit})
				union all
				(select ${sql.raw(FIELDS)} ${from} where ${open} and c.priority < ${after.priority}
					order by c.priority desc, c.seq limit ${limit})
			) page order by priority desc, seq limit ${limit}`)
		: await db.execute(sql`select ${sql.raw(FIELDS)} ${from} where ${open} order by c.priority desc, c.seq limit ${limit}`);
	return result.rows.map((row) => OpenCommand.parse(row));
}

const PayloadRow = z.object({ id: z.string(), payload: z.json() });

/**
 * The payloads of these commands, in the order given, up to `maxBytes` of
 * them (UTF-8 JSON), and always the first: what one fill of an agent's
 * window needs. A command not found is left out.
 */
export async function readPayloads(db: Db, ids: readonly string[], maxBytes: number): Promise<{ id: string; payload: unknown }[]> {
	const result = await db.execute(sql`
		select id, payload from (
			select c.id, c.payload, k.ord, octet_length(c.payload::text) as size,
				sum(octet_length(c.payload::text)) over (order by k.ord) as upto
			from jsonb_array_elements_text(${JSON.stringify(ids)}::jsonb) with ordinality as k(id, ord)
			join agent_commands c on c.id = k.id::uuid
		) p
		-- The first row found starts at 0, so it is always in.
		where upto - size < ${maxBytes}
		order by ord`);
	return result.rows.map((row) => PayloadRow.parse(row));
}

/**
 * Agents with pending commands that no object has taken for `olderThanSeconds`:
 * a forward that failed, a row inserted by SQL, an object that was reset.
 */
export async function agentsWithUntakenCommands(
	db: Db,
	olderThanSeconds: number,
	limit: number,
): Promise<string[]> {
	const result = await db.execute(sql`
		select agent_id from agent_commands
		where status = 'pending' and taken_at is null
			and created_at < now() - make_interval(secs => ${olderThanSeconds})
		group by agent_id order by min(created_at) limit ${limit}`);
	return result.rows.map((r) => z.object({ agent_id: z.string() }).parse(r).agent_id);
}

export interface CommandOutput {
	id: string;
	status: string;
	output: string;
	truncated: boolean;
}

/** The command's stored output; a truncated one ends with OUTPUT_TRUNCATION_MARKER. */
export async function getOutput(db: Db, id: string): Promise<CommandOutput | undefined> {
	const result = await db.execute(sql`
		select id, status, coalesce(output, '') as output, output_truncated as truncated
		from agent_commands where id = ${id}`);
	const row = result.rows[0];
	if (!row) return undefined;
	const r = z.object({ id: z.string(), status: z.string(), output: z.string(), truncated: z.boolean() }).parse(row);
	return { ...r, output: r.truncated ? r.output + OUTPUT_TRUNCATION_MARKER : r.output };
}

export const CommandEventRecord = z.object({
	at: Timestamp,
	from: CommandStatus.nullable(),
	to: CommandStatus,
	actor: z.string().nullable(),
	detail: z.record(z.string(), z.unknown()).nullable(),
});

/** The audit trail: every transition, in order, with who caused it. */
export async function listEvents(db: Db, id: string) {
	const result = await db.execute(sql`
		select at, from_status as "from", to_status as "to", actor, detail
		from command_events where command_id = ${id} order by id`);
	return result.rows.map((row) => {
		const e = CommandEventRecord.parse(row);
		return { ...e, at: e.at.toISOString() };
	});
}
