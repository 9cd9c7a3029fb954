/**
 * The agent's pending-command buffer and status outbox, in the Durable
 * Object's SQLite storage. Plain functions over `SqlStorage`: no socket, no
 * network, so the delivery rules can be tested on their own.
 *
 * Invariant: a buffer row is removed only after its terminal status has been
 * written to Postgres (the outbox is drained) and a grace period has passed,
 * so a catch-up read of Postgres that started earlier can never resurrect a
 * finished command.
 */
import { z } from "zod";
import type { Transition } from "../db/status-writes";
import type { CommandFrame, CommandStatus } from "../protocol";

export const PRUNE_AFTER_MS = 10 * 60 * 1000;

const SCHEMA = `
create table if not exists commands (
	id text primary key,
	seq integer not null,
	action text not null,
	payload text not null,
	session_id text,
	priority integer not null,
	status text not null,
	attempts integer not null default 0,
	finished_at integer
);
create index if not exists commands_by_delivery on commands (status, priority desc, seq);
create table if not exists outbox (
	seq integer primary key autoincrement,
	body text not null
);
create table if not exists meta (
	key text primary key,
	value text not null
);
`;

export function migrate(sql: SqlStorage): void {
	sql.exec(SCHEMA);
}

const BufferedRow = z.object({
	id: z.string(),
	seq: z.number(),
	action: z.string(),
	payload: z.string(),
	session_id: z.string().nullable(),
	priority: z.number(),
	status: z.enum(["pending", "dispatched", "acknowledged", "completed", "failed"]),
	attempts: z.number(),
	finished_at: z.number().nullable(),
});
export type BufferedRow = z.infer<typeof BufferedRow>;

/** What the object needs to buffer a command: the Postgres row's delivery fields. */
export const BufferInput = z.object({
	id: z.uuid(),
	seq: z.number().int(),
	action: z.string(),
	payload: z.json(),
	sessionId: z.string().nullable(),
	priority: z.number().int(),
	status: z.enum(["pending", "dispatched", "acknowledged"]),
	attempts: z.number().int().min(0),
});
export type BufferInput = z.infer<typeof BufferInput>;

/** Adds a command unless the buffer already knows its id (in any status). Returns whether it was new. */
export function addCommand(sql: SqlStorage, c: BufferInput): boolean {
	const cursor = sql.exec(
		`insert into commands (id, seq, action, payload, session_id, priority, status, attempts)
		 values (?, ?, ?, ?, ?, ?, ?, ?) on conflict (id) do nothing`,
		c.id,
		c.seq,
		c.action,
		JSON.stringify(c.payload),
		c.sessionId,
		c.priority,
		c.status,
		c.attempts,
	);
	return cursor.rowsWritten > 0;
}

export function getCommand(sql: SqlStorage, id: string): BufferedRow | undefined {
	const row = sql.exec("select * from commands where id = ?", id).toArray()[0];
	return row ? BufferedRow.parse(row) : undefined;
}

/**
 * Commands to put on the wire for a fresh connection: everything pending, and
 * everything dispatched but never acknowledged (the old socket may have lost
 * it), in priority then enqueue order.
 */
export function toDeliverOnConnect(sql: SqlStorage): BufferedRow[] {
	return sql
		.exec(
			"select * from commands where status in ('pending','dispatched') order by priority desc, seq asc",
		)
		.toArray()
		.map((r) => BufferedRow.parse(r));
}

export function pendingInOrder(sql: SqlStorage): BufferedRow[] {
	return sql
		.exec("select * from commands where status = 'pending' order by priority desc, seq asc")
		.toArray()
		.map((r) => BufferedRow.parse(r));
}

/** Marks a command dispatched (again) and returns the frame to send. Call inside a transaction. */
export function markDispatched(
	sql: SqlStorage,
	row: BufferedRow,
	now: Date,
	reason: "delivery" | "redelivery",
): CommandFrame {
	const attempt = row.attempts + 1;
	sql.exec("update commands set status = 'dispatched', attempts = ? where id = ?", attempt, row.id);
	pushTransition(sql, {
		commandId: row.id,
		from: row.status,
		to: "dispatched",
		at: now.toISOString(),
		attempts: attempt,
		detail: { reason, attempt },
	});
	return {
		type: "command",
		id: row.id,
		action: row.action,
		payload: JSON.parse(row.payload),
		sessionId: row.session_id,
		priority: row.priority,
		attempt,
	};
}

export type FrameOutcome = "applied" | "duplicate" | "unknown" | "not_dispatched";

export function acknowledge(sql: SqlStorage, id: string, now: Date): FrameOutcome {
	const row = getCommand(sql, id);
	if (!row) return "unknown";
	if (row.status === "pending") return "not_dispatched";
	if (row.status !== "dispatched") return "duplicate";
	sql.exec("update commands set status = 'acknowledged' where id = ?", id);
	pushTransition(sql, {
		commandId: id,
		from: "dispatched",
		to: "acknowledged",
		at: now.toISOString(),
		attempts: row.attempts,
	});
	return "applied";
}

export function finish(
	sql: SqlStorage,
	id: string,
	outcome: { status: "completed" | "failed"; result?: unknown; error?: string },
	now: Date,
): FrameOutcome {
	const row = getCommand(sql, id);
	if (!row) return "unknown";
	if (row.status === "pending") return "not_dispatched";
	if (row.status === "completed" || row.status === "failed") return "duplicate";
	sql.exec(
		"update commands set status = ?, finished_at = ? where id = ?",
		outcome.status,
		now.getTime(),
		id,
	);
	pushTransition(sql, {
		commandId: id,
		from: row.status,
		to: outcome.status,
		at: now.toISOString(),
		attempts: row.attempts,
		result: outcome.result ?? null,
		error: outcome.status === "failed" ? (outcome.error ?? "failed") : null,
	});
	return "applied";
}

// --------------------------------------------------------------------- outbox

export function pushTransition(sql: SqlStorage, t: Transition): void {
	sql.exec("insert into outbox (body) values (?)", JSON.stringify(t));
}

export function peekOutbox(
	sql: SqlStorage,
	limit: number,
): { lastSeq: number; transitions: Transition[] } {
	const rows = sql
		.exec<{ seq: number; body: string }>("select seq, body from outbox order by seq limit ?", limit)
		.toArray();
	return {
		lastSeq: rows.at(-1)?.seq ?? 0,
		// SAFETY: only pushTransition writes this table, from a typed Transition.
		transitions: rows.map((r) => JSON.parse(r.body) as Transition),
	};
}

export function dropOutbox(sql: SqlStorage, throughSeq: number): void {
	sql.exec("delete from outbox where seq <= ?", throughSeq);
}

export function outboxSize(sql: SqlStorage): number {
	return sql.exec<{ n: number }>("select count(*) as n from outbox").one().n;
}

/** Forgets finished commands once Postgres has them. Only call with an empty outbox. */
export function prune(sql: SqlStorage, now: number): number {
	return sql.exec(
		"delete from commands where finished_at is not null and finished_at < ?",
		now - PRUNE_AFTER_MS,
	).rowsWritten;
}

export function statusCounts(sql: SqlStorage): Partial<Record<CommandStatus, number>> {
	const out: Partial<Record<CommandStatus, number>> = {};
	for (const r of sql
		.exec<{ status: CommandStatus; n: number }>(
			"select status, count(*) as n from commands group by status",
		)
		.toArray())
		out[r.status] = r.n;
	return out;
}
