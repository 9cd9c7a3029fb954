/**
 * Enqueue: commands into Postgres, one statement however many, with their
 * idempotency keys honoured. A key names one command per agent: the same
 * command again gets the first one back, another command under the same key
 * is refused (`reused`), never answered with a command the client did not
 * ask for.
 */
import { sql } from "drizzle-orm";
import { z } from "zod";
import type { BatchEnqueueRequest, EnqueueRequest } from "../protocol";
import type { Db } from "./client";
import { COLUMNS, CommandRecord, INSERTED_COLUMNS } from "./commands";
import { commandFingerprint } from "./fingerprint";

export type Enqueued =
	/** `created` is false when an earlier command with the same key and body was returned instead. */
	| { command: CommandRecord; created: boolean; reused?: undefined; full?: undefined }
	/** The key was used before for another command (`commandId`): nothing was written. */
	| { reused: { key: string; commandId: string }; command?: undefined; created?: undefined; full?: undefined }
	/** The agent had `limit` open commands already (see backlogLimit): nothing was written. */
	| { full: { agentId: string; limit: number }; command?: undefined; created?: undefined; reused?: undefined };

/** A row as read back with the fingerprint its key was first used with (null: unknown). */
const KeyedRecord = CommandRecord.extend({ fingerprint: z.string().nullable() });
/** A created row, with the request positions (`ord`) of the statement's rows the quota refused. */
const CreatedRecord = KeyedRecord.extend({ refused: z.array(z.coerce.number().int()) });
type KeyedRecord = z.infer<typeof KeyedRecord>;

const WITH_FINGERPRINT = sql`${COLUMNS}, c.idempotency_fingerprint as "fingerprint"`;
const INSERTED_WITH_FINGERPRINT = sql`${INSERTED_COLUMNS}, c.idempotency_fingerprint as "fingerprint"`;

/** One request's command as the insert statement takes it. */
async function insertRow(agentId: string, r: EnqueueRequest, ord: number, retryOf: string | null = null) {
	return {
		retry_of: retryOf,
		ord,
		agent_id: agentId,
		session_id: r.sessionId,
		action: r.action,
		payload: r.payload,
		priority: r.priority,
		idempotency_key: r.idempotencyKey ?? null,
		idempotency_fingerprint: r.idempotencyKey ? await commandFingerprint(r) : null,
		max_attempts: r.maxAttempts,
		ack_timeout_seconds: r.ackTimeoutSeconds,
		timeout_seconds: r.timeoutSeconds ?? null,
		ttl_seconds: r.ttlSeconds ?? null,
	};
}
type Row = Awaited<ReturnType<typeof insertRow>>;

/**
 * Inserts commands, their agents (if new) and their first audit events in one
 * statement: one round trip however many, and no command without its event.
 * Rows whose idempotency key already exists for that agent are skipped, and
 * so are rows past their agent's backlog quota: with `limit` open commands
 * (counted through agent_commands_open_idx, and never past `limit` rows),
 * an agent takes none; with fewer, its rows in request order up to `limit`.
 * Returns the rows created and the positions of the rows the quota refused.
 */
async function insertRows(db: Db, rows: Row[], actor: string, limit: number): Promise<{ created: KeyedRecord[]; refused: Set<number> }> {
	// The insert is a function (migrations/0014) so Postgres plans it once per
	// server connection rather than on every call. It is declared to return
	// one row (0016): Postgres's default guess of 1,000 made this statement
	// hash the whole agents table to join each new command to its agent.
	const result = await db.execute(sql`
		select ${INSERTED_WITH_FINGERPRINT}, e.refused
		from enqueue_commands(${JSON.stringify(rows)}::jsonb, ${actor}::text, ${limit}::int) e
		cross join lateral (select (e.command).*) c
		left join agents a on a.id = c.agent_id order by c.seq`);
	const created = result.rows.map((row) => CreatedRecord.parse(row));
	// No row created: every unkeyed row was refused, and a keyed one too unless its key is found.
	const refused = created[0] ? created[0].refused : rows.filter((r) => !r.idempotency_key).map((r) => r.ord);
	return { created: created.map(({ refused: _refused, ...row }) => row), refused: new Set(refused) };
}

