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
	// The statement is a function (migrations/0014) so Postgres plans it once
	// per server connection rather than on every call; 0015 and 0016 keep
	// that plan's reads by key, whatever size the tables had when it was made.
	await db.execute(sql`select write_status(${JSON.stringify(updates)}::jsonb, ${JSON.stringify(events)}::jsonb,
		${presence ? JSON.stringify(presence) : null}::jsonb, ${OUTPUT_CAP_CHARS}::int)`);
}
