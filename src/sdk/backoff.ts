/**
 * Reconnect delays: exponential, with full jitter so a fleet that lost the
 * server at the same moment does not come back at the same moment.
 * Attempt n waits a random time between `initialMs` and
 * min(maxMs, initialMs * 2^n).
 */
export interface BackoffOptions {
	initialMs?: number;
	maxMs?: number;
	random?: () => number;
}

export class Backoff {
	private attempt = 0;
	private readonly initialMs: number;
	private readonly maxMs: number;
	private readonly random: () => number;

	constructor(opts: BackoffOptions = {}) {
		this.initialMs = opts.initialMs ?? 1_000;
		this.maxMs = opts.maxMs ?? 60_000;
		this.random = opts.random ?? Math.random;
	}

	/** The delay before the next attempt; each call counts as one more failure. */
	next(): number {
		const cap = Math.min(this.maxMs, this.initialMs * 2 ** Math.min(this.attempt, 30));
		this.attempt++;
		return Math.round(this.initialMs + this.random() * (cap - this.initialMs));
	}

	/** After a connection that worked: start from the bottom again. */
	reset(): void {
		this.attempt = 0;
	}

	get failures(): number {
		return this.attempt;
	}
}
