import { createMiddleware } from "hono/factory";
import type { AppEnv } from "../app-env";
import { ApiError } from "../errors";
import { hexPrefix } from "../hex";
import { ErrorCode } from "../protocol";
import { presentedCredential } from "./credentials";

const encoder = new TextEncoder();

async function digest(s: string): Promise<ArrayBuffer> {
	return crypto.subtle.digest("SHA-256", encoder.encode(s));
}

function keysOf(configured: string | undefined): string[] {
	return (configured ?? "")
		.split(",")
		.map((k) => k.trim())
		.filter(Boolean);
}

/**
 * Compares against every configured key in constant time: hashing first
 * makes the lengths equal, and no early exit reveals which key was closest.
 * Returns the key's id (for audit) when it matches one.
 */
export async function matchApiKey(presented: string, configured: string | undefined): Promise<string | undefined> {
	const keys = keysOf(configured);
	if (keys.length === 0) return undefined;
	const p = await digest(presented);
	let ok = false;
	for (const k of keys) {
		if (crypto.subtle.timingSafeEqual(p, await digest(k))) ok = true;
	}
	if (!ok) return undefined;
	return `api:${hexPrefix(p, 4)}`;
}

/**
 * `write`: operator keys (`API_KEYS`), which may do everything. `read`: those
 * or read-only keys (`READ_API_KEYS`), which may list, inspect and watch but
 * not enqueue, cancel, reconcile, mint or revoke.
 */
export type Scope = "read" | "write";

function apiKey(scope: Scope) {
	return createMiddleware<AppEnv>(async (c, next) => {
		const presented = presentedCredential(c.req.raw);
		if (!presented) {
			throw new ApiError(401, ErrorCode.UNAUTHORIZED, "missing API key: send Authorization: Bearer <key>");
		}
		// Both lists are always checked, so the time taken says nothing about which one matched.
		const [writeId, readId] = await Promise.all([
			matchApiKey(presented, c.env.API_KEYS),
			matchApiKey(presented, c.env.READ_API_KEYS),
		]);
		const keyId = writeId ?? readId;
		if (!keyId) throw new ApiError(401, ErrorCode.UNAUTHORIZED, "invalid API key");
		if (scope === "write" && !writeId) {
			throw new ApiError(403, ErrorCode.FORBIDDEN, "this API key is read-only; this route needs an operator key");
		}
		c.set("apiKeyId", keyId);
		c.set("apiKeyScope", writeId ? "write" : "read");
		await next();
	});
}

/** List, inspect, watch, scrape. */
export const readAccess = apiKey("read");
/** Enqueue, cancel, reconcile, mint and revoke agent tokens. */
export const writeAccess = apiKey("write");
