/**
 * One agent's observer stream (docs/protocol.md, Observers) as the browser
 * holds it: the key rides in the `switchyard.auth.*` subprotocol (a browser
 * cannot set headers on a socket, and URLs end up in logs); after a drop it
 * reconnects with backoff and resumes with `since` and `epoch`, so nothing
 * is missed and nothing is shown twice. A long replay comes in pages: the
 * server pauses it (`replay_paused`, close 4007) and the stream asks for
 * the next at once. A stream cut as a slow consumer (4006) is one more drop.
 */
import type { ObserverFrame } from "switchyard-protocol";
import { Backoff } from "../sdk/backoff";

export type StreamState = "connecting" | "open" | "reconnecting" | "closed";

/**
 * CloseCode.REPLAY_PAUSED (src/protocol.ts; the page imports the protocol's
 * types only): the server replayed as much as one connection may and asks
 * for the next page, so the stream reconnects at once, without backoff.
 */
const REPLAY_PAUSED = 4007;

function b64url(s: string): string {
	let bin = "";
	for (const b of new TextEncoder().encode(s)) bin += String.fromCharCode(b);
	return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** Every open stream reports here; the header shows the worst state. */
const registry = new Map<AgentStream, StreamState>();
const listeners = new Set<(state: StreamState | "idle", detail: string) => void>();

export function onStreamHealth(fn: (state: StreamState | "idle", detail: string) => void): void {
	listeners.add(fn);
}

function publish(detail: string): void {
	const states = [...registry.values()];
	const state = states.includes("reconnecting") ? "reconnecting" : states.includes("connecting") ? "connecting" : states.includes("open") ? "open" : "idle";
	for (const fn of listeners) fn(state, detail);
}

export interface StreamOptions {
	agentId: string;
	apiKey: string;
	/** 0 replays the agent's retained log; omitted starts at the live end. */
	since?: number;
	onFrame: (frame: ObserverFrame) => void;
}

export class AgentStream {
	private ws: WebSocket | undefined;
	private since: number | undefined;
	private epoch: string | undefined;
	/** Full jitter over an exponential ceiling, the agent SDK's own reconnect rule. */
	private readonly backoff = new Backoff({ initialMs: 500, maxMs: 30_000 });
	private timer: ReturnType<typeof setTimeout> | undefined;
	private closed = false;

	constructor(private readonly opts: StreamOptions) {
		this.since = opts.since;
		this.connect();
	}

	private setState(state: StreamState, detail = ""): void {
		if (state === "closed") registry.delete(this);
		else registry.set(this, state);
		publish(detail);
	}

	private connect(): void {
		const q = new URLSearchParams();
		if (this.since !== undefined) q.set("since", String(this.since));
		if (this.epoch) q.set("epoch", this.epoch);
		const url = `${location.origin.replace(/^http/, "ws")}/v1/agents/${encodeURIComponent(this.opts.agentId)}/stream${q.size ? `?${q}` : ""}`;
		this.setState(this.backoff.failures === 0 ? "connecting" : "reconnecting");
		const ws = new WebSocket(url, ["switchyard.v1", `switchyard.auth.${b64url(this.opts.apiKey)}`]);
		this.ws = ws;
		ws.onopen = () => {
			this.backoff.reset();
			this.setState("open");
		};
		ws.onmessage = (e) => this.receive(e.data);
		ws.onclose = (e) => {
			if (this.closed || this.ws !== ws) return;
			if (e.code === REPLAY_PAUSED) {
				this.connect();
				return;
			}
			const delay = this.backoff.next();
			this.setState("reconnecting", `retrying in ${(delay / 1000).toFixed(1)} s`);
			this.timer = setTimeout(() => this.connect(), delay);
		};
	}

	private receive(data: unknown): void {
		if (typeof data !== "string") return;
		let frame: ObserverFrame;
		try {
			const parsed: unknown = JSON.parse(data);
			if (typeof parsed !== "object" || parsed === null || typeof (parsed as { type?: unknown }).type !== "string") return;
			// SAFETY: the server's frames are the ObserverFrame union (src/protocol.ts); views read
			// only fields of the type they switch on, and ignore types they do not know.
			frame = parsed as ObserverFrame;
		} catch {
			return;
		}
		if (frame.type === "observing") {
			this.epoch = frame.epoch;
			// Resume from the live end if we asked for nothing earlier.
			this.since ??= frame.latestSeq;
		} else if (frame.type === "reset") {
			this.epoch = frame.epoch;
			this.since = 0;
		} else if (frame.type === "replay_paused") {
			// Where the next page starts. Resume now: the server's close (4007)
			// follows, but its closing handshake took 10 s in workerd, a page.
			this.since = frame.through;
			const paused = this.ws;
			this.connect();
			paused?.close();
			return;
		} else if ("seq" in frame) {
			this.since = frame.seq;
		}
		this.opts.onFrame(frame);
	}

	/** Drops the socket as if the network had: the stream resumes by itself (for tests and a manual retry). */
	drop(): void {
		this.ws?.close(4000, "dropped by the page");
	}

	close(): void {
		this.closed = true;
		clearTimeout(this.timer);
		this.ws?.close(1000, "closed by the page");
		this.setState("closed");
	}
}
