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
	flaps: { everyMs: number; fraction: number; durationMs: number };
	/** Past the default ack timeout (10 s), so commands are sent again. */
	slowMs: number;
	crashDownMs: number;
	outageMs: number;
	partitionMs: number;
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
				flaps: { everyMs: 1_000, fraction: 0.3, durationMs: 15_000 },
				slowMs: 15_000,
				crashDownMs: 2_000,
				outageMs: 8_000,
				partitionMs: 20_000,
			}
		: {
				agents: 200,
				fleets: 4,
				rate: 40,
				loadMs: 120_000,
				faultAtMs: 20_000,
				answerDelayMs: 1_000,
				settleMs: 300_000,
				flaps: { everyMs: 1_000, fraction: 0.3, durationMs: 60_000 },
				slowMs: 30_000,
				crashDownMs: 5_000,
				outageMs: 30_000,
				partitionMs: 40_000,
			};
}
