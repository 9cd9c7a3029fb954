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
 * setups have been finishing. Waiters are woken about as fast as setups
 * finish, each by its own timer, so nothing polls and no promise is resolved
 * from another object's context (workerd does not let one object's code run
 * on inside another's event). A waiter whose turn would come after its
 * deadline is told when to come back instead.
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

export class ConnectGate {
	private active = 0;
	/** Waiters so far, numbered in arrival order. */
	private tickets = 0;
	/** Waiters that have left the queue (admitted or given up). */
	private left = 0;
	private setupMs = INITIAL_SETUP_MS;

	constructor(
		readonly limit: number,
		private readonly clock: Clock = realClock,
	) {}

	/** Setups under way now. */
	get inFlight(): number {
		return this.active;
	}

	/** Runs `setup` once a place is free, waiting at most until `deadline` (a clock time) for one. */
	async run<T>(deadline: number, setup: () => Promise<T>): Promise<T> {
		// A newcomer goes straight in only when nobody is queued ahead of it.
		if (this.active >= this.limit || this.tickets > this.left) await this.queue(deadline);
		this.active++;
		const started = this.clock.now();
		try {
			return await setup();
		} finally {
			this.active--;
			// A moving average, so the spacing follows what setups cost now (a
			// pooler under load, a compute waking up) without one outlier ruling it.
			this.setupMs = 0.8 * this.setupMs + 0.2 * Math.max(1, this.clock.now() - started);
		}
	}

	/**
	 * Sleeps for as long as the waiters ahead should take at the rate setups
	 * finish, then takes a free place or sleeps again for what is left.
	 */
	private async queue(deadline: number): Promise<void> {
		const ticket = ++this.tickets;
		try {
			for (let share = FIRST_SLEEP_SHARE; ; share = 1) {
				// One place frees up about every `slot` ms.
				const slot = this.setupMs / this.limit;
				const wait = Math.ceil(Math.max(1, ticket - this.left) * slot);
				if (this.clock.now() + wait > deadline) throw new GateFullError(wait);
				// Never less than a quarter of a setup: places free up as setups end,
				// often several together, and checking more often only spins.
				await this.clock.sleep(Math.min(MAX_SLEEP_MS, Math.max(Math.ceil(this.setupMs / 4), Math.floor(wait * share))));
				if (this.active < this.limit) return;
			}
		} finally {
			this.left++;
		}
	}
}
