/**
 * Switchyard wire protocol v1 and HTTP API shapes.
 *
 * This one module is imported by the worker, the agent Durable Object, the
 * dev tooling and (later) the SDK, so a frame or body is defined exactly once.
 * docs/protocol.md is the prose form of this file; keep them in step.
 */
import { z } from "zod";
import { jsonProblem } from "./json-safety";

export const PROTOCOL_VERSION = 1;

// ---------------------------------------------------------------- identifiers

/** Agent ids appear in URLs, Durable Object names and logs: keep them boring. */
export const AgentId = z
	.string()
	.regex(
		/^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/,
		"agent id: 1-128 characters from A-Z a-z 0-9 . _ : -, starting with a letter or digit",
	);
export type AgentId = z.infer<typeof AgentId>;

export const CommandId = z.uuid();
export type CommandId = z.infer<typeof CommandId>;

export const Action = z
	.string()
	.regex(
		/^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/,
		"action: 1-128 characters from A-Z a-z 0-9 . _ : / -, starting with a letter or digit",
	);

export const SessionId = z.string().min(1).max(256);

export const Priority = z.number().int().min(0).max(9);
export const DEFAULT_PRIORITY = 5;

export const IdempotencyKey = z
	.string()
	.regex(/^[A-Za-z0-9._:-]{1,128}$/, "idempotency key: 1-128 characters from A-Z a-z 0-9 . _ : -");

// ---------------------------------------------------------------- fleet

/** Labels per side (the agent's own in `hello`, the operator's by PATCH). */
export const MAX_LABELS = 32;
export const MAX_LABEL_VALUE_CHARS = 255;
/** Action names an agent may declare in `hello`. */
export const MAX_ACTIONS = 256;
/** `version` and `platform` in `hello`. */
export const MAX_DESCRIPTOR_CHARS = 128;

