import type { TimingVariables } from "hono/timing";
import type { HttpDatabase } from "./db/http";

/** The Hono environment every route shares. */
export type AppEnv = {
	Bindings: Env;
	Variables: TimingVariables & {
		/** `api:<16 hex>`: an HMAC of the key (auth/api-key.ts); names it in audit events without revealing it. */
		apiKeyId: string;
		/** What the presented key may do: `write` (API_KEYS) or `read` (READ_API_KEYS only). */
		apiKeyScope: "read" | "write";
		/** This request's database: Neon's HTTP query path, one request per statement. */
		db: HttpDatabase;
	};
};
