/**
 * What one agent's observers may cost its object (docs/protocol.md,
 * Observers): how many may watch, how much one connection's replay may
 * queue, how much one observer may be sent before it counts as fallen
 * behind, and how many frames it may send.
 *
 * workerd gives a sender no backpressure (no `bufferedAmount`, `send` never
 * blocks), so the object cannot see that an observer reads slowly; what it
 * can bound is what it queues for one: a replay per connection, and live
 * bytes per window. Past either, the observer pages with `?since=`, and its
 * reconnects pace it.
 */
import { ErrorCode } from "../protocol";
import { OBSERVER_TAG } from "./sockets";

/** Observers one agent's object holds at most. */
export const OBSERVERS_PER_AGENT = 32;
/** Observers one API key may hold on one agent: one key cannot take every slot. */
export const OBSERVERS_PER_KEY = 8;
/** Characters of event frames one connection's replay queues at most; the client pages past it. */
export const REPLAY_MAX_BYTES = 1024 * 1024;
/**
 * Characters of replay one agent's object sends a second, across all its
 * observers, with bursts up to `burst`: the caps bound how many replay at
 * once, this bounds how fast they can drain a full log, so observers paging
 * at full speed cannot take the object's thread (under `wrangler dev`, the
 * whole runtime's) from its agent. A full 32 MiB log replays in 14 s.
 */
export const REPLAY_RATE = { bytesPerSecond: 2 * 1024 * 1024, burst: 4 * 1024 * 1024 };
/** Below this much replay budget a connection that needs a replay is refused (429) rather than sent a sliver. */
export const REPLAY_MIN_PAGE = 64 * 1024;
/** Characters of live event frames one observer may be sent within one window before it is closed (4006). */
export const OBSERVER_SEND_BUDGET = { bytes: 4 * 1024 * 1024, windowMs: 10_000 };
/** Frames a second an observer may send (bursts of twice that); it has nothing to say but pings. */
export const OBSERVER_FRAMES_PER_SECOND = 5;

/** The tag that counts an observer against its key, kept by the platform across hibernation. */
export function keyTag(apiKeyId: string): string {
	return `observer-key:${apiKeyId}`;
}

/**
 * Sockets with `tag` the object has not finished with: open, and closing
 * (a paused replay, a slow consumer cut) whose queued frames the client may
 * not have read yet.
 */
function counts(ctx: DurableObjectState, tag: string): { open: number; held: number } {
	const sockets = ctx.getWebSockets(tag);
	return {
		open: sockets.filter((ws) => ws.readyState === WebSocket.OPEN).length,
		held: sockets.filter((ws) => ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CLOSING).length,
	};
}

/**
 * A 429 in the API's error shape if this agent, or this key on it, holds all
 * the observers it may. A closing socket does not take an observer's slot (a
 * client resumes at once after a paused replay, before its old socket has
 * closed), but counts against twice the cap: workerd keeps what was queued
 * for it, so without that, clients reconnecting in a loop would each be
 * handed a fresh REPLAY_MAX_BYTES while the last ones still sit in memory.
 */
export function refuseObserver(ctx: DurableObjectState, apiKeyId: string): Response | null {
	const agent = counts(ctx, OBSERVER_TAG);
	const key = counts(ctx, keyTag(apiKeyId));
	let message: string;
	if (agent.open >= OBSERVERS_PER_AGENT || agent.held >= 2 * OBSERVERS_PER_AGENT) message = `this agent has ${OBSERVERS_PER_AGENT} observers, the most it takes`;
	else if (key.open >= OBSERVERS_PER_KEY || key.held >= 2 * OBSERVERS_PER_KEY) message = `this key has ${OBSERVERS_PER_KEY} observers of this agent, the most one key may hold`;
	else return null;
	return Response.json({ error: { code: ErrorCode.TOO_MANY_OBSERVERS, message: `${message}; close one first` } }, { status: 429, headers: { "retry-after": "5" } });
}

/** A token bucket of replay characters, in memory: an object that hibernated replayed nothing for a while. */
export class ReplayBucket {
	private tokens: number;
	private at: number;

	constructor(
		private readonly rate: { bytesPerSecond: number; burst: number },
		now: number,
	) {
		this.tokens = rate.burst;
		this.at = now;
	}

	/** Characters that may be replayed now. */
	available(now: number): number {
		this.tokens = Math.min(this.rate.burst, this.tokens + ((now - this.at) / 1000) * this.rate.bytesPerSecond);
		this.at = now;
		return this.tokens;
	}

	/** Counts what a replay sent (the first event always goes, so this may overdraw). */
	spend(bytes: number): void {
		this.tokens -= bytes;
	}

	/** Seconds until `bytes` are available. */
	secondsUntil(bytes: number, now: number): number {
		return Math.max(1, Math.ceil((bytes - this.available(now)) / this.rate.bytesPerSecond));
	}
}

/** A 429 for an observer whose replay must wait for the agent's replay budget. */
export function refuseReplay(retryAfterSeconds: number): Response {
	return Response.json(
		{ error: { code: ErrorCode.REPLAY_RATE_LIMITED, message: `this agent's replay budget is spent for now (${REPLAY_RATE.bytesPerSecond / 1024 / 1024} MiB/s across its observers); retry after ${retryAfterSeconds} s` } },
		{ status: 429, headers: { "retry-after": String(retryAfterSeconds) } },
	);
}

/**
 * Live bytes sent to one observer in a fixed window. In memory: an object
 * that hibernated sent nothing for a while, so a fresh window is right.
 */
export class SendBudget {
	private windowStart: number;
	private sent = 0;

	constructor(
		private readonly limit: { bytes: number; windowMs: number },
		now: number,
	) {
		this.windowStart = now;
	}

	/** Counts `bytes` about to be sent; false if they would take the window past its budget. */
	take(bytes: number, now: number): boolean {
		if (now - this.windowStart >= this.limit.windowMs) {
			this.windowStart = now;
			this.sent = 0;
		}
		if (this.sent + bytes > this.limit.bytes) return false;
		this.sent += bytes;
		return true;
	}
}
