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
 * The configured keys' digests, by the setting's text. Every request
 * compared the presented key against each configured one by hashing both
 * (two lists, three to six digests per request); the configured side only
 * changes with a deploy, which starts new isolates anyway. A few settings at
 * most, so the map stays tiny.
 */
const configuredDigests = new Map<string, Promise<ArrayBuffer[]>>();

function digestsOf(configured: string): Promise<ArrayBuffer[]> {
	let digests = configuredDigests.get(configured);
	if (!digests) {
		digests = Promise.all(keysOf(configured).map(digest));
		if (configuredDigests.size > 8) configuredDigests.clear();
		configuredDigests.set(configured, digests);
	}
	return digests;
}

/**
 * Compares against every configured key in constant time: hashing first
 * makes the lengths equal, and no early exit reveals which key was closest.
 */
export async function matchApiKey(presented: string | ArrayBuffer, configured: string | undefined): Promise<boolean> {
	const keys = await digestsOf(configured ?? "");
	if (keys.length === 0) return false;
	const p = typeof presented === "string" ? await digest(presented) : presented;
	let ok = false;
	for (const k of keys) {
		if (crypto.subtle.timingSafeEqual(p, k)) ok = true;
	}
	return ok;
}

/** The HMAC key behind key ids, imported once per secret rather than per request. */
const idKeys = new Map<string, Promise<CryptoKey>>();

/**
 * A key's id in audit events, logs and rate limits (`api:` and 16 hex): an
 * HMAC of the key under the deployment's AGENT_TOKEN_SECRET. A plain hash in
 * an exported audit trail would let anyone confirm a guessed key offline;
 * keyed by a secret, the id names the key and says nothing about it. Ids
 * change when AGENT_TOKEN_SECRET does.
 */
export async function apiKeyId(presented: string, secret: string): Promise<string> {
	let key = idKeys.get(secret);
	if (!key) {
		key = crypto.subtle.importKey("raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
		// A test or a rotation may bring another secret; never more than a couple live.
		if (idKeys.size > 8) idKeys.clear();
		idKeys.set(secret, key);
	}
	return `api:${hexPrefix(await crypto.subtle.sign("HMAC", await key, encoder.encode(`api-key-id:${presented}`)), 8)}`;
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
		const p = await digest(presented);
		const [writer, reader] = await Promise.all([matchApiKey(p, c.env.API_KEYS), matchApiKey(p, c.env.READ_API_KEYS)]);
		if (!writer && !reader) throw new ApiError(401, ErrorCode.UNAUTHORIZED, "invalid API key");
		if (scope === "write" && !writer) {
			throw new ApiError(403, ErrorCode.FORBIDDEN, "this API key is read-only; this route needs an operator key");
		}
		c.set("apiKeyId", await apiKeyId(presented, c.env.AGENT_TOKEN_SECRET));
		c.set("apiKeyScope", writer ? "write" : "read");
		await next();
	});
}

/** List, inspect, watch, scrape. */
export const readAccess = apiKey("read");
/** Enqueue, cancel, reconcile, mint and revoke agent tokens. */
export const writeAccess = apiKey("write");
