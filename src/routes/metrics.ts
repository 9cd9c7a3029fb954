import { Hono } from "hono";
import type { AppEnv } from "../app-env";
import { readAccess } from "../auth/api-key";
import { DbQueryError, DbUnavailableError } from "../db/client";
import type { HttpDatabase } from "../db/http";
import { errorFields, log } from "../log";
import { type Histogram, LATENCY_BUCKETS, type Snapshot, snapshot } from "../db/metrics";
import { COMMAND_STATUSES, OPEN_STATUSES } from "../protocol";

/**
 * A snapshot is reused for this long: however many Prometheus replicas
 * scrape, or however hard a dashboard refreshes, an isolate sends Postgres at
 * most one metrics query per period (docs/operations.md, "Metrics").
 */
export const METRICS_CACHE_MS = 5_000;
/**
 * Past METRICS_CACHE_MS a scrape still gets the last snapshot at once, up to
 * this age, while one query refreshes it: a slow or busy database never holds
 * scrapes (or the isolate's connections) waiting. The age is reported
 * (switchyard_metrics_snapshot_age_seconds).
 */
export const METRICS_STALE_MS = 60_000;

interface Exposition {
	url: string;
	at: number;
	text: string;
}

/** The isolate's last exposition and the database it came from (one URL in production; tests switch it). */
let last: Exposition | undefined;
/** The query under way, shared by the scrapes that have nothing recent enough to answer with. */
let refreshing: { url: string; done: Promise<Exposition> } | undefined;

function refresh(url: string, db: HttpDatabase, at: number): Promise<Exposition> {
	if (refreshing?.url === url) return refreshing.done;
	const done = db.run((d) => snapshot(d)).then((s) => {
		const e = { url, at, text: render(s) };
		last = e;
		return e;
	});
	const entry = { url, done };
	refreshing = entry;
	void done.then(
		() => {
			if (refreshing === entry) refreshing = undefined;
		},
		(err: unknown) => {
			if (refreshing === entry) refreshing = undefined;
			log("warn", "metrics.refresh_failed", errorFields(err));
		},
	);
	return done;
}

/** The exposition a scrape at `now` answers with (exported for tests, which move `now`). */
export async function exposition(url: string, db: HttpDatabase, waitUntil: (p: Promise<unknown>) => void, now = Date.now()): Promise<Exposition> {
	const usable = last?.url === url ? last : undefined;
	if (usable && now - usable.at < METRICS_CACHE_MS) return usable;
	if (usable && now - usable.at < METRICS_STALE_MS) {
		// Kept running past this answer; a failure is logged by refresh() and leaves the stale snapshot in place.
		waitUntil(refresh(url, db, now).catch(() => {}));
		return usable;
	}
	try {
		return await refresh(url, db, now);
	} catch (err) {
		// The shared query ran in another request's context: if that request
		// went away, its I/O was cancelled with it. A database error is the
		// database's answer for everyone; anything else is tried once more here.
		if (err instanceof DbUnavailableError || err instanceof DbQueryError) throw err;
		return refresh(url, db, now);
	}
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
	const e = await exposition(c.env.DATABASE_URL, c.var.db, (p) => c.executionCtx.waitUntil(p));
	const age = Math.max(0, Date.now() - e.at) / 1000;
	const text = `${e.text}# HELP switchyard_metrics_snapshot_age_seconds Age of the snapshot above (a scrape is answered from one up to ${METRICS_STALE_MS / 1000} s old while a fresh one is read).\n# TYPE switchyard_metrics_snapshot_age_seconds gauge\nswitchyard_metrics_snapshot_age_seconds ${age}\n`;
	return c.text(text, 200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" });
});
