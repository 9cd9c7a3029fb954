import { sql } from "drizzle-orm";
import { type CommandStatus, OUTPUT_CAP_CHARS, TERMINAL_STATUSES } from "../protocol";
import type { Db } from "./client";

/** One status change of one command, as the agent's Durable Object saw it. */
export interface Transition {
	kind: "transition";
	commandId: string;
	from: CommandStatus | null;
	to: CommandStatus;
	/** ISO time the change happened in the object, not the time it reached Postgres. */
	at: string;
	attempts: number;
	result?: unknown;
	error?: string | null;
	errorCode?: string | null;
	detail?: Record<string, unknown>;
	/** Who caused it, when not derivable from the transition itself (an operator's cancel). */
	actor?: string;
}

/** Facts about a command that are not status changes. */
interface MarkBase {
	commandId: string;
	at: string;
}
/** The agent's object has the command in its buffer. */
export interface TakenMark extends MarkBase {
	kind: "taken";
}
export interface CancelRequestedMark extends MarkBase {
	kind: "cancel_requested";
}
export interface OutputMark extends MarkBase {
	kind: "output";
	data: string;
	/** The object dropped output past the cap here (no data): the stored output is cut. */
	cut?: boolean;
}
export type Mark = TakenMark | CancelRequestedMark | OutputMark;

export type OutboxEntry = Transition | Mark;

/** An entry as read from the outbox, with a key unique across the object's lifetimes. */
export type KeyedEntry = OutboxEntry & { key: string };

/** The agent's connection state, written as a whole: the newest one wins. */
export interface Presence {
	agentId: string;
	connected: boolean;
	lastConnectedAt: string | null;
	lastSeenAt: string;
	/** Outbox entries left after this write. */
	outboxDepth: number;
	/** What the agent's last hello said of it, when it has not reached Postgres yet. */
	info?: AgentInfo;
}

/** What an agent says of itself in `hello`, for the agents row. */
export interface AgentInfo {
	version: string | null;
	platform: string | null;
	concurrency: number;
	actions: string[] | null;
	labels: Record<string, string>;
}

/** What one batch changes on one command row, folded from all its entries in order. */
export interface CommandUpdate {
	command_id: string;
	status: CommandStatus | null;
	attempts: number;
	updated_at: string;
	dispatched_at: string | null;
	first_dispatched_at: string | null;
	acknowledged_at: string | null;
	completed_at: string | null;
	has_result: boolean;
	result: unknown;
	has_error: boolean;
	error: string | null;
	error_code: string | null;
	taken_at: string | null;
	cancel_requested_at: string | null;
	/**
	 * The batch's output chunks in order, each with its outbox position
	 * (`s`, null when its key has none) so Postgres appends only those it
	 * has not: a write whose commit landed unseen is sent again whole.
	 */
	output_pieces: OutputPiece[] | null;
	/** The object lifetime (storage epoch) the pieces' positions count in. */
	output_epoch: string | null;
	/** Characters the pieces hold, kept as they are added (Postgres does not read it). */
	output_chars: number;
	/** Output this batch held but did not carry, being past the cap already. */
	output_dropped: boolean;
	/** The system's end the agent's late result replaces (answers.ts), when the last transition is one. */
	late_from: CommandStatus | null;
}

export interface OutputPiece {
	s: number | null;
	d: string;
}

/** A journal entry's key is `<epoch>:j<seq>` (agent/flush.ts); other keys carry no position. */
const JOURNAL_KEY = /^(.*):j(\d+)$/;

/**
 * Folds entries into one update per command. A row must be updated once per
 * statement: Postgres applies only one of two CTEs updating the same row.
 */
export function foldEntries(entries: readonly (OutboxEntry & { key?: string })[]): CommandUpdate[] {
	const byId = new Map<string, CommandUpdate>();
	for (const e of entries) {
		let u = byId.get(e.commandId);
		if (!u) {
			u = emptyUpdate(e.commandId, e.at);
			byId.set(e.commandId, u);
		}
		if (e.at > u.updated_at) u.updated_at = e.at;
		if (e.kind === "taken") u.taken_at ??= e.at;
		else if (e.kind === "cancel_requested") u.cancel_requested_at ??= e.at;
		else if (e.kind === "output") foldOutput(u, e);
		else foldTransition(u, e);
	}
	return [...byId.values()];
}