export const LabelKey = z
	.string()
	.regex(
		/^[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$/,
		"label key: 1-63 characters from A-Z a-z 0-9 . _ / -, starting and ending with a letter or digit",
	);
export const LabelValue = z.string().max(MAX_LABEL_VALUE_CHARS);

/** At most `max` keys; a record schema cannot say so itself. */
function fewKeys<T extends z.ZodType>(schema: T, max: number) {
	return schema.refine((v) => Object.keys(v as object).length <= max, { message: `at most ${max} labels` });
}

export const Labels = fewKeys(z.record(LabelKey, LabelValue), MAX_LABELS);
export type Labels = Record<string, string>;

const Descriptor = z.string().min(1).max(MAX_DESCRIPTOR_CHARS);

/** `key=value`, as `label=` query parameters and the CLI take it. */
export const LabelSelector = z
	.string()
	.transform((s, ctx) => {
		const i = s.indexOf("=");
		const key = LabelKey.safeParse(i < 0 ? s : s.slice(0, i));
		const value = LabelValue.safeParse(s.slice(i + 1));
		if (i < 0 || !key.success || !value.success) {
			ctx.addIssue({ code: "custom", message: `label: expected key=value with a valid key, got "${s.slice(0, 80)}"` });
			return z.NEVER;
		}
		return [key.data, value.data] as const;
	});

/** A query parameter given once is a string, given twice an array: either way, a list. */
const repeatedLabels = z
	.union([z.string(), z.array(z.string())])
	.transform((v) => (Array.isArray(v) ? v : [v]))
	.pipe(z.array(LabelSelector).max(MAX_LABELS));

const QueryBoolean = z.enum(["true", "false"]).transform((v) => v === "true");

/**
 * Which agents a fleet-wide operation reaches: every label must match, and
 * `online` if given. No labels at all must say `all: true`, so an empty
 * body can never stop a whole fleet by accident.
 */
export const AgentSelector = z
	.strictObject({
		labels: absentIfNull(Labels),
		online: absentIfNull(z.boolean()),
		all: absentIfNull(z.literal(true)),
	})
	.refine((s) => s.all === true || Object.keys(s.labels ?? {}).length > 0, {
		message: 'a selector needs labels; to target every agent say {"all": true}',
		path: ["labels"],
	});
export type AgentSelector = z.infer<typeof AgentSelector>;

/** Delivery defaults; each can be set per command at enqueue. */
export const DEFAULT_MAX_ATTEMPTS = 5;
export const DEFAULT_ACK_TIMEOUT_SECONDS = 10;
/** The agent pings this often; a socket silent for HEARTBEAT_MISSES intervals is closed. */
export const HEARTBEAT_INTERVAL_SECONDS = 30;
export const HEARTBEAT_MISSES = 3;
/** How long an agent has to confirm a cancel before the command is cancelled without it. */
export const CANCEL_GRACE_SECONDS = 30;

// ------------------------------------------------------------------- statuses

export const COMMAND_STATUSES = [
	"pending",
	"dispatched",
	"acknowledged",
	"completed",
	"failed",
	"cancelled",
	"expired",
] as const;
export const CommandStatus = z.enum(COMMAND_STATUSES);
export type CommandStatus = z.infer<typeof CommandStatus>;

/** Statuses the agent's Durable Object still has work to do for. */
export const OPEN_STATUSES = ["pending", "dispatched", "acknowledged"] as const;
export type OpenStatus = (typeof OPEN_STATUSES)[number];

export const TERMINAL_STATUSES: ReadonlySet<CommandStatus> = new Set([
	"completed",
	"failed",
	"cancelled",
	"expired",
]);

/** Why the system (not the agent) ended a command; stored as `errorCode`. */
export const FailureCode = {
	/** Sent maxAttempts times, never acknowledged. */
	UNDELIVERABLE: "undeliverable",
	/** Acknowledged, then missing from the agent's `hello.running` with no attempts left. */
	LOST: "lost",
	/** Not finished within timeoutSeconds after it was first dispatched. */
	TIMEOUT: "timeout",
	/** Not dispatched within ttlSeconds. */
	EXPIRED: "expired",
	/** Cancel requested; the agent did not confirm within CANCEL_GRACE_SECONDS. */
	CANCEL_UNCONFIRMED: "cancel_unconfirmed",
} as const;
export type FailureCode = (typeof FailureCode)[keyof typeof FailureCode];

/** Why a non-terminal command is not moving, in the API's command JSON. */
export const BlockedReason = z.enum([
	"agent_offline",
	"concurrency_full",
	"awaiting_ack",
	"running",
	"cancel_requested",
	/** Its agent is paused (POST /v1/agents/{id}/pause): nothing new is sent until resume. */
	"agent_paused",
	/** Its agent declared the actions it handles in `hello`, and not this one. */
	"action_unsupported",
]);
export type BlockedReason = z.infer<typeof BlockedReason>;

// ------------------------------------------------------------- codes (shared)

/** Close codes the server uses on agent sockets. The SDK must not reconnect after a terminal one. */
export const CloseCode = {
	/** Another connection for the same agent id took over. Terminal: reconnecting would fight the newer one. */
	REPLACED: 4001,
	/** Nothing heard (not even a ping) for HEARTBEAT_MISSES intervals. Reconnect. */
	HEARTBEAT_TIMEOUT: 4002,
	/** The token the socket opened with expired and was not refreshed (`auth.refresh`). Reconnect with a fresh token. */
	TOKEN_EXPIRED: 4003,
	/** The agent's tokens were revoked. Terminal: no token minted before the revocation works again. */
	TOKEN_REVOKED: 4004,
	/** Frames kept coming far above the rate limit after `rate_limited` errors. Reconnect after a backoff. */
	RATE_LIMITED: 4005,
	/** Observers: more live events than its send budget allows; resume with `?since=`. */
	SLOW_CONSUMER: 4006,
	/** Observers: the replay reached its bound (after a `replay_paused` frame); resume with `?since=` at once. */
	REPLAY_PAUSED: 4007,
	/** Standard: a frame larger than MAX_FRAME_BYTES. */
	MESSAGE_TOO_BIG: 1009,
} as const;
export const TERMINAL_CLOSE_CODES: ReadonlySet<number> = new Set([CloseCode.REPLACED, CloseCode.TOKEN_REVOKED]);

/** Largest frame either side accepts, and largest HTTP body. */
export const MAX_FRAME_BYTES = 1024 * 1024;

/** Machine-readable codes used in HTTP error bodies and `error` frames. */
export const ErrorCode = {
	BAD_REQUEST: "bad_request",
	VALIDATION_FAILED: "validation_failed",
	INVALID_JSON: "invalid_json",
	UNAUTHORIZED: "unauthorized",
	/** A valid key without the scope the route needs (a read-only key on a write route). */
	FORBIDDEN: "forbidden",
	/** A browser request from a site not in ALLOWED_ORIGINS. */
	ORIGIN_NOT_ALLOWED: "origin_not_allowed",
	/** Over a rate limit: HTTP 429 with Retry-After, or an `error` frame. */
	RATE_LIMITED: "rate_limited",
	NOT_FOUND: "not_found",
	METHOD_NOT_ALLOWED: "method_not_allowed",
	PAYLOAD_TOO_LARGE: "payload_too_large",
	UNSUPPORTED_MEDIA_TYPE: "unsupported_media_type",
	UPGRADE_REQUIRED: "upgrade_required",
	ALREADY_FINISHED: "already_finished",
	/** An idempotency key sent again with a different command than the one it first named. */
	IDEMPOTENCY_KEY_REUSED: "idempotency_key_reused",
	/** The agent has AGENT_BACKLOG_LIMIT open commands already (HTTP 429, Retry-After; one item of a batch). */
	AGENT_BACKLOG_FULL: "agent_backlog_full",
	DB_UNAVAILABLE: "db_unavailable",
	/** The database lacks a table, column or function this version needs: `npm run db:migrate` (HTTP 503, Retry-After). */
	DB_NOT_MIGRATED: "db_not_migrated",
	/** Postgres kept giving up on the request's statement because of concurrent ones (HTTP 503, Retry-After). */
	DB_CONFLICT: "db_conflict",
	AGENT_UNAVAILABLE: "agent_unavailable",
	/** An observer upgrade past the cap per agent or per key (HTTP 429). */
	TOO_MANY_OBSERVERS: "too_many_observers",
	REPLAY_RATE_LIMITED: "replay_rate_limited",
	/** A fan-out whose selector or agent list names no agent (HTTP 400). */
	NO_TARGETS: "no_targets",
	/** A fan-out past FANOUT_MAX_TARGETS targets, or past FANOUT_MAX_PAYLOAD_BYTES of payloads (HTTP 400). */
	TOO_MANY_TARGETS: "too_many_targets",
	/** A retry of a command that is still open, or completed (HTTP 409). */
	NOT_RETRYABLE: "not_retryable",
	INTERNAL: "internal",
	// frame-only
	INVALID_FRAME: "invalid_frame",
	UNKNOWN_COMMAND: "unknown_command",
	NOT_DISPATCHED: "not_dispatched",
	/** `auth.refresh` with a token that is not a valid token for this agent. */
	INVALID_TOKEN: "invalid_token",
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export const ErrorBody = z.object({
	error: z.object({
		code: z.string(),
		message: z.string(),
		issues: z.array(z.unknown()).optional(),
	}),
});
export type ErrorBody = z.infer<typeof ErrorBody>;

// ------------------------------------------------------------------ HTTP API

export const MAX_BODY_BYTES = 1024 * 1024;

/**
 * An optional field where `null` means "not given". Clients in many languages
 * (Go's nil, Python's None, serde's Option) write null for a field they do
 * not set; refusing it would make every one of them special-case this API.
 */
export function absentIfNull<T extends z.ZodType>(schema: T) {
	return schema
		.nullish()
		.transform((v) => v ?? undefined)
		.optional();
}

/** Like `absentIfNull`, with the value used when the field is absent or null. */
function defaultIfNull<T extends z.ZodType>(schema: T, value: z.output<T>) {
	return schema.nullish().transform((v): z.output<T> => v ?? value);
}

const enqueueFields = {
	action: Action,
	payload: z.json().default({}),
	sessionId: SessionId.nullable().default(null),
	priority: defaultIfNull(Priority, DEFAULT_PRIORITY),
	/** Same key for the same agent returns the existing command instead of creating another. */
	idempotencyKey: absentIfNull(IdempotencyKey),
	/** Not dispatched within this many seconds: `expired`. */
	ttlSeconds: absentIfNull(z.number().int().min(1).max(30 * 24 * 3600)),
	/** Not finished this many seconds after first dispatch: `failed` with errorCode `timeout`. */
	timeoutSeconds: absentIfNull(z.number().int().min(1).max(7 * 24 * 3600)),
	maxAttempts: defaultIfNull(z.number().int().min(1).max(100), DEFAULT_MAX_ATTEMPTS),
	ackTimeoutSeconds: defaultIfNull(z.number().int().min(1).max(3600), DEFAULT_ACK_TIMEOUT_SECONDS),
};

export const EnqueueRequest = z.strictObject(enqueueFields);
export type EnqueueRequest = z.infer<typeof EnqueueRequest>;

export const MAX_BATCH = 1000;
export const BatchEnqueueRequest = z.strictObject({
	commands: z
		.array(z.strictObject({ agentId: AgentId, ...enqueueFields }))
		.min(1)
		.max(MAX_BATCH),
});
export type BatchEnqueueRequest = z.infer<typeof BatchEnqueueRequest>;

// ------------------------------------------------------------------ fan-outs

/** Targets one fan-out may have: past it 400 too_many_targets, never a silent cut. */
export const FANOUT_MAX_TARGETS = 5_000;
/**
 * The payload is stored once per target: payload bytes times targets may not
 * pass this (400 too_many_targets), so a fan-out cannot write gigabytes.
 */
export const FANOUT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024;



/**
 * A fan-out: one command per target, with the fields a single enqueue takes.
 * `idempotencyKey` names the fan-out (not its commands): sent again, the same
 * request gets the first fan-out back.
 */
export const FanoutRequest = z
	.strictObject({
		...enqueueFields,
		selector: absentIfNull(AgentSelector),
		// No max here: past FANOUT_MAX_TARGETS is too_many_targets, like a selector that matches too many.
		agentIds: absentIfNull(z.array(AgentId).min(1)),
	})
	.refine((r) => (r.selector === undefined) !== (r.agentIds === undefined), {
		message: "give either selector or agentIds (one of them)",
		path: ["selector"],
	});
export type FanoutRequest = z.infer<typeof FanoutRequest>;

export const FanoutQuery = z.strictObject({
	limit: z.coerce.number().int().min(1).max(1000).default(100),
	cursor: z.string().max(64).optional(),
});


/** One or many of a repeated query parameter (`?status=failed&status=expired`). */
const repeated = <T extends z.ZodType>(item: T) =>
	z
		.union([item, z.array(item).max(32)])
		.transform((v): z.output<T>[] => (Array.isArray(v) ? v : [v]))
		.optional();

export const SearchCommandsQuery = z
	.strictObject({
		agentId: AgentId.optional(),
		status: repeated(CommandStatus),
		action: Action.optional(),
		sessionId: SessionId.optional(),
		label: repeatedLabels.optional(),
		fanoutId: z.uuid().optional(),
		createdAfter: z.iso.datetime({ offset: true }).optional(),
		createdBefore: z.iso.datetime({ offset: true }).optional(),
		limit: z.coerce.number().int().min(1).max(200).default(50),
		cursor: z.string().max(64).optional(),
	});
export type SearchCommandsQuery = z.infer<typeof SearchCommandsQuery>;

export const ListCommandsQuery = z.strictObject({
	status: CommandStatus.optional(),
	limit: z.coerce.number().int().min(1).max(200).default(50),
	cursor: z.string().max(64).optional(),
});


export const ListAgentsQuery = z.strictObject({
	limit: z.coerce.number().int().min(1).max(200).default(50),
	cursor: AgentId.optional(),
	/** `label=k=v`, repeatable: every one must match (operator's labels win over the agent's). */
	label: repeatedLabels.optional(),
	online: QueryBoolean.optional(),
	/** Agents whose id starts with this. */
	prefix: z.string().min(1).max(128).optional(),
});
export type ListAgentsQuery = z.infer<typeof ListAgentsQuery>;

/** `PATCH /v1/agents/{id}`: operator labels to set, and `null` to remove one. */
export const LabelAgentRequest = z.strictObject({
	labels: fewKeys(z.record(LabelKey, LabelValue.nullable()), MAX_LABELS),
});


export const StopFleetRequest = z.strictObject({
	selector: AgentSelector,
	pause: defaultIfNull(z.boolean(), false),
});

export const StopQuery = z.strictObject({ pause: QueryBoolean.optional() });

export const TOKEN_TTL_DEFAULT_SECONDS = 24 * 60 * 60;
export const TokenRequest = z.strictObject({
	ttlSeconds: z
		.number()
		.int()
		.min(60)
		.max(30 * 24 * 60 * 60)
		.default(TOKEN_TTL_DEFAULT_SECONDS),
});

const Timestamp = z.iso.datetime({ offset: true });

/** A command as the HTTP API returns it. */
export const Command = z.object({
	id: CommandId,
	agentId: AgentId,
	sessionId: z.string().nullable(),
	action: z.string(),
	payload: z.json(),
	status: CommandStatus,
	priority: z.number().int(),
	attempts: z.number().int(),
	result: z.json().nullable(),
	error: z.string().nullable(),
	errorCode: z.string().nullable(),
	idempotencyKey: z.string().nullable(),
	maxAttempts: z.number().int(),
	ackTimeoutSeconds: z.number().int(),
	timeoutSeconds: z.number().int().nullable(),
	expiresAt: Timestamp.nullable(),
	cancelRequestedAt: Timestamp.nullable(),
	/** Why it is waiting, for any non-terminal command; null once terminal. */
	blockedReason: BlockedReason.nullable(),
	/** Pending only: how many of its agent's open commands go before it in delivery order (priority desc, then enqueue order). */
	queuePosition: z.number().int().nullable(),
	/** When it will be sent again if still unacknowledged. */
	nextAttemptAt: Timestamp.nullable(),
	createdAt: Timestamp,
	updatedAt: Timestamp,
	dispatchedAt: Timestamp.nullable(),
	acknowledgedAt: Timestamp.nullable(),
	completedAt: Timestamp.nullable(),
	/** The fan-out that created it (POST /v1/fanouts), if one did. */
	fanoutId: z.uuid().nullable(),
	/** The failed, cancelled or expired command this one retries (POST /v1/commands/{id}/retry). */
	retryOf: z.uuid().nullable(),
	/** The retries of this command, oldest first. */
	retriedBy: z.array(z.uuid()),
});
export type Command = z.infer<typeof Command>;

export const Agent = z.object({
	id: AgentId,
	online: z.boolean(),
	createdAt: Timestamp,
	connectedSince: Timestamp.nullable(),
	lastConnectedAt: Timestamp.nullable(),
	lastSeenAt: Timestamp.nullable(),
	/** What the agent said of itself in its last `hello`; null before one said it. */
	version: z.string().nullable(),
	platform: z.string().nullable(),
	/** Action names it handles; null when it declared none (it takes any). */
	actions: z.array(z.string()).nullable(),
	/** The agent's labels merged with the operator's; the operator's win on a clash. */
	labels: z.record(z.string(), z.string()),
	agentLabels: z.record(z.string(), z.string()),
	operatorLabels: z.record(z.string(), z.string()),
	paused: z.boolean(),
	pausedAt: Timestamp.nullable(),
	/** From the object while online, else the last hello's; null if it never said. */
	concurrency: z.number().int().nullable(),
});
export type Agent = z.infer<typeof Agent>;

// ------------------------------------------------------------ observer stream

/** What an agent's observers are told, in order, each numbered by a per-agent `seq`. */
export type ObserverEvent =
	| { type: "presence"; state: "connected" | "disconnected" | "replaced"; generation: number }
	| {
			type: "status";
			id: string;
			from: CommandStatus | null;
			to: CommandStatus;
			attempt: number;
			reason: string | null;
			errorCode: string | null;
	  }
	| { type: "output"; id: string; chunk: number; data: string };

/** An event as an observer receives it. */
export type ObserverFrame =
	| (ObserverEvent & { seq: number; at: string })
	/** First frame: where the stream starts. Resume with `?since=<last seq seen>&epoch=<this epoch>`. */
	| { type: "observing"; agentId: string; epoch: string; latestSeq: number }
	/**
	 * The resume point belongs to a log that no longer exists (the agent's
	 * object storage was reset): seq numbers restarted, and this log is
	 * replayed from its start.
	 */
	| { type: "reset"; since: number; epoch: string }
	/** Events after `since` up to `through` were pruned from the log before this observer asked. */
	| { type: "gap"; since: number; through: number }
	/**
	 * This connection's replay reached its bound after event `through`; the
	 * socket closes (4007). Reconnect at once with `?since=<through>`.
	 */
	| { type: "replay_paused"; through: number };

export const StreamQuery = z.strictObject({
	since: z.coerce.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
	/** The `epoch` of the `observing` frame `since` was counted in. */
	epoch: z.uuid().optional(),
});
export type StreamQuery = z.infer<typeof StreamQuery>;

/** Output kept per command in Postgres; beyond it, the marker below is shown. */
export const OUTPUT_CAP_CHARS = 1024 * 1024;
export const OUTPUT_TRUNCATION_MARKER = `\n[switchyard: output truncated; the first ${OUTPUT_CAP_CHARS} characters are kept]`;

// ------------------------------------------------------------- wire protocol

/** Sent once right after the server accepts the socket. */
export const WelcomeFrame = z.object({
	type: z.literal("welcome"),
	protocol: z.literal(PROTOCOL_VERSION),
	agentId: AgentId,
	generation: z.number().int(),
	/** When the token this socket opened with expires (ISO); refresh before it with `auth.refresh`. */
	tokenExpiresAt: z.iso.datetime({ offset: true }).optional(),
});
export const CommandFrame = z.object({
	type: z.literal("command"),
	id: CommandId,
	action: z.string(),
	payload: z.json(),
	sessionId: z.string().nullable(),
	priority: z.number().int(),
	attempt: z.number().int().min(1),
});
export type CommandFrame = z.infer<typeof CommandFrame>;
export const PongFrame = z.object({ type: z.literal("pong") });
/** Stop working on this command and answer with a `result` of status `cancelled`. */
export const CancelFrame = z.object({
	type: z.literal("cancel"),
	id: CommandId,
	reason: z.enum(["requested", "timeout"]),
});
export const ErrorFrame = z.object({
	type: z.literal("error"),
	code: z.string(),
	message: z.string(),
	id: z.string().optional(),
});
export type ErrorFrame = z.infer<typeof ErrorFrame>;
/** Answer to `auth.refresh`: a new token for this agent, and when it expires; the socket now lives until then. */
export const AuthRefreshedFrame = z.object({
	type: z.literal("auth.refreshed"),
	token: z.string(),
	expiresAt: z.iso.datetime({ offset: true }),
});

export const ServerFrame = z.discriminatedUnion("type", [
	WelcomeFrame,
	CommandFrame,
	CancelFrame,
	PongFrame,
	ErrorFrame,
	AuthRefreshedFrame,
]);
export type ServerFrame = z.infer<typeof ServerFrame>;

export const AckFrame = z.object({ type: z.literal("ack"), id: CommandId });
export type AckFrame = z.infer<typeof AckFrame>;
export const ResultFrame = z.object({
	type: z.literal("result"),
	id: CommandId,
	status: z.enum(["completed", "failed", "cancelled"]),
	// `result: null` is a result (the JSON value null); `error: null` is no error.
	result: z.json().optional(),
	error: absentIfNull(z.string().max(64 * 1024)),
});
export type ResultFrame = z.infer<typeof ResultFrame>;
export const PingFrame = z.object({ type: z.literal("ping") });
export const MAX_CONCURRENCY = 1000;
/**
 * Sent by the agent right after `welcome`: how many commands it runs at once,
 * and which ones it is running now (so acknowledged commands it lost in a
 * restart are found and sent again).
 */
export const HelloFrame = z.object({
	type: z.literal("hello"),
	concurrency: z.number().int().min(1).max(MAX_CONCURRENCY),
	running: defaultIfNull(z.array(CommandId).max(10_000), []),
	/** The agent's build, e.g. "1.4.2". */
	version: absentIfNull(Descriptor),
	/** Where it runs, e.g. "linux/arm64". */
	platform: absentIfNull(Descriptor),
	/** Its own labels; an operator's (PATCH /v1/agents/{id}) win over them. */
	labels: absentIfNull(Labels),
	/** The actions it handles. Given, commands for any other action wait (`action_unsupported`). */
	actions: absentIfNull(z.array(Action).max(MAX_ACTIONS)),
});
export type HelloFrame = z.infer<typeof HelloFrame>;

export const MAX_OUTPUT_CHUNK = 64 * 1024;
/** A chunk of a running command's output, in order by `seq` (from 0). */
export const OutputFrame = z.object({
	type: z.literal("output"),
	id: CommandId,
	seq: z.number().int().min(0),
	data: z.string().max(MAX_OUTPUT_CHUNK),
});
export type OutputFrame = z.infer<typeof OutputFrame>;

/** Trade the socket's still-valid token for a new one, so a long-lived connection never has to drop to renew. */
export const AuthRefreshFrame = z.object({
	type: z.literal("auth.refresh"),
	token: z.string().max(4096),
});
export type AuthRefreshFrame = z.infer<typeof AuthRefreshFrame>;

export const AgentFrame = z.discriminatedUnion("type", [
	HelloFrame,
	AckFrame,
	ResultFrame,
	OutputFrame,
	PingFrame,
	AuthRefreshFrame,
]);
export type AgentFrame = z.infer<typeof AgentFrame>;

/**
 * The exact ping text the edge answers without waking the Durable Object
 * (`setWebSocketAutoResponse` matches byte for byte). Any other spelling of a
 * ping still gets a pong, from the object itself.
 */
export const PING_TEXT = '{"type":"ping"}';
export const PONG_TEXT = '{"type":"pong"}';

/** Parses one agent frame. Never throws: a bad frame is a value, not an exception. */
export function parseAgentFrame(
	text: string,
): { ok: true; frame: AgentFrame } | { ok: false; error: ErrorFrame } {
	let raw: unknown;
	try {
		raw = JSON.parse(text);
	} catch {
		return {
			ok: false,
			error: { type: "error", code: ErrorCode.INVALID_JSON, message: "frame is not valid JSON" },
		};
	}
	const problem = jsonProblem(raw);
	if (problem) {
		return { ok: false, error: { type: "error", code: ErrorCode.INVALID_FRAME, message: `frame refused: ${problem}` } };
	}
	const parsed = AgentFrame.safeParse(raw);
	if (parsed.success) return { ok: true, frame: parsed.data };
	const id =
		typeof raw === "object" && raw !== null && typeof (raw as { id?: unknown }).id === "string"
			? (raw as { id: string }).id.slice(0, 64)
			: undefined;
	return {
		ok: false,
		error: {
			type: "error",
			code: ErrorCode.INVALID_FRAME,
			message: z.prettifyError(parsed.error).slice(0, 1000),
			...(id ? { id } : {}),
		},
	};
}
