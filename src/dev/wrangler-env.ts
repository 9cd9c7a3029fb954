/** The environment `wrangler dev` runs with, for the launcher and the benchmark alike. */

/**
 * wrangler's environment. By default wrangler traces every `sql.exec` of a
 * Durable Object on the runtime's own thread (local observability) and
 * writes a debug log file of everything it prints; both cost CPU on every
 * command (docs/performance.md) and neither is needed to run the product,
 * whose logs are the JSON lines wrangler prints. Both are off unless
 * `SWITCHYARD_LOCAL_OBSERVABILITY=1` turns tracing back on; a non-empty
 * `WRANGLER_WRITE_LOGS` the user set is kept.
 */
export function wranglerEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
	const on = /^(1|true|on|yes)$/i.test(env.SWITCHYARD_LOCAL_OBSERVABILITY ?? "");
	return { ...env, X_LOCAL_OBSERVABILITY: on ? "true" : "false", WRANGLER_WRITE_LOGS: env.WRANGLER_WRITE_LOGS || "false" };
}
