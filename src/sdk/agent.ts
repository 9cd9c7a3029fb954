/**
 * The Switchyard agent SDK: connect out to the control plane, run commands
 * with your handlers, report results. Runs on Node 22+, Workers, Deno, Bun
 * and (with a custom `connect`) browsers: standard APIs only.
 *
 * ```ts
 * const agent = new Agent({ url: "https://switchyard.example.workers.dev", agentId: "build-7", token });
 * agent.handle("echo", async (payload) => payload);
 * agent.start();
 * ```
 */
import { jsonProblem } from "../json-safety";
import { z } from "zod";
import {
	Action,
	CloseCode,
	type CommandFrame,
	HelloFrame,
	MAX_ACTIONS,
	HEARTBEAT_INTERVAL_SECONDS,
	HEARTBEAT_MISSES,
	MAX_BODY_BYTES,
	MAX_CONCURRENCY,
	PING_TEXT,
	type ResultFrame,
	ServerFrame,
	TERMINAL_CLOSE_CODES,
} from "../protocol";
import { Backoff, type BackoffOptions } from "./backoff";
import { Recent } from "./recent";
import { TokenKeeper, type TokenSource } from "./token-keeper";
import { OutputPacer } from "./output-pacer";
import { afterRefusal } from "./refusals";
import { stringProblem } from "../json-safety";
import {
	type Connector,
	ConnectRefused,
	defaultConnector,
	isTerminalRefusal,
	OPEN,
	probeRefusal,
	type SocketLike,
} from "./transport";

export interface CommandContext {
	id: string;
	action: string;
	/** 1 on first delivery; higher after a redelivery of a command this agent had not finished. */
	attempt: number;
	sessionId: string | null;
	priority: number;
	/** Aborted when the command is cancelled (by an operator or its timeout) or the agent shuts down. */
	signal: AbortSignal;
	/** Streams a chunk of output for this command (best effort while disconnected). */
	output(chunk: string): void;
}

/** Returns the command's result (any JSON value); a throw reports `failed` with the error's message. */
export type Handler = (payload: unknown, ctx: CommandContext) => unknown | Promise<unknown>;

export interface AgentOptions {
	/** The control plane's base URL (http(s) or ws(s)); `/v1/agents/{agentId}/connect` is appended. */
	url: string;
	agentId: string;
	/**
	 * The agent token, or a function that returns a fresh one before a
	 * connection attempt. While connected, the agent trades its token for a
	 * new one before it expires (`auth.refresh`), and reconnects with that.
	 */
	token: TokenSource;
	/** Output frames per second, at most (coalesced beyond that). Default 50: half the server's default frame limit. */
	outputFramesPerSecond?: number;
	/** Commands run at once (1-1000). Default 1: one at a time, in order. */
	concurrency?: number;
	/**
	 * The agent's own labels, e.g. `{ env: "prod", region: "eu" }`, sent in
	 * `hello` (at most 32; keys 1-63 of A-Z a-z 0-9 . _ / -). Operators select
	 * agents by them; an operator's label of the same key wins.
	 */
	labels?: Record<string, string>;
	/** The agent's build, e.g. "1.4.2" (1-128 characters), shown in its record. */
	version?: string;
	/** Where it runs, e.g. "linux/arm64" (1-128 characters), shown in its record. */
	platform?: string;
	backoff?: BackoffOptions;
	/** Reconnect after being replaced by another connection with the same agent id (close 4001). Default false. */
	reconnectOnReplaced?: boolean;
	heartbeatMs?: number;
	/** How many finished command ids to remember, so redeliveries are answered, not re-run. */
	rememberResults?: number;
	connect?: Connector;
	/** How to learn why a connection failed before it opened; defaults to a plain GET (see transport.ts). */
	probe?: (url: string, token: string) => Promise<ConnectRefused | undefined>;
}

export type AgentState = "idle" | "connecting" | "open" | "reconnecting" | "draining" | "stopped";

