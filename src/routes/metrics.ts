import { Hono } from "hono";
import type { AppEnv } from "../app-env";
import { readAccess } from "../auth/api-key";
import type { HttpDatabase } from "../db/http";
import { type Histogram, LATENCY_BUCKETS, type Snapshot, snapshot } from "../db/metrics";
import { COMMAND_STATUSES, OPEN_STATUSES } from "../protocol";

/**
 * A snapshot is reused for this long: however many Prometheus replicas
 * scrape, or however hard a dashboard refreshes, an isolate sends Postgres at
 * most one metrics query per period (docs/operations.md, "Metrics").
 */
export const METRICS_CACHE_MS = 5_000;

/** The isolate's last exposition and the database it came from (one URL in production; tests switch it). */
let cached: { url: string; at: number; text: Promise<string> } | undefined;

/**
 * Concurrent scrapes share the query under way, and the text rendered from
 * it; a failed one is not kept, so the next scrape asks again.
 */
function cachedExposition(url: string, db: HttpDatabase): Promise<string> {
	const now = Date.now();
	if (cached && cached.url === url && now - cached.at < METRICS_CACHE_MS) return cached.text;
	const entry = { url, at: now, text: db.run((d) => snapshot(d)).then(render) };
	cached = entry;
	entry.text.catch(() => {
		if (cached === entry) cached = undefined;
	});
	return entry.text;
}

/** Prometheus text exposition (version 0.0.4). */
export function render(s: Snapshot): string {
	const lines: string[] = [];
	const metric = (name: string, type: string, help: string, samples: [string, number][]) => {
		lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
		for (const [labels, value] of samples) lines.push(`${name}${labels} ${value}`);
	};
	const hist = (name: string, help: string, h: Histogram) =>
		metric(name, "histogram", help, [
			...LATENCY_BUCKETS.map((le, i): [string, number] => [`_bucket{le="${le}"}`, h.buckets[i] ?? 0]),
			['_bucket{le="+Inf"}', h.count],
			["_sum", h.sum],
			["_count", h.count],
		]);
	metric("switchyard_agents_connected", "gauge", "Agents with an open socket.", [["", s.agentsConnected]]);
	// Open statuses only: counting the retained finished rows would cost a
	// scan of the history per scrape. Finished commands are counted by
	// switchyard_command_transitions_total{to=...}.
	metric(
		"switchyard_commands",
		"gauge",
		"Open commands by current status (finished ones: switchyard_command_transitions_total).",
		OPEN_STATUSES.map((st) => [`{status="${st}"}`, s.byStatus[st] ?? 0]),
	);
	metric(
		"switchyard_command_transitions_total",
		"counter",
		"Status transitions recorded, by the status entered.",
		COMMAND_STATUSES.map((st) => [`{to="${st}"}`, s.transitions[st] ?? 0]),
	);
	metric("switchyard_redeliveries_total", "counter", "Commands sent again (ack timeout, reconnect, lost).", [
		["", s.redeliveries],
	]);
	metric("switchyard_pending_backlog", "gauge", "Commands waiting to be dispatched.", [["", s.byStatus.pending ?? 0]]);
	metric("switchyard_pending_oldest_seconds", "gauge", "Age of the oldest pending command.", [
		["", s.oldestPendingSeconds ?? 0],
	]);
	metric("switchyard_outbox_depth", "gauge", "Status changes agent objects still hold for Postgres.", [
		["", s.outboxDepth],
	]);
	hist("switchyard_enqueue_to_dispatch_seconds", "From enqueue to first dispatch.", s.enqueueToDispatch);
	hist("switchyard_dispatch_to_completion_seconds", "From first dispatch to a finished status.", s.dispatchToCompletion);
	return `${lines.join("\n")}\n`;
}

export const metricsRoutes = new Hono<AppEnv>().get("/metrics", readAccess, async (c) => {
	return c.text(await cachedExposition(c.env.DATABASE_URL, c.var.db), 200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" });
});
