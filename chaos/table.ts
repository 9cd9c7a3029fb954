/** The run's table: one row per scenario, every figure from its outcome. */
import type { Outcome } from "./scenario.ts";

const HEAD = ["scenario", "accepted", "refused", "completed", "lost", "invented", "unrun", "dup. delivered", "redeliveries", "settle s", "backlog s", "note"];

function row(o: Outcome): string[] {
	if (o.skipped) return [o.scenario, ...Array(10).fill("—"), `skipped: ${o.skipped}`];
	const v = o.verdict;
	const refused = Object.entries(o.answers ?? {})
		.filter(([status]) => status !== "201")
		.map(([status, n]) => `${n} ${status}`)
		.join(", ");
	const note = o.error ? `BROKE: ${o.error.split("\n")[0]?.slice(0, 120)}` : v && v.unanswered ? `${v.unanswered} written without an answer` : "";
	return [
		o.scenario,
		String(o.accepted ?? "—"),
		refused || "0",
		String(v?.completed ?? "—"),
		String(v?.lost ?? "—"),
		String(v?.invented ?? "—"),
		String(v?.unrun ?? "—"),
		String(o.duplicatesDelivered ?? "—"),
		String(v?.redeliveries ?? "—"),
		o.settleSeconds === undefined ? "—" : o.settleSeconds === null ? "not settled" : String(o.settleSeconds),
		String(o.backlogSeconds ?? "—"),
		note,
	];
}

export function printTable(outcomes: Outcome[]): void {
	const rows = [HEAD, ...outcomes.map(row)];
	const widths = HEAD.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
	const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ")} |`;
	const lines = [line(HEAD), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`, ...rows.slice(1).map(line)];
	process.stdout.write(`${lines.join("\n")}\n`);
}
