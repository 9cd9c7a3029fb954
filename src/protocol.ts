/**
 * Switchyard wire protocol v1 and HTTP API shapes.
 *
 * This one module is imported by the worker, the agent Durable Object, the
 * dev tooling and (later) the SDK, so a frame or body is defined exactly once.
 * docs/protocol.md is the prose form of this file; keep them in step.
 */
import { z } from "zod";

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

// ------------------------------------------------------------- codes (shared)

/** Close codes the server uses on agent sockets. The SDK must not reconnect after a terminal one. */
export const CloseCode = {
	/** Another connection for the same agent id took over. Terminal: reconnecting would fight the newer one. */
	REPLACED: 4001,
} as const;
export const TERMINAL_CLOSE_CODES: ReadonlySet<number> = new Set([CloseCode.REPLACED]);

/** Machine-readable codes used in HTTP error bodies and `error` frames. */
export const ErrorCode = {
	BAD_REQUEST: "bad_request",
	VALIDATION_FAILED: "validation_failed",
	INVALID_JSON: "invalid_json",
	UNAUTHORIZED: "unauthorized",
	NOT_FOUND: "not_found",
	METHOD_NOT_ALLOWED: "method_not_allowed",
	PAYLOAD_TOO_LARGE: "payload_too_large",
	UNSUPPORTED_MEDIA_TYPE: "unsupported_media_type",
	UPGRADE_REQUIRED: "upgrade_required",
	DB_UNAVAILABLE: "db_unavailable",
	INTERNAL: "internal",
	// frame-only
	INVALID_FRAME: "invalid_frame",
	UNKNOWN_COMMAND: "unknown_command",
	NOT_DISPATCHED: "not_dispatched",
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

export const EnqueueRequest = z.strictObject({
	action: Action,
	payload: z.json().default({}),
	sessionId: SessionId.nullable().default(null),
	priority: Priority.default(DEFAULT_PRIORITY),
});
export type EnqueueRequest = z.infer<typeof EnqueueRequest>;

export const ListCommandsQuery = z.strictObject({
	status: CommandStatus.optional(),
	limit: z.coerce.number().int().min(1).max(200).default(50),
	cursor: z.string().max(64).optional(),
});

export const ListAgentsQuery = z.strictObject({
	limit: z.coerce.number().int().min(1).max(200).default(50),
	cursor: AgentId.optional(),
});

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
	createdAt: Timestamp,
	updatedAt: Timestamp,
	dispatchedAt: Timestamp.nullable(),
	acknowledgedAt: Timestamp.nullable(),
	completedAt: Timestamp.nullable(),
});
export type Command = z.infer<typeof Command>;

export const Agent = z.object({
	id: AgentId,
	online: z.boolean(),
	createdAt: Timestamp,
	connectedSince: Timestamp.nullable(),
	lastConnectedAt: Timestamp.nullable(),
	lastSeenAt: Timestamp.nullable(),
});
export type Agent = z.infer<typeof Agent>;

// ------------------------------------------------------------- wire protocol

/** Sent once right after the server accepts the socket. */
export const WelcomeFrame = z.object({
	type: z.literal("welcome"),
	protocol: z.literal(PROTOCOL_VERSION),
	agentId: AgentId,
	generation: z.number().int(),
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
export const ErrorFrame = z.object({
	type: z.literal("error"),
	code: z.string(),
	message: z.string(),
	id: z.string().optional(),
});
export type ErrorFrame = z.infer<typeof ErrorFrame>;

export const ServerFrame = z.discriminatedUnion("type", [
	WelcomeFrame,
	CommandFrame,
	PongFrame,
	ErrorFrame,
]);
export type ServerFrame = z.infer<typeof ServerFrame>;

export const AckFrame = z.object({ type: z.literal("ack"), id: CommandId });
export const ResultFrame = z.object({
	type: z.literal("result"),
	id: CommandId,
	status: z.enum(["completed", "failed"]),
	result: z.json().optional(),
	error: z.string().max(64 * 1024).optional(),
});
export type ResultFrame = z.infer<typeof ResultFrame>;
export const PingFrame = z.object({ type: z.literal("ping") });

export const AgentFrame = z.discriminatedUnion("type", [AckFrame, ResultFrame, PingFrame]);
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