function emptyUpdate(commandId: string, at: string): CommandUpdate {
	return {
		command_id: commandId,
		status: null,
		attempts: 0,
		updated_at: at,
		dispatched_at: null,
		first_dispatched_at: null,
		acknowledged_at: null,
		completed_at: null,
		has_result: false,
		result: null,
		has_error: false,
		error: null,
		error_code: null,
		taken_at: null,
		cancel_requested_at: null,
		output_pieces: null,
		output_epoch: null,
		output_chars: 0,
		output_dropped: false,
		late_from: null,
	};
}

function foldOutput(u: CommandUpdate, e: OutputMark & { key?: string }): void {
	if (e.cut) {
		u.output_dropped = true;
		return;
	}
	// Past the cap nothing more is kept, so do not carry it to Postgres either.
	// Counted in UTF-16 units here and in characters by Postgres: say so
	// explicitly rather than hope Postgres's length check notices.
	if (u.output_chars > OUTPUT_CAP_CHARS) {
		u.output_dropped = true;
		return;
	}
	const at = e.key ? JOURNAL_KEY.exec(e.key) : null;
	if (at?.[1] !== undefined && u.output_epoch === null) u.output_epoch = at[1];
	const s = at && at[1] === u.output_epoch ? Number(at[2]) : null;
	(u.output_pieces ??= []).push({ s, d: e.data });
	u.output_chars += e.data.length;
}

function foldTransition(u: CommandUpdate, e: Transition): void {
	u.status = e.to;
	u.late_from = e.detail?.reason === "reported_late" ? e.from : null;
	u.attempts = Math.max(u.attempts, e.attempts);
	if (e.to === "dispatched") {
		u.dispatched_at = e.at;
		u.first_dispatched_at ??= e.at;
	}
	if (e.to === "acknowledged") u.acknowledged_at = e.at;
	if (TERMINAL_STATUSES.has(e.to)) {
		u.completed_at = e.at;
		u.has_result = e.result !== undefined;
		u.result = e.result ?? null;
		u.has_error = true;
		u.error = e.error ?? null;
		u.error_code = e.errorCode ?? null;
	}
}

/**
 * Who caused a transition: an explicit actor (an operator's cancel), the
 * agent (its frames: ack, result, running or not in hello), or the system
 * (dispatch, timers, recovery).
 */
export function actorOf(t: Transition, agentId: string): string {
	if (t.actor) return t.actor;
	const reason = t.detail?.reason;
	const byAgent =
		reason === "reported_running" ||
		reason === "reported_late" ||
		reason === "lost" ||
		(reason === undefined && !t.errorCode && ["acknowledged", "completed", "failed", "cancelled"].includes(t.to));
	return byAgent ? `agent:${agentId}` : "system";
}

/**
 * Writes a batch of outbox entries and the agent's presence in one statement,
 * so a flush is all-or-nothing and costs one round trip however many frames
 * it carries. Entries for commands Postgres does not know are skipped rather
 * than failing the batch: one bad row must not wedge the outbox behind it.
 */
