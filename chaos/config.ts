/**
 * Scale of a chaos run: `--quick` runs every scenario small (the whole suite
 * in a few minutes); the default runs longer loads and longer faults.
 */
export interface Config {
	/** Agents per scenario, split over `fleets` processes. */
	agents: number;
	fleets: number;
	/** Single enqueues per second from one process, for `loadMs`. */
	rate: number;
	loadMs: number;
	/** When the fault starts, counted from the start of the load. */
	faultAtMs: number;
	/** Agents answer after a random wait up to this, so drops fall between receipt and answer. */
	answerDelayMs: number;
	/** How long after the load ends every accepted command must be finished right. */
	settleMs: number;
	/** Drops a `fraction` of the connected sockets every `everyMs` until `target` drops, or `durationMs` at most. */
	flaps: { everyMs: number; fraction: number; durationMs: number; target: number };
	/** Revokes about `fraction` of the agents every `everyMs` for `durationMs`. */
	revoke: { everyMs: number; fraction: number; durationMs: number };
	/** Past the default ack timeout (10 s), so commands are sent again. */
	slowMs: number;
	crashDownMs: number;
	outageMs: number;
	partitionMs: number;
	/** How long after a fault is undone the suite waits for it to recover before calling it not recovered. */
	recoveryTimeoutMs: number;
	/** Agents that take up to `answerDelayMs` to answer, and a burst before each kill, keep hundreds of commands in flight. */
	crashLoop: { kills: number; everyMs: number; burst: number; answerDelayMs: number };
	pgRestart: { restarts: number; everyMs: number; downMs: number };
	bouncerRestart: { restarts: number; everyMs: number; downMs: number };
	dbBlackholeMs: number;
	dbSlow: { delayMs: number; durationMs: number };
	dbResets: { resets: number; everyMs: number };
	unclear: { share: number; durationMs: number };
	/** Probability of a cut at each protocol point (after a command, before an ack, after a result). */
	cuts: { agents: number; fleets: number; rate: number; probability: number; durationMs: number };
	clock: { skewSeconds: number; jumpSeconds: number; stepMs: number };
	/** The agents' link to the runtime: added latency each way for a while, then every connection reset at once, `resets` times. */
	agentLink: { delayMs: number; slowMs: number; resets: number; everyMs: number };
	hostile: { phaseMs: number; observers: number; backlog: number; ackFlood: number; httpRate: number; batches: number };
}

export function config(quick: boolean): Config {
	return quick
		? {
				agents: 50,
				fleets: 2,
				rate: 20,
				loadMs: 30_000,
				faultAtMs: 6_000,
				answerDelayMs: 1_000,
				settleMs: 120_000,
				flaps: { everyMs: 500, fraction: 0.3, durationMs: 15_000, target: 500 },
				revoke: { everyMs: 1_000, fraction: 0.1, durationMs: 15_000 },
				slowMs: 15_000,
				crashDownMs: 2_000,
				outageMs: 8_000,
				partitionMs: 20_000,
				recoveryTimeoutMs: 60_000,
				crashLoop: { kills: 3, everyMs: 20_000, burst: 200, answerDelayMs: 4_000 },
				pgRestart: { restarts: 2, everyMs: 15_000, downMs: 3_000 },
				bouncerRestart: { restarts: 2, everyMs: 12_000, downMs: 1_000 },
				dbBlackholeMs: 20_000,
				dbSlow: { delayMs: 200, durationMs: 15_000 },
				dbResets: { resets: 3, everyMs: 5_000 },
				unclear: { share: 0.1, durationMs: 15_000 },
				cuts: { agents: 50, fleets: 2, rate: 20, probability: 0.3, durationMs: 15_000 },
				clock: { skewSeconds: 300, jumpSeconds: 120, stepMs: 8_000 },
				agentLink: { delayMs: 150, slowMs: 10_000, resets: 2, everyMs: 5_000 },
				hostile: { phaseMs: 15_000, observers: 100, backlog: 10_200, ackFlood: 5_000, httpRate: 2_000, batches: 3 },
			}
		: {
				agents: 200,
				fleets: 4,
				rate: 40,
				loadMs: 90_000,
				faultAtMs: 15_000,
				answerDelayMs: 1_000,
				settleMs: 180_000,
				flaps: { everyMs: 500, fraction: 0.4, durationMs: 240_000, target: 10_000 },
				revoke: { everyMs: 1_000, fraction: 0.1, durationMs: 60_000 },
				slowMs: 30_000,
				crashDownMs: 5_000,
				outageMs: 30_000,
				partitionMs: 60_000,
				recoveryTimeoutMs: 90_000,
				// Ten minutes of kills, one every 50 s.
				crashLoop: { kills: 12, everyMs: 50_000, burst: 400, answerDelayMs: 4_000 },
				pgRestart: { restarts: 3, everyMs: 25_000, downMs: 5_000 },
				bouncerRestart: { restarts: 3, everyMs: 20_000, downMs: 2_000 },
				dbBlackholeMs: 60_000,
				dbSlow: { delayMs: 300, durationMs: 40_000 },
				dbResets: { resets: 6, everyMs: 10_000 },
				unclear: { share: 0.1, durationMs: 40_000 },
				cuts: { agents: 400, fleets: 4, rate: 80, probability: 0.45, durationMs: 120_000 },
				clock: { skewSeconds: 600, jumpSeconds: 300, stepMs: 20_000 },
				agentLink: { delayMs: 250, slowMs: 30_000, resets: 4, everyMs: 10_000 },
				hostile: { phaseMs: 40_000, observers: 1_000, backlog: 100_000, ackFlood: 50_000, httpRate: 2_000, batches: 10 },
			};
}
