/**
 * Per-API-key enqueue limit, through the Workers Rate Limiting binding
 * (ENQUEUE_LIMITER in wrangler.toml; it also works under `wrangler dev`).
 * Placed after validation, so what it counts is requests that would write:
 * a malformed request is refused for what it is, and costs no database work.
 * A batch counts as one request.
 */
import { createMiddleware } from "hono/factory";
import type { AppEnv } from "./app-env";
import { ApiError } from "./errors";
import { log } from "./log";
import { ErrorCode } from "./protocol";

/** The binding's period: the longest a refused caller waits for a fresh window. */
const RETRY_AFTER_SECONDS = 10;

export const enqueueRateLimit = createMiddleware<AppEnv>(async (c, next) => {
	if (c.env.ENQUEUE_RATE_LIMIT === "off" || !c.env.ENQUEUE_LIMITER) return next();
	const key = c.get("apiKeyId");
	const { success } = await c.env.ENQUEUE_LIMITER.limit({ key });
	if (!success) {
		log("warn", "api.rate_limited", { apiKeyId: key, path: c.req.path });
		throw new ApiError(
			429,
			ErrorCode.RATE_LIMITED,
			`enqueue rate limit reached for this API key; retry after ${RETRY_AFTER_SECONDS} s`,
			undefined,
			{ "retry-after": String(RETRY_AFTER_SECONDS) },
		);
	}
	return next();
});