export async function writeStatus(
	db: Db,
	entries: readonly KeyedEntry[],
	presence: Presence | null,
	agentId = presence?.agentId ?? "",
): Promise<void> {
	const updates = foldEntries(entries);
	const events = entries
		.filter((e): e is Transition & { key: string } => e.kind === "transition")
		.map((t, ord) => ({
			ord,
			dedup_key: t.key,
			command_id: t.commandId,
			from_status: t.from,
			to_status: t.to,
			at: t.at,
			actor: actorOf(t, agentId),
			detail: { ...t.detail, ...(t.errorCode ? { errorCode: t.errorCode } : {}) },
		}));
	const info = presence?.info;
	// The hello's fields ride on the presence write the connect makes anyway: no round trip of their own.
	const infoValues = info
		? sql`, ${info.version}, ${info.platform}, ${info.concurrency}::int,
			(select array_agg(a) from jsonb_array_elements_text(${info.actions === null ? null : JSON.stringify(info.actions)}::jsonb) as a),
			${JSON.stringify(info.labels)}::jsonb`
		: sql``;
	const presenceCte = presence
		? sql`, agent as (
			insert into agents (id, connected, last_connected_at, last_seen_at, outbox_depth
				${info ? sql`, version, platform, concurrency, actions, agent_labels` : sql``})
			values (${presence.agentId}, ${presence.connected}, ${presence.lastConnectedAt}::timestamptz,
				${presence.lastSeenAt}::timestamptz, ${presence.outboxDepth} ${infoValues})
			on conflict (id) do update set
				connected = excluded.connected,
				outbox_depth = excluded.outbox_depth,
				last_connected_at = coalesce(excluded.last_connected_at, agents.last_connected_at),
				last_seen_at = greatest(agents.last_seen_at, excluded.last_seen_at)
				${info ? sql`, version = excluded.version, platform = excluded.platform, concurrency = excluded.concurrency,
					actions = excluded.actions, agent_labels = excluded.agent_labels` : sql``}
		)`
		: sql``;
	await db.execute(sql`
		with u as (
			select * from jsonb_to_recordset(${JSON.stringify(updates)}::jsonb) as u(
				command_id uuid, status text, attempts int, updated_at timestamptz,
				dispatched_at timestamptz, first_dispatched_at timestamptz, acknowledged_at timestamptz, completed_at timestamptz,
				has_result boolean, result jsonb, has_error boolean, error text, error_code text,
				taken_at timestamptz, cancel_requested_at timestamptz, output_pieces jsonb, output_epoch text,
				output_dropped boolean, late_from text)
		), uo as (
			-- The chunks Postgres does not have yet: all of them from another
			-- object lifetime, else those past the last position it appended.
			select u.*, (
				select string_agg(x.p->>'d', '' order by x.ord)
				from jsonb_array_elements(u.output_pieces) with ordinality as x(p, ord)
				where x.p->>'s' is null or c.output_epoch is distinct from u.output_epoch
					or (x.p->>'s')::bigint > coalesce(c.output_outbox_seq, -1)
			) as output_append, (
				select max((x.p->>'s')::bigint) from jsonb_array_elements(u.output_pieces) as x(p)
			) as output_through
			from u left join agent_commands c on c.id = u.command_id
		), upd as (
			update agent_commands c set
				status = coalesce(u.status, c.status),
				attempts = greatest(c.attempts, u.attempts),
				updated_at = greatest(c.updated_at, u.updated_at),
				dispatched_at = coalesce(u.dispatched_at, c.dispatched_at),
				first_dispatched_at = coalesce(c.first_dispatched_at, u.first_dispatched_at),
				acknowledged_at = coalesce(u.acknowledged_at, c.acknowledged_at),
				completed_at = coalesce(u.completed_at, c.completed_at),
				result = case when u.has_result then u.result else c.result end,
				error = case when u.has_error then u.error else c.error end,
				error_code = case when u.has_error then u.error_code else c.error_code end,
				taken_at = coalesce(c.taken_at, u.taken_at),
				cancel_requested_at = coalesce(c.cancel_requested_at, u.cancel_requested_at),
				-- Once anything was cut, nothing later is appended: the stored output
				-- is always a prefix, never a text with a hole in it.
				output = case when u.output_append is null or c.output_truncated then c.output
					else left(coalesce(c.output, '') || u.output_append, ${OUTPUT_CAP_CHARS}) end,
				output_truncated = c.output_truncated or u.output_dropped
					or length(coalesce(c.output, '')) + length(coalesce(u.output_append, '')) > ${OUTPUT_CAP_CHARS},
				output_epoch = coalesce(u.output_epoch, c.output_epoch),
				output_outbox_seq = case when u.output_through is null then c.output_outbox_seq
					when c.output_epoch is distinct from u.output_epoch then u.output_through
					else greatest(c.output_outbox_seq, u.output_through) end
			-- A finished command never moves again, whatever arrives late, but for
			-- one case: the agent's result replaces the system's end it answers.
			from uo u where c.id = u.command_id and (c.status not in ('completed','failed','cancelled','expired')
				or (c.status = u.late_from and c.error_code is not null))
		), events as (
			insert into command_events (command_id, from_status, to_status, at, detail, dedup_key, actor)
			select e.command_id, e.from_status, e.to_status, e.at, e.detail, e.dedup_key, e.actor
			from jsonb_to_recordset(${JSON.stringify(events)}::jsonb) as e(
				ord int, dedup_key text, command_id uuid, from_status text, to_status text, at timestamptz, detail jsonb,
				actor text)
			where exists (select 1 from agent_commands x where x.id = e.command_id)
			order by e.ord
			on conflict (dedup_key) where dedup_key is not null do nothing
		)${presenceCte}
		select 1
	`);
}