export type AgentEvent =
	| { type: "connecting"; attempt: number }
	| { type: "open"; generation: number }
	| { type: "closed"; code: number; reason: string }
	| { type: "reconnecting"; delayMs: number; attempt: number }
	| { type: "stopped"; reason: string }
	| { type: "command"; id: string; action: string; attempt: number }
	| { type: "result"; id: string; status: ResultFrame["status"] }
	| { type: "error"; error: Error };

type Listener<T extends AgentEvent["type"]> = (event: Extract<AgentEvent, { type: T }>) => void;

interface Running {
	controller: AbortController;
	/** Set when the agent itself gave up on the command (shutdown): no result is reported. */
	abandoned: boolean;
}

class CancelledError extends Error {
	override name = "CancelledError";
}

export class Agent {
	private readonly handlers = new Map<string, Handler>();
	private readonly listeners = new Map<string, Set<(e: AgentEvent) => void>>();
	private readonly running = new Map<string, Running>();
	private readonly results: Recent<ResultFrame>;
	/** Results sent again after the server failed handling a frame of theirs (`internal`). */
	private readonly resent = new Recent<true>(1_000);
	/** Results not yet handed to an open socket; sent first on the next connection. */
	private readonly unsent = new Map<string, ResultFrame>();
	private readonly backoff: Backoff;
	private readonly connector: Connector;
	private readonly concurrency: number;
	private readonly heartbeatMs: number;
	private readonly tokens: TokenKeeper;
	private readonly pacer: OutputPacer;
	private ws: SocketLike | undefined;
	private heartbeat: ReturnType<typeof setInterval> | undefined;
	private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
	private lastHeard = 0;
	private current: AgentState = "idle";
	private stopReason = "";

	/** Why the agent stopped, once it has. */
	get stoppedReason(): string {
		return this.stopReason;
	}

	constructor(private readonly opts: AgentOptions) {
		this.concurrency = opts.concurrency ?? 1;
		if (!Number.isInteger(this.concurrency) || this.concurrency < 1 || this.concurrency > MAX_CONCURRENCY) {
			throw new RangeError(`concurrency must be an integer from 1 to ${MAX_CONCURRENCY}`);
		}
		// Refused here, not by the server at every connect.
		const described = HelloFrame.safeParse({ type: "hello", concurrency: this.concurrency, running: [], ...this.description() });
		if (!described.success) throw new RangeError(`invalid agent description: ${z.prettifyError(described.error).replace(/\n+/g, "; ")}`);
		this.backoff = new Backoff(opts.backoff);
		this.connector = opts.connect ?? defaultConnector;
		this.heartbeatMs = opts.heartbeatMs ?? HEARTBEAT_INTERVAL_SECONDS * 1000;
		this.results = new Recent(opts.rememberResults ?? 10_000);
		this.tokens = new TokenKeeper(opts.token);
		this.pacer = new OutputPacer((id, seq, data) => {
			const ws = this.ws;
			// Best effort while disconnected, as documented on CommandContext.output.
			if (ws && ws.readyState === OPEN) this.sendRaw(ws, { type: "output", id, seq, data });
		}, opts.outputFramesPerSecond);
	}

	get state(): AgentState {
		return this.current;
	}

	/** Stopping or stopped; a method, so TypeScript does not narrow it away across awaits. */
	private halted(): boolean {
		return this.current === "stopped" || this.current === "draining";
	}

	/** Ids of the commands running now. */
	get runningIds(): string[] {
		return [...this.running.keys()];
	}

	/** What hello says of the agent besides its window. */
	private description(): Pick<HelloFrame, "version" | "platform" | "labels"> {
		const { version, platform, labels } = this.opts;
		return { ...(version !== undefined ? { version } : {}), ...(platform !== undefined ? { platform } : {}), ...(labels ? { labels } : {}) };
	}

