import { DurableObject } from "cloudflare:workers";
import { z } from "zod";
import { type Database, DbBusyError, DbQueryError, DbUnavailableError, objectDb } from "../db/client";
import { type CommandRecord, listOpenCommands } from "../db/commands";
import { type KeyedEntry, type Presence, writeStatus } from "../db/status-writes";
import { errorFields, log } from "../log";
import {
	AgentId,
	CloseCode,
	ErrorCode,
	type ErrorFrame,
	HEARTBEAT_INTERVAL_SECONDS,
	HEARTBEAT_MISSES,
	MAX_FRAME_BYTES,
	PING_TEXT,
	PONG_TEXT,
	PROTOCOL_VERSION,
	type ServerFrame,
	TERMINAL_STATUSES,
	parseAgentFrame,
} from "../protocol";
import * as buffer from "./buffer";
import * as storage from "./storage";
import * as events from "./events";
import { Meta } from "./meta";
import { OBSERVER_RESUME_HEADER, Observers, parseResume } from "./observers";
import { AgentAuth, TOKEN_EXPIRES_HEADER, TOKEN_VERSION_HEADER } from "./agent-auth";
import { FrameRateLimiter, frameRateLimit, frameTooLarge } from "./frame-limits";
import { acceptedSubprotocol } from "../auth/credentials";
import { recordAnalytics, salvage } from "./outbox-writes";

/** Header through which the worker tells the object which agent a verified upgrade is for. */
export const AGENT_ID_HEADER = "x-switchyard-agent-id";
export { OBSERVER_RESUME_HEADER } from "./observers";
export { TOKEN_EXPIRES_HEADER, TOKEN_VERSION_HEADER } from "./agent-auth";

const AGENT_TAG = "agent";
const OUTBOX_BATCH = 500;
/** Backstop for a flush or catch-up whose promise died with an evicted isolate. */
const SAFETY_NET_MS = 5_000;
/**
 * A safety net found due while its work is still under way (queued at the
 * connection gate) is pushed out by as long as the work has run so far,
 * within these bounds: an object waiting two minutes at the gate through a
 * storm then costs a handful of alarms, not one every 5 s (a 3,000-agent
 * connect spent 40% of workerd's CPU in such alarms).
 */
const SAFETY_NET_MAX_MS = 60_000;
const RETRY_BASE_MS = 1_000;
const RETRY_MAX_MS = 60_000;
const ALARM_FLOOR_MS = 100;
const SILENCE_LIMIT_MS = HEARTBEAT_INTERVAL_SECONDS * HEARTBEAT_MISSES * 1000;
/**
 * How often the silence rule is checked while the agent holds no open
 * command. Pings are answered at the edge, so only an alarm sees them; one
 * every 90 s would wake every idle object of a fleet around the clock (and,
 * under wrangler dev, keep a tenth of them live with their SQLite files
 * open). An idle agent loses nothing by a late check: nothing is sent to a
 * socket silent past the limit, and whatever brings commands closes it first
 * (deliver, pump); only a silently dead idle agent shows `online` for longer.
 */
const IDLE_SILENCE_CHECK_MS = 5 * 60_000;
const LAST_SEEN_RESOLUTION_MS = 1_000;
const ALARM_FLUSH_WAIT_MS = 2_000;
/** An agent that sends no hello gets this window, which keeps its commands strictly in order. */
const DEFAULT_CONCURRENCY = 1;
/**
 * An agent that has not said `hello` this long after connecting is taken to
 * run nothing from earlier connections: what it acknowledged before is sent
 * again (it deduplicates by id), instead of holding its window forever.
 */
const HELLO_GRACE_MS = 10_000;

const Attachment = z.object({
	agentId: AgentId,
	generation: z.number().int(),
	connectedAt: z.number(),
});
type Attachment = z.infer<typeof Attachment>;

export type EnqueueInput = buffer.BufferInput & { agentId: string };

/** What the worker hands the object: the committed Postgres row, in the object's terms. */
export function toBufferInput(r: CommandRecord): EnqueueInput {
	return {
		agentId: r.agentId,
		id: r.id,
		seq: r.seq,
		action: r.action,
		payload: r.payload,
		sessionId: r.sessionId,
		priority: r.priority,
		status: r.status === "dispatched" || r.status === "acknowledged" ? r.status : "pending",
		attempts: r.attempts,
		maxAttempts: r.maxAttempts,
		ackTimeoutSeconds: r.ackTimeoutSeconds,
		timeoutSeconds: r.timeoutSeconds,
		expiresAt: r.expiresAt?.getTime() ?? null,
		firstDispatchedAt: r.firstDispatchedAt?.getTime() ?? null,
		cancelRequested: r.cancelRequestedAt !== null,
	};
}

