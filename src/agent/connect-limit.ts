/**
 * How often one agent may connect. Each connect costs its object real work
 * (sockets replaced, commands requeued, a catch-up read of Postgres, a
 * presence write), so a crash-looping agent or a flapping link would turn
 * into a stream of database reads. A bucket of CONNECT_BURST connects,
 * refilled one every CONNECT_REFILL_MS; past it the upgrade is refused with
 * 429 and Retry-After, which the SDK's backoff already honours by waiting.
 *
 * Kept in memory: an object is only evicted after a quiet spell, and a
 * bucket that starts full after one has nothing to catch.
 */
import { log } from "../log";
import { ErrorCode } from "../protocol";

export const CONNECT_BURST = 20;
export const CONNECT_REFILL_MS = 3_000;

export class ConnectLimiter {
	private tokens = CONNECT_BURST;
	private last: number;

	constructor(now: number) {
		this.last = now;
	}

	/** Takes a connect; 0 if allowed, else how many ms until one would be. */
	take(now: number): number {
		this.tokens = Math.min(CONNECT_BURST, this.tokens + (now - this.last) / CONNECT_REFILL_MS);
		this.last = now;
		if (this.tokens >= 1) {
			this.tokens -= 1;
			return 0;
		}
		return Math.ceil((1 - this.tokens) * CONNECT_REFILL_MS);
	}
}

/** The refusal, in the API's error shape. */
export function tooManyConnects(agentId: string, waitMs: number): Response {
	const retryAfter = Math.ceil(waitMs / 1000);
	log("warn", "agent.connect_limited", { agentId, retryAfterSeconds: retryAfter });
	return Response.json(
		{ error: { code: ErrorCode.RATE_LIMITED, message: `this agent connected too often; retry in ${retryAfter} s` } },
		{ status: 429, headers: { "retry-after": String(retryAfter) } },
	);
}
