import { app } from "./app";
import { setLogLevel } from "./log";
import { scheduled } from "./recovery";

export { AgentHub } from "./agent/agent-hub";
export type { AppType } from "./app";

export default {
	fetch: (request, env, ctx) => {
		setLogLevel(env.LOG_LEVEL);
		return app.fetch(request, env, ctx);
	},
	scheduled: (_controller, env, ctx) => {
		setLogLevel(env.LOG_LEVEL);
		ctx.waitUntil(scheduled(env));
	},
} satisfies ExportedHandler<Env>;
