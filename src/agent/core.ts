/**
 * What every part of an agent's object shares: its storage (commands, state,
 * journal), its sockets, its alarm, and the few primitives the entry points
 * and the engines (frames, catch-up, flush) are built from. Each engine
 * sees it through a narrow interface of its own.
 */
import { type Database, objectDb } from "../db/client";
import type { AgentInfo, Presence } from "../db/status-writes";
import { errorFields, log, setLogLevel } from "../log";
import { CloseCode, HEARTBEAT_INTERVAL_SECONDS, HEARTBEAT_MISSES, type ServerFrame, TERMINAL_STATUSES } from "../protocol";
import { AgentAuth } from "./agent-auth";
import { Alarm, nextWake } from "./alarm";
import * as buffer from "./buffer";
import { Journal } from "./journal";
import { Observers } from "./observers";
import { closeQuietly, generationOf, send, socketOf } from "./sockets";
import { State } from "./state";
import { CATCH_UP_PAGE_ROWS } from "./catch-up";
import { Counts, type Stop, type Tx } from "./storage";
import { fillWindow, WINDOW_BYTES } from "./window";

export const SILENCE_LIMIT_MS = HEARTBEAT_INTERVAL_SECONDS * HEARTBEAT_MISSES * 1000;
/**
 * How often the silence rule is checked while the agent holds no open
 * command. Pings are answered at the edge, so only an alarm sees them; one
 * every 90 s would wake every idle object of a fleet around the clock. An
 * idle agent loses nothing by a late check: nothing is sent to a socket
 * silent past the limit, and whatever brings commands closes it first.
 */
const IDLE_SILENCE_CHECK_MS = 5 * 60_000;
/** Unconfirmed journal entries reach Postgres within this even if the isolate dies mid-flush. */
export const FLUSH_SAFETY_NET_MS = 60_000;
/**
 * Deferred state (a confirmation, the last-heard time) waits at most this
 * long for a commit to ride with before it gets one of its own. The pending
 * timer also keeps the object from hibernating with it unwritten.
 */
export const DEFERRED_WRITE_MS = 5_000;
/** An agent that sends no hello gets this window, which keeps its commands strictly in order. */
export const DEFAULT_CONCURRENCY = 1;

export class AgentCore {
	readonly sql: SqlStorage;
	readonly state: State;
	readonly journal: Journal;
	readonly counts: Counts;
	readonly alarm: Alarm;
	readonly observers: Observers;
	readonly auth: AgentAuth;
	readonly db: Database;
	/** The last frame taken, in memory; written to state with the flush (and by pings) so hibernation keeps it. */
	private lastFrameAt = 0;
	/** Stops the transaction under way added (see Tx). */
	readonly stops: Stop[] = [];
	/**
	 * The object's bounds on what it reads and sends at once. Fields, not
	 * constants, only so a test can make them small enough to cross.
	 */
	readonly limits = { catchUpPageRows: CATCH_UP_PAGE_ROWS, windowBytes: WINDOW_BYTES };
	/** Commands that ended in the transaction under way, logged once it commits. */
	private ended: { id: string; status: string; attempts: number; errorCode?: string | null }[] = [];

	constructor(
		readonly ctx: DurableObjectState,
		readonly env: Env,
	) {
		setLogLevel(env.LOG_LEVEL);
		this.sql = ctx.storage.sql;
		this.state = new State(this.sql);
		this.journal = new Journal(this.sql, this.state, (entry) => {
			if (entry.kind === "transition" && TERMINAL_STATUSES.has(entry.to)) {
				this.ended.push({ id: entry.commandId, status: entry.to, attempts: entry.attempts, errorCode: entry.errorCode });
			}
		});
		this.counts = new Counts(this.sql);
		this.alarm = new Alarm(ctx.storage);
		this.observers = new Observers(ctx, this.sql, this.state);
		this.auth = new AgentAuth(this.state, env);
		this.db = objectDb(env);
	}

	/** The agent id: the platform names the object after it. */
	get name(): string {
		// SAFETY: every stub comes from getByName (stub.ts), so the id has a name.
		return this.ctx.id.name as string;
	}

