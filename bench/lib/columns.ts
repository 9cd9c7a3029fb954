/**
 * The columns of a results table, shared by the printed table (table.ts)
 * and the Markdown one (markdown.ts): Switchyard on each Postgres at the
 * runtime's own address, Switchyard as `npm run dev` serves it (through
 * wrangler dev's proxy), the floor and the peers; ratios to the floor.
 */
import type { Entry, Figure } from "./results.ts";

export interface Column {
	title: string;
	/** How a run's problems name this column's system. */
	system: string;
	pick(f: Figure): Entry | undefined;
}

/** The bare floor with Postgres put back: floor/durable.ts. */
export const DURABLE = "floor:durable-do";

const one = (system: string, postgres?: string) => (f: Figure) =>
	f.entries.find((e) => e.system === system && (postgres === undefined || e.postgres === postgres));

export const COLUMNS: Column[] = [
	{ title: "Switchyard, embedded PG", system: "switchyard/embedded", pick: one("switchyard", "embedded") },
	{ title: "Switchyard, real PG", system: "switchyard/real", pick: one("switchyard", "real") },
	{ title: "Switchyard via dev proxy, embedded PG", system: "switchyard:dev-proxy/embedded", pick: one("switchyard:dev-proxy", "embedded") },
	{ title: "Switchyard via dev proxy, real PG", system: "switchyard:dev-proxy/real", pick: one("switchyard:dev-proxy", "real") },
	// The bare object, or for the durability figures the INSERTs on real PostgreSQL.
	{ title: "floor", system: "floor", pick: (f) => f.entries.find((e) => e.system.startsWith("floor") && !e.system.startsWith(DURABLE) && e.postgres !== "embedded") },
	{ title: "durable floor, embedded PG", system: `${DURABLE}/embedded`, pick: one(DURABLE, "embedded") },
	{ title: "durable floor, real PG", system: `${DURABLE}/real`, pick: one(DURABLE, "real") },
	{ title: "NATS JetStream", system: "nats-jetstream", pick: one("nats-jetstream") },
	{ title: "Fastify + BullMQ", system: "fastify-bullmq", pick: one("fastify-bullmq") },
	{ title: "ws + pg", system: "ws-pg", pick: one("ws-pg") },
];

export function isLatency(e: Entry): boolean {
	return e.summary !== undefined && e.value === e.summary.median;
}

/** Roles left out of a CPU cell's breakdown: the load generators are the client. */
const LOAD = /^load:/;

function short(role: string): string {
	return role.replace(/ \((workerd|node)\)$/, "").replace(/^postgres backends$/, "pg");
}

/** One cell: latency p50 / p99, a rate with where it peaked, CPU with its breakdown. */
export function cell(e: Entry | undefined, figure: Figure, problems: { figure: string; system: string }[], system: string): string {
	if (!e) return problems.some((p) => p.figure === figure.key && p.system.startsWith(system)) ? "broke" : "—";
	if (isLatency(e) && e.summary) return `${e.summary.median} / ${e.summary.p99} (n ${e.summary.n})`;
	const d = e.detail ?? {};
	if (typeof d.bestConcurrency === "number") {
		const r = d.receiptLatencyMs as { median?: number; p99?: number } | undefined;
		return `${Math.round(e.value)} @${d.bestConcurrency} (${r?.median ?? "?"} / ${r?.p99 ?? "?"} ms)`;
	}
	if (figure.key.startsWith("f2.cpu") && d.cpuMsPerCommand) {
		const parts = Object.entries(d.cpuMsPerCommand as Record<string, number>)
			.filter(([role, ms]) => !LOAD.test(role) && ms >= 0.005)
			.map(([role, ms]) => `${short(role)} ${ms}`);
		return `${e.value} (${parts.join(", ")})`;
	}
	return `${e.value}`;
}

/** a ÷ b of two entries' headline values, to two places. */
export function ratio(a: Entry | undefined, b: Entry | undefined): string {
	return a && b && b.value ? (a.value / b.value).toFixed(2) : "—";
}

export function unitOf(f: Figure): string {
	if (f.entries.some(isLatency)) return `${f.unit}, p50 / p99`;
	if (f.key.startsWith("f2.throughput")) return `${f.unit} @ calls in flight (receipt p50 / p99 ms)`;
	if (f.key.startsWith("f2.cpu")) return `CPU ${f.unit} / command (by process)`;
	return f.unit;
}