/**
 * One object per agent id: holds the agent's hibernatable socket, buffers its
 * commands in SQLite, applies the delivery rules in ./buffer.ts, and writes
 * every status change back to Postgres through an outbox, so a Postgres
 * outage delays the write but never loses it.
 */
export class AgentHub extends DurableObject<Env> {
	private readonly sql: SqlStorage;
	private readonly meta: Meta;
	private readonly observers: Observers;
	private readonly auth: AgentAuth;
	private readonly db: Database;
	/** The current connection's frame budget (in memory: see frame-limits.ts). */
	private limiter: { generation: number; bucket: FrameRateLimiter } | undefined;
	private flushing: Promise<void> | null = null;
	private flushAgain = false;
	private catchingUp: Promise<void> | null = null;
	private catchUpAgain = false;
	/** The alarm as this object last set it; undefined until read (a new instance). */
	private armedAt: number | null | undefined;
	/** When the flush and the catch-up under way began (for pushing their safety nets out). */
	private flushingSince = 0;
	private catchingUpSince = 0;

	constructor(ctx: DurableObjectState, env: Env) {
		super(ctx, env);
		this.sql = ctx.storage.sql;
		this.meta = new Meta(this.sql);
		this.observers = new Observers(ctx, this.sql, this.meta);
		this.auth = new AgentAuth(this.meta, env);
		this.db = objectDb(env);
		ctx.blockConcurrencyWhile(async () => {
			ctx.storage.transactionSync(() => storage.migrate(this.sql));
		});
		// Answered at the edge without waking a hibernated object.
		ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair(PING_TEXT, PONG_TEXT));
	}

	// ---------------------------------------------------------------- RPC

	/**
	 * Takes commands the worker has already committed to Postgres and pushes
	 * them to the agent as its window allows. Idempotent per command id.
	 */
	async enqueue(inputs: EnqueueInput[]): Promise<{ statuses: Record<string, string> }> {
		this.meta.forget();
		const agentId = inputs[0]?.agentId;
		if (!agentId) return { statuses: {} };
		this.bindAgent(agentId);
		const commands = inputs.map((i) => {
			if (i.agentId !== agentId) throw new Error("one enqueue call carries one agent's commands");
			return buffer.BufferInput.parse(i);
		});
		const now = Date.now();
		const added = this.atomically(
			() => commands.filter((c) => buffer.addCommand(this.sql, c, now)).length,
		);
		await this.deliver();
		this.scheduleFlush();
		await this.armAlarm();
		const statuses: Record<string, string> = {};
		for (const c of commands) statuses[c.id] = storage.getCommand(this.sql, c.id)?.status ?? "unknown";
		log("info", "command.buffered", { agentId, count: commands.length, added });
		return { statuses };
	}

	/** Reads Postgres for commands this object has not seen and delivers them. */
	async reconcile(agentId: string): Promise<{ added: number }> {
		this.meta.forget();
		this.bindAgent(agentId);
		return this.catchUp();
	}

	/**
	 * Cancels a command: at once if it was never sent (it never will be), or by
	 * asking the agent. A command the object has not seen yet is looked up in
	 * Postgres first, so a cancel cannot race a delivery.
	 */
	async cancel(
		agentId: string,
		id: string,
		actor = "api",
	): Promise<{ outcome: buffer.CancelOutcome | "unavailable" }> {
		this.meta.forget();
		this.bindAgent(agentId);
		if (!storage.getCommand(this.sql, id)) {
			// Without Postgres the object cannot know whether it is about to deliver
			// this one. Read it without sending anything: it must be cancelled first.
			const read = await this.catchUp({ pump: false }).then(
				() => true,
				() => false,
			);
			if (!read) return { outcome: "unavailable" };
		}
		const now = Date.now();
		const outcome = this.atomically(() => buffer.requestCancel(this.sql, id, now, actor));
		const ws = this.currentSocket();
		const owed = buffer.cancelsOwed(this.sql, now).find((c) => c.id === id);
		if (ws && owed) this.send(ws, { type: "cancel", id, reason: owed.reason });
		await this.deliver();
		log("info", "command.cancel", { agentId, commandId: id, outcome });
		this.scheduleFlush();
		await this.armAlarm();
		return { outcome };
	}

	/** The version a token minted now must carry to be admitted. */
	async tokenVersion(agentId: string): Promise<number> {
		this.meta.forget();
		this.bindAgent(agentId);
		return this.auth.version();
	}

	/**
	 * Revokes every token minted for this agent so far and closes its socket
	 * (4004, which the SDK does not reconnect after). Tokens minted afterwards work.
	 */
	async revokeTokens(agentId: string): Promise<{ version: number; closed: boolean }> {
		this.meta.forget();
		this.bindAgent(agentId);
		const version = this.auth.revoke();
		const ws = this.currentSocket();
		if (ws) await this.closeSocket(ws, CloseCode.TOKEN_REVOKED, "agent tokens revoked", "revoked", { version });
		log("warn", "agent.tokens_revoked", { agentId, version, closed: ws !== undefined });
		return { version, closed: ws !== undefined };
	}

	/** The object's own view, for tests and diagnostics. */
	async inspect(): Promise<{
		agentId: string | undefined;
		generation: number;
		connected: boolean;
		concurrency: number;
		buffered: Partial<Record<string, number>>;
		outbox: number;
		/** Named timers still pending (e.g. `catch_up` while a read of Postgres is under way). */
		timers: string[];
	}> {
		this.meta.forget();
		return {
			timers: [...this.meta.timers().keys()],
			agentId: this.meta.get("agent_id"),
			generation: this.meta.getNumber("generation") ?? 0,
			connected: this.currentSocket() !== undefined,
			concurrency: this.concurrency(),
			buffered: storage.statusCounts(this.sql),
			outbox: storage.outboxSize(this.sql),
		};
	}

	// ------------------------------------------------------ socket lifecycle

	override async fetch(request: Request): Promise<Response> {
		this.meta.forget();
		const agentId = AgentId.safeParse(request.headers.get(AGENT_ID_HEADER));
		const resume = parseResume(request.headers.get(OBSERVER_RESUME_HEADER));
		const protocol = acceptedSubprotocol(request.headers);
		if (resume !== null && agentId.success && request.headers.get("upgrade")?.toLowerCase() === "websocket") {
			this.bindAgent(agentId.data);
			return this.observers.accept(agentId.data, resume, protocol);
		}
		if (request.headers.get("upgrade")?.toLowerCase() !== "websocket" || !agentId.success) {
			// Only the worker calls this, after verifying the token; anything else is a wiring bug.
			return new Response("expected a verified agent WebSocket upgrade", { status: 400 });
		}
		this.bindAgent(agentId.data);
		// Checked here, not only in the worker: this object is where a revocation lives.
		if (!this.auth.admits(Number(request.headers.get(TOKEN_VERSION_HEADER) ?? 0))) {
			log("warn", "agent.auth_refused", { agentId: agentId.data, reason: "agent token was revoked" });
			return Response.json(
				{ error: { code: ErrorCode.UNAUTHORIZED, message: "agent token was revoked: mint a new one" } },
				{ status: 401 },
			);
		}
		const tokenExpiresAt = Number(request.headers.get(TOKEN_EXPIRES_HEADER));
		const generation = (this.meta.getNumber("generation") ?? 0) + 1;
		this.meta.set("generation", generation);

		const now = Date.now();
		for (const old of this.ctx.getWebSockets(AGENT_TAG)) {
			try {
				old.close(CloseCode.REPLACED, "replaced by a newer connection for this agent");
			} catch {
				// already closing
			}
			const was = this.attachmentOf(old)?.generation;
			if (was !== undefined && this.meta.get("connected") === "1") {
				events.appendEvent(this.sql, { type: "presence", state: "replaced", generation: was }, now);
			}
		}

		const pair = new WebSocketPair();
		const [client, server] = [pair[0], pair[1]];
		this.ctx.acceptWebSocket(server, [AGENT_TAG]);
		server.serializeAttachment({ agentId: agentId.data, generation, connectedAt: now } satisfies Attachment);
		// Whatever the previous socket was sent and never acknowledged goes out
		// again on this one; a close event for it may never have come (a crash).
		const requeued = this.atomically(() => {
			this.meta.set("connected", true);
			this.meta.set("last_connected_at", now);
			this.meta.set("last_seen_at", now);
			this.meta.set("presence_dirty", true);
			this.meta.set("concurrency", DEFAULT_CONCURRENCY);
			if (Number.isFinite(tokenExpiresAt)) this.auth.startSession(tokenExpiresAt);
			events.appendEvent(this.sql, { type: "presence", state: "connected", generation }, now);
			return buffer.requeueDispatched(this.sql, now, "reconnect");
		});

		this.meta.setTimer("hello", now + HELLO_GRACE_MS);
		this.send(server, {
			type: "welcome",
			protocol: PROTOCOL_VERSION,
			agentId: agentId.data,
			generation,
			...(Number.isFinite(tokenExpiresAt) ? { tokenExpiresAt: new Date(tokenExpiresAt).toISOString() } : {}),
		});
		for (const c of buffer.cancelsOwed(this.sql, now)) this.send(server, { type: "cancel", id: c.id, reason: c.reason });
		const sent = this.pump();
		log("info", "agent.connected", { agentId: agentId.data, generation, requeued, sent });

		// Rows that reached Postgres but never this object (a failed forward,
		// an INSERT by hand, a reset object) are picked up here on every connect.
		this.catchUpInBackground();
		this.scheduleFlush();
		await this.armAlarm();
		return new Response(null, {
			status: 101,
			webSocket: client,
			headers: protocol ? { "sec-websocket-protocol": protocol } : {},
		});
	}

	override async webSocketMessage(ws: WebSocket, message: string | ArrayBuffer): Promise<void> {
		this.meta.forget();
		if (frameTooLarge(message, MAX_FRAME_BYTES)) {
			// Before parsing: a frame this size is refused unread.
			await this.closeSocket(ws, CloseCode.MESSAGE_TOO_BIG, `frames are limited to ${MAX_FRAME_BYTES} bytes`, "too_big", {});
			return;
		}
		if (this.observers.has(ws)) {
			// Observers only listen (their exact-text pings are answered at the edge).
			this.send(ws, { type: "error", code: ErrorCode.INVALID_FRAME, message: "observers only listen" });
			return;
		}
		try {
			const att = this.attachmentOf(ws);
			if (!att || att.generation !== this.meta.getNumber("generation")) {
				// A frame from a socket already replaced: it has no say over state any more.
				log("warn", "frame.stale_socket", { agentId: att?.agentId, generation: att?.generation });
				return;
			}
			// The alarm closes an expired socket; until it runs, its frames are not taken either.
			if (await this.checkTokenExpiry(Date.now())) return;
			const verdict = this.takeFrameBudget(att.generation);
			if (verdict === "abusive") {
				await this.closeSocket(ws, CloseCode.RATE_LIMITED, "frame rate limit exceeded", "rate_limited", {});
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
			const now = Date.now();
			// Silence is judged in tens of seconds: a write a second is plenty, not one a frame.
			if (now - (this.meta.getNumber("last_seen_at") ?? 0) >= LAST_SEEN_RESOLUTION_MS) this.meta.set("last_seen_at", now);
			if (frame.type === "ping") {
				this.send(ws, { type: "pong" });
				return;
			}
			// Over budget, acks and results are still taken: they answer commands this
			// object sent (its window bounds them), and refusing one would run it twice.
			// Over budget, an ack or result for a command this agent really holds is
			// still taken (dropping it would run the command twice) and not held against
			// the sender; anything else is dropped.
			const owed = (frame.type === "ack" || frame.type === "result") && buffer.holds(this.sql, frame.id);
			if (verdict === "refused" && owed) this.limiter?.bucket.pardon();
			if (verdict === "refused" && !owed) {
				this.send(ws, {
					type: "error",
					code: ErrorCode.RATE_LIMITED,
					message: `over ${this.limiter?.bucket.rate ?? 0} frames per second; this ${frame.type} frame was dropped`,
					...("id" in frame ? { id: frame.id } : {}),
				});
				return;
			}
			if (frame.type === "auth.refresh") {
				const answer = await this.auth.refresh(att.agentId, frame.token, now);
				this.send(ws, answer);
				log(answer.type === "error" ? "warn" : "info", "agent.token_refresh", {
					agentId: att.agentId,
					generation: att.generation,
					outcome: answer.type === "error" ? "refused" : "refreshed",
				});
				await this.armAlarm();
				return;
			}
			if (frame.type === "output") {
				// Logged for observers and queued for Postgres with the command.
				const outcome = buffer.acceptsOutput(this.sql, frame.id);
				const refusal = refusalFor(outcome, frame.id);
				if (refusal) this.send(ws, refusal);
				if (outcome !== "applied") return;
				this.atomically(() =>
					storage.recordOutput(this.sql, frame.id, frame.seq, frame.data, now),
				);
				this.scheduleFlush();
				return;
			}
			if (frame.type === "hello") {
				const changed = this.atomically(() => {
					this.meta.set("concurrency", frame.concurrency);
					// Kept for a catch-up that finishes after the hello (see catchUp).
					this.meta.set("hello_generation", att.generation);
					this.meta.set("hello_running", JSON.stringify(frame.running));
					this.meta.clearTimer("hello");
					return buffer.applyHello(this.sql, new Set(frame.running), now, att.generation);
				});
				const sent = this.pump();
				log("info", "agent.hello", {
					agentId: att.agentId,
					generation: att.generation,
					concurrency: frame.concurrency,
					running: frame.running.length,
					changed,
					sent,
				});
			} else {
				const outcome = this.atomically(() =>
					frame.type === "ack"
						? buffer.acknowledge(this.sql, frame.id, now, att.generation)
						: buffer.finish(this.sql, frame.id, frame, now),
				);
				const refusal = refusalFor(outcome, frame.id);
				if (refusal) this.send(ws, refusal);
				if (outcome !== "applied") return;
				const row = storage.getCommand(this.sql, frame.id);
				log("info", `command.${frame.type === "ack" ? "acknowledged" : frame.status}`, {
					agentId: att.agentId,
					commandId: frame.id,
					generation: att.generation,
					attempt: row?.attempts,
					// From first dispatch to this frame.
					durationMs: row?.first_dispatched_at ? now - row.first_dispatched_at : undefined,
				});
				if (frame.type === "result") this.pump();
			}
			this.scheduleFlush();
			// A hello clears the hello timer, so the alarm may move later.
			await this.armAlarm({ exact: frame.type === "hello" });
		} catch (err) {
			log("error", "agent.message_failed", { agentId: this.meta.get("agent_id"), ...errorFields(err) });
			this.send(ws, { type: "error", code: ErrorCode.INTERNAL, message: "internal error handling frame" });
		}
	}

	override async webSocketClose(ws: WebSocket, code: number, reason: string): Promise<void> {
		this.meta.forget();
		if (!this.observers.has(ws)) {
			await this.onSocketGone(ws, "closed", { code, reason: reason.slice(0, 200) });
		}
		try {
			// Complete the closing handshake; 1005/1006 are reserved and cannot be sent back.
			ws.close(code === 1005 || code === 1006 ? 1000 : code, "closing");
		} catch {
			// already closed
		}
	}

	override async webSocketError(ws: WebSocket, error: unknown): Promise<void> {
		this.meta.forget();
		if (this.observers.has(ws)) return;
		await this.onSocketGone(ws, "errored", errorFields(error));
	}

	override async alarm(): Promise<void> {
		this.meta.forget();
		// The alarm that fired is spent; read what is set now.
		this.armedAt = undefined;
		const agentId = this.meta.get("agent_id");
		let failed = false;
		try {
			// On its own: nothing else failing may keep an expired socket open.
			await this.checkTokenExpiry(Date.now());
		} catch (err) {
			log("error", "agent.expiry_check_failed", { agentId, ...errorFields(err) });
		}
		try {
			// Command deadlines first: they must not wait behind a slow database.
			const now = Date.now();
			const { stop } = this.atomically(() => buffer.runDueTimers(this.sql, now));
			const ws = this.currentSocket();
			if (ws) for (const id of stop) this.send(ws, { type: "cancel", id, reason: "timeout" });
			await this.checkHeartbeat(now);
			const timers = this.meta.timers();
			if ((timers.get("hello") ?? Number.POSITIVE_INFINITY) <= now) this.assumeNothingRunning(now);
			this.pump();
			// A safety net that comes due while its read or flush is still under way
			// (queued at the connection gate, say) is pushed out, not acted on: left
			// due, it would fire the alarm again at once, for every waiting object.
			if ((timers.get("catch_up") ?? Number.POSITIVE_INFINITY) <= now) {
				if (this.catchingUp) this.meta.setTimer("catch_up", now + safetyNetPushOut(now - this.catchingUpSince));
				else this.catchUpInBackground();
			}
			if ((timers.get("flush") ?? Number.POSITIVE_INFINITY) <= now) {
				if (this.flushing) this.meta.setTimer("flush", now + safetyNetPushOut(now - this.flushingSince));
				else this.scheduleFlush(true);
			} else this.scheduleFlush();
			// Waited for (so the re-arm below sees its timers), but not for long: a
			// flush queued at the connection gate must not hold up the deadlines
			// this alarm checks; it re-arms the alarm itself when it is done.
			if (this.flushing) await Promise.race([this.flushing, new Promise((r) => setTimeout(r, ALARM_FLUSH_WAIT_MS))]);
		} catch (err) {
			failed = true;
			log("error", "agent.alarm_failed", { agentId, ...errorFields(err) });
		} finally {
			// A floor keeps a timer that is somehow still due from spinning the alarm.
			await this.armAlarm({ notBefore: Date.now() + (failed ? RETRY_BASE_MS : ALARM_FLOOR_MS) });
		}
	}

	/** No `hello` within the grace period: what was acknowledged on earlier connections is presumed lost. */
	private assumeNothingRunning(now: number): void {
		const generation = this.meta.getNumber("generation") ?? 0;
		this.meta.clearTimer("hello");
		if (this.meta.getNumber("hello_generation") === generation || !this.currentSocket()) return;
		const changed = this.atomically(() => buffer.applyHello(this.sql, new Set(), now, generation, "no_hello"));
		if (changed) log("info", "agent.no_hello", { agentId: this.meta.get("agent_id"), generation, changed });
	}

	// ------------------------------------------------------------- delivery

	private concurrency(): number {
		return this.meta.getNumber("concurrency") ?? DEFAULT_CONCURRENCY;
	}

	/**
	 * An idle agent's silence is checked rarely (IDLE_SILENCE_CHECK_MS), so a
	 * path that brings it commands checks first: a socket that died quietly is
	 * closed, and its commands wait for the next connection.
	 */
	private async deliver(): Promise<number> {
		await this.checkHeartbeat(Date.now());
		return this.pump();
	}

	/**
	 * Sends as many pending commands as the agent's window has room for. Never
	 * to a socket silent past the limit: a command sent there would spend an
	 * attempt for nothing (the alarm, due at once, closes it).
	 */
	private pump(): number {
		const ws = this.currentSocket();
		if (!ws || this.silentPastLimit(ws, Date.now()) !== null) return 0;
		const generation = this.meta.getNumber("generation") ?? 0;
		const now = Date.now();
		// State first, then the wire: if a send is lost with its socket, the
		// command is `dispatched` and goes out again on the next connect.
		const frames = this.atomically(() =>
			buffer.fillWindow(this.sql, this.concurrency(), generation, now),
		);
		const agentId = this.meta.get("agent_id");
		for (const f of frames) {
			this.send(ws, f);
			log("info", "command.dispatched", { agentId, commandId: f.id, action: f.action, attempt: f.attempt, generation });
		}
		if (frames.length > 0) this.scheduleFlush();
		return frames.length;
	}

	/** Liveness without waking the object on every ping: judged on the alarm, and before commands are sent (deliver). */
	private async checkHeartbeat(now: number): Promise<void> {
		const ws = this.currentSocket();
		if (!ws) return;
		const silentFor = this.silentPastLimit(ws, now);
		if (silentFor === null) return;
		await this.closeSocket(ws, CloseCode.HEARTBEAT_TIMEOUT, `no ping for ${Math.round(silentFor / 1000)} s`, "timed_out", {
			silentMs: silentFor,
		});
	}

	/** How long the socket has been silent, if that is past the heartbeat limit; otherwise null. */
	private silentPastLimit(ws: WebSocket, now: number): number | null {
		const silentFor = now - this.lastActivity(ws);
		return silentFor >= SILENCE_LIMIT_MS ? silentFor : null;
	}

	/** Closes the agent's socket if its token has expired; says whether it had. */
	private async checkTokenExpiry(now: number): Promise<boolean> {
		if (!this.auth.expired(now)) return false;
		this.auth.endSession();
		const ws = this.currentSocket();
		if (ws) await this.closeSocket(ws, CloseCode.TOKEN_EXPIRED, "agent token expired; refresh it with auth.refresh before it does", "token_expired", {});
		return true;
	}

	/** Closes a socket and treats the agent as gone now: a misbehaving or dead peer may never finish the close handshake. */
	private async closeSocket(ws: WebSocket, code: number, reason: string, how: string, detail: Record<string, unknown>): Promise<void> {
		try {
			ws.close(code, reason);
		} catch {
			// already closing
		}
		if (!this.observers.has(ws)) await this.onSocketGone(ws, how, { code, ...detail });
	}

	private takeFrameBudget(generation: number): "ok" | "refused" | "abusive" {
		const rate = frameRateLimit(this.env);
		if (rate === null) return "ok";
		const now = Date.now();
		if (this.limiter?.generation !== generation || this.limiter.bucket.rate !== rate) {
			this.limiter = { generation, bucket: new FrameRateLimiter(rate, now) };
		}
		return this.limiter.bucket.take(now);
	}

	private lastActivity(ws: WebSocket): number {
		const seen = this.meta.getNumber("last_seen_at") ?? 0;
		// Pings answered at the edge never reach the object; their time still counts.
		const auto = this.ctx.getWebSocketAutoResponseTimestamp(ws)?.getTime() ?? 0;
		return Math.max(seen, auto);
	}

	/**
	 * A catch-up nobody waits for (on connect, from the alarm), one at a time:
	 * a read waiting for its turn at the connection gate must not be joined by
	 * a second. Asked for meanwhile (a reconnect), it runs once more
	 * afterwards, so rows committed after the first read began are not left
	 * for the cron.
	 */
	private catchUpInBackground(): void {
		if (this.catchingUp) {
			this.catchUpAgain = true;
			return;
		}
		this.catchingUpSince = Date.now();
		this.catchingUp = (async () => {
			do {
				this.catchUpAgain = false;
				const ok = await this.catchUp().then(
					() => true,
					() => false,
				);
				// A failure has armed its own retry on the alarm.
				if (!ok) break;
			} while (this.catchUpAgain);
		})().finally(() => {
			this.catchingUp = null;
		});
		this.ctx.waitUntil(this.catchingUp);
	}

	/**
	 * Reads Postgres for open commands this object has not seen. `pump: false`
	 * buffers them without sending anything (a cancel must act first).
	 */
	private async catchUp(opts: { pump?: boolean } = {}): Promise<{ added: number }> {
		const agentId = this.meta.get("agent_id");
		if (!agentId) return { added: 0 };
		// If this isolate dies during the read, the alarm tries again.
		this.meta.setTimer("catch_up", Date.now() + SAFETY_NET_MS);
		await this.armAlarm();
		try {
			const open = await this.db.run((db) => listOpenCommands(db, agentId));
			const now = Date.now();
			const generation = this.meta.getNumber("generation") ?? 0;
			const added = this.atomically(() => {
				let n = 0;
				for (const r of open) if (buffer.addCommand(this.sql, buffer.BufferInput.parse(toBufferInput(r)), now)) n++;
				// Rows recovered as acknowledged after this connection's hello are
				// judged against that hello's running list, as if they had been here.
				if (n > 0 && this.meta.getNumber("hello_generation") === generation) {
					const running = z.array(z.string()).parse(JSON.parse(this.meta.get("hello_running") ?? "[]"));
					buffer.applyHello(this.sql, new Set(running), now, generation);
				}
				this.meta.clearTimer("catch_up");
				this.meta.delete("catch_up_failures");
				return n;
			});
			const sent = added && opts.pump !== false ? await this.deliver() : 0;
			if (added) {
				log("info", "agent.caught_up", { agentId, added, sent });
				this.scheduleFlush();
			}
			await this.armAlarm({ exact: true });
			return { added };
		} catch (err) {
			const failures = (this.meta.getNumber("catch_up_failures") ?? 0) + 1;
			this.meta.set("catch_up_failures", failures);
			this.meta.setTimer("catch_up", Date.now() + retryDelay(failures, err));
			await this.armAlarm({ exact: true });
			log(err instanceof DbUnavailableError ? "warn" : "error", "agent.catch_up_failed", {
				agentId,
				failures,
				...errorFields(err),
			});
			throw err;
		}
	}

	// ---------------------------------------------------------------- outbox

	/**
	 * Single-flight: a flush already running picks up whatever arrived
	 * meanwhile. After a failure, new frames wait for the backoff timer (the
	 * alarm passes `retry`) instead of hammering a database that is down.
	 */
	private scheduleFlush(retry = false): void {
		// Every change path ends here: observers hear about it at once, whatever Postgres does.
		this.observers.publish();
		if (!retry && (this.meta.getNumber("flush_failures") ?? 0) > 0) {
			const due = this.meta.timers().get("flush");
			if (due !== undefined && due > Date.now()) return;
		}
		if (this.flushing) {
			this.flushAgain = true;
			return;
		}
		this.flushingSince = Date.now();
		this.flushing = this.flushLoop().finally(() => {
			this.flushing = null;
		});
		this.ctx.waitUntil(this.flushing);
	}

	private async flushLoop(): Promise<void> {
		const agentId = this.meta.get("agent_id");
		if (!agentId) return;
		if (storage.outboxSize(this.sql) === 0 && this.meta.get("presence_dirty") !== "1") {
			this.meta.clearTimer("flush");
			return;
		}
		this.meta.setTimer("flush", Date.now() + SAFETY_NET_MS);
		await this.armAlarm();
		do {
			this.flushAgain = false;
			const { lastSeq, entries } = storage.peekOutbox(this.sql, OUTBOX_BATCH, this.meta.epoch());
			const presenceDirty = this.meta.get("presence_dirty") === "1";
			if (entries.length === 0 && !presenceDirty) break;
			const presence = { ...this.presence(agentId), outboxDepth: storage.outboxSize(this.sql) - entries.length };
			try {
				await this.db.run((db) => writeStatus(db, entries, presence, agentId)).catch((err: unknown) => {
					if (!(err instanceof DbQueryError)) throw err;
					return salvage(this.db, entries, presence, err);
				});
			} catch (err) {
				const failures = (this.meta.getNumber("flush_failures") ?? 0) + 1;
				this.meta.set("flush_failures", failures);
				this.meta.setTimer("flush", Date.now() + retryDelay(failures, err));
				await this.armAlarm({ exact: true });
				log(err instanceof DbUnavailableError ? "warn" : "error", "outbox.flush_failed", {
					agentId,
					failures,
					pending: storage.outboxSize(this.sql),
					...errorFields(err),
				});
				return;
			}
			recordAnalytics(this.env, agentId, entries);
			this.atomically(() => {
				storage.dropOutbox(this.sql, lastSeq);
				storage.markSynced(this.sql, terminalIds(entries), Date.now());
				// Presence written above is stale if it changed during the await.
				const now = this.presence(agentId);
				if (now.lastSeenAt === presence.lastSeenAt && now.connected === presence.connected) {
					this.meta.delete("presence_dirty");
				}
				this.meta.delete("flush_failures");
			});
		} while (this.flushAgain || storage.outboxSize(this.sql) > 0);
		this.meta.clearTimer("flush");
		storage.prune(this.sql, Date.now());
		events.pruneEvents(this.sql, Date.now());
		await this.armAlarm({ exact: true });
	}

	private presence(agentId: string): Omit<Presence, "outboxDepth"> {
		const lastConnected = this.meta.getNumber("last_connected_at");
		const ws = this.currentSocket();
		const lastSeen = ws ? this.lastActivity(ws) : (this.meta.getNumber("last_seen_at") ?? Date.now());
		return {
			agentId,
			connected: this.meta.get("connected") === "1",
			lastConnectedAt: lastConnected ? new Date(lastConnected).toISOString() : null,
			lastSeenAt: new Date(lastSeen).toISOString(),
		};
	}

	/**
	 * One alarm slot serves every timer: named ones in meta, command deadlines,
	 * the heartbeat check. `notBefore` keeps an alarm that just failed from
	 * firing again at once. `exact`, after a timer was cleared or moved later,
	 * lets the alarm move later too.
	 */
	private async armAlarm({ notBefore, exact = false }: { notBefore?: number; exact?: boolean } = {}): Promise<void> {
		let current = this.armedAt;
		if (current === undefined) {
			const stored = await this.ctx.storage.getAlarm();
			current = this.armedAt !== undefined ? this.armedAt : stored;
		}
		// Decided and written with no await in between, against what this
		// object last wrote: two events arming at once cannot leave the alarm
		// later than a timer either of them set.
		const deadlines = [...this.meta.timers().values()];
		const commandDeadline = buffer.nextDeadline(this.sql);
		if (commandDeadline !== null) deadlines.push(commandDeadline);
		const ws = this.currentSocket();
		if (ws) deadlines.push(this.lastActivity(ws) + (buffer.hasOpenCommands(this.sql) ? SILENCE_LIMIT_MS : IDLE_SILENCE_CHECK_MS));
		if (deadlines.length === 0) {
			this.armedAt = null;
			if (current !== null) await this.ctx.storage.deleteAlarm();
			return;
		}
		// Otherwise only ever move the alarm earlier: the heartbeat deadline
		// shifts with every frame, and rewriting the alarm each time would cost a
		// storage write per frame. An alarm that fires early finds nothing due
		// and re-arms, but it costs a whole alarm: a connect left three of them
		// behind (its hello grace, its catch-up's and its flush's safety nets).
		const next = Math.max(Math.min(...deadlines), notBefore ?? 0);
		if (current === null || next < current || (exact && next !== current) || (notBefore !== undefined && current < notBefore)) {
			this.armedAt = next;
			await this.ctx.storage.setAlarm(next);
		} else this.armedAt = current;
	}

	// --------------------------------------------------------------- helpers

	/** A storage transaction; when it rolls back, so does the in-memory copy of meta. */
	private atomically<T>(fn: () => T): T {
		try {
			return this.ctx.storage.transactionSync(fn);
		} catch (err) {
			this.meta.forget();
			throw err;
		}
	}

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

	private async onSocketGone(ws: WebSocket, how: string, detail: Record<string, unknown>): Promise<void> {
		try {
			const att = this.attachmentOf(ws);
			const current =
				att !== undefined && att.generation === this.meta.getNumber("generation") && this.meta.get("connected") === "1";
			log("info", `agent.socket_${how}`, { agentId: att?.agentId, generation: att?.generation, current, ...detail });
			if (!current) return;
			const now = Date.now();
			const requeued = this.atomically(() => {
				this.auth.endSession();
				this.meta.set("connected", false);
				this.meta.set("last_seen_at", now);
				this.meta.set("presence_dirty", true);
				events.appendEvent(this.sql, { type: "presence", state: "disconnected", generation: att.generation }, now);
				return buffer.requeueDispatched(this.sql, now, "disconnected");
			});
			if (requeued) log("info", "agent.requeued", { agentId: att.agentId, requeued });
			this.scheduleFlush();
			await this.armAlarm();
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

function terminalIds(entries: readonly KeyedEntry[]): string[] {
	return entries.filter((e) => e.kind === "transition" && TERMINAL_STATUSES.has(e.to)).map((e) => e.commandId);
}

/** A busy gate knows when a turn would come; retrying before then only queues again. */
function retryDelay(failures: number, err: unknown): number {
	return Math.max(backoff(failures), err instanceof DbBusyError ? err.retryInMs : 0);
}

function backoff(failures: number): number {
	const ceiling = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** Math.min(failures - 1, 10));
	return Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
}

/** How far to push out a safety net whose work has been under way for `runningMs` (see SAFETY_NET_MAX_MS). */
function safetyNetPushOut(runningMs: number): number {
	return Math.min(SAFETY_NET_MAX_MS, Math.max(SAFETY_NET_MS, runningMs));
}
