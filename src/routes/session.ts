import { Hono } from "hono";
import type { AppEnv } from "../app-env";
import { readAccess } from "../auth/api-key";

/**
 * Who the presented API key is: its id (as audit events name it) and what it
 * may do. The console asks this at sign-in to tell a read-only key from an
 * operator key, and a wrong key (401) from a server it cannot reach.
 */
export const sessionRoutes = new Hono<AppEnv>().get("/whoami", readAccess, (c) =>
	c.json({ keyId: c.get("apiKeyId"), scope: c.get("apiKeyScope") }),
);
