import { app } from "./app";
import { scheduled } from "./recovery";

export { AgentHub } from "./agent/agent-hub";
export type { AppType } from "./app";

export default {
	fetch: app.fetch,
	scheduled: (_controller, env, ctx) => ctx.waitUntil(scheduled(env)),
} satisfies ExportedHandler<Env>;