	/**
	 * Runs `fn` as one storage transaction and writes what it journaled and
	 * the state it changed in the same transaction. On a rollback every
	 * in-memory copy is dropped, so none of it outlives the transaction.
	 */
	atomically<T>(fn: (tx: Tx) => T): T {
		if (this.outgoing) throw new Error("transactions of an agent object do not nest");
		this.outgoing = [];
		let result: T;
		try {
			result = this.ctx.storage.transactionSync(() => {
				const out = fn(this);
				this.state.commit(this.journal.write());
				return out;
			});
		} catch (err) {
			this.outgoing = undefined;
			this.payloadsWanted = false;
			this.stops.length = 0;
			this.ended = [];
			this.state.forget();
			this.journal.rollback();
			this.counts.forget();
			throw err;
		}
		// State first, then the wire: a frame lost with its socket is redelivered
		// on the next connect, and a frame never goes out for a rolled-back change.
		this.queueStops(this.outgoing);
		const outgoing = this.outgoing;
		this.outgoing = undefined;
		for (const { ws, frame } of outgoing) this.send(ws, frame);
		// A job's run opens transactions of its own: it starts once this one is over.
		if (this.payloadsWanted) {
			this.payloadsWanted = false;
			this.requestPayloads();
		}
		for (const e of this.ended) log("info", `command.${e.status}`, { agentId: this.name, commandId: e.id, attempts: e.attempts, errorCode: e.errorCode ?? undefined });
		this.ended = [];
		return result;
	}

	/** Frames to send once the transaction under way commits; undefined outside one. */
	private outgoing: { ws: WebSocket; frame: ServerFrame }[] | undefined;

	/** The stops a transaction added go out at once to a connected agent, unless the event sends them itself. */
	private queueStops(outgoing: { ws: WebSocket; frame: ServerFrame }[]): void {
		const ws = this.currentSocket();
		for (const { id, reason } of this.stops) {
			const sent = outgoing.some((o) => o.frame.type === "cancel" && o.frame.id === id);
			if (ws && !sent) outgoing.push({ ws, frame: { type: "cancel", id, reason } });
		}
		this.stops.length = 0;
	}

	/** Drops every in-memory copy of storage (see AgentHub.reloadState). */
	reload(): void {
		this.state.reload();
		this.journal.rollback();
		this.counts.forget();
		this.lastFrameAt = 0;
	}

	generation(): number {
		return this.state.get("generation") ?? 0;
	}

	currentSocket(): WebSocket | undefined {
		return socketOf(this.ctx, this.state.get("generation"));
	}

	/** Whether `ws` is the agent's current socket (a replaced one has no say over state). */
	isCurrent(ws: WebSocket): boolean {
		const generation = generationOf(this.ctx, ws);
		return generation !== undefined && generation === this.state.get("generation");
	}

	/** Sends a frame, or inside a transaction, once it has committed. */
	send(ws: WebSocket, frame: ServerFrame): void {
		if (this.outgoing) {
			this.outgoing.push({ ws, frame });
			return;
		}
		if (!send(ws, frame)) log("debug", "agent.send_failed", { agentId: this.name, type: frame.type });
	}

	concurrency(): number {
		return this.state.get("concurrency") ?? DEFAULT_CONCURRENCY;
	}

	/** Whether dispatch is paused (POST /v1/agents/{id}/pause): what runs keeps running, nothing new is sent. */
	paused(): boolean {
		return this.state.get("paused_at") !== undefined;
	}

	/** The actions the agent declared, or null when it takes any. */
	declaredActions(): string[] | null {
		return this.state.get("actions") ?? null;
	}

	/** A frame came in now. */
	heard(now: number): void {
		this.lastFrameAt = now;
	}

	private deferredTimer: ReturnType<typeof setTimeout> | undefined;

