/**
 * Admission to Postgres connection setup, shared by everything in one isolate
 * (every object of a class and, under `wrangler dev`, the worker too).
 *
 * When a fleet reconnects at once (every deploy), a thousand objects each
 * open a connection in the same moment. Let through together, they all time
 * out together and retry together; refused and retried on a backoff, each
 * retry costs a whole alarm and the fleet returns in waves. Instead, at most
 * `limit` setups run at a time, and a waiter takes a place in a queue and
 * sleeps for as long as the waiters ahead of it should take, at the rate
 * setups have been finishing. Each waiter is woken by its own timer (at
 * least a quarter of a setup apart, at most a second), and places go to
 * waiters in arrival order. No promise is resolved from another object's
 * context: workerd does not let one object's code run on inside another's
 * event. A waiter whose turn would come after its deadline is told when to
 * come back instead, at once or when a later estimate says so.
 */
export interface Clock {
	now(): number;
	sleep(ms: number): Promise<void>;
}

const realClock: Clock = {
	now: () => Date.now(),
	sleep: (ms) => new Promise((r) => setTimeout(r, ms)),
};

/**
 * What a setup is assumed to take before one has been measured here. Low on
 * purpose: a waiter woken too early costs one more timer, one woken too late
 * leaves places idle while it sleeps.
 */
const INITIAL_SETUP_MS = 10;
/** A waiter first sleeps this share of its estimated wait, then estimates again with what has been learnt since. */
const FIRST_SLEEP_SHARE = 0.75;
/**
 * Nor more than this at a time: setups measured while a whole fleet wakes up
 * at once are slow, and an estimate made from them would leave the queue
 * asleep long after the rush is over.
 */
const MAX_SLEEP_MS = 1_000;

export class GateFullError extends Error {
	override name = "GateFullError";
	constructor(
		/** When the caller's turn would come; a caller that retries then is not early. */
		readonly retryInMs: number,
	) {
		super(`too many database connections being set up at once; retry in ${retryInMs} ms`);
	}
}

/**
 * A waiter or setup whose promise has not settled after this long is taken to
 * belong to an object that was reset or evicted mid-await (its promise may
 * never settle): it stops counting, so a lost one cannot close the gate.
 */
const STALE_MS = 120_000;

/**
 * `request`: somebody is waiting on the answer (an HTTP call, `/healthz`).
 * `background`: an object's catch-up read or status flush, which may wait.
 * Requests are let in ahead of any queued background work, and `reserved`
 * places are theirs alone, so an API call or a health check still gets a
 * connection while a whole fleet's catch-ups are queued (a deploy).
 */
export type Priority = "request" | "background";

class WaitQueue {
	/** ticket -> deadline, in arrival order (a Map keeps insertion order). */
	readonly entries = new Map<number, number>();
	/** Numbers only this queue's waiters, so a gap between two tickets is waiters. */
	private last = 0;

	add(deadline: number): number {
		this.entries.set(++this.last, deadline);
		return this.last;
	}

	/**
	 * Waiters ahead of `ticket`, at most: tickets between the oldest waiter's
	 * and this one, counting those that gave up meanwhile. O(1), for a queue
	 * thousands long woken about once a second each.
	 */
	ahead(ticket: number): number {
		const oldest = this.entries.keys().next().value ?? ticket;
		return Math.max(0, ticket - oldest);
	}
}

export class ConnectGate {
	/** Setups under way: id -> when it started. */
	private readonly running = new Map<number, number>();
	private readonly queues: Record<Priority, WaitQueue> = { request: new WaitQueue(), background: new WaitQueue() };
	private lastSetup = 0;
	private setupMs = INITIAL_SETUP_MS;
	private prunedAt = 0;

	constructor(
		readonly limit: number,
		/** Places background work may never take, kept for requests. */
		readonly reserved = 0,
		private readonly clock: Clock = realClock,
	) {}

	/** Setups under way now. */
	get inFlight(): number {
		return this.running.size;
	}

	/** Waiters queued now. */
	get queued(): number {
		return this.queues.request.entries.size + this.queues.background.entries.size;
	}

	/** Runs `setup` once a place is free, waiting at most until `deadline` (a clock time) for one. */
	async run<T>(deadline: number, setup: () => Promise<T>, priority: Priority = "request"): Promise<T> {
		this.prune();
		// A newcomer goes straight in only when nobody it must let go first is queued.
		if (this.free(priority) <= 0 || this.waitingBefore(priority)) await this.queue(priority, deadline);
		const id = ++this.lastSetup;
		const started = this.clock.now();
		this.running.set(id, started);
		try {
			return await setup();
		} finally {
			this.running.delete(id);
			// A moving average, so the spacing follows what setups cost now (a
			// pooler under load, a compute waking up) without one outlier ruling it.
			this.setupMs = 0.8 * this.setupMs + 0.2 * Math.max(1, this.clock.now() - started);
		}
	}

	/** Places free to this priority now. */
	private free(priority: Priority): number {
		return (priority === "request" ? this.limit : this.limit - this.reserved) - this.running.size;
	}

	/** Whether anyone this priority must let go first is queued. */
	private waitingBefore(priority: Priority): boolean {
		const requests = this.queues.request.entries.size > 0;
		return priority === "request" ? requests : requests || this.queues.background.entries.size > 0;
	}

	/**
	 * Sleeps for as long as the waiters ahead should take at the rate setups
	 * finish, then takes a free place if no more than the free places' worth
	 * of waiters are ahead of it (first come, first served within a priority;
	 * background only when no request is queued), or sleeps again.
	 */
	private async queue(priority: Priority, deadline: number): Promise<void> {
		const queue = this.queues[priority];
		const ticket = queue.add(deadline);
		try {
			for (let share = FIRST_SLEEP_SHARE, woken = false; ; share = 1, woken = true) {
				this.prune();
				const ahead = queue.ahead(ticket) + (priority === "background" ? this.queues.request.entries.size : 0);
				if (woken && ahead < this.free(priority)) return;
				const wait = Math.ceil(((ahead + 1) * this.setupMs) / this.limit);
				if (this.clock.now() + wait > deadline) throw new GateFullError(wait);
				// Never less than a quarter of a setup: places free up as setups end,
				// often several together, and checking more often only spins.
				await this.clock.sleep(Math.min(MAX_SLEEP_MS, Math.max(Math.ceil(this.setupMs / 4), Math.floor(wait * share))));
			}
		} finally {
			queue.entries.delete(ticket);
		}
	}

	/** Forgets waiters and setups that can no longer be live (see STALE_MS); at most once a second. */
	private prune(): void {
		const now = this.clock.now();
		if (now - this.prunedAt < 1_000) return;
		this.prunedAt = now;
		for (const [id, started] of this.running) if (now - started > STALE_MS) this.running.delete(id);
		for (const queue of Object.values(this.queues)) {
			for (const [ticket, deadline] of queue.entries) if (now > deadline + STALE_MS) queue.entries.delete(ticket);
		}
	}
}
