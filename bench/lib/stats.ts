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

/** How far the system clock has stepped since this process started (see wallNow). */
let stepped = 0;

/**
 * Wall-clock milliseconds with sub-millisecond precision, comparable across
 * processes on one machine: one process stamps a send, another its receipt
 * or completion. `performance.timeOrigin` is fixed when a process starts, so
 * after a step of the system clock every process started before it would
 * disagree with every one started after, for good (on 2026-12-04 this
 * machine's clock stepped by about 9 s mid-run, and figure 2's rates on real
 * PostgreSQL came out negative). The monotonic reading follows the system
 * clock whenever the two part by more than Date.now()'s resolution.
 */
export function wallNow(): number {
	const t = performance.timeOrigin + performance.now() + stepped;
	const drift = Date.now() - t;
	if (drift > 2 || drift < -2) stepped += drift;
	return performance.timeOrigin + performance.now() + stepped;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
