/** The printed table: one row per figure, Switchyard on each Postgres beside the floor and the peers. */
import type { Entry, Results } from "./lib/results.ts";

const PEERS = ["nats-jetstream", "fastify-bullmq", "ws-pg"];

function cell(e: Entry | undefined): string {
	if (!e) return "—";
	const s = e.summary;
	// Latency rows show p50/p99; other rows show their value.
	return s && e.value === s.median ? `${s.median} / ${s.p99}` : String(e.value);
}

export function printTable(results: Results): void {
	const header = ["figure", "unit", "Switchyard embedded PG", "Switchyard real PG", "floor", ...PEERS, "ratio real/floor"];
	const rows: string[][] = [header];
	for (const f of results.figures.values()) {
		const find = (system: string, pg?: string) => f.entries.find((e) => e.system === system && (pg === undefined || e.postgres === pg));
		const real = find("switchyard", "real");
		const floor = f.entries.find((e) => e.system.startsWith("floor"));
		const ratio = real && floor && floor.value ? (real.value / floor.value).toFixed(2) : "—";
		const unit = f.entries.some((e) => e.summary && e.value === e.summary.median) ? `${f.unit} p50 / p99` : f.unit;
		rows.push([f.key, unit, cell(find("switchyard", "embedded")), cell(real), floor ? `${cell(floor)} (${floor.system})` : "—", ...PEERS.map((p) => cell(find(p))), ratio]);
	}
	const widths = header.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
	const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ")} |`;
	process.stdout.write(`\n${line(rows[0] ?? [])}\n|${widths.map((w) => "-".repeat(w + 2)).join("|")}|\n`);
	for (const r of rows.slice(1)) process.stdout.write(`${line(r)}\n`);
	process.stdout.write("\n");
}
