/**
 * One JSON object per line, so `wrangler tail` and the dashboard's log search
 * can filter on fields. Never pass tokens, keys or payloads in `fields`.
 */
import { hexPrefix } from "./hex";

type Level = "debug" | "info" | "warn" | "error";
const RANK: Record<Level, number> = { debug: 0, info: 1, warn: 2, error: 3 };
let threshold = RANK.info;

/**
 * The least severe level written (LOG_LEVEL: debug, info, warn, error;
 * default info). Module-wide: every caller in one isolate has the same env.
 */
export function setLogLevel(level: string | undefined): void {
	threshold = level !== undefined && level in RANK ? RANK[level as Level] : RANK.info;
}

/** Whether a line at `level` would be written (to skip building costly fields). */
export function logs(level: Level): boolean {
	return RANK[level] >= threshold;
}

export function log(level: Level, event: string, fields: Record<string, unknown> = {}): void {
	if (RANK[level] < threshold) return;
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

/**
 * What a log may say about a payload: its size and a digest, so two log
 * lines can be matched to the same payload without the payload (which may
 * hold secrets of the operator's) ever reaching the logs.
 */
export async function payloadFields(payload: unknown): Promise<{ payloadBytes: number; payloadSha256: string }> {
	const bytes = new TextEncoder().encode(JSON.stringify(payload ?? null));
	const digest = await crypto.subtle.digest("SHA-256", bytes);
	return {
		payloadBytes: bytes.length,
		payloadSha256: hexPrefix(digest, 8),
	};
}
