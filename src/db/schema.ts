import { sql } from "drizzle-orm";
import {
	bigint,
	boolean,
	check,
	doublePrecision,
	index,
	integer,
	jsonb,
	pgTable,
	primaryKey,
	smallint,
	text,
	timestamp,
	uniqueIndex,
	uuid,
} from "drizzle-orm/pg-core";

const ts = (name: string) => timestamp(name, { withTimezone: true, mode: "date" });

export const agents = pgTable(
	"agents",
	{
		id: text("id").primaryKey(),
		createdAt: ts("created_at").notNull().defaultNow(),
		connected: boolean("connected").notNull().default(false),
		lastConnectedAt: ts("last_connected_at"),
		lastSeenAt: ts("last_seen_at"),
		// Status changes the agent's object still holds for Postgres, as of its last flush.
		outboxDepth: integer("outbox_depth").notNull().default(0),
		// What the agent said of itself in its last `hello` (null before one said it).
		version: text("version"),
		platform: text("platform"),
		concurrency: integer("concurrency"),
		// Action names the agent handles; null when it declared none (it takes any).
		actions: text("actions").array(),
		agentLabels: jsonb("agent_labels").$type<Record<string, string>>().notNull().default({}),
		operatorLabels: jsonb("operator_labels").$type<Record<string, string>>().notNull().default({}),
		// What selectors match: the operator's labels win over the agent's on a clash.
		labels: jsonb("labels")
			.$type<Record<string, string>>()
			.notNull()
			.generatedAlwaysAs(sql`agent_labels || operator_labels`),
		// Set while dispatch to the agent is paused (POST /v1/agents/{id}/pause).
		pausedAt: ts("paused_at"),
		// The agent's token version, mirrored from its object by each revocation:
		// an object whose storage was lost or reset takes it back from here.
		tokenVersion: integer("token_version").notNull().default(0),
	},
	(t) => [
		// Selectors (`label=k=v`, fan-outs, fleet stop) are containment queries: labels @> '{"k":"v"}'.
		index("agents_labels_idx").using("gin", t.labels.op("jsonb_path_ops")),
		// /metrics reads only the agents that are online or hold unflushed
		// changes, never the whole fleet's history (migrations/0008).
		index("agents_connected_idx").on(t.id).where(sql`${t.connected}`),
		index("agents_outbox_idx").on(t.outboxDepth).where(sql`${t.outboxDepth} > 0`),
	],
);

/**
 * No foreign key to `agents`: operators may insert commands with plain SQL for
 * an agent that has never connected (the Durable Object picks them up on the
 * next connect or reconcile), and that insert must not fail.
 */
export const agentCommands = pgTable(
	"agent_commands",
	{
		id: uuid("id").primaryKey().defaultRandom(),
		// Total enqueue order: created_at alone ties within a microsecond and in batches.
		seq: bigint("seq", { mode: "number" }).generatedAlwaysAsIdentity().notNull(),
		agentId: text("agent_id").notNull(),
		sessionId: text("session_id"),
		action: text("action").notNull(),
		payload: jsonb("payload").notNull().default({}),
		status: text("status").notNull().default("pending"),
		priority: smallint("priority").notNull().default(5),
		attempts: integer("attempts").notNull().default(0),
		idempotencyKey: text("idempotency_key"),
		// Hash of the command the key was first used for (src/db/fingerprint.ts), so a
		// reuse of the key with another command is refused. Null on rows that came
		// from plain SQL or predate it: those replay whatever the body.
		idempotencyFingerprint: text("idempotency_fingerprint"),
		result: jsonb("result"),
		error: text("error"),
		// Machine-readable reason for a failure the system decided
		// (undeliverable, lost, timeout, expired, cancel_unconfirmed); null when the agent reported it.
		errorCode: text("error_code"),
		maxAttempts: integer("max_attempts").notNull().default(5),
		ackTimeoutSeconds: integer("ack_timeout_seconds").notNull().default(10),
		timeoutSeconds: integer("timeout_seconds"),
		expiresAt: ts("expires_at"),
		// Set once the agent's object has the command in its buffer; the
		// recovery cron looks for pending rows where it is still null.
		takenAt: ts("taken_at"),
		cancelRequestedAt: ts("cancel_requested_at"),
		// The agent's streamed output, capped (OUTPUT_CAP_CHARS); see outputTruncated.
		output: text("output"),
		outputTruncated: boolean("output_truncated").notNull().default(false),
		// The outbox position (in the object lifetime `output_epoch`) of the last
		// output chunk appended, so a status write sent again after an unclear
		// commit does not append its chunks twice (db/status-writes.ts).
		outputEpoch: text("output_epoch"),
		outputOutboxSeq: bigint("output_outbox_seq", { mode: "number" }),
		createdAt: ts("created_at").notNull().defaultNow(),
		updatedAt: ts("updated_at").notNull().defaultNow(),
		dispatchedAt: ts("dispatched_at"),
		// timeoutSeconds counts from here; dispatched_at moves with every redelivery.
		firstDispatchedAt: ts("first_dispatched_at"),
		acknowledgedAt: ts("acknowledged_at"),
		completedAt: ts("completed_at"),
		// The fan-out that created the command, if one did.
		fanoutId: uuid("fanout_id"),
		// The failed, cancelled or expired command this one retries.
		retryOf: uuid("retry_of"),
	},
	(t) => [
		check(
			"agent_commands_status_check",
			sql`${t.status} in ('pending','dispatched','acknowledged','completed','failed','cancelled','expired')`,
		),
		check("agent_commands_priority_check", sql`${t.priority} between 0 and 9`),
		// Listing an agent's commands newest first, paged by seq.
		index("agent_commands_agent_seq_idx").on(t.agentId, t.seq.desc()),
		// The Durable Object's catch-up scan: only open rows, in delivery order.
		index("agent_commands_open_idx")
			.on(t.agentId, t.priority.desc(), t.seq)
			.where(sql`${t.status} in ('pending','dispatched','acknowledged')`),
		// The recovery cron: pending rows no object has taken.
		index("agent_commands_untaken_idx")
			.on(t.createdAt)
			.where(sql`${t.status} = 'pending' and ${t.takenAt} is null`),
		// /metrics: open commands by status, and the oldest pending one, without
		// reading the finished history (migrations/0008).
		index("agent_commands_open_status_idx")
			.on(t.status, t.createdAt)
			.where(sql`${t.status} in ('pending','dispatched','acknowledged')`),
		// Retention: finished rows, oldest completion first.
		index("agent_commands_finished_idx")
			.on(t.completedAt)
			.where(sql`${t.status} in ('completed','failed','cancelled','expired')`),
		// A fan-out's targets, in the order they were created.
		index("agent_commands_fanout_idx")
			.on(t.fanoutId, t.seq)
			.where(sql`${t.fanoutId} is not null`),
		// The retries of a command (the link back from the one retried).
		index("agent_commands_retry_of_idx")
			.on(t.retryOf)
			.where(sql`${t.retryOf} is not null`),
		// GET /v1/commands across agents, newest first (migrations/0011 says
		// which filter uses which; docs/operations.md has the plans).
		index("agent_commands_seq_idx").on(t.seq),
		index("agent_commands_status_seq_idx").on(t.status, t.seq),
		index("agent_commands_action_seq_idx").on(t.action, t.seq),
		index("agent_commands_session_seq_idx")
			.on(t.sessionId, t.seq)
			.where(sql`${t.sessionId} is not null`),
		index("agent_commands_created_idx").on(t.createdAt),
		uniqueIndex("agent_commands_idempotency_idx")
			.on(t.agentId, t.idempotencyKey)
			.where(sql`${t.idempotencyKey} is not null`),
	],
);