	/** Deferred state is written within DEFERRED_WRITE_MS, with a commit of its own if none came along. */
	writeDeferredSoon(): void {
		if (this.deferredTimer !== undefined || !this.state.hasDeferred) return;
		this.deferredTimer = setTimeout(() => {
			this.deferredTimer = undefined;
			if (!this.state.hasDeferred) return;
			try {
				this.atomically(() => this.state.flushDeferred());
			} catch (err) {
				// Nothing is lost but a mark: a suffix is written to Postgres again, or a silence check runs early.
				log("warn", "agent.deferred_write_failed", { agentId: this.name, ...errorFields(err) });
			}
		}, DEFERRED_WRITE_MS);
	}

	/** Keeps the last-heard time through hibernation (deferred, see writeDeferredSoon). */
	rememberHeard(): void {
		if (this.lastFrameAt > (this.state.get("last_seen_at") ?? 0)) this.state.defer("last_seen_at", this.lastFrameAt);
	}

	lastActivity(ws: WebSocket): number {
		// Pings answered at the edge never reach the object; their time still counts.
		const auto = this.ctx.getWebSocketAutoResponseTimestamp(ws)?.getTime() ?? 0;
		return Math.max(this.lastFrameAt, this.state.get("last_seen_at") ?? 0, auto);
	}

	/** How long the socket has been silent, if that is past the heartbeat limit; otherwise null. */
	silentPastLimit(ws: WebSocket, now: number): number | null {
		const silentFor = now - this.lastActivity(ws);
		return silentFor >= SILENCE_LIMIT_MS ? silentFor : null;
	}

	/**
	 * Sends as many pending commands as the agent's window has room for, once
	 * the transaction `tx` commits.
	 * Never to a socket silent past the limit: a command sent there would
	 * spend an attempt for nothing (the alarm closes it).
	 */
	pump(tx: Tx): string[] {
		if (this.counts.pending === 0 || this.paused()) return [];
		const ws = this.currentSocket();
		const now = Date.now();
		if (!ws || this.silentPastLimit(ws, now) !== null) return [];
		if (this.counts.inFlight >= this.concurrency()) return [];
		if (this.awaitingHello()) return [];
		const generation = this.generation();
		const { frames, wakeBy, unread } = fillWindow(tx, this.concurrency(), generation, now, this.limits.windowBytes, this.declaredActions());
		if (unread) this.payloadsWanted = true;
		for (const f of frames) {
			this.send(ws, f);
			log("debug", "command.dispatched", { agentId: this.name, commandId: f.id, action: f.action, attempt: f.attempt, generation });
		}
		if (wakeBy !== null) this.wakeNeeded = Math.min(this.wakeNeeded ?? wakeBy, wakeBy);
		return frames.map((f) => f.id);
	}

	/**
	 * Whether this connection's `hello` (or its grace) has yet to say if the
	 * agent holds what earlier connections sent it. Until then nothing is
	 * sent: a resend could run a command twice, a send past it break the
	 * order, and the agent's window may be full of work the object cannot see.
	 */
	private awaitingHello(): boolean {
		return this.state.timer("hello") !== undefined && buffer.sentBeforeAndQueued(this.sql);
	}

	/** Whether the agent is connected and silent past the limit; if so its socket is closed first (4002). */
	async checkHeartbeat(now: number): Promise<void> {
		const ws = this.currentSocket();
		if (!ws) return;
		const silentFor = this.silentPastLimit(ws, now);
		if (silentFor === null) return;
		await this.closeSocket(ws, CloseCode.HEARTBEAT_TIMEOUT, `no ping for ${Math.round(silentFor / 1000)} s`, "timed_out", { silentMs: silentFor });
	}

	/** Closes the agent's socket if its token has expired; says whether it had. */
	async checkTokenExpiry(now: number): Promise<boolean> {
		if (!this.auth.expired(now)) return false;
		this.atomically(() => this.auth.endSession());
		const ws = this.currentSocket();
		if (ws) {
			await this.closeSocket(ws, CloseCode.TOKEN_EXPIRED, "agent token expired; refresh it with auth.refresh before it does", "token_expired", {});
		}
		return true;
	}

	/** Closes a socket and treats the agent as gone now: a misbehaving or dead peer may never finish the close handshake. */
	async closeSocket(ws: WebSocket, code: number, reason: string, how: string, detail: Record<string, unknown>): Promise<void> {
		closeQuietly(ws, code, reason);
		await this.socketGone(ws, how, { code, ...detail });
	}

