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
 * least a quarter of a setup apart, at most 10 s, closing in on its turn),
 * earlier arrivals sooner, and takes a place if one is free. No promise is
 * resolved from another object's context: workerd does not let one object's
 * code run on inside another's event. A request whose turn looks to come after its
 * deadline is told when to come back, at once or on a later check;
 * background work gives up only at its deadline.
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
/**
 * A waiter sleeps this share of its estimated wait, then the same share of
 * each new estimate, made with what has been learnt since: it closes in on
 * its turn in a handful of wakes, not one per second. A thousand waiters each
 * woken every second cost the isolate a thousand timers a second, taken from
 * the setups they wait for (seen in a 3,000-agent connect).
 */
const SLEEP_SHARE = 0.75;
/**
 * Nor more than this at a time: setups measured while a whole fleet wakes up
 * at once are slow, and an estimate made from them would leave the queue
 * asleep long after the rush is over.
 */
const MAX_SLEEP_MS = 10_000;
/** The longest "come back in" a refusal names. */
const MAX_RETRY_IN_MS = 60_000;

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
 * `request`: somebody is waiting on the answer (a scheduled job, a test).
 * `background`: an object's catch-up read or status flush, which may wait.
 * Requests are let in ahead of any queued background work, and `reserved`
 * places are theirs alone, so an API call or a health check still gets a
 * connection while a whole fleet's catch-ups are queued (a deploy).
 */
export type Priority = "request" | "background";

class WaitQueue {
	/** ticket -> deadline. */
	private readonly deadlines = new Map<number, number>();
	/** Live tickets in arrival order: where a waiter stands is a binary search. */
	private readonly order: number[] = [];
	private last = 0;

	get size(): number {
		return this.order.length;
	}

	add(deadline: number): number {
		this.deadlines.set(++this.last, deadline);
		this.order.push(this.last);
		return this.last;
	}

	remove(ticket: number): void {
		if (!this.deadlines.delete(ticket)) return;
		this.order.splice(this.ahead(ticket), 1);
	}

	/**
	 * How many waiters still queued arrived before `ticket`. Exactly, not
	 * "tickets given out before it less waiters gone": a woken waiter may take a
	 * place out of turn, and counting it as gone from ahead of everyone made
	 * the head of a long queue believe it was first and wake every few ms.
	 */
	ahead(ticket: number): number {
		let lo = 0;
		let hi = this.order.length;
		while (lo < hi) {
			const mid = (lo + hi) >>> 1;
			if ((this.order[mid] ?? 0) < ticket) lo = mid + 1;
			else hi = mid;
		}
		return lo;
	}

	/** Forgets waiters whose deadline passed long ago (see STALE_MS). */
	prune(now: number): void {
		for (const [ticket, deadline] of this.deadlines) if (now > deadline + STALE_MS) this.remove(ticket);
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

	/** Runs `setup` once a place is free, waiting at most until `deadline` (a clock time) for one. */
	async run<T>(deadline: number, setup: () => Promise<T>, priority: Priority = "request"): Promise<T> {
		this.prune();
		// A newcomer goes straight in only when nobody it must let go first is queued.
		const queued = this.queues[priority].size + this.requestsAhead(priority);
		if (this.free(priority) <= 0 || queued > 0) await this.queue(priority, deadline);
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

	/** Places this priority may take. */
	private places(priority: Priority): number {
		return priority === "request" ? this.limit : this.limit - this.reserved;
	}

	/** Places free to this priority now. */
	private free(priority: Priority): number {
		return this.places(priority) - this.running.size;
	}

	/** Queued requests that go before this priority: all of them for background work, none for a request. */
	private requestsAhead(priority: Priority): number {
		return priority === "background" ? this.queues.request.size : 0;
	}

	/**
	 * Sleeps for about as long as the waiters ahead should take at the rate
	 * setups finish, then takes a free place or sleeps again. Within a
	 * priority, order is roughly arrival order (earlier tickets sleep less).
	 */
	private async queue(priority: Priority, deadline: number): Promise<void> {
		const queue = this.queues[priority];
		const ticket = queue.add(deadline);
		try {
			for (let woken = false; ; woken = true) {
				this.prune();
				// A woken waiter takes any free place: one left for a waiter still
				// asleep would idle the gate and grow the queue (seen in a storm).
				// Background work only when no request is queued.
				const requestsAhead = this.requestsAhead(priority);
				if (woken && this.free(priority) > 0 && requestsAhead === 0) return;
				const ahead = queue.ahead(ticket) + requestsAhead;
				const wait = Math.ceil(((ahead + 1) * this.setupMs) / this.places(priority));
				// A request is told at once when its turn looks too far off (someone
				// is waiting on the answer); background work gives up only at its
				// deadline, since estimates made in a rush run long.
				const giveUp = priority === "request" ? this.clock.now() + wait > deadline : this.clock.now() >= deadline;
				if (giveUp) throw new GateFullError(Math.min(wait, MAX_RETRY_IN_MS));
				// Never less than a quarter of a setup: places free up as setups end,
				// often several together, and checking more often only spins.
				await this.clock.sleep(Math.min(MAX_SLEEP_MS, Math.max(Math.ceil(this.setupMs / 4), Math.floor(wait * SLEEP_SHARE))));
			}
		} finally {
			queue.remove(ticket);
		}
	}

	/** Forgets waiters and setups that can no longer be live (see STALE_MS); at most once a second. */
	private prune(): void {
		const now = this.clock.now();
		if (now - this.prunedAt < 1_000) return;
		this.prunedAt = now;
		for (const [id, started] of this.running) if (now - started > STALE_MS) this.running.delete(id);
		for (const queue of Object.values(this.queues)) queue.prune(now);
	}
}
