import { DurableObject } from "cloudflare:workers";
import { errorFields, log } from "../log";
import { type AgentFrame, CANCEL_GRACE_SECONDS, type CommandStatus, CloseCode, ErrorCode, MAX_FRAME_BYTES, PING_TEXT, PONG_TEXT, parseAgentFrame } from "../protocol";
import { BackgroundJob } from "./background-job";
import * as answers from "./answers";
import * as buffer from "./buffer";
import { CatchUp } from "./catch-up";
import { acceptAgent } from "./connect";
import { AgentCore } from "./core";
import { handleFrame } from "./frames";
import { FrameRateLimiter, frameRateLimit, frameTooLarge } from "./frame-limits";
import { ConnectLimiter, tooManyConnects } from "./connect-limit";
import { Flush } from "./flush";
import { readTokenVersion } from "../db/agents";
import { parkedCount } from "./parked";
import { AGENT_ID_HEADER, OBSERVER_RESUME_HEADER } from "./headers";
import { parseResume } from "./observers";
import { closeQuietly, generationOf, isObserver, send } from "./sockets";
import { PayloadReader } from "./payloads";
import * as storage from "./storage";

/** The alarm waits this long for a flush it started, then leaves it to finish on its own. */
const ALARM_FLUSH_WAIT_MS = 2_000;
/** A floor keeps a timer that is somehow still due from spinning the alarm. */
const ALARM_FLOOR_MS = 100;
const ALARM_RETRY_MS = 1_000;

/**
 * One object per agent id: holds the agent's hibernatable socket, buffers
 * its commands in SQLite, applies the delivery rules in ./buffer.ts and
 * ./answers.ts, and journals every change for Postgres (./flush.ts) and
 * for observers, so a Postgres outage delays the write but never loses
 * it. This class holds the platform's entry points only;
 * docs/architecture.md follows one command through the modules they call.
 */
export class AgentHub extends DurableObject<Env> {
	private readonly core: AgentCore;
	private readonly catchUp: CatchUp;
	private readonly catchUpJob: BackgroundJob;
	private readonly flushJob: BackgroundJob;
	private readonly payloadJob: BackgroundJob;
	/** The current connection's frame budget (in memory: see frame-limits.ts). */
	private limiter: { generation: number; bucket: FrameRateLimiter } | undefined;
	private readonly connects = new ConnectLimiter(Date.now());