/** The rows these keys name. A new statement: it sees a row a racing request committed. */
async function findByIdempotencyKeys(db: Db, rows: Row[]): Promise<KeyedRecord[]> {
	if (rows.length === 0) return [];
	const pairs = JSON.stringify(rows.map((r) => ({ agent_id: r.agent_id, key: r.idempotency_key })));
	const result = await db.execute(sql`
		select ${WITH_FINGERPRINT} from agent_commands c left join agents a on a.id = c.agent_id
		where (c.agent_id, c.idempotency_key) in (
			select agent_id, key from jsonb_to_recordset(${pairs}::jsonb) as k(agent_id text, key text))`);
	return result.rows.map((row) => KeyedRecord.parse(row));
}

/** Whether `row` answers a request for `existing`'s key: the same command, or one too old to tell. */
function answer(row: Row, existing: KeyedRecord, created: boolean): Enqueued {
	if (existing.fingerprint !== null && existing.fingerprint !== row.idempotency_fingerprint) {
		return { reused: { key: row.idempotency_key ?? "", commandId: existing.id } };
	}
	const { fingerprint: _fingerprint, ...command } = existing;
	return { command, created };
}

/**
 * The quota on an agent's open commands (AGENT_BACKLOG_LIMIT, default
 * 10,000): an enqueue past it is refused, so a backlog can never outgrow
 * what its agent's object reads and keeps. Approximate under concurrent
 * enqueues: each statement counts what was committed before it began.
 */
export function backlogLimit(env: { AGENT_BACKLOG_LIMIT?: string }): number {
	const n = Number(env.AGENT_BACKLOG_LIMIT);
	return Number.isSafeInteger(n) && n > 0 ? n : DEFAULT_BACKLOG_LIMIT;
}
export const DEFAULT_BACKLOG_LIMIT = 10_000;

export async function insertCommand(
	db: Db,
	agentId: string,
	req: EnqueueRequest,
	actor: string,
	limit: number,
	/** The command this one retries (POST /v1/commands/{id}/retry). */
	retryOf: string | null = null,
): Promise<Enqueued> {
	const row = await insertRow(agentId, req, 0, retryOf);
	const { created: [created] } = await insertRows(db, [row], actor, limit);
	if (created) return answer(row, created, true);
	// A replay is answered whatever the backlog: it adds nothing to it.
	const [existing] = await findByIdempotencyKeys(db, row.idempotency_key ? [row] : []);
	if (!existing) return { full: { agentId, limit } };
	return answer(row, existing, false);
}

const keyOf = (agentId: string, key: string) => JSON.stringify([agentId, key]);

/**
 * Inserts a batch in one statement; results come back in request order, one
 * per item. An item past its agent's quota is refused alone (`full`), like
 * a reused key: the others are written.
 */
export async function insertBatch(db: Db, req: BatchEnqueueRequest, actor: string, limit: number): Promise<Enqueued[]> {
	const rows = await Promise.all(req.commands.map((c, i) => insertRow(c.agentId, c, i)));
	const { created, refused } = await insertRows(db, rows, actor, limit);
	// Rows without a key are always inserted unless refused, and come back in
	// input order (by seq); rows with a key are matched by it, new or not.
	const unkeyed = created.filter((c) => c.idempotencyKey === null);
	const byKey = new Map(created.filter((c) => c.idempotencyKey !== null).map((c) => [keyOf(c.agentId, c.idempotencyKey ?? ""), c]));
	const missing = rows.filter((r) => r.idempotency_key && !byKey.has(keyOf(r.agent_id, r.idempotency_key)));
	for (const c of await findByIdempotencyKeys(db, missing)) byKey.set(keyOf(c.agentId, c.idempotencyKey ?? ""), c);
	const claimed = new Set<string>();
	return rows.map((r): Enqueued => {
		if (!r.idempotency_key) {
			if (refused.has(r.ord)) return { full: { agentId: r.agent_id, limit } };
			const command = unkeyed.shift();
			if (!command) throw new Error("batch insert returned fewer rows than it was given");
			return answer(r, command, true);
		}
		const k = keyOf(r.agent_id, r.idempotency_key);
		const command = byKey.get(k);
		if (!command && refused.has(r.ord)) return { full: { agentId: r.agent_id, limit } };
		if (!command) throw new Error("batch insert lost track of an idempotent row");
		// The first occurrence of a key this batch created is the created one.
		const isNew = created.includes(command) && !claimed.has(k);
		claimed.add(k);
		return answer(r, command, isNew);
	});
}
