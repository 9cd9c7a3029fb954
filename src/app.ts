import { Hono } from "hono";
import type { AppEnv } from "./app-env";
import { bodyLimit } from "hono/body-limit";
import { createMiddleware } from "hono/factory";
import { httpDb } from "./db/http";
import { ApiError, notFound, onError } from "./errors";
import { ErrorCode, MAX_BODY_BYTES } from "./protocol";
import { agentRoutes } from "./routes/agents";
import { commandRoutes } from "./routes/commands";
import { consoleRoutes } from "./routes/console";
import { fanoutRoutes } from "./routes/fanouts";
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
	.route("/", fanoutRoutes)
	.route("/", sessionRoutes);

/** Each statement a route runs is one request on Neon's HTTP path: nothing to open first or close after. */
const databasePerRequest = createMiddleware<AppEnv>(async (c, next) => {
	c.set("db", httpDb(c.env));
	await next();
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
