/**
 * Fan-outs: one command per target agent, all written by one statement (the
 * fan-out's row, its commands, their agents if new and their first audit
 * events), so a fan-out is whole or absent; the worker hands the rows to the
 * agents' objects only after it commits.
 */
import { type SQL, sql } from "drizzle-orm";
import { z } from "zod";
import { FANOUT_MAX_PAYLOAD_BYTES, FANOUT_MAX_TARGETS, type FanoutRequest, OPEN_STATUSES } from "../protocol";
import type { Db } from "./client";
import { blockedReason, INSERTED_COLUMNS_WITHOUT_PAYLOAD, type CommandRecord, encodeCursor, OpenCommand, type Page } from "./commands";
import { canonicalJson, commandFingerprint } from "./fingerprint";

const Timestamp = z.union([z.date(), z.string().transform((s) => new Date(s))]).pipe(z.date());

/** How many agents a fan-out names in its refusal when their backlogs are full. */
const FULL_NAMED = 20;

export type FanoutCreated =
	| { kind: "created"; id: string; targetCount: number; commands: CommandRecord[] }
	/** The idempotency key named this fan-out already, for the same request: nothing was written. */
	| { kind: "replayed"; id: string; targetCount: number; commands: { agentId: string; commandId: string }[] }
	/** The idempotency key named another request's fan-out: nothing was written. */
	| { kind: "reused"; id: string }
	| { kind: "no_targets" }
	/** More than `cap` targets (FANOUT_MAX_TARGETS, or fewer for a large payload). */
	| { kind: "too_many"; cap: number; byPayload: boolean }
	/** These agents (the first FULL_NAMED of `count`) had `limit` open commands: nothing was written. */
	| { kind: "full"; agents: string[]; count: number; limit: number };

/** The target as the fan-out's row records it; each agent once, in the order given. */
export function fanoutTarget(req: FanoutRequest): { selector: NonNullable<FanoutRequest["selector"]> } | { agentIds: string[] } {
	if (req.selector) return { selector: req.selector };
	return { agentIds: [...new Set(req.agentIds ?? [])] };
}

