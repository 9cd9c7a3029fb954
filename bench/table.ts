/** The printed table: one row per figure, the same columns as `npm run bench:table` (lib/columns.ts). */
import { cell, COLUMNS, DURABLE, ratio } from "./lib/columns.ts";
import type { Problem, Results } from "./lib/results.ts";

export function printTable(results: Results, problems: Problem[] = results.problems): void {
	const real = COLUMNS.findIndex((c) => c.system === "switchyard/real");
	const floor = COLUMNS.findIndex((c) => c.system === "floor");
	const durable = COLUMNS.findIndex((c) => c.system === `${DURABLE}/real`);
	const header = ["figure", ...COLUMNS.map((c) => c.title), "real/floor", "durable/floor", "real/durable"];
	const rows: string[][] = [header];
	for (const f of results.figures.values()) {
		const entries = COLUMNS.map((c) => c.pick(f));
		rows.push([f.key, ...entries.map((e, i) => cell(e, f, problems, COLUMNS[i]?.system ?? "")), ratio(entries[real], entries[floor]), ratio(entries[durable], entries[floor]), ratio(entries[real], entries[durable])]);
	}
	const widths = header.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
	const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ")} |`;
	process.stdout.write(`\n${line(rows[0] ?? [])}\n|${widths.map((w) => "-".repeat(w + 2)).join("|")}|\n`);
	for (const r of rows.slice(1)) process.stdout.write(`${line(r)}\n`);
	process.stdout.write("\n");
}
