import { DurableObject } from "cloudflare:workers";
import { z } from "zod";
import { listOpenCommands } from "../db/commands";
import { DbUnavailableError, withDb } from "../db/client";
import { writeStatus, type Presence } from "../db/status-writes";
import { errorFields, log } from "../log";
import {
	AgentId,
	CloseCode,
	ErrorCode,
	type ErrorFrame,
	PING_TEXT,
	PONG_TEXT,
	PROTOCOL_VERSION,
	type ServerFrame,
	parseAgentFrame,
} from "../protocol";
import * as buffer from "./buffer";
import { Meta } from "./meta";

/** Header through which the worker tells the object which agent a verified upgrade is for. */
export const AGENT_ID_HEADER = "x-switchyard-agent-id";

const AGENT_TAG = "agent";
const OUTBOX_BATCH = 500;
/** Backstop for a flush or catch-up whose promise died with an evicted isolate. */
const SAFETY_NET_MS = 5_000;
const RETRY_BASE_MS = 1_000;
const RETRY_MAX_MS = 60_000;

const Attachment = z.object({
	agentId: AgentId,
	generation: z.number().int(),
	connectedAt: z.number(),
});
type Attachment = z.infer<typeof Attachment>;

export type EnqueueInput = buffer.BufferInput & { agentId: string };

/**
 * One object per agent id: holds the agent's hibernatable socket, buffers its
 * commands in SQLite, and writes every status change back to Postgres through
 * an outbox, so a Postgres outage delays the write but never loses it.
 */
export class AgentHub extends DurableObject<Env> {
	private readonly sql: SqlStorage;
	private readonly meta: Meta;
	private flushing: Promise<void> | null = null;
	private flushAgain = false;

