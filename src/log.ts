/**
 * One JSON object per line, so `wrangler tail` and the dashboard's log search
 * can filter on fields. Never pass tokens, keys or payloads in `fields`.
 */
type Level = "debug" | "info" | "warn" | "error";

export function log(level: Level, event: string, fields: Record<string, unknown> = {}): void {
	const line = JSON.stringify({ level, event, ...fields });
	if (level === "error") console.error(line);
	else if (level === "warn") console.warn(line);
	else console.log(line);
}

/** What of an unknown error is safe to log: its name, message and stack, never a driver's whole object. */
export function errorFields(err: unknown): Record<string, unknown> {
	if (err instanceof Error) {
		const cause = err.cause instanceof Error ? err.cause.message : undefined;
		return { error: err.name, message: err.message, cause, stack: err.stack };
	}
	return { error: String(err) };
}
