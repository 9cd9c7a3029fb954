/**
 * Prints the results table of a run as Markdown, for docs/performance.md:
 *   npm run bench:table -- bench/results/<date>.json
 * Every number comes from the file; nothing is computed but ratios.
 */
import { readFileSync } from "node:fs";
import { cell, COLUMNS, DURABLE, ratio, unitOf } from "./lib/columns.ts";
import type { Figure } from "./lib/results.ts";

const file = process.argv[2];
if (!file) {
	process.stderr.write("usage: npm run bench:table -- bench/results/<date>.json\n");
	process.exit(2);
}
const run = JSON.parse(readFileSync(file, "utf8")) as {
	startedAt?: string;
	commit?: string;
	quick?: boolean;
	note?: string;
	machine?: { cpuModel?: string; cores?: number };
	figures: Figure[];
	problems: { figure: string; system: string; error: string }[];
	settings?: { systems?: Record<string, Record<string, unknown>> };
};

const real = COLUMNS.findIndex((c) => c.system === "switchyard/real");
const embedded = COLUMNS.findIndex((c) => c.system === "switchyard/embedded");
const floor = COLUMNS.findIndex((c) => c.system === "floor");
const durable = COLUMNS.findIndex((c) => c.system === `${DURABLE}/real`);
const lines: string[] = [];
lines.push(`Run of ${run.startedAt ?? "?"}${run.commit ? ` at commit ${run.commit}` : ""}${run.quick ? " (quick: small durations, a smoke run)" : ""} on ${run.machine?.cores ?? "?"} cores (${run.machine?.cpuModel ?? "?"}).`);
if (run.note) lines.push("", `**${run.note}**`);
lines.push(
	"",
	`| figure | unit | ${COLUMNS.map((c) => c.title).join(" | ")} | real PG ÷ floor | embedded PG ÷ floor | durable floor (real PG) ÷ floor | real PG ÷ durable floor (real PG) |`,
	`|---|---|${COLUMNS.map(() => "---").join("|")}|---|---|---|---|`,
);
for (const f of run.figures) {
	const entries = COLUMNS.map((c) => c.pick(f));
	lines.push(
		`| ${f.title} | ${unitOf(f)} | ${entries.map((e, i) => cell(e, f, run.problems, COLUMNS[i]?.system ?? "")).join(" | ")} | ${ratio(entries[real], entries[floor])} | ${ratio(entries[embedded], entries[floor])} | ${ratio(entries[durable], entries[floor])} | ${ratio(entries[real], entries[durable])} |`,
	);
}
const systems = run.settings?.systems ?? {};
if (Object.keys(systems).length) {
	lines.push("", "Settings each system ran with:", "");
	for (const [system, s] of Object.entries(systems)) lines.push(`- **${system}**: ${JSON.stringify(s)}`);
}
process.stdout.write(`${lines.join("\n")}\n`);
if (run.problems.length) {
	process.stdout.write(`\nProblems:\n${run.problems.map((p) => `- ${p.figure} ${p.system}: ${p.error.split("\n")[0]?.slice(0, 300)}`).join("\n")}\n`);
}