/**
 * One row per fan-out: what was asked and how many commands it created. Its
 * commands carry `fanout_id`; their statuses are the fan-out's progress.
 */
export const fanouts = pgTable(
	"fanouts",
	{
		id: uuid("id").primaryKey().defaultRandom(),
		createdAt: ts("created_at").notNull().defaultNow(),
		// api:<key id>, as on command events.
		actor: text("actor"),
		action: text("action").notNull(),
		// The selector or agent id list as given, for the record.
		target: jsonb("target").notNull(),
		targetCount: integer("target_count").notNull(),
		cancelRequestedAt: ts("cancel_requested_at"),
		// A retried POST with the same key gets this fan-out back instead of a second one.
		idempotencyKey: text("idempotency_key"),
		// Hash of the request the key was first used for (src/db/fingerprint.ts).
		idempotencyFingerprint: text("idempotency_fingerprint"),
	},
	(t) => [
		uniqueIndex("fanouts_idempotency_idx")
			.on(t.idempotencyKey)
			.where(sql`${t.idempotencyKey} is not null`),
	],
);

export const commandEvents = pgTable(
	"command_events",
	{
		id: bigint("id", { mode: "number" }).generatedAlwaysAsIdentity().primaryKey(),
		commandId: uuid("command_id")
			.notNull()
			.references(() => agentCommands.id, { onDelete: "cascade" }),
		fromStatus: text("from_status"),
		toStatus: text("to_status").notNull(),
		at: ts("at").notNull().defaultNow(),
		detail: jsonb("detail"),
		// Who caused it: api:<key id>, agent:<agent id>, or system.
		actor: text("actor"),
		// Set by the agent's object (its storage epoch and outbox seq), so a
		// flush retried after an unclear commit cannot write an event twice.
		dedupKey: text("dedup_key"),
	},
	(t) => [
		index("command_events_command_idx").on(t.commandId, t.id),
		uniqueIndex("command_events_dedup_idx")
			.on(t.dedupKey)
			.where(sql`${t.dedupKey} is not null`),
	],
);

/**
 * Monotonic counters behind /metrics, kept apart from the rows they count so
 * retention can delete those rows without making a counter step down.
 * Written only by the triggers in migrations/0005 (so commands inserted with
 * plain SQL are counted too). Each connection adds to its own shard, so
 * concurrent flushes from many agents do not queue on one row lock; a read
 * sums the shards.
 */
export const metricCounters = pgTable(
	"metric_counters",
	{
		name: text("name").notNull(),
		label: text("label").notNull().default(""),
		shard: smallint("shard").notNull(),
		value: doublePrecision("value").notNull().default(0),
	},
	(t) => [primaryKey({ columns: [t.name, t.label, t.shard] })],
);
