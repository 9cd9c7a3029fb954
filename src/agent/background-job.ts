/**
 * Work an agent's object does for nobody waiting (its catch-up read of
 * Postgres, its outbox flush, its read of the payloads its window needs): one run at a time, another run if asked for
 * meanwhile, and after a failure a retry on the object's alarm with
 * backoff, which also keeps new requests from hammering a database that is
 * down. A run that may die with its isolate leaves a safety-net timer, so
 * the alarm picks the work up; a safety net found due while the run is
 * merely slow (queued at the connection gate) is pushed out, not acted on.
 */
import { DbBusyError, DbSchemaBehindError, DbUnavailableError } from "../db/client";
import { errorFields, log } from "../log";
import type { State } from "./state";

const RETRY_BASE_MS = 1_000;
const RETRY_MAX_MS = 60_000;
/** Backstop for a run whose promise died with an evicted isolate. */
export const SAFETY_NET_MS = 5_000;
/**
 * A safety net due while its run is still under way is pushed out by as long
 * as the run has taken so far, within these bounds: an object that waits two
 * minutes at the gate costs a handful of alarms, not one every 5 s (see
 * docs/performance.md on the reconnect storm).
 */
const SAFETY_NET_MAX_MS = 60_000;

/** What a job needs of its object. */
export interface JobHost {
	readonly name: string;
	readonly state: State;
	/** Runs `fn` in one storage transaction (and writes the state it changed). */
	atomically<T>(fn: () => T): T;
	waitUntil(promise: Promise<unknown>): void;
	/** The object's alarm must fire by `at`. */
	wakeBy(at: number): Promise<void>;
}

type JobName = "catch_up" | "flush" | "payloads";

const FAILURES = { catch_up: "catch_up_failures", flush: "flush_failures", payloads: "payloads_failures" } as const;
const FAILED_EVENT = { catch_up: "agent.catch_up_failed", flush: "outbox.flush_failed", payloads: "agent.payloads_failed" } as const;

export class BackgroundJob {
	private running: Promise<void> | null = null;
	private again = false;
	private since = 0;

	constructor(
		private readonly host: JobHost,
		private readonly job: JobName,
		private readonly work: () => Promise<void>,
		/** Whether each run leaves a safety net (a run that is not on the hot path). */
		private readonly safetyNet: boolean,
	) {}

	get busy(): boolean {
		return this.running !== null;
	}

	private get failuresKey() {
		return FAILURES[this.job];
	}

	/**
	 * Starts a run, or asks the one under way to run once more. After a
	 * failure, waits for the retry timer (the alarm passes `retry`).
	 */
	request(retry = false): void {
		const { state } = this.host;
		if (!retry && (state.get(this.failuresKey) ?? 0) > 0 && (state.timer(this.job) ?? 0) > Date.now()) return;
		if (this.running) {
			this.again = true;
			return;
		}
		this.since = Date.now();
		this.running = this.loop().finally(() => {
			this.running = null;
		});
		this.host.waitUntil(this.running);
	}

	/** The alarm found this job's timer due. */
	onDue(now: number): void {
		if (!this.running) return this.request(true);
		const pushOut = Math.min(SAFETY_NET_MAX_MS, Math.max(SAFETY_NET_MS, now - this.since));
		this.host.atomically(() => this.host.state.setTimer(this.job, now + pushOut));
	}

	/** Waits at most `ms` for the run under way. */
	async settled(ms: number): Promise<void> {
		if (this.running) await Promise.race([this.running, new Promise((r) => setTimeout(r, ms))]);
	}

	private async loop(): Promise<void> {
		const { state } = this.host;
		if (this.safetyNet) {
			const at = Date.now() + SAFETY_NET_MS;
			this.host.atomically(() => state.setTimer(this.job, at));
			await this.host.wakeBy(at);
		}
		try {
			do {
				this.again = false;
				await this.work();
			} while (this.again);
			if (state.timer(this.job) !== undefined || state.get(this.failuresKey) !== undefined) {
				this.host.atomically(() => {
					state.clearTimer(this.job);
					state.delete(this.failuresKey);
				});
			}
		} catch (err) {
			const failures = (state.get(this.failuresKey) ?? 0) + 1;
			const at = Date.now() + retryDelay(failures, err);
			this.host.atomically(() => {
				state.set(this.failuresKey, failures);
				state.setTimer(this.job, at);
			});
			await this.host.wakeBy(at);
			// An outage passes by itself; a database missing a migration needs an operator.
			const passing = err instanceof DbUnavailableError && !(err instanceof DbSchemaBehindError);
			log(passing ? "warn" : "error", FAILED_EVENT[this.job], {
				agentId: this.host.name,
				failures,
				...errorFields(err),
			});
		}
	}
}

/** A busy gate knows when a turn would come; retrying before then only queues again. */
function retryDelay(failures: number, err: unknown): number {
	const ceiling = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** Math.min(failures - 1, 10));
	const backoff = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
	return Math.max(backoff, err instanceof DbBusyError ? err.retryInMs : 0);
}
