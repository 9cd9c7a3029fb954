import { Hono } from "hono";
import type { AppEnv } from "./app-env";
import { bodyLimit } from "hono/body-limit";
import { createMiddleware } from "hono/factory";
import { requestDb } from "./db/client";
import { ApiError, notFound, onError } from "./errors";
import { ErrorCode, MAX_BODY_BYTES } from "./protocol";
import { agentRoutes } from "./routes/agents";
import { commandRoutes } from "./routes/commands";
import { consoleRoutes } from "./routes/console";
import { healthRoutes } from "./routes/health";
import { metricsRoutes } from "./routes/metrics";
import { sessionRoutes } from "./routes/session";

const v1 = new Hono<AppEnv>()
	.use(
		bodyLimit({
			maxSize: MAX_BODY_BYTES,
			onError: () => {
				throw new ApiError(413, ErrorCode.PAYLOAD_TOO_LARGE, `request body is over ${MAX_BODY_BYTES} bytes`);
			},
		}),
	)
	.route("/", commandRoutes)
	.route("/", agentRoutes)
	.route("/", sessionRoutes);

/** Opens nothing until a route queries; ends the connection once the response has gone. */
const databasePerRequest = createMiddleware<AppEnv>(async (c, next) => {
	const db = requestDb(c.env);
	c.set("db", db);
	try {
		await next();
	} finally {
		c.executionCtx.waitUntil(db.close());
	}
});

export const app = new Hono<AppEnv>()
	.use(databasePerRequest)
	.route("/", healthRoutes)
	.route("/", metricsRoutes)
	.route("/v1", v1)
	.route("/", consoleRoutes);

app.onError(onError);
app.notFound(notFound);

/** The API's type, from which a typed client (`hono/client`) is derived instead of written twice. */
export type AppType = typeof app;
