/** What a run records: every figure per system, with the load average around it. */
import { execFileSync } from "node:child_process";
import { cpus, freemem, release, totalmem } from "node:os";
import { readFileSync } from "node:fs";
import { loadAverage, versionOf } from "./procs.ts";
import { type Summary, summarize } from "./stats.ts";

export interface Entry {
	system: string;
	/** Which Postgres served it, where one was involved. */
	postgres?: string;
	/** The headline number of this entry, in the figure's unit. */
	value: number;
	summary?: Summary;
	/** Secondary measurements (sample counts, breakdowns, rates). */
	detail?: Record<string, unknown>;
	loadAverage: { start: number[]; end: number[] };
}

export interface Figure {
	key: string;
	title: string;
	unit: string;
	/** true: smaller is better (latency, memory); false: larger is better (rate). */
	lowerIsBetter: boolean;
	entries: Entry[];
}

export interface Problem {
	figure: string;
	system: string;
	error: string;
}

export class Results {
	readonly figures = new Map<string, Figure>();
	readonly problems: Problem[] = [];
	/** What each system ran with (observability, log level, rate limits, Postgres), by system name. */
	readonly settings: Record<string, Record<string, unknown>> = {};

	figure(key: string, title: string, unit: string, lowerIsBetter: boolean): Figure {
		let f = this.figures.get(key);
		if (!f) {
			f = { key, title, unit, lowerIsBetter, entries: [] };
			this.figures.set(key, f);
		}
		return f;
	}

	/** Runs one measurement; an exception is recorded as a problem (the run then exits non-zero). */
	async measure(
		fig: Figure,
		system: string,
		postgres: string | undefined,
		fn: () => Promise<{ value: number; samples?: number[]; detail?: Record<string, unknown> }>,
	): Promise<void> {
		const start = loadAverage();
		process.stdout.write(`[bench] ${fig.key} ${system}${postgres ? ` (${postgres} Postgres)` : ""} …\n`);
		try {
			const r = await fn();
			const entry: Entry = {
				system,
				postgres,
				value: Math.round(r.value * 100) / 100,
				summary: r.samples ? summarize(r.samples) : undefined,
				detail: r.detail,
				loadAverage: { start, end: loadAverage() },
			};
			fig.entries.push(entry);
			process.stdout.write(`[bench]   ${fig.key} ${system}: ${entry.value} ${fig.unit}${entry.summary ? ` (p50 ${entry.summary.median}, p99 ${entry.summary.p99}, n ${entry.summary.n})` : ""}\n`);
		} catch (err) {
			const error = err instanceof Error ? err.message : String(err);
			this.problems.push({ figure: fig.key, system: `${system}${postgres ? `/${postgres}` : ""}`, error });
			process.stdout.write(`[bench]   ${fig.key} ${system} BROKE: ${error.slice(0, 2000)}\n`);
		}
	}
}

export function machine(): Record<string, unknown> {
	const os = /^PRETTY_NAME="?(.*?)"?$/m.exec(readFileSync("/etc/os-release", "utf8"))?.[1];
	return {
		cpuModel: cpus()[0]?.model,
		cores: cpus().length,
		memoryBytes: totalmem(),
		freeMemoryBytesAtStart: freemem(),
		os: `${os ?? "linux"} (kernel ${release()})`,
	};
}

export function versions(): Record<string, string | undefined> {
	return {
		node: process.version,
		wrangler: versionOf(process.execPath, ["node_modules/wrangler/bin/wrangler.js", "--version"]),
		workerd: versionOf("node_modules/.bin/workerd", ["--version"]),
		postgres: versionOf("psql", ["-h", "127.0.0.1", "-U", "postgres", "-tAc", "show server_version"]),
		pglite: JSON.parse(readFileSync("node_modules/@electric-sql/pglite/package.json", "utf8")).version,
		natsServer: versionOf("nats-server", ["--version"]),
		redis: versionOf("redis-server", ["--version"]),
	};
}

/** The commit a run measured, read when it starts (an edit made while it runs is not what ran). */
export function gitCommit(): string {
	const git = (...args: string[]) => execFileSync("git", args, { encoding: "utf8" }).trim();
	return `${git("rev-parse", "HEAD")}${git("status", "--porcelain") ? " (with uncommitted changes)" : ""}`;
}