	constructor(ctx: DurableObjectState, env: Env) {
		super(ctx, env);
		this.sql = ctx.storage.sql;
		this.meta = new Meta(this.sql);
		ctx.blockConcurrencyWhile(async () => {
			buffer.migrate(this.sql);
		});
		// Answered at the edge without waking a hibernated object.
		ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair(PING_TEXT, PONG_TEXT));
	}

	// ---------------------------------------------------------------- RPC

	/**
	 * Takes a command the worker has already committed to Postgres and pushes
	 * it to the agent if one is connected. Idempotent per command id.
	 */
	async enqueue(input: EnqueueInput): Promise<{ status: string }> {
		const agentId = this.bindAgent(input.agentId);
		const command = buffer.BufferInput.parse(input);
		const added = buffer.addCommand(this.sql, command);
		if (added) this.deliverPending();
		const status = buffer.getCommand(this.sql, command.id)?.status ?? "unknown";
		log("info", "command.buffered", { agentId, commandId: command.id, added, status });
		return { status };
	}

	/** Reads Postgres for commands this object has not seen and delivers them. */
	async reconcile(agentId: string): Promise<{ added: number }> {
		this.bindAgent(agentId);
		return this.catchUp();
	}

	/** The object's own view, for tests and diagnostics. */
	async inspect(): Promise<{
		agentId: string | undefined;
		generation: number;
		connected: boolean;
		buffered: Partial<Record<string, number>>;
		outbox: number;
	}> {
		return {
			agentId: this.meta.get("agent_id"),
			generation: this.meta.getNumber("generation") ?? 0,
			connected: this.currentSocket() !== undefined,
			buffered: buffer.statusCounts(this.sql),
			outbox: buffer.outboxSize(this.sql),
		};
	}

	// ------------------------------------------------------ socket lifecycle

	override async fetch(request: Request): Promise<Response> {
		const agentId = AgentId.safeParse(request.headers.get(AGENT_ID_HEADER));
		if (request.headers.get("upgrade")?.toLowerCase() !== "websocket" || !agentId.success) {
			// Only the worker calls this, after verifying the token; anything else is a wiring bug.
			return new Response("expected a verified agent WebSocket upgrade", { status: 400 });
		}
		this.bindAgent(agentId.data);
		const generation = (this.meta.getNumber("generation") ?? 0) + 1;
		this.meta.set("generation", generation);

		for (const old of this.ctx.getWebSockets(AGENT_TAG)) {
			try {
				old.close(CloseCode.REPLACED, "replaced by a newer connection for this agent");
			} catch {
				// already closing
			}
		}

		const pair = new WebSocketPair();
		const [client, server] = [pair[0], pair[1]];
		this.ctx.acceptWebSocket(server, [AGENT_TAG]);
		const now = Date.now();
		server.serializeAttachment({
			agentId: agentId.data,
			generation,
			connectedAt: now,
		} satisfies Attachment);
		this.meta.set("connected", true);
		this.meta.set("last_connected_at", now);
		this.meta.set("last_seen_at", now);
		this.meta.set("presence_dirty", true);

		this.send(server, { type: "welcome", protocol: PROTOCOL_VERSION, agentId: agentId.data, generation });
		const sent = this.deliverOnConnect(server);
		log("info", "agent.connected", { agentId: agentId.data, generation, redelivered: sent });

		// Rows that reached Postgres but never this object (a failed forward,
		// an INSERT by hand, a reset object) are picked up here on every connect.
		this.ctx.waitUntil(this.catchUp().catch(() => {}));
		this.scheduleFlush();
		return new Response(null, { status: 101, webSocket: client });
	}

	override async webSocketMessage(ws: WebSocket, message: string | ArrayBuffer): Promise<void> {
		try {
			const att = this.attachmentOf(ws);
			if (!att || att.generation !== this.meta.getNumber("generation")) {
				// A frame from a socket already replaced: it has no say over state any more.
				log("warn", "frame.stale_socket", { agentId: att?.agentId, generation: att?.generation });
				return;
			}
			if (typeof message !== "string") {
				this.send(ws, {
					type: "error",
					code: ErrorCode.INVALID_FRAME,
					message: "binary frames are not supported; send JSON text frames",
				});
				return;
			}
			const parsed = parseAgentFrame(message);
			if (!parsed.ok) {
				this.send(ws, parsed.error);
				return;
			}
			const frame = parsed.frame;
			const now = new Date();
			this.meta.set("last_seen_at", now.getTime());
			if (frame.type === "ping") {
				this.send(ws, { type: "pong" });
				return;
			}
			const outcome = this.ctx.storage.transactionSync(() =>
				frame.type === "ack"
					? buffer.acknowledge(this.sql, frame.id, now)
					: buffer.finish(this.sql, frame.id, frame, now),
			);
			const refusal = refusalFor(outcome, frame.id);
			if (refusal) this.send(ws, refusal);
			if (outcome === "applied") {
				log("info", `command.${frame.type === "ack" ? "acknowledged" : frame.status}`, {
					agentId: att.agentId,
					commandId: frame.id,
					generation: att.generation,
				});
				this.scheduleFlush();
			}
		} catch (err) {
			log("error", "agent.message_failed", { agentId: this.meta.get("agent_id"), ...errorFields(err) });
			this.send(ws, { type: "error", code: ErrorCode.INTERNAL, message: "internal error handling frame" });
		}
	}

	override async webSocketClose(ws: WebSocket, code: number, reason: string): Promise<void> {
		this.onSocketGone(ws, "closed", { code, reason: reason.slice(0, 200) });
		try {
			// Complete the closing handshake; 1005/1006 are reserved and cannot be sent back.
			ws.close(code === 1005 || code === 1006 ? 1000 : code, "closing");
		} catch {
			// already closed
		}
	}

	override async webSocketError(ws: WebSocket, error: unknown): Promise<void> {
		this.onSocketGone(ws, "errored", errorFields(error));
	}

	override async alarm(): Promise<void> {
		try {
			const now = Date.now();
			for (const [name, at] of this.meta.timers()) {
				if (at > now) continue;
				this.meta.clearTimer(name);
				if (name === "flush") this.scheduleFlush();
				else if (name === "catch_up") await this.catchUp().catch(() => {});
			}
			if (this.flushing) await this.flushing;
		} catch (err) {
			log("error", "agent.alarm_failed", { agentId: this.meta.get("agent_id"), ...errorFields(err) });
		} finally {
			await this.armAlarm();
		}
	}

	// ------------------------------------------------------------- delivery

	private deliverOnConnect(ws: WebSocket): number {
		const rows = buffer.toDeliverOnConnect(this.sql);
		return this.dispatch(ws, rows);
	}

	private deliverPending(): number {
		const ws = this.currentSocket();
		if (!ws) return 0;
		return this.dispatch(ws, buffer.pendingInOrder(this.sql));
	}

	private dispatch(ws: WebSocket, rows: buffer.BufferedRow[]): number {
		if (rows.length === 0) return 0;
		const now = new Date();
		// State first, then the wire: if the send is lost, the row is
		// `dispatched` and goes out again on the next connect.
		const frames = this.ctx.storage.transactionSync(() =>
			rows.map((r) =>
				buffer.markDispatched(this.sql, r, now, r.status === "pending" ? "delivery" : "redelivery"),
			),
		);
		for (const f of frames) this.send(ws, f);
		this.scheduleFlush();
		return frames.length;
	}

	private async catchUp(): Promise<{ added: number }> {
		const agentId = this.meta.get("agent_id");
		if (!agentId) return { added: 0 };
		try {
			const rows = await withDb(this.env, (db) => listOpenCommands(db, agentId));
			let added = 0;
			this.ctx.storage.transactionSync(() => {
				for (const r of rows) if (buffer.addCommand(this.sql, buffer.BufferInput.parse(r))) added++;
			});
			this.meta.clearTimer("catch_up");
			this.meta.delete("catch_up_failures");
			const sent = added ? this.deliverPending() : 0;
			if (added) log("info", "agent.caught_up", { agentId, added, sent });
			return { added };
		} catch (err) {
			const failures = (this.meta.getNumber("catch_up_failures") ?? 0) + 1;
			this.meta.set("catch_up_failures", failures);
			this.meta.setTimer("catch_up", Date.now() + backoff(failures));
			await this.armAlarm();
			log(err instanceof DbUnavailableError ? "warn" : "error", "agent.catch_up_failed", {
				agentId,
				failures,
				...errorFields(err),
			});
			throw err;
		}
	}

	// ---------------------------------------------------------------- outbox

	/** Single-flight: a flush already running picks up whatever arrived meanwhile. */
	private scheduleFlush(): void {
		if (this.flushing) {
			this.flushAgain = true;
			return;
		}
		this.flushing = this.flushLoop().finally(() => {
			this.flushing = null;
		});
		this.ctx.waitUntil(this.flushing);
	}

	private async flushLoop(): Promise<void> {
		const agentId = this.meta.get("agent_id");
		if (!agentId) return;
		this.meta.setTimer("flush", Date.now() + SAFETY_NET_MS);
		await this.armAlarm();
		do {
			this.flushAgain = false;
			const { lastSeq, transitions } = buffer.peekOutbox(this.sql, OUTBOX_BATCH);
			const presenceDirty = this.meta.get("presence_dirty") === "1";
			if (transitions.length === 0 && !presenceDirty) break;
			const presence = this.presence(agentId);
			try {
				await withDb(this.env, (db) => writeStatus(db, transitions, presence));
			} catch (err) {
				const failures = (this.meta.getNumber("flush_failures") ?? 0) + 1;
				this.meta.set("flush_failures", failures);
				this.meta.setTimer("flush", Date.now() + backoff(failures));
				await this.armAlarm();
				log(err instanceof DbUnavailableError ? "warn" : "error", "outbox.flush_failed", {
					agentId,
					failures,
					pending: buffer.outboxSize(this.sql),
					...errorFields(err),
				});
				return;
			}
			this.ctx.storage.transactionSync(() => {
				buffer.dropOutbox(this.sql, lastSeq);
				// Presence written above is stale if it changed during the await.
				if (this.presence(agentId).lastSeenAt === presence.lastSeenAt) this.meta.delete("presence_dirty");
				this.meta.delete("flush_failures");
			});
		} while (this.flushAgain || buffer.outboxSize(this.sql) > 0);
		this.meta.clearTimer("flush");
		buffer.prune(this.sql, Date.now());
		await this.armAlarm();
	}

	private presence(agentId: string): Presence {
		const lastConnected = this.meta.getNumber("last_connected_at");
		let lastSeen = this.meta.getNumber("last_seen_at") ?? Date.now();
		const ws = this.currentSocket();
		// Pings answered at the edge never reach the object; their time still counts.
		const auto = ws ? this.ctx.getWebSocketAutoResponseTimestamp(ws) : null;
		if (auto && auto.getTime() > lastSeen) lastSeen = auto.getTime();
		return {
			agentId,
			connected: this.meta.get("connected") === "1",
			lastConnectedAt: lastConnected ? new Date(lastConnected).toISOString() : null,
			lastSeenAt: new Date(lastSeen).toISOString(),
		};
	}

	private async armAlarm(): Promise<void> {
		const deadlines = [...this.meta.timers().values()];
		if (deadlines.length === 0) {
			await this.ctx.storage.deleteAlarm();
			return;
		}
		const next = Math.min(...deadlines);
		const current = await this.ctx.storage.getAlarm();
		if (current === null || current !== next) await this.ctx.storage.setAlarm(next);
	}

	// --------------------------------------------------------------- helpers

	/** Remembers which agent this object serves, and refuses to serve two. */
	private bindAgent(agentId: string): string {
		const known = this.meta.get("agent_id");
		if (known === undefined) this.meta.set("agent_id", AgentId.parse(agentId));
		else if (known !== agentId) throw new Error(`object for agent ${known} was asked to serve ${agentId}`);
		return agentId;
	}

	private attachmentOf(ws: WebSocket): Attachment | undefined {
		const att = Attachment.safeParse(ws.deserializeAttachment());
		return att.success ? att.data : undefined;
	}

	private currentSocket(): WebSocket | undefined {
		const generation = this.meta.getNumber("generation");
		return this.ctx
			.getWebSockets(AGENT_TAG)
			.find((ws) => ws.readyState === WebSocket.OPEN && this.attachmentOf(ws)?.generation === generation);
	}

	private onSocketGone(ws: WebSocket, how: string, detail: Record<string, unknown>): void {
		try {
			const att = this.attachmentOf(ws);
			const current = att !== undefined && att.generation === this.meta.getNumber("generation");
			log("info", `agent.socket_${how}`, {
				agentId: att?.agentId,
				generation: att?.generation,
				current,
				...detail,
			});
			if (!current) return;
			this.meta.set("connected", false);
			this.meta.set("last_seen_at", Date.now());
			this.meta.set("presence_dirty", true);
			this.scheduleFlush();
		} catch (err) {
			log("error", "agent.close_failed", { agentId: this.meta.get("agent_id"), ...errorFields(err) });
		}
	}

	private send(ws: WebSocket, frame: ServerFrame): void {
		try {
			ws.send(JSON.stringify(frame));
		} catch (err) {
			// The socket is going away; anything unacknowledged is redelivered on reconnect.
			log("warn", "agent.send_failed", { agentId: this.meta.get("agent_id"), ...errorFields(err) });
		}
	}
}

function refusalFor(outcome: buffer.FrameOutcome, id: string): ErrorFrame | undefined {
	switch (outcome) {
		case "unknown":
			return { type: "error", code: ErrorCode.UNKNOWN_COMMAND, message: "no such command for this agent", id };
		case "not_dispatched":
			return {
				type: "error",
				code: ErrorCode.NOT_DISPATCHED,
				message: "command has not been dispatched to this agent",
				id,
			};
		default:
			// "duplicate" is a resend after a reconnect: at-least-once delivery makes it normal.
			return undefined;
	}
}

function backoff(failures: number): number {
	const ceiling = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** Math.min(failures - 1, 10));
	return Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
}