	constructor(ctx: DurableObjectState, env: Env) {
		super(ctx, env);
		const core = new AgentCore(ctx, env);
		this.core = core;
		const host = {
			name: core.name,
			state: core.state,
			atomically: <T>(fn: () => T) => core.atomically(fn),
			waitUntil: (p: Promise<unknown>) => ctx.waitUntil(p),
			wakeBy: (at: number) => core.alarm.require(at),
		};
		this.catchUp = new CatchUp(core);
		this.catchUpJob = new BackgroundJob(host, "catch_up", async () => void (await this.catchUp.run()), true);
		const flush = new Flush(core, () => !this.catchUp.reading);
		this.flushJob = new BackgroundJob(host, "flush", () => flush.run(), false);
		const payloads = new PayloadReader(core);
		this.payloadJob = new BackgroundJob(host, "payloads", () => payloads.run(), true);
		core.requestPayloads = () => this.payloadJob.request();
		core.requestFlush = () => {
			flush.nudge();
			this.flushJob.request();
		};
		ctx.blockConcurrencyWhile(async () => {
			ctx.storage.transactionSync(() => storage.migrate(ctx.storage.sql));
		});
		// Answered at the edge without waking a hibernated object.
		ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair(PING_TEXT, PONG_TEXT));
	}

	// ---------------------------------------------------------------- RPC

	/**
	 * Takes commands the worker has already committed to Postgres and pushes
	 * them to the agent as its window allows. Idempotent per command id.
	 */
	async enqueue(inputs: buffer.BufferInput[]): Promise<{ statuses: Record<string, string> }> {
		const core = this.core;
		const now = Date.now();
		// An idle agent's silence is checked rarely: one that died quietly is closed before commands are sent to it.
		await core.checkHeartbeat(now);
		const statuses: Record<string, string> = {};
		const known: string[] = [];
		core.atomically((tx) => {
			for (const c of inputs) {
				const status = buffer.addCommand(tx, c, now);
				if (status === null) known.push(c.id);
				else {
					statuses[c.id] = status;
					const at = buffer.deadlineOf(c);
					if (at !== null) core.wakeBy(at);
				}
			}
			for (const id of core.pump(tx)) statuses[id] = "dispatched";
		});
		// A replay (an idempotent retry, a second forward) reads what the buffer has.
		if (known.length > 0) {
			for (const row of storage.rows(core.sql, "select id, status from commands where id in (select value from json_each(?))", JSON.stringify(known))) {
				statuses[row.id] = row.status;
			}
		}
		if (known.length < inputs.length) await core.changed();
		log("debug", "command.buffered", { agentId: core.name, count: inputs.length, added: inputs.length - known.length });
		return { statuses };
	}

	/** Reads Postgres for commands this object has not seen and delivers them. */
	async reconcile(): Promise<{ added: number }> {
		return this.catchUp.run();
	}

	/**
	 * Cancels a command: at once if it was never sent (it never will be), or by
	 * asking the agent. A command the object has not seen yet is looked up in
	 * Postgres first, so a cancel cannot race a delivery.
	 */
	async cancel(id: string, actor = "api"): Promise<{ outcome: buffer.CancelOutcome | "unavailable" }> {
		const core = this.core;
		if (!storage.getCommand(core.sql, id)) {
			// Without Postgres the object cannot know whether it is about to deliver
			// this one. Read it without sending anything: it must be cancelled first.
			const read = await this.catchUp.run({ pump: false }).then(() => true, () => false);
			if (!read) return { outcome: "unavailable" };
		}
		const now = Date.now();
		await core.checkHeartbeat(now);
		const outcome = core.atomically((tx) => {
			const outcome = buffer.requestCancel(tx, id, now, actor);
			const ws = core.currentSocket();
			const owed = buffer.cancelsOwed(core.sql, now).find((c) => c.id === id);
			if (ws && owed) core.send(ws, { type: "cancel", id, reason: owed.reason });
			core.pump(tx);
			return outcome;
		});
		log("info", "command.cancel", { agentId: core.name, commandId: id, outcome });
		if (outcome === "cancel_requested") core.wakeBy(now + CANCEL_GRACE_SECONDS * 1000);
		core.alarm.markStale();
		await core.changed();
		return { outcome };
	}

	/**
	 * Stops dispatching: what the agent runs keeps running and its results
	 * are taken; pending commands wait until `resume`. Kept in the object's
	 * storage, so it outlives restarts. Idempotent: a second pause keeps the
	 * first one's time.
	 */
	async pause(): Promise<{ pausedAt: number }> {
		const core = this.core;
		const pausedAt = core.atomically(() => {
			const at = core.state.get("paused_at") ?? Date.now();
			core.state.set("paused_at", at);
			return at;
		});
		log("info", "agent.dispatch_paused", { agentId: core.name, pausedAt });
		return { pausedAt };
	}

	/** Lifts a pause and sends what waited, as the window allows, at once. */
	async resume(): Promise<{ sent: number }> {
		const core = this.core;
		await core.checkHeartbeat(Date.now());
		const sent = core.atomically((tx) => {
			core.state.delete("paused_at");
			return core.pump(tx).length;
		});
		log("info", "agent.dispatch_resumed", { agentId: core.name, sent });
		core.alarm.markStale();
		await core.changed();
		return { sent };
	}

	/**
	 * Cancels every open command of the agent at once, each as `cancel` does:
	 * a queued one ends `cancelled`, one the agent holds is sent a `cancel`
	 * frame. Commands still only in Postgres are read first (without sending
	 * anything), so no catch-up or recovery run delivers them afterwards;
	 * `complete` is false when that read failed (the caller marks them in
	 * Postgres instead). With `pause`, nothing new is sent after it either.
	 */
	async stop(opts: { pause?: boolean; actor?: string } = {}): Promise<{
		cancelled: number;
		cancelRequested: number;
		pausedAt: number | null;
		complete: boolean;
	}> {
		const core = this.core;
		const actor = opts.actor ?? "api";
		const pausedAt = opts.pause ? (await this.pause()).pausedAt : (core.state.get("paused_at") ?? null);
		const complete = await this.catchUp.run({ pump: false }).then(
			() => true,
			() => false,
		);
		const now = Date.now();
		await core.checkHeartbeat(now);
		const counts = core.atomically((tx) => {
			let cancelled = 0;
			let cancelRequested = 0;
			const ws = core.currentSocket();
			for (const row of storage.rows(core.sql, `select ${storage.ROW} from commands where status in ${storage.OPEN} order by priority desc, seq`)) {
				const outcome = buffer.requestCancel(tx, row.id, now, actor);
				if (outcome === "cancelled") cancelled++;
				else if (outcome === "cancel_requested") {
					cancelRequested++;
					if (ws) core.send(ws, { type: "cancel", id: row.id, reason: "requested" });
				}
			}
			core.pump(tx);
			return { cancelled, cancelRequested };
		});
		log("warn", "agent.open_commands_stopped", { agentId: core.name, ...counts, paused: pausedAt !== null, complete, actor });
		if (counts.cancelRequested > 0) core.wakeBy(now + CANCEL_GRACE_SECONDS * 1000);
		core.alarm.markStale();
		await core.changed();
		return { ...counts, pausedAt, complete };
	}

	/**
	 * The command's status as this object holds it (null: not held). Postgres
	 * trails it by one outbox flush, so a command just cancelled or failed
	 * here may still read as open there.
	 */
	async commandStatus(id: string): Promise<CommandStatus | null> {
		return storage.getCommand(this.core.sql, id)?.status ?? null;
	}

	/** The version a token minted now must carry to be admitted. */
	async tokenVersion(): Promise<number> {
		await this.learnTokenVersion();
		return this.core.auth.version();
	}

	/**
	 * Revokes every token minted for this agent so far and closes its socket
	 * (4004, which the SDK does not reconnect after). Tokens minted afterwards
	 * work. `atLeast`: the version the worker has just written to Postgres.
	 */
	async revokeTokens(atLeast = 0): Promise<{ version: number; closed: boolean }> {
		const core = this.core;
		const version = core.atomically(() => core.auth.revoke(atLeast));
		const ws = core.currentSocket();
		if (ws) await core.closeSocket(ws, CloseCode.TOKEN_REVOKED, "agent tokens revoked", "revoked", { version });
		log("warn", "agent.tokens_revoked", { agentId: core.name, version, closed: ws !== undefined });
		return { version, closed: ws !== undefined };
	}

	/**
	 * Takes the token version Postgres mirrors when this object's storage has
	 * none, so revocations outlive a lost or reset object. Once per object:
	 * afterwards revocations reach it directly (src/routes/agents.ts).
	 */
	private async learnTokenVersion(): Promise<void> {
		const core = this.core;
		if (!core.auth.needsMirror()) return;
		const mirrored = await core.db.run((db) => readTokenVersion(db, core.name));
		core.atomically(() => core.auth.adopt(mirrored));
		log("info", "agent.token_version_mirrored", { agentId: core.name, version: core.auth.version() });
	}

	/**
	 * What the agent announced (`hello.concurrency`) and how many of its
	 * commands are out with it (dispatched or acknowledged), for the agents
	 * list. Null while no socket is open: an offline agent has no window.
	 */
	async load(): Promise<{ concurrency: number; running: number } | null> {
		const core = this.core;
		if (core.currentSocket() === undefined) return null;
		return { concurrency: core.concurrency(), running: core.counts.inFlight };
	}

	/** The object's own view, for tests and diagnostics. */
	async inspect(): Promise<{
		agentId: string;
		generation: number;
		connected: boolean;
		concurrency: number;
		paused: boolean;
		actions: string[] | null;
		buffered: Partial<Record<string, number>>;
		/** Journal entries Postgres has not confirmed. */
		outbox: number;
		/** Status changes Postgres refused, waiting to be tried again (./parked.ts). */
		parked: number;
		/** Named timers still pending (e.g. `catch_up` while a read of Postgres is under way). */
		timers: string[];
	}> {
		const core = this.core;
		return {
			agentId: core.name,
			generation: core.generation(),
			connected: core.currentSocket() !== undefined,
			concurrency: core.concurrency(),
			paused: core.paused(),
			actions: core.declaredActions(),
			buffered: storage.statusCounts(core.sql),
			outbox: core.journal.unsynced(),
			parked: parkedCount(core.sql),
			timers: [...core.state.timers().keys()],
		};
	}

	/**
	 * Drops every in-memory copy of storage. Only for tests and for an
	 * operator who edited the object's tables by hand (runInDurableObject).
	 */
	reloadState(): void {
		this.core.reload();
	}

	// ------------------------------------------------------ socket lifecycle

	override async fetch(request: Request): Promise<Response> {
		const core = this.core;
		const upgrade = request.headers.get("upgrade")?.toLowerCase() === "websocket";
		// Only the worker calls this, after verifying the credential; anything else is a wiring bug.
		if (!upgrade || request.headers.get(AGENT_ID_HEADER) !== core.name) {
			return new Response("expected a verified WebSocket upgrade for this agent", { status: 400 });
		}
		const resume = parseResume(request.headers.get(OBSERVER_RESUME_HEADER));
		if (resume !== null) {
			const response = core.atomically(() => core.observers.accept(core.name, resume, request.headers));
			return response;
		}
		const waitMs = this.connects.take(Date.now());
		if (waitMs > 0) return tooManyConnects(core.name, waitMs);
		try {
			await this.learnTokenVersion();
		} catch (err) {
			// Without the mirrored version a revoked token could pass: refuse until Postgres answers.
			log("warn", "agent.token_version_unavailable", { agentId: core.name, ...errorFields(err) });
			return Response.json(
				{ error: { code: ErrorCode.DB_UNAVAILABLE, message: "the database is unavailable; retry shortly" } },
				{ status: 503, headers: { "retry-after": "5" } },
			);
		}
		const response = acceptAgent(core, request, () => this.catchUpJob.request(true));
		await core.changed();
		return response;
	}

	override async webSocketMessage(ws: WebSocket, message: string | ArrayBuffer): Promise<void> {
		try {
			const admitted = await this.admit(ws, message);
			if (admitted) await handleFrame({ host: this.core, ws, ...admitted }, admitted.frame);
		} catch (err) {
			log("error", "agent.message_failed", { agentId: this.core.name, ...errorFields(err) });
			send(ws, { type: "error", code: ErrorCode.INTERNAL, message: "internal error handling frame" });
		}
	}

	/**
	 * Everything a frame must pass before it may change anything, cheapest
	 * first: its size (unread), its socket (an agent's current one), the
	 * token's expiry, the frame budget, and the protocol. A frame that fails
	 * is answered (or its socket closed) here.
	 */
	private async admit(ws: WebSocket, message: string | ArrayBuffer): Promise<{ frame: AgentFrame; generation: number; now: number } | null> {
		const core = this.core;
		const generation = await this.fromCurrentAgent(ws, message);
		if (generation === null) return null;
		const now = Date.now();
		// The alarm closes an expired socket; until it runs, its frames are not taken either.
		if (await core.checkTokenExpiry(now)) return null;
		const verdict = this.takeFrameBudget(generation, now, typeof message === "string" ? message.length : message.byteLength);
		if (verdict === "abusive") {
			await core.closeSocket(ws, CloseCode.RATE_LIMITED, "frame rate limit exceeded", "rate_limited", {});
			return null;
		}
		if (typeof message !== "string") {
			core.send(ws, { type: "error", code: ErrorCode.INVALID_FRAME, message: "binary frames are not supported; send JSON text frames" });
			return null;
		}
		const parsed = parseAgentFrame(message);
		if (!parsed.ok) {
			core.send(ws, parsed.error);
			return null;
		}
		const frame = parsed.frame;
		core.heard(now);
		if (verdict === "refused" && !this.pardoned(frame, now)) {
			core.send(ws, {
				type: "error",
				code: ErrorCode.RATE_LIMITED,
				message: `over ${this.limiter?.bucket.rate ?? 0} frames or ${this.limiter?.bucket.charRate ?? 0} characters per second; this ${frame.type} frame was dropped`,
				...("id" in frame ? { id: frame.id } : {}),
			});
			return null;
		}
		return { frame, generation, now };
	}

	/** The generation of an agent's current socket a frame of acceptable size came on; null (answered) otherwise. */
	private async fromCurrentAgent(ws: WebSocket, message: string | ArrayBuffer): Promise<number | null> {
		const core = this.core;
		const observer = isObserver(this.ctx, ws);
		if (frameTooLarge(message, MAX_FRAME_BYTES)) {
			const reason = `frames are limited to ${MAX_FRAME_BYTES} bytes`;
			if (observer) closeQuietly(ws, CloseCode.MESSAGE_TOO_BIG, reason);
			else await core.closeSocket(ws, CloseCode.MESSAGE_TOO_BIG, reason, "too_big", {});
			return null;
		}
		const generation = generationOf(this.ctx, ws);
		if (observer || generation === undefined) {
			core.observers.heard(ws);
			return null;
		}
		if (!core.isCurrent(ws)) {
			log("warn", "frame.stale_socket", { agentId: core.name, generation });
			return null;
		}
		return generation;
	}

	/**
	 * Over budget, an ack or result that changes a command this agent holds
	 * is still taken (dropping it would run the command twice) and not held
	 * against the sender; anything else is dropped, a repeated ack included,
	 * or repeating one would be a way past the budget.
	 */
	private pardoned(frame: AgentFrame, now: number): boolean {
		const owed = (frame.type === "ack" || frame.type === "result") && answers.wouldChange(this.core.sql, frame, now);
		if (owed) this.limiter?.bucket.pardon();
		return owed;
	}

	override async webSocketClose(ws: WebSocket, code: number, reason: string): Promise<void> {
		try {
			if (!isObserver(this.ctx, ws)) await this.core.socketGone(ws, "closed", { code, reason: reason.slice(0, 200) });
		} catch (err) {
			log("error", "agent.close_failed", { agentId: this.core.name, ...errorFields(err) });
		}
		// Completes the closing handshake, except after a close that carried no
		// code or none at all (1005, 1006, 1015): those cannot be echoed.
		closeQuietly(ws, code, "closing");
	}

	override async webSocketError(ws: WebSocket, error: unknown): Promise<void> {
		try {
			if (!isObserver(this.ctx, ws)) await this.core.socketGone(ws, "errored", errorFields(error));
		} catch (err) {
			log("error", "agent.close_failed", { agentId: this.core.name, ...errorFields(err) });
		}
	}

	override async alarm(): Promise<void> {
		const core = this.core;
		core.alarm.fired();
		let failed = false;
		try {
			// On its own: nothing else failing may keep an expired socket open.
			await core.checkTokenExpiry(Date.now());
		} catch (err) {
			log("error", "agent.expiry_check_failed", { agentId: core.name, ...errorFields(err) });
		}
		try {
			await this.runDeadlines(Date.now());
		} catch (err) {
			failed = true;
			log("error", "agent.alarm_failed", { agentId: core.name, ...errorFields(err) });
		} finally {
			await core.settleAlarm(Date.now() + (failed ? ALARM_RETRY_MS : ALARM_FLOOR_MS));
		}
	}

	/** What the alarm does: command deadlines first (they must not wait behind a slow database), then the rest. */
	private async runDeadlines(now: number): Promise<void> {
		const core = this.core;
		await core.checkHeartbeat(now);
		const timers = core.state.timers();
		core.atomically((tx) => {
			buffer.runDueTimers(tx, now);
			if ((timers.get("hello") ?? Number.POSITIVE_INFINITY) <= now) this.assumeNothingRunning(tx, now);
			core.pump(tx);
		});
		if ((timers.get("catch_up") ?? Number.POSITIVE_INFINITY) <= now) this.catchUpJob.onDue(now);
		if ((timers.get("payloads") ?? Number.POSITIVE_INFINITY) <= now) this.payloadJob.onDue(now);
		if ((timers.get("flush") ?? Number.POSITIVE_INFINITY) <= now) this.flushJob.onDue(now);
		else if (core.journal.unsynced() > 0 || core.state.get("presence_dirty") || (timers.get("parked") ?? Number.POSITIVE_INFINITY) <= now) {
			this.flushJob.request();
		}
		core.observers.publish();
		// Waited for (so the re-arm sees its timers), but not for long: a flush
		// queued at the connection gate must not hold up the deadlines.
		await this.flushJob.settled(ALARM_FLUSH_WAIT_MS);
	}

	/** No `hello` within the grace period: what was acknowledged on earlier connections is presumed lost. */
	private assumeNothingRunning(tx: storage.Tx, now: number): void {
		const core = this.core;
		const generation = core.generation();
		core.state.clearTimer("hello");
		if (core.state.get("hello_generation") === generation || !core.currentSocket()) return;
		const changed = answers.applyHello(tx, new Set(), now, generation, "no_hello");
		if (changed) log("info", "agent.no_hello", { agentId: core.name, generation, changed });
	}

	private takeFrameBudget(generation: number, now: number, size: number): "ok" | "refused" | "abusive" {
		const rate = frameRateLimit(this.env);
		if (rate === null) return "ok";
		if (this.limiter?.generation !== generation || this.limiter.bucket.rate !== rate) {
			this.limiter = { generation, bucket: new FrameRateLimiter(rate, now) };
		}
		return this.limiter.bucket.take(now, size);
	}
}
