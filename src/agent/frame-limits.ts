/**
 * How much an agent socket may send: token buckets per connection, one of
 * frames and one of characters (so a few huge frames cost what many small
 * ones do), and a line past which refusing frames is no longer enough and
 * the socket is closed. Plain functions of time, so they are tested
 * without a socket.
 *
 * The bucket lives in memory. A socket whose object hibernated was idle, so
 * its bucket would have been full anyway; a rebuilt one starts full.
 */
export const DEFAULT_FRAMES_PER_SECOND = 100;
/**
 * Characters a second per frame of the frame rate: 100 frames/s allow
 * 2 MiB/s (output at its 50 frames/s of 40 KiB, with room for results).
 */
export const CHARS_PER_FRAME_OF_RATE = 20 * 1024;
/** The character bucket always holds one frame of the largest size. */
const MAX_FRAME_CHARS = 1024 * 1024;
/** Refusals within one window, in seconds of the rate, that close the socket (4005). */
const ABUSE_WINDOW_MS = 10_000;

export type FrameVerdict = "ok" | "refused" | "abusive";

export class FrameRateLimiter {
	private tokens: number;
	private chars: number;
	private last: number;
	private windowStart: number;
	private refusedInWindow = 0;

	/** `rate` frames per second, bursts of twice that. */
	constructor(
		readonly rate: number,
		now: number,
	) {
		this.tokens = this.burst;
		this.chars = this.charBurst;
		this.last = now;
		this.windowStart = now;
	}

	get burst(): number {
		return this.rate * 2;
	}

	get charRate(): number {
		return this.rate * CHARS_PER_FRAME_OF_RATE;
	}

	private get charBurst(): number {
		return Math.max(this.charRate * 2, MAX_FRAME_CHARS);
	}

	/**
	 * Takes one frame's token and its `size` in characters. `refused` once
	 * either bucket is short (nothing is taken then); `abusive` once more
	 * frames were refused in the last window than the rate allows in the
	 * whole window (the sender ignores the `rate_limited` errors).
	 */
	take(now: number, size = 0): FrameVerdict {
		const seconds = (now - this.last) / 1000;
		this.tokens = Math.min(this.burst, this.tokens + seconds * this.rate);
		this.chars = Math.min(this.charBurst, this.chars + seconds * this.charRate);
		this.last = now;
		if (this.tokens >= 1 && this.chars >= size) {
			this.tokens -= 1;
			this.chars -= size;
			return "ok";
		}
		if (now - this.windowStart >= ABUSE_WINDOW_MS) {
			this.windowStart = now;
			this.refusedInWindow = 0;
		}
		this.refusedInWindow++;
		return this.refusedInWindow > (this.rate * ABUSE_WINDOW_MS) / 1000 ? "abusive" : "refused";
	}

	/** A refused frame turned out to be owed (an ack or result for a command the agent holds): not held against it. */
	pardon(): void {
		this.refusedInWindow = Math.max(0, this.refusedInWindow - 1);
	}
}

/** AGENT_FRAME_RATE_LIMIT: frames per second per agent socket; "0" turns the limit off. */
export function frameRateLimit(env: { AGENT_FRAME_RATE_LIMIT?: string }): number | null {
	const raw = env.AGENT_FRAME_RATE_LIMIT;
	if (raw === undefined || raw.trim() === "") return DEFAULT_FRAMES_PER_SECOND;
	const n = Number(raw);
	if (!Number.isFinite(n) || n < 0) return DEFAULT_FRAMES_PER_SECOND;
	return n === 0 ? null : n;
}

/** Whether a frame is over `max` UTF-8 bytes, decided before anything parses it. */
export function frameTooLarge(message: string | ArrayBuffer, max: number): boolean {
	if (typeof message !== "string") return message.byteLength > max;
	// A UTF-16 unit is at most three UTF-8 bytes: most frames are decided without encoding.
	if (message.length * 3 <= max) return false;
	if (message.length > max) return true;
	return new TextEncoder().encode(message).length > max;
}
