import { sql } from "drizzle-orm";
import { Hono } from "hono";
import type { AppEnv } from "../app-env";
import { errorFields, log } from "../log";

export const healthRoutes = new Hono<AppEnv>().get("/healthz", async (c) => {
	try {
		await c.var.db.run((db) => db.execute(sql`select 1`));
		return c.json({ ok: true, db: "ok" as const });
	} catch (err) {
		log("warn", "health.db_unreachable", errorFields(err));
		return c.json({ ok: false, db: "unreachable" as const }, 503);
	}
});
