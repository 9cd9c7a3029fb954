/**
 * Scale of a run: the full run by default, `--quick` for a smoke run of a few
 * minutes. Rates are set below what the local stack sustains on a shared
 * 2-core machine (figure 2 measures that ceiling), so figure 1 measures
 * latency, not queueing.
 */
export interface Config {
	/** Switchyard on real PostgreSQL, per agent count. */
	f1: { agents: number[]; count: number[]; rate: number[] };
	/** Switchyard on embedded PGlite, the floor and the peers: fewer commands, to fit the run's time. */
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
				f1: { agents: [1, 100], count: [200, 100], rate: [10, 5] },
				f1Others: { count: 200, rate: 20 },
				f2: { agents: 100, durationMs: 5_000, concurrency: 8, batch: 100, batchConcurrency: 2 },
				f3: { steps: [200, 500], budgetMs: 60_000 },
				f4: { agents: 200 },
				f5: { chunks: 200, rate: 100 },
				insert: { count: 300, concurrency: 16, durationMs: 3_000 },
				heavyDbs: ["real"],
			}
		: {
				f1: { agents: [1, 100], count: [2_000, 1_000], rate: [10, 5] },
				f1Others: { count: 500, rate: 25 },
				f2: { agents: 100, durationMs: 20_000, concurrency: 8, batch: 100, batchConcurrency: 2 },
				f3: { steps: [1_000, 5_000, 10_000], budgetMs: 150_000 },
				f4: { agents: 5_000 },
				f5: { chunks: 500, rate: 100 },
				insert: { count: 2_000, concurrency: 16, durationMs: 10_000 },
				heavyDbs: ["real"],
			};
}
