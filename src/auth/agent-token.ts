import { sign, verify } from "hono/jwt";
import { z } from "zod";
import { AgentId } from "../protocol";

const AUDIENCE = "switchyard-agent";
const ALG = "HS256";

const Claims = z.object({
	sub: AgentId,
	aud: z.literal(AUDIENCE),
	iat: z.number().int(),
	exp: z.number().int(),
});

/** Mints a token that lets exactly one agent id open its socket until it expires. */
export async function signAgentToken(
	agentId: string,
	secret: string,
	ttlSeconds: number,
	now = Date.now(),
): Promise<{ token: string; expiresAt: string }> {
	const iat = Math.floor(now / 1000);
	const exp = iat + ttlSeconds;
	const token = await sign({ sub: agentId, aud: AUDIENCE, iat, exp }, secret, ALG);
	return { token, expiresAt: new Date(exp * 1000).toISOString() };
}

export type TokenCheck = { ok: true } | { ok: false; reason: string };

/** The algorithm is pinned: a token claiming `none` or any other alg is refused. */
export async function verifyAgentToken(
	token: string,
	secret: string,
	agentId: string,
): Promise<TokenCheck> {
	let payload: unknown;
	try {
		payload = await verify(token, secret, ALG);
	} catch (err) {
		const expired = err instanceof Error && /expired/i.test(err.name + err.message);
		return { ok: false, reason: expired ? "agent token expired" : "invalid agent token" };
	}
	const claims = Claims.safeParse(payload);
	if (!claims.success) return { ok: false, reason: "invalid agent token" };
	if (claims.data.sub !== agentId) return { ok: false, reason: "agent token was issued for another agent" };
	return { ok: true };
}
