/**
 * Scale of a run: the full run by default, `--quick` for a smoke run of a few
 * minutes. Rates are set below what the local stack sustains on a shared
 * 2-core machine (figure 2 measures that ceiling), so figure 1 measures
 * latency, not queueing.
 */
export interface Config {
	/** Switchyard (both Postgres kinds), per agent count: a rate it sustains, so the figure is latency, not queueing. */
	f1: { agents: number[]; count: number[]; rate: number[] };
	/** The floor and the peers: as many commands, at a higher rate (they sustain far more), to fit the run's time. */
	f1Others: { count: number; rate: number };
	f2: { agents: number; durationMs: number; concurrency: number; batch: number; batchConcurrency: number };
	f3: { steps: number[]; budgetMs: number };
	f4: { agents: number };
	f5: { chunks: number; rate: number };
	insert: { count: number; concurrency: number; durationMs: number };
	/** Postgres kinds figures 3 and 4 run against (they take minutes each). */
	heavyDbs: string[];
}

export function config(quick: boolean): Config {
	return quick
		? {
				f1: { agents: [1, 100], count: [200, 200], rate: [10, 10] },
				f1Others: { count: 200, rate: 20 },
				f2: { agents: 100, durationMs: 5_000, concurrency: 8, batch: 100, batchConcurrency: 2 },
				f3: { steps: [200, 500], budgetMs: 60_000 },
				f4: { agents: 200 },
				f5: { chunks: 200, rate: 100 },
				insert: { count: 300, concurrency: 16, durationMs: 3_000 },
				heavyDbs: ["real"],
			}
		: {
				f1: { agents: [1, 100], count: [2_000, 2_000], rate: [10, 10] },
				f1Others: { count: 2_000, rate: 50 },
				f2: { agents: 100, durationMs: 30_000, concurrency: 8, batch: 100, batchConcurrency: 2 },
				// Agents connect to the runtime past wrangler dev's proxy: two
				// descriptors each at rest, and three more for an object still live
				// after its connect. Each ramp stops before the step that would take
				// workerd past its open-file limit (see connectionRamp): 20,000 on
				// these machines, so 10,000 is announced and not reached.
				f3: { steps: [1_000, 2_500, 5_000, 7_500, 8_500, 9_000, 9_500, 10_000], budgetMs: 480_000 },
				// A reconnecting object stays live, SQLite files open, until its
				// catch-up read has had its turn at the connection gate: 5,000 of
				// them and their sockets need more descriptors than workerd may
				// open here (docs/performance.md); 4,000 fit.
				f4: { agents: 4_000 },
				f5: { chunks: 500, rate: 100 },
				insert: { count: 2_000, concurrency: 16, durationMs: 10_000 },
				heavyDbs: ["real"],
			};
}
