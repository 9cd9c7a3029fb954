import { app } from "./app";

export { AgentHub } from "./agent/agent-hub";
export type { AppType } from "./app";

export default {
	fetch: app.fetch,
} satisfies ExportedHandler<Env>;
