/** The environment `wrangler dev` runs with, for the launcher and the benchmark alike. */

const on = (value: string | undefined) => /^(1|true|on|yes)$/i.test(value ?? "");

/**
 * wrangler's environment. By default wrangler traces every `sql.exec` of a
 * Durable Object on the runtime's own thread (local observability), writes
 * a debug log file of everything it prints, and keeps a DevTools session
 * on the runtime that turns every `console.log` into an inspector event,
 * relayed through its proxy's workerd to its Node process. All three cost
 * CPU on every command (docs/performance.md) and none is needed to run the
 * product, whose logs are the JSON lines workerd prints on its own.
 *
 * They are off unless asked for: `SWITCHYARD_LOCAL_OBSERVABILITY=1` turns
 * tracing back on, `SWITCHYARD_DEVTOOLS=1` the DevTools session (breakpoints,
 * profiles), and a non-empty `WRANGLER_WRITE_LOGS` the user set is kept.
 * wrangler has no switch for the session on its command line; it leaves
 * it out when it believes it runs in VS Code's debug terminal
 * (VSCODE_INSPECTOR_OPTIONS set), which is the switch used here.
 */
export function wranglerEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
	const out: NodeJS.ProcessEnv = {
		...env,
		X_LOCAL_OBSERVABILITY: on(env.SWITCHYARD_LOCAL_OBSERVABILITY) ? "true" : "false",
		WRANGLER_WRITE_LOGS: env.WRANGLER_WRITE_LOGS || "false",
	};
	// A user who is in VS Code's debug terminal keeps what it set.
	if (!on(env.SWITCHYARD_DEVTOOLS) && !env.VSCODE_INSPECTOR_OPTIONS) out.VSCODE_INSPECTOR_OPTIONS = "switchyard:devtools-off";
	return out;
}

/** Whether wrangler keeps its DevTools session on the runtime, given the environment wranglerEnv made. */
export function devtoolsOn(env: NodeJS.ProcessEnv): boolean {
	return !env.VSCODE_INSPECTOR_OPTIONS;
}
