import { type SQL, sql } from "drizzle-orm";
import { z } from "zod";
import {
	type BatchEnqueueRequest,
	type BlockedReason,
	Command,
	CommandStatus,
	type EnqueueRequest,
	OUTPUT_TRUNCATION_MARKER,
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
export const CommandRecord = Command.omit({ blockedReason: true, nextAttemptAt: true }).extend({
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
});
export type CommandRecord = z.infer<typeof CommandRecord>;

/** Every read of commands selects these, so one parser serves all of them. */
const COLUMNS = sql.raw(`
	c.id, c.seq, c.agent_id as "agentId", c.session_id as "sessionId", c.action, c.payload, c.status,
	c.priority, c.attempts, c.result, c.error, c.error_code as "errorCode",
	c.idempotency_key as "idempotencyKey", c.max_attempts as "maxAttempts",
	c.ack_timeout_seconds as "ackTimeoutSeconds", c.timeout_seconds as "timeoutSeconds",
	c.expires_at as "expiresAt", c.cancel_requested_at as "cancelRequestedAt",
	c.created_at as "createdAt", c.updated_at as "updatedAt", c.dispatched_at as "dispatchedAt", c.first_dispatched_at as "firstDispatchedAt",
	c.acknowledged_at as "acknowledgedAt", c.completed_at as "completedAt",
	coalesce(a.connected, false) as online`);

const iso = (d: Date | null) => (d ? d.toISOString() : null);

/**
 * Why a command is waiting, derived from its row and its agent's presence.
 * Postgres trails the agent's object by at most one outbox flush.
 */
export function blockedReason(r: CommandRecord): BlockedReason | null {
	if (TERMINAL_STATUSES.has(r.status)) return null;
	if (r.cancelRequestedAt) return "cancel_requested";
	if (r.status === "dispatched") return "awaiting_ack";
	if (r.status === "acknowledged") return "running";
	return r.online ? "concurrency_full" : "agent_offline";
}

export function toApiCommand(r: CommandRecord): Command {
	const { seq: _seq, firstDispatchedAt: _first, online: _online, ...fields } = r;
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

/** One request's command as the insert statement takes it. */
function insertRow(agentId: string, r: EnqueueRequest, ord: number) {
	return {
		ord,
		agent_id: agentId,
		session_id: r.sessionId,
		action: r.action,
		payload: r.payload,
		priority: r.priority,
		idempotency_key: r.idempotencyKey ?? null,
		max_attempts: r.maxAttempts,
		ack_timeout_seconds: r.ackTimeoutSeconds,
		timeout_seconds: r.timeoutSeconds ?? null,
		ttl_seconds: r.ttlSeconds ?? null,
	};
}

/**
 * Inserts commands, their agents (if new) and their first audit events in one
 * statement: one round trip however many, and no command without its event.
 * Rows whose idempotency key already exists for that agent are skipped;
 * returns only the rows created.
 */
async function insertRows(db: Db, rows: ReturnType<typeof insertRow>[], actor: string): Promise<CommandRecord[]> {
	const result = await db.execute(sql`
		with input as (
			select * from jsonb_to_recordset(${JSON.stringify(rows)}::jsonb) as x(
				ord int, agent_id text, session_id text, action text, payload jsonb, priority int,
				idempotency_key text, max_attempts int, ack_timeout_seconds int, timeout_seconds int, ttl_seconds int)
		), new_agents as (
			insert into agents (id) select distinct agent_id from input on conflict (id) do nothing
		), c as (
			insert into agent_commands (agent_id, session_id, action, payload, priority, idempotency_key,
				max_attempts, ack_timeout_seconds, timeout_seconds, expires_at)
			select agent_id, session_id, action, coalesce(payload, 'null'::jsonb), priority, idempotency_key,
				max_attempts, ack_timeout_seconds, timeout_seconds,
				case when ttl_seconds is null then null else now() + make_interval(secs => ttl_seconds) end
			from input order by ord
			on conflict (agent_id, idempotency_key) where idempotency_key is not null do nothing
			returning *
		), events as (
			insert into command_events (command_id, from_status, to_status, at, detail, actor)
			select id, null, 'pending', created_at, '{"reason":"enqueued"}'::jsonb, ${actor} from c
		)
		select ${COLUMNS} from c left join agents a on a.id = c.agent_id order by c.seq`);
	return result.rows.map((row) => CommandRecord.parse(row));
}

async function findByIdempotencyKeys(
	db: Db,
	keys: { agentId: string; key: string }[],
): Promise<CommandRecord[]> {
	if (keys.length === 0) return [];
	const pairs = JSON.stringify(keys.map((k) => ({ agent_id: k.agentId, key: k.key })));
	return selectCommands(
		db,
		sql`(c.agent_id, c.idempotency_key) in (
			select agent_id, key from jsonb_to_recordset(${pairs}::jsonb) as k(agent_id text, key text))`,
	);
}

export interface Enqueued {
	command: CommandRecord;
	/** False when an earlier command with the same idempotency key was returned instead. */
	created: boolean;
}

export async function insertCommand(db: Db, agentId: string, req: EnqueueRequest, actor: string): Promise<Enqueued> {
	const [created] = await insertRows(db, [insertRow(agentId, req, 0)], actor);
	if (created) return { command: created, created: true };
	// The key's row was committed by another request; this statement (a new
	// snapshot) sees it even if the insert above raced that request.
	const [existing] = await findByIdempotencyKeys(db, [{ agentId, key: req.idempotencyKey ?? "" }]);
	if (!existing) throw new Error("idempotent insert found neither a new nor an existing row");
	return { command: existing, created: false };
}

/** Inserts a batch in one statement; results come back in request order. */
export async function insertBatch(db: Db, req: BatchEnqueueRequest, actor: string): Promise<Enqueued[]> {
	const rows = req.commands.map((c, i) => insertRow(c.agentId, c, i));
	const created = await insertRows(db, rows, actor);
	const keyOf = (agentId: string, k: string) => JSON.stringify([agentId, k]);
	// Rows without a key are always inserted, and come back in input order (by
	// seq); rows with a key are matched by it, whether new or already there.
	const unkeyed = created.filter((c) => c.idempotencyKey === null);
	const byKey = new Map(
		created.filter((c) => c.idempotencyKey !== null).map((c) => [keyOf(c.agentId, c.idempotencyKey ?? ""), c]),
	);
	const missing = rows.filter((r) => r.idempotency_key && !byKey.has(keyOf(r.agent_id, r.idempotency_key)));
	for (const c of await findByIdempotencyKeys(
		db,
		missing.map((r) => ({ agentId: r.agent_id, key: r.idempotency_key ?? "" })),
	)) {
		byKey.set(keyOf(c.agentId, c.idempotencyKey ?? ""), c);
	}
	const claimed = new Set<string>();
	return rows.map((r) => {
		if (!r.idempotency_key) {
			const command = unkeyed.shift();
			if (!command) throw new Error("batch insert returned fewer rows than it was given");
			return { command, created: true };
		}
		const k = keyOf(r.agent_id, r.idempotency_key);
		const command = byKey.get(k);
		if (!command) throw new Error("batch insert lost track of an idempotent row");
		// The first occurrence of a key this batch created is the created one.
		const isNew = created.includes(command) && !claimed.has(k);
		claimed.add(k);
		return { command, created: isNew };
	});
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
	return selectCommands(
		db,
		sql`c.agent_id = ${agentId} and c.status in ('pending', 'dispatched', 'acknowledged')`,
		sql`order by c.priority desc, c.seq asc`,
	);
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