	/**
	 * The handled actions, declared so the server holds commands for any
	 * other (`action_unsupported`) instead of sending them to fail here.
	 * None registered, or more than the protocol takes: none declared.
	 */
	private actions(): Pick<HelloFrame, "actions"> {
		// A name the API would refuse as an action can never be sent here anyway.
		const names = [...this.handlers.keys()].filter((a) => Action.safeParse(a).success);
		return names.length > 0 && names.length <= MAX_ACTIONS ? { actions: names } : {};
	}

	/** Registers the handler for `action`; declared to the server in the next hello. */
	handle(action: string, handler: Handler): this {
		this.handlers.set(action, handler);
		return this;
	}

	on<T extends AgentEvent["type"]>(type: T, listener: Listener<T>): () => void {
		const set = this.listeners.get(type) ?? new Set();
		// SAFETY: emit() only calls a listener with events of the type it was registered for.
		const l = listener as (e: AgentEvent) => void;
		set.add(l);
		this.listeners.set(type, set);
		return () => set.delete(l);
	}

	/** Starts connecting; reconnects on its own until stop() or a terminal close. */
	start(): void {
		if (this.current !== "idle") throw new Error(`agent already ${this.current}`);
		void this.connect();
	}

	/** Resolves once connected (welcome received), or rejects if the agent stops first. */
	whenOpen(): Promise<void> {
		if (this.current === "open") return Promise.resolve();
		if (this.current === "stopped") return Promise.reject(new Error(`agent stopped: ${this.stopReason}`));
		return new Promise((resolve, reject) => {
			const offOpen = this.on("open", () => {
				offOpen();
				offStop();
				resolve();
			});
			const offStop = this.on("stopped", (e) => {
				offOpen();
				offStop();
				reject(new Error(`agent stopped: ${e.reason}`));
			});
		});
	}

	/**
	 * Graceful drain: take no new commands, let running ones finish for up to
	 * `graceMs`, report their results, then close. Commands still running
	 * after that are abandoned unreported, so the server sends them elsewhere
	 * or again later.
	 */
	stop(opts: { graceMs?: number } = {}): Promise<void> {
		this.stopping ??= this.drain(opts.graceMs ?? 30_000);
		return this.stopping;
	}

	private stopping: Promise<void> | undefined;

	private async drain(graceMs: number): Promise<void> {
		if (this.current === "stopped") return;
		this.current = "draining";
		if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
		const deadline = Date.now() + graceMs;
		while (this.running.size > 0 && Date.now() < deadline) await sleep(Math.min(50, deadline - Date.now()));
		for (const r of this.running.values()) {
			r.abandoned = true;
			r.controller.abort(new CancelledError("agent shutting down"));
		}
		if (this.unsent.size > 0 && !(this.ws && this.ws.readyState === OPEN)) {
			// Disconnected during the drain: these finished but the server never heard,
			// so it will send them again. Say which, since this process will not remember.
			this.emit({
				type: "error",
				error: new Error(`stopping with unreported results for ${[...this.unsent.keys()].join(", ")}`),
			});
		}
		this.finish("stopped by the agent", 1000);
	}

	// ------------------------------------------------------------ connection

