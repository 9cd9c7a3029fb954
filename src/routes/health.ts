import { sql } from "drizzle-orm";
import { Hono } from "hono";
import type { AppEnv } from "../app-env";
import type { HttpDatabase } from "../db/http";
import { errorFields, log } from "../log";

/**
 * A readiness answer is reused for this long: however often a load balancer
 * or a launcher polls, an isolate sends Postgres at most one probe per period.
 */
export const READY_PROBE_MS = 5_000;

interface Probe {
	at: number;
	ok: Promise<boolean>;
}

/** The last probe per database URL in this isolate (one URL in production; tests switch it). */
const probes = new Map<string, Probe>();

/** Runs `select 1` at most once per READY_PROBE_MS per database; concurrent callers share the probe under way. */
function ready(url: string, db: HttpDatabase): Promise<boolean> {
	const now = Date.now();
	const last = probes.get(url);
	if (last && now - last.at < READY_PROBE_MS) return last.ok;
	const ok = db.run((d) => d.execute(sql`select 1`)).then(
		() => true,
		(err: unknown) => {
			log("warn", "health.db_unreachable", errorFields(err));
			return false;
		},
	);
	probes.set(url, { at: now, ok });
	return ok;
}

export const healthRoutes = new Hono<AppEnv>()
	/** Liveness: the worker answers. Touches nothing, so it holds while Postgres is down or busy. */
	.get("/healthz", (c) => c.json({ ok: true }))
	/** Readiness: whether Postgres answered the isolate's latest probe (at most READY_PROBE_MS old). */
	.get("/readyz", async (c) => {
		if (await ready(c.env.DATABASE_URL, c.var.db)) return c.json({ ok: true, db: "ok" as const });
		c.header("Retry-After", "5");
		return c.json({ ok: false, db: "unreachable" as const }, 503);
	});
