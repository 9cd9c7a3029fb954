/** Summaries of samples: every figure in the results carries these. */
export interface Summary {
	n: number;
	min: number;
	median: number;
	p99: number;
	max: number;
	mean: number;
}

/** Nearest-rank percentile of sorted values. */
function rank(sorted: number[], p: number): number {
	if (sorted.length === 0) return Number.NaN;
	const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
	return sorted[i] ?? Number.NaN;
}

export function summarize(samples: number[]): Summary {
	const sorted = [...samples].sort((a, b) => a - b);
	const round = (x: number) => Math.round(x * 100) / 100;
	return {
		n: sorted.length,
		min: round(sorted[0] ?? Number.NaN),
		median: round(rank(sorted, 50)),
		p99: round(rank(sorted, 99)),
		max: round(sorted[sorted.length - 1] ?? Number.NaN),
		mean: round(sorted.reduce((a, b) => a + b, 0) / (sorted.length || 1)),
	};
}

/** Wall-clock milliseconds with sub-millisecond precision, comparable across processes on one machine. */
export function wallNow(): number {
	return performance.timeOrigin + performance.now();
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