	private async connect(): Promise<void> {
		if (this.current === "stopped" || this.current === "draining") return;
		this.current = "connecting";
		this.emit({ type: "connecting", attempt: this.backoff.failures + 1 });
		let ws: SocketLike;
		let token = "";
		const base = this.opts.url.replace(/\/+$/, "").replace(/^http/, "ws");
		const url = `${base}/v1/agents/${encodeURIComponent(this.opts.agentId)}/connect`;
		try {
			token = await this.tokens.forConnect();
			ws = await this.connector(url, token);
		} catch (err) {
			this.emit({ type: "error", error: asError(err) });
			if (this.halted()) return;
			const refused = isTerminalRefusal(err) ? err : terminalFromTokenSource(err);
			if (refused) {
				this.finish(`connection refused (HTTP ${refused.status}): ${refused.message}`);
				return;
			}
			this.scheduleReconnect();
			return;
		}
		// stop() may have been called while this attempt was under way.
		if (this.halted()) {
			ws.close(1000, "agent stopping");
			return;
		}
		this.ws = ws;
		let opened = false;
		let failedEarly = false;
		// Failed before it opened (Node reports that with `error` alone, browsers
		// with `error` then `close`): a refused token is terminal, anything else retried.
		const onEarlyFailure = (code: number, reason: string) => {
			if (failedEarly || ws !== this.ws) return;
			failedEarly = true;
			void (this.opts.probe ?? probeRefusal)(url, token).then((refusal) => {
				if (ws !== this.ws) return;
				if (refusal) this.emit({ type: "error", error: refusal });
				if (isTerminalRefusal(refusal)) {
					this.ws = undefined;
					this.finish(`connection refused (HTTP ${refusal.status}): ${refusal.message}`);
				} else {
					this.onClose(ws, code, reason);
				}
			});
		};
		ws.addEventListener("open", () => {
			opened = true;
		});
		ws.addEventListener("message", (e) => this.onMessage(ws, e.data));
		ws.addEventListener("close", (e) => {
			if (opened) this.onClose(ws, e.code, e.reason);
			else onEarlyFailure(e.code, e.reason);
		});
		ws.addEventListener("error", () => {
			if (!opened) onEarlyFailure(1006, "connection failed");
			// once open, a close event follows; reconnecting is decided there
		});
		if (ws.readyState === OPEN) {
			opened = true;
			this.onSocketOpen(ws);
		}
		else ws.addEventListener("open", () => this.onSocketOpen(ws));
	}

	private onSocketOpen(ws: SocketLike): void {
		this.lastHeard = Date.now();
		// Results first: the server must hear that these finished before the
		// hello below, which does not list them as running.
		this.flushUnsent(ws);
		this.sendRaw(ws, { type: "hello", concurrency: this.concurrency, running: this.runningIds, ...this.description(), ...this.actions() });
		if (this.heartbeat !== undefined) clearInterval(this.heartbeat);
		this.heartbeat = setInterval(() => this.beat(ws), this.heartbeatMs);
	}

	/** Pings, and gives up on a connection that has gone quiet (a half-dead socket looks alive). */
	private beat(ws: SocketLike): void {
		// Checked at each ping: silent since the ping before last means 3 intervals without a word.
		if (Date.now() - this.lastHeard >= this.heartbeatMs * (HEARTBEAT_MISSES - 1)) {
			ws.close(4000, "no pong from the server");
			this.onClose(ws, 1006, "heartbeat timeout");
			return;
		}
		this.sendRaw(ws, PING_TEXT);
	}

	private onClose(ws: SocketLike, code: number, reason: string): void {
		if (ws !== this.ws) return;
		this.ws = undefined;
		if (this.heartbeat !== undefined) clearInterval(this.heartbeat);
		this.tokens.cancel();
		this.emit({ type: "closed", code, reason });
		if (this.current === "stopped" || this.current === "draining") return;
		const terminal =
			TERMINAL_CLOSE_CODES.has(code) && !(code === CloseCode.REPLACED && this.opts.reconnectOnReplaced);
		if (terminal) {
			this.finish(`closed by the server with ${code}${reason ? ` (${reason})` : ""}`);
			return;
		}
		this.scheduleReconnect();
	}

	private scheduleReconnect(): void {
		if (this.current === "stopped" || this.current === "draining") return;
		const delayMs = this.backoff.next();
		this.current = "reconnecting";
		this.emit({ type: "reconnecting", delayMs, attempt: this.backoff.failures });
		this.reconnectTimer = setTimeout(() => void this.connect(), delayMs);
	}

	private finish(reason: string, code?: number): void {
		const ws = this.ws;
		if (this.heartbeat !== undefined) clearInterval(this.heartbeat);
		if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
		this.tokens.cancel();
		this.pacer.stop();
		if (ws && ws.readyState === OPEN) {
			this.flushUnsent(ws);
			ws.close(code ?? 1000, "agent stopping");
		}
		this.ws = undefined;
		this.current = "stopped";
		this.stopReason = reason;
		this.emit({ type: "stopped", reason });
	}

