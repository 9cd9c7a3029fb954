/**
 * What "the same command" means for an idempotency key: the fields that
 * decide what the command does and how it is delivered, with defaults
 * applied, hashed over canonical JSON. So `{"action":"x"}` and
 * `{"action":"x","priority":5}` are one command, and payload key order does
 * not matter; any other difference is another command.
 */
import type { EnqueueRequest } from "../protocol";

/** Bumped if the field set changes, so an old hash is never compared as if it were new. */
const VERSION = "v1";

/** JSON with object keys sorted at every depth: one text for one value. */
export function canonicalJson(value: unknown): string {
	if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
	if (value !== null && typeof value === "object") {
		const entries = Object.entries(value)
			.filter(([, v]) => v !== undefined)
			.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
		return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
	}
	return JSON.stringify(value);
}

export async function commandFingerprint(r: EnqueueRequest): Promise<string> {
	const defining = {
		action: r.action,
		payload: r.payload,
		sessionId: r.sessionId,
		priority: r.priority,
		ttlSeconds: r.ttlSeconds ?? null,
		timeoutSeconds: r.timeoutSeconds ?? null,
		maxAttempts: r.maxAttempts,
		ackTimeoutSeconds: r.ackTimeoutSeconds,
	};
	const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(canonicalJson(defining)));
	const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
	return `${VERSION}:${hex}`;
}
