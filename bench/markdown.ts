/**
 * Prints the results table of a run as Markdown, for docs/performance.md:
 *   npm run bench:table -- bench/results/<date>.json
 * Every number comes from the file; nothing is computed but ratios.
 */
import { readFileSync } from "node:fs";
import type { Entry, Figure } from "./lib/results.ts";

const file = process.argv[2];
if (!file) {
	process.stderr.write("usage: npm run bench:table -- bench/results/<date>.json\n");
	process.exit(2);
}
const run = JSON.parse(readFileSync(file, "utf8")) as { figures: Figure[]; problems: { figure: string; system: string; error: string }[] };

/** `system` is how a run's problems name the column's system. */
const columns: { title: string; system: string; pick: (f: Figure) => Entry | undefined }[] = [
	{ title: "Switchyard, embedded PG", system: "switchyard/embedded", pick: (f) => f.entries.find((e) => e.system === "switchyard" && e.postgres === "embedded") },
	{ title: "Switchyard, real PG", system: "switchyard/real", pick: (f) => f.entries.find((e) => e.system === "switchyard" && e.postgres === "real") },
	{ title: "floor", system: "floor", pick: (f) => f.entries.find((e) => e.system.startsWith("floor") && e.postgres !== "embedded") },
	{ title: "NATS JetStream", system: "nats-jetstream", pick: (f) => f.entries.find((e) => e.system === "nats-jetstream") },
	{ title: "Fastify + BullMQ", system: "fastify-bullmq", pick: (f) => f.entries.find((e) => e.system === "fastify-bullmq") },
	{ title: "ws + pg", system: "ws-pg", pick: (f) => f.entries.find((e) => e.system === "ws-pg") },
];

function isLatency(e: Entry): boolean {
	return e.summary !== undefined && e.value === e.summary.median;
}

function cell(e: Entry | undefined, figure: Figure, system: string): string {
	if (!e) return run.problems.some((p) => p.figure === figure.key && p.system.startsWith(system)) ? "broke" : "—";
	if (isLatency(e) && e.summary) return `${e.summary.median} / ${e.summary.p99} (n ${e.summary.n})`;
	return `${e.value}`;
}

const lines = [
	`| figure | unit | ${columns.map((c) => c.title).join(" | ")} | real PG ÷ floor |`,
	`|---|---|${columns.map(() => "---").join("|")}|---|`,
];
for (const f of run.figures) {
	const entries = columns.map((c) => c.pick(f));
	const real = entries[1];
	const floor = entries[2];
	const ratio = real && floor && floor.value ? (real.value / floor.value).toFixed(2) : "—";
	const unit = f.entries.some(isLatency) ? `${f.unit}, p50 / p99` : f.unit;
	lines.push(`| ${f.title} | ${unit} | ${entries.map((e, i) => cell(e, f, columns[i]?.system ?? "")).join(" | ")} | ${ratio} |`);
}
process.stdout.write(`${lines.join("\n")}\n`);
if (run.problems.length) {
	process.stdout.write(`\nProblems:\n${run.problems.map((p) => `- ${p.figure} ${p.system}: ${p.error.split("\n")[0]?.slice(0, 300)}`).join("\n")}\n`);
}