	/** The agent's socket closed or failed: what it was sent and never acknowledged waits for the next connection. */
	async socketGone(ws: WebSocket, how: string, detail: Record<string, unknown>): Promise<void> {
		const generation = generationOf(this.ctx, ws);
		const current = generation !== undefined && generation === this.state.get("generation") && this.state.get("connected") === true;
		log("info", `agent.socket_${how}`, { agentId: this.name, generation, current, ...detail });
		if (!current) return;
		const now = Date.now();
		const requeued = this.atomically((tx) => {
			this.auth.endSession();
			this.rememberHeard();
			this.state.set("connected", false);
			this.state.set("last_seen_at", now);
			this.state.set("presence_dirty", true);
			this.journal.note({ type: "presence", state: "disconnected", generation }, now);
			return buffer.requeueDispatched(tx, now, "disconnected");
		});
		if (requeued) log("info", "agent.requeued", { agentId: this.name, requeued });
		await this.changed();
		// The silence check is gone with the socket, and so is any ack deadline.
		await this.settleAlarm();
	}

	/** The agent's connection state for Postgres. */
	presence(): Omit<Presence, "outboxDepth"> {
		const lastConnected = this.state.get("last_connected_at");
		const ws = this.currentSocket();
		const lastSeen = ws ? this.lastActivity(ws) : (this.state.get("last_seen_at") ?? Date.now());
		const info = this.state.get("agent_info_dirty") ? this.state.get("agent_info") : undefined;
		return {
			agentId: this.name,
			connected: this.state.get("connected") === true,
			lastConnectedAt: lastConnected ? new Date(lastConnected).toISOString() : null,
			lastSeenAt: new Date(lastSeen).toISOString(),
			// SAFETY: only the hello handler writes agent_info, from an AgentInfo.
			...(info ? { info: JSON.parse(info) as AgentInfo } : {}),
		};
	}

	/**
	 * Ends every event that changed something: observers hear now, Postgres
	 * soon (the flush), and the alarm is moved earlier only if a new deadline
	 * (a dispatch's ack deadline) or the flush's safety net needs it. While
	 * the agent is connected, its silence check (minutes at most) is that
	 * safety net already.
	 */
	async changed(): Promise<void> {
		this.observers.publish();
		this.requestFlush();
		const unflushed = this.journal.unsynced() > 0 && !this.currentSocket();
		const wakes = [this.wakeNeeded, unflushed ? Date.now() + FLUSH_SAFETY_NET_MS : null];
		this.wakeNeeded = null;
		const at = nextWake(wakes);
		if (at !== null) await this.alarm.require(at);
	}

	/** The earliest deadline created in this event, for `changed` to arm. */
	private wakeNeeded: number | null = null;

	/** Set by the object to its flush job. */
	requestFlush: () => void = () => {};

	/** Set by the object to its job that reads the payloads the window needs (./payloads.ts). */
	requestPayloads: () => void = () => {};

	/** A fill in the transaction under way stopped at an unread payload. */
	private payloadsWanted = false;

	/** A deadline (a timer just set) needs the alarm by `at`. */
	wakeBy(at: number): void {
		this.wakeNeeded = Math.min(this.wakeNeeded ?? at, at);
	}

	/** Every deadline the object keeps, reckoned in full: the alarm is set to the earliest. */
	async settleAlarm(notBefore = 0): Promise<void> {
		const ws = this.currentSocket();
		const open = this.counts.open > 0;
		const next = nextWake([
			...this.state.timers().values(),
			open ? buffer.nextDeadline(this.sql) : null,
			ws ? this.lastActivity(ws) + (open ? SILENCE_LIMIT_MS : IDLE_SILENCE_CHECK_MS) : null,
			this.journal.unsynced() > 0 ? Date.now() + FLUSH_SAFETY_NET_MS : null,
		]);
		await this.alarm.settle(next === null ? null : Math.max(next, notBefore));
	}
}
