/**
 * Agent tokens: compact JWTs signed with HMAC-SHA256, written here rather
 * than through a general JWT library so that exactly one algorithm exists to
 * be confused with (a header claiming `none`, RS256 or anything else is
 * refused before any key is touched) and the header can name its key.
 *
 * Rotation: `AGENT_TOKEN_SECRET` signs; `AGENT_TOKEN_SECRET_PREVIOUS`, while
 * set, still verifies. The header's `kid` (a digest of the secret, never the
 * secret) says which one signed, so during the overlap window both old and
 * new tokens work and nothing is tried twice.
 *
 * Revocation: `ver` is the agent's token version when the token was minted.
 * Revoking an agent raises its version in the agent's Durable Object, which
 * refuses tokens below it (see agent/token-state.ts).
 */
import { z } from "zod";
import { AgentId } from "../protocol";
import { hexPrefix } from "../hex";
import { decodeBase64url, decodeBase64urlText, encodeBase64url } from "./base64url";

const AUDIENCE = "switchyard-agent";
const ALG = "HS256";
/** Clock skew tolerated on `iat` from another machine's clock. */
const SKEW_SECONDS = 60;
/** A token is a few hundred bytes; anything far bigger is not one of ours. */
export const MAX_TOKEN_LENGTH = 4096;

const Header = z.strictObject({ alg: z.literal(ALG), typ: z.literal("JWT").optional(), kid: z.string().max(64).optional() });

const Claims = z.object({
	sub: AgentId,
	aud: z.literal(AUDIENCE),
	iat: z.number().int(),
	exp: z.number().int(),
	ver: z.number().int().min(0).default(0),
	/** When the chain of refreshes this token belongs to began (seconds); absent on a minted token: its iat. */
	ses: z.number().int().optional(),
});
export type AgentTokenClaims = z.infer<typeof Claims>;

export interface TokenSecrets {
	current: string;
	previous?: string;
}

/** The secrets from the environment; throws (a 500, logged) when the deploy has no real one. */
export function tokenSecrets(env: Pick<Env, "AGENT_TOKEN_SECRET"> & { AGENT_TOKEN_SECRET_PREVIOUS?: string }): TokenSecrets {
	const current = env.AGENT_TOKEN_SECRET ?? "";
	if (current.length < 32) {
		// A deploy without a real secret must not mint or accept guessable tokens.
		throw new Error("AGENT_TOKEN_SECRET is missing or shorter than 32 characters");
	}
	const previous = env.AGENT_TOKEN_SECRET_PREVIOUS;
	return previous && previous.length >= 32 && previous !== current ? { current, previous } : { current };
}

const encoder = new TextEncoder();

function decodeJson(part: string): unknown {
	const text = decodeBase64urlText(part);
	if (text === undefined) return undefined;
	try {
		return JSON.parse(text);
	} catch {
		return undefined;
	}
}

function hmacKey(secret: string): Promise<CryptoKey> {
	return crypto.subtle.importKey("raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, [
		"sign",
		"verify",
	]);
}

/** Names a secret without revealing it: the first 8 hex digits of its SHA-256. */
export async function keyId(secret: string): Promise<string> {
	return hexPrefix(await crypto.subtle.digest("SHA-256", encoder.encode(secret)), 4);
}

/** Mints a token that lets exactly one agent id open its socket until it expires. */
export async function signAgentToken(
	agentId: string,
	secrets: TokenSecrets,
	ttlSeconds: number,
	opts: { version?: number; now?: number; sessionStart?: number } = {},
): Promise<{ token: string; expiresAt: string }> {
	const iat = Math.floor((opts.now ?? Date.now()) / 1000);
	const exp = iat + ttlSeconds;
	const header = { alg: ALG, typ: "JWT", kid: await keyId(secrets.current) };
	const claims: AgentTokenClaims = {
		sub: agentId,
		aud: AUDIENCE,
		iat,
		exp,
		ver: opts.version ?? 0,
		...(opts.sessionStart === undefined ? {} : { ses: opts.sessionStart }),
	};
	const input = `${encodeBase64url(encoder.encode(JSON.stringify(header)))}.${encodeBase64url(encoder.encode(JSON.stringify(claims)))}`;
	const sig = new Uint8Array(await crypto.subtle.sign("HMAC", await hmacKey(secrets.current), encoder.encode(input)));
	return { token: `${input}.${encodeBase64url(sig)}`, expiresAt: new Date(exp * 1000).toISOString() };
}

export type TokenCheck = { ok: true; claims: AgentTokenClaims } | { ok: false; reason: string };

const INVALID: TokenCheck = { ok: false, reason: "invalid agent token" };

/**
 * Verifies signature, algorithm, audience, subject and lifetime. Says why a
 * token was refused only in terms that help its honest holder (expired,
 * another agent's) and never which part of a forged one failed.
 */
export async function verifyAgentToken(
	token: string,
	secrets: TokenSecrets,
	agentId: string,
	now = Date.now(),
): Promise<TokenCheck> {
	if (token.length > MAX_TOKEN_LENGTH) return INVALID;
	const parts = token.split(".");
	if (parts.length !== 3) return INVALID;
	const [h = "", p = "", s = ""] = parts;
	const header = Header.safeParse(decodeJson(h));
	if (!header.success) return INVALID;
	const signature = decodeBase64url(s);
	if (!signature) return INVALID;
	// A token without kid predates rotation: only the current secret may have signed it.
	const candidates = [secrets.current, ...(secrets.previous ? [secrets.previous] : [])];
	let secret: string | undefined = header.data.kid === undefined ? secrets.current : undefined;
	for (const c of candidates) if (header.data.kid !== undefined && (await keyId(c)) === header.data.kid) secret = c;
	if (!secret) return INVALID;
	// SAFETY: a fresh ArrayBuffer-backed view; crypto.subtle.verify compares in constant time.
	const valid = await crypto.subtle.verify("HMAC", await hmacKey(secret), signature as Uint8Array<ArrayBuffer>, encoder.encode(`${h}.${p}`));
	if (!valid) return INVALID;
	const claims = Claims.safeParse(decodeJson(p));
	if (!claims.success) return INVALID;
	const seconds = now / 1000;
	if (claims.data.exp <= seconds) return { ok: false, reason: "agent token expired" };
	if (claims.data.iat > seconds + SKEW_SECONDS) return INVALID;
	if (claims.data.sub !== agentId) return { ok: false, reason: "agent token was issued for another agent" };
	return { ok: true, claims: claims.data };
}
