/** Scale of a run: the full run by default, `--quick` for a smoke run of a few minutes. */
export interface Config {
	f1: { agents: number[]; count: number; rate: number };
	f2: { agents: number; durationMs: number; concurrency: number; batch: number; batchConcurrency: number };
	f3: { steps: number[] };
	f4: { agents: number };
	f5: { chunks: number; rate: number };
	insert: { count: number; concurrency: number; durationMs: number };
}

export function config(quick: boolean): Config {
	return quick
		? {
				f1: { agents: [1, 100], count: 300, rate: 20 },
				f2: { agents: 100, durationMs: 5_000, concurrency: 8, batch: 100, batchConcurrency: 2 },
				f3: { steps: [200, 500] },
				f4: { agents: 300 },
				f5: { chunks: 200, rate: 100 },
				insert: { count: 300, concurrency: 16, durationMs: 3_000 },
			}
		: {
				f1: { agents: [1, 100], count: 2_000, rate: 100 },
				f2: { agents: 100, durationMs: 30_000, concurrency: 8, batch: 100, batchConcurrency: 2 },
				f3: { steps: [1_000, 5_000, 10_000] },
				f4: { agents: 5_000 },
				f5: { chunks: 1_000, rate: 100 },
				insert: { count: 2_000, concurrency: 16, durationMs: 10_000 },
			};
}