async function fanoutFingerprint(req: FanoutRequest, target: unknown): Promise<string> {
	const text = canonicalJson({ command: await commandFingerprint(req), target });
	const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
	return `v1:${[...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

const Outcome = z.object({
	matched: z.coerce.number().int(),
	full: z.array(z.string()),
	full_count: z.coerce.number().int(),
	id: z.string().nullable(),
	commands: z.array(z.unknown()),
});

/**
 * Resolves the targets at this moment and writes the fan-out in one
 * statement: the whole fan-out, or nothing if it has no target, too many,
 * or a target whose backlog is full (the quota counted as a single enqueue
 * counts it, through agent_commands_open_idx).
 */
export async function insertFanout(db: Db, req: FanoutRequest, actor: string, limit: number): Promise<FanoutCreated> {
	const target = fanoutTarget(req);
	const payloadBytes = new TextEncoder().encode(JSON.stringify(req.payload)).byteLength;
	const byPayload = Math.floor(FANOUT_MAX_PAYLOAD_BYTES / Math.max(payloadBytes, 1));
	const cap = Math.min(FANOUT_MAX_TARGETS, byPayload);
	// A list past the cap is refused without asking Postgres.
	if ("agentIds" in target && target.agentIds.length > cap) return { kind: "too_many", cap, byPayload: byPayload < FANOUT_MAX_TARGETS };
	const key = req.idempotencyKey ?? null;
	const fingerprint = key ? await fanoutFingerprint(req, target) : null;
	const selected: SQL =
		"agentIds" in target
			? sql`select agent_id, ord from jsonb_array_elements_text(${JSON.stringify(target.agentIds)}::jsonb)
					with ordinality as t(agent_id, ord) limit ${cap + 1}`
			: sql`select id as agent_id, row_number() over (order by id) as ord from agents s
					where ${sql.join(
						[
							...Object.entries(target.selector.labels ?? {}).map(([k, v]) => sql`s.labels @> ${JSON.stringify({ [k]: v })}::jsonb`),
							...(target.selector.online === undefined ? [] : [sql`s.connected = ${target.selector.online}`]),
							sql`true`,
						],
						sql` and `,
					)}
					order by id limit ${cap + 1}`;
	const result = await db.execute(sql`
		with selected as (${selected}),
		counted as (select count(*)::int as n from selected),
		backlog as (
			select s.agent_id, (select count(*) from (
				select 1 from agent_commands o
				where o.agent_id = s.agent_id and o.status in ('pending', 'dispatched', 'acknowledged') limit ${limit}) open) as open
			from selected s
		), full_agents as (
			select agent_id from backlog where open >= ${limit}
		), f as (
			insert into fanouts (actor, action, target, target_count, idempotency_key, idempotency_fingerprint)
			select ${actor}, ${req.action}, ${JSON.stringify(target)}::jsonb, n, ${key}, ${fingerprint} from counted
			where n between 1 and ${cap} and not exists (select 1 from full_agents)
			on conflict (idempotency_key) where idempotency_key is not null do nothing
			returning id
		), new_agents as (
			insert into agents (id) select agent_id from selected where exists (select 1 from f) on conflict (id) do nothing
		), c as (
			insert into agent_commands (agent_id, session_id, action, payload, priority, max_attempts,
				ack_timeout_seconds, timeout_seconds, expires_at, fanout_id)
			select s.agent_id, ${req.sessionId}, ${req.action}, ${JSON.stringify(req.payload)}::jsonb, ${req.priority},
				${req.maxAttempts}, ${req.ackTimeoutSeconds}, ${req.timeoutSeconds ?? null},
				${req.ttlSeconds === undefined ? null : sql`now() + make_interval(secs => ${req.ttlSeconds})`}, f.id
			from selected s cross join f order by s.ord
			returning *
		), events as (
			insert into command_events (command_id, from_status, to_status, at, detail, actor)
			select id, null, 'pending', created_at, '{"reason":"enqueued","fanout":true}'::jsonb, ${actor} from c
		)
		select (select n from counted) as matched,
			array(select agent_id from full_agents order by agent_id limit ${FULL_NAMED}) as full,
			(select count(*) from full_agents) as full_count,
			(select id from f) as id,
			(select coalesce(json_agg(x order by x.seq), '[]'::json) from (
				select ${INSERTED_COLUMNS_WITHOUT_PAYLOAD} from c left join agents a on a.id = c.agent_id) x) as commands`);
	const out = Outcome.parse(result.rows[0]);
	if (out.id) {
		const commands = out.commands.map((row) => ({ ...OpenCommand.parse(row), payload: req.payload, retriedBy: [] }));
		return { kind: "created", id: out.id, targetCount: out.matched, commands };
	}
	if (key) {
		const existing = await findByKey(db, key);
		if (existing) {
			if (existing.fingerprint !== fingerprint) return { kind: "reused", id: existing.id };
			return { kind: "replayed", id: existing.id, targetCount: existing.targetCount, commands: await fanoutCommandIds(db, existing.id) };
		}
	}
	if (out.matched === 0) return { kind: "no_targets" };
	if (out.matched > cap) return { kind: "too_many", cap, byPayload: byPayload < FANOUT_MAX_TARGETS };
	return { kind: "full", agents: out.full, count: out.full_count, limit };
}

async function findByKey(db: Db, key: string) {
	const result = await db.execute(sql`
		select id, target_count as "targetCount", idempotency_fingerprint as fingerprint from fanouts where idempotency_key = ${key}`);
	const row = result.rows[0];
	return row
		? z.object({ id: z.string(), targetCount: z.coerce.number().int(), fingerprint: z.string().nullable() }).parse(row)
		: undefined;
}

async function fanoutCommandIds(db: Db, id: string): Promise<{ agentId: string; commandId: string }[]> {
	const result = await db.execute(sql`
		select agent_id as "agentId", id as "commandId" from agent_commands where fanout_id = ${id} order by seq`);
	return result.rows.map((r) => z.object({ agentId: z.string(), commandId: z.string() }).parse(r));
}

export const FanoutRecord = z.object({
	id: z.string(),
	createdAt: Timestamp,
	actor: z.string().nullable(),
	action: z.string(),
	target: z.unknown(),
	targetCount: z.coerce.number().int(),
	cancelRequestedAt: Timestamp.nullable(),
});
export type FanoutRecord = z.infer<typeof FanoutRecord>;

export async function getFanout(db: Db, id: string): Promise<FanoutRecord | undefined> {
	const result = await db.execute(sql`
		select id, created_at as "createdAt", actor, action, target, target_count as "targetCount",
			cancel_requested_at as "cancelRequestedAt"
		from fanouts where id = ${id}`);
	const row = result.rows[0];
	return row ? FanoutRecord.parse(row) : undefined;
}

/** The fan-out's commands counted by status, through agent_commands_fanout_idx. */
export async function fanoutCounts(db: Db, id: string): Promise<Record<string, number>> {
	const result = await db.execute(sql`
		select status, count(*)::int as n from agent_commands where fanout_id = ${id} group by status`);
	return Object.fromEntries(
		result.rows.map((r) => {
			const { status, n } = z.object({ status: z.string(), n: z.coerce.number().int() }).parse(r);
			return [status, n];
		}),
	);
}

const TargetRow = z.object({
	seq: z.coerce.number().int(),
	agentId: z.string(),
	commandId: z.string(),
	status: z.enum(["pending", "dispatched", "acknowledged", "completed", "failed", "cancelled", "expired"]),
	attempts: z.coerce.number().int(),
	errorCode: z.string().nullable(),
	error: z.string().nullable(),
	cancelRequestedAt: Timestamp.nullable(),
	completedAt: Timestamp.nullable(),
	online: z.boolean(),
	action: z.string(),
	agentPaused: z.boolean(),
	agentActions: z.array(z.string()).nullable(),
});

/** One page of the fan-out's targets in the order they were created, with their commands' status. */
export async function fanoutTargets(db: Db, id: string, opts: { limit: number; afterSeq?: number }) {
	const result = await db.execute(sql`
		select c.seq, c.agent_id as "agentId", c.id as "commandId", c.status, c.attempts, c.error_code as "errorCode",
			c.error, c.cancel_requested_at as "cancelRequestedAt", c.completed_at as "completedAt",
			coalesce(a.connected, false) as online, c.action,
			a.paused_at is not null as "agentPaused", a.actions as "agentActions"
		from agent_commands c left join agents a on a.id = c.agent_id
		where c.fanout_id = ${id} ${opts.afterSeq === undefined ? sql`` : sql`and c.seq > ${opts.afterSeq}`}
		order by c.seq limit ${opts.limit + 1}`);
	const rows = result.rows.map((r) => TargetRow.parse(r));
	const items = rows.slice(0, opts.limit);
	const last = items.at(-1);
	const page: Page<Omit<z.infer<typeof TargetRow>, "seq" | "online" | "cancelRequestedAt" | "completedAt" | "action" | "agentPaused" | "agentActions"> & {
		blockedReason: ReturnType<typeof blockedReason>;
		completedAt: string | null;
	}> = {
		items: items.map(({ seq: _seq, online: _online, cancelRequestedAt: _c, completedAt, action: _a, agentPaused: _p, agentActions: _aa, ...t }, i) => ({
			...t,
			blockedReason: blockedReason(items[i] as z.infer<typeof TargetRow>),
			completedAt: completedAt?.toISOString() ?? null,
		})),
		nextCursor: rows.length > opts.limit && last ? encodeCursor(last.seq) : null,
	};
	return page;
}

/** The fan-out's commands still open, for a cancel; records the cancel on the fan-out. */
export async function requestFanoutCancel(db: Db, id: string): Promise<{ agentId: string; commandId: string }[] | undefined> {
	const result = await db.execute(sql`
		with f as (
			update fanouts set cancel_requested_at = coalesce(cancel_requested_at, now()) where id = ${id} returning id
		)
		select c.agent_id as "agentId", c.id as "commandId" from f
		left join agent_commands c on c.fanout_id = f.id
			and c.status in (${sql.join(OPEN_STATUSES.map((s) => sql`${s}`), sql`, `)})
		order by c.seq`);
	if (result.rows.length === 0) return undefined;
	return result.rows
		.filter((r) => (r as { commandId: unknown }).commandId !== null)
		.map((r) => z.object({ agentId: z.string(), commandId: z.string() }).parse(r));
}