	// --------------------------------------------------------------- frames

	private onMessage(ws: SocketLike, data: unknown): void {
		this.lastHeard = Date.now();
		let frame: ServerFrame;
		try {
			const parsed = ServerFrame.safeParse(JSON.parse(String(data)));
			if (!parsed.success) throw new Error(`unexpected frame from the server: ${String(data).slice(0, 200)}`);
			frame = parsed.data;
		} catch (err) {
			this.emit({ type: "error", error: asError(err) });
			return;
		}
		switch (frame.type) {
			case "welcome":
				if (this.current !== "connecting") return; // stopping: do not come back to life
				this.current = "open";
				// Results that finished between socket open and now.
				this.flushUnsent(ws);
				this.backoff.reset();
				this.tokens.schedule(frame.tokenExpiresAt, (token) => this.refreshToken(ws, token));
				this.emit({ type: "open", generation: frame.generation });
				return;
			case "auth.refreshed":
				this.tokens.accept(frame.token, frame.expiresAt, (token) => this.refreshToken(ws, token));
				return;
			case "command":
				this.onCommand(ws, frame);
				return;
			case "cancel":
				this.onCancel(ws, frame.id, frame.reason);
				return;
			case "error":
				if (frame.id) this.onRefusal(ws, frame.id, frame.code);
				this.emit({ type: "error", error: new Error(`server refused a frame: ${frame.code}: ${frame.message}`) });
				return;
			case "pong":
				return;
		}
	}

	/** A finished result is kept until the server can no longer ask for it (see refusals.ts). */
	private onRefusal(ws: SocketLike, id: string, code: string): void {
		const result = this.results.get(id);
		if (!result) return;
		const next = afterRefusal(code);
		if (next === "forget") this.results.delete(id);
		if (next !== "resend" || this.resent.has(id) || ws.readyState !== OPEN) return;
		// Once: a server that keeps failing on it must not get it back at network speed.
		this.resent.set(id, true);
		this.sendRaw(ws, result);
	}

	private refreshToken(ws: SocketLike, token: string): void {
		if (ws === this.ws && ws.readyState === OPEN) this.sendRaw(ws, { type: "auth.refresh", token });
	}

	private onCommand(ws: SocketLike, frame: CommandFrame): void {
		// Only while open: draining or stopping, leave it unacknowledged for the server to resend.
		if (this.current !== "open") return;
		const done = this.results.get(frame.id);
		if (done) {
			// A redelivery of something already finished: the result answers it, do not re-run.
			this.sendRaw(ws, done);
			return;
		}
		if (this.running.has(frame.id)) {
			this.sendRaw(ws, { type: "ack", id: frame.id });
			return;
		}
		this.emit({ type: "command", id: frame.id, action: frame.action, attempt: frame.attempt });
		const entry = this.run(frame);
		// A handler that finishes within this turn sends its result alone: the protocol takes a
		// result without an ack, and one frame is half the server's work for a quick command.
		// Anything still running when the turn ends is acked then, long before the ack deadline.
		setTimeout(() => {
			if (this.running.get(frame.id) === entry && ws.readyState === OPEN) this.sendRaw(ws, { type: "ack", id: frame.id });
		}, 0);
	}

	private onCancel(ws: SocketLike, id: string, reason: string): void {
		const running = this.running.get(id);
		if (running) {
			running.controller.abort(new CancelledError(`cancelled (${reason})`));
			return;
		}
		// Not running here: repeat the outcome if there was one, else confirm nothing runs.
		this.sendRaw(ws, this.results.get(id) ?? { type: "result", id, status: "cancelled" });
	}

	/** Starts the handler; the entry stays in `running` until it settles. */
	private run(frame: CommandFrame): Running {
		const entry: Running = { controller: new AbortController(), abandoned: false };
		this.running.set(frame.id, entry);
		void this.settle(frame, entry);
		return entry;
	}

