import { createMiddleware } from "hono/factory";
import type { AppEnv } from "../app-env";
import { ApiError } from "../errors";
import { ErrorCode } from "../protocol";

/** `Authorization: Bearer <token>` → token, or undefined. */
export function bearerToken(header: string | undefined): string | undefined {
	const m = /^Bearer[ ]+([^\s]+)\s*$/i.exec(header ?? "");
	return m?.[1];
}

const encoder = new TextEncoder();

async function digest(s: string): Promise<ArrayBuffer> {
	return crypto.subtle.digest("SHA-256", encoder.encode(s));
}

/**
 * Compares against every configured key in constant time: hashing first
 * makes the lengths equal, and no early exit reveals which key was closest.
 * Returns the key's id (for audit) when it matches one.
 */
export async function matchApiKey(presented: string, configured: string | undefined): Promise<string | undefined> {
	const keys = (configured ?? "")
		.split(",")
		.map((k) => k.trim())
		.filter(Boolean);
	if (keys.length === 0) return undefined;
	const p = await digest(presented);
	let ok = false;
	for (const k of keys) {
		if (crypto.subtle.timingSafeEqual(p, await digest(k))) ok = true;
	}
	if (!ok) return undefined;
	const hex = [...new Uint8Array(p).slice(0, 4)].map((b) => b.toString(16).padStart(2, "0")).join("");
	return `api:${hex}`;
}

/** Operator authentication for every `/v1` route except the agent socket. */
export const requireApiKey = createMiddleware<AppEnv>(async (c, next) => {
	const token = bearerToken(c.req.header("authorization"));
	if (!token) {
		throw new ApiError(401, ErrorCode.UNAUTHORIZED, "missing API key: send Authorization: Bearer <key>");
	}
	const keyId = await matchApiKey(token, c.env.API_KEYS);
	if (!keyId) throw new ApiError(401, ErrorCode.UNAUTHORIZED, "invalid API key");
	c.set("apiKeyId", keyId);
	await next();
});
