/**
 * The run's tables, every figure from the outcomes: what was lost (each
 * must be 0), the load held, the faults survived, and the hostile inputs.
 */
import type { Outcome } from "./scenario.ts";

type Table = { head: string[]; rows: string[][] };

function render(t: Table): string {
	const rows = [t.head, ...t.rows];
	const widths = t.head.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
	const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ")} |`;
	return [line(t.head), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`, ...t.rows.map(line)].join("\n");
}

const n = (x: number | null | undefined) => (x === undefined ? "—" : x === null ? "n/a" : String(x));

function losses(outcomes: Outcome[]): Table {
	const head = ["scenario", "accepted", "refused", "completed", "lost", "invented", "ended w/o stop", "run twice", "dup. output bytes", "unrun", "dup. delivered", "settle s", "note"];
	const rows = outcomes.map((o) => {
		if (o.skipped) return [o.scenario, ...Array(head.length - 2).fill("—"), `skipped: ${o.skipped}`];
		const v = o.verdict;
		const refused = Object.entries(o.answers ?? {})
			.filter(([status]) => status !== "201")
			.map(([status, k]) => `${k} ${status}`)
			.join(", ");
		const crashed = o.pgbouncerCrashes?.length ? `PgBouncer crashed ${o.pgbouncerCrashes.length}× (restarted); ` : "";
		const note = crashed + (o.error ? `BROKE: ${o.error.split("\n")[0]?.slice(0, 120)}` : v?.unanswered ? `${v.unanswered} written without an answer` : "");
		return [
			o.scenario,
			n(o.accepted),
			refused || "0",
			n(v?.completed),
			n(v?.lost),
			n(v?.invented),
			n(v?.endedWithoutStop),
			n(o.executedMoreThanOnce),
			n(v?.duplicatedOutputBytes),
			n(v?.unrun),
			n(o.duplicatesDelivered),
			o.settleSeconds === undefined ? "—" : o.settleSeconds === null ? "not settled" : String(o.settleSeconds),
			note,
		];
	});
	return { head, rows };
}

function load(outcomes: Outcome[]): Table {
	const head = ["scenario", "agents", "cmd/s", "enq→done p50 ms", "p99 ms", "peak open", "peak outbox", "peak runtime MB", "peak PG conns"];
	const rows = outcomes
		.filter((o) => o.load)
		.map((o) => {
			const l = o.load;
			return [o.scenario, n(l?.agents), n(l?.commandsPerSecond), n(l?.enqueueToCompletedMs.p50), n(l?.enqueueToCompletedMs.p99), n(l?.peakOpenCommands), n(l?.peakOutboxDepth), n(l?.peakRuntimeMemoryMB), n(l?.peakPostgresConnections)];
		});
	return { head, rows };
}

function faults(outcomes: Outcome[]): Table {
	const head = ["scenario", "faults", "recovery p50 s", "p99 s", "not recovered", "backlog s"];
	const rows = outcomes
		.filter((o) => o.faults)
		.map((o) => [
			o.scenario,
			Object.entries(o.faults ?? {})
				.map(([k, c]) => `${c} ${k}`)
				.join(", ") || "—",
			n(o.recoverySeconds?.p50),
			n(o.recoverySeconds?.p99),
			n(o.recoverySeconds?.notRecovered),
			n(o.backlogSeconds),
		]);
	return { head, rows };
}

function hostile(outcomes: Outcome[]): Table {
	const head = ["input", "tried", "got"];
	const rows = outcomes.flatMap((o) =>
		Object.entries(o.hostile ?? {}).map(([k, h]) => [
			k,
			String(h.tried),
			Object.entries(h.got)
				.map(([g, c]) => `${c}× ${g}`)
				.join(", "),
		]),
	);
	return { head, rows };
}

export function printTable(outcomes: Outcome[]): void {
	const parts = [losses(outcomes), load(outcomes), faults(outcomes), hostile(outcomes)].filter((t) => t.rows.length);
	process.stdout.write(`${parts.map(render).join("\n\n")}\n`);
	for (const o of outcomes) {
		const c = o.fault?.canary as { before: unknown; during: unknown } | undefined;
		if (c) process.stdout.write(`canary (${o.scenario}): before ${JSON.stringify(c.before)}, during ${JSON.stringify(c.during)}\n`);
	}
}