	private async settle(frame: CommandFrame, entry: Running): Promise<void> {
		const ctx: CommandContext = {
			id: frame.id,
			action: frame.action,
			attempt: frame.attempt,
			sessionId: frame.sessionId,
			priority: frame.priority,
			signal: entry.controller.signal,
			output: (chunk) => {
				if (this.running.has(frame.id)) this.pacer.write(frame.id, chunk);
			},
		};
		const outcome = await this.execute(frame, ctx, entry.controller.signal);
		this.running.delete(frame.id);
		// Output before the result, all of it: observers see a command's output end before it finishes.
		if (!entry.abandoned) this.pacer.flush(frame.id);
		this.pacer.forget(frame.id);
		if (entry.abandoned) return;
		const result: ResultFrame = { type: "result", id: frame.id, ...outcome };
		this.results.set(frame.id, result);
		this.emit({ type: "result", id: frame.id, status: result.status });
		const ws = this.ws;
		if (ws && ws.readyState === OPEN && (this.current === "open" || this.current === "draining")) this.sendRaw(ws, result);
		else this.unsent.set(frame.id, result);
	}

	private async execute(
		frame: CommandFrame,
		ctx: CommandContext,
		signal: AbortSignal,
	): Promise<Omit<ResultFrame, "type" | "id">> {
		const handler = this.handlers.get(frame.action);
		if (!handler) {
			const known = [...this.handlers.keys()].sort().join(", ") || "none";
			return { status: "failed", error: `unknown action "${frame.action}" (this agent handles: ${known})` };
		}
		try {
			const value = await handler(frame.payload, ctx);
			return checkResult(value === undefined ? null : value);
		} catch (err) {
			return { status: signal.aborted ? "cancelled" : "failed", error: storableText(asError(err).message) };
		}
	}

	/** Hands every result not yet sent to the socket. */
	private flushUnsent(ws: SocketLike): void {
		for (const frame of this.unsent.values()) this.sendRaw(ws, frame);
		this.unsent.clear();
	}

	private sendRaw(ws: SocketLike, frame: object | string): void {
		try {
			ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
		} catch (err) {
			this.emit({ type: "error", error: asError(err) });
		}
	}

	private emit(event: AgentEvent): void {
		for (const l of this.listeners.get(event.type) ?? []) {
			try {
				l(event);
			} catch {
				// a listener's failure is not the agent's
			}
		}
	}
}

/** A result the server will accept: JSON, storable by Postgres, under the frame size limit. */
function checkResult(value: unknown): Omit<ResultFrame, "type" | "id"> {
	let text: string;
	try {
		text = JSON.stringify(value);
	} catch (err) {
		return { status: "failed", error: `result is not JSON-serializable: ${asError(err).message}` };
	}
	const problem = jsonProblem(JSON.parse(text));
	if (problem) return { status: "failed", error: `result cannot be stored: ${problem}` };
	if (new TextEncoder().encode(text).length > MAX_BODY_BYTES - 4096) {
		return { status: "failed", error: "result is over 1 MiB" };
	}
	return { status: "completed", result: JSON.parse(text) };
}

/** Error text the server will store: no NULs or broken surrogate pairs, at most 64 KiB. */
function storableText(message: string): string {
	let text = message.replaceAll("\u0000", "");
	// Cut first, then repair: a cut can split a surrogate pair.
	text = text.slice(0, 64 * 1024);
	if (stringProblem(text)) text = text.replace(/[\uD800-\uDFFF]/g, "\uFFFD");
	return text || "handler failed";
}

/** A token function that failed because the API refused the operator's key is not worth retrying. */
function terminalFromTokenSource(err: unknown): ConnectRefused | undefined {
	const status = (err as { status?: unknown }).status;
	return typeof status === "number" && (status === 401 || status === 403)
		? new ConnectRefused(status, `could not get an agent token: ${asError(err).message}`)
		: undefined;
}

function asError(err: unknown): Error {
	return err instanceof Error ? err : new Error(String(err));
}

function sleep(ms: number): Promise<void> {
	return new Promise((r) => setTimeout(r, Math.max(0, ms)));
}
