import { Hono } from "hono";
import type { AppEnv } from "../app-env";
import { z } from "zod";
import { AGENT_ID_HEADER, OBSERVER_KEY_HEADER, OBSERVER_RESUME_HEADER, TOKEN_EXPIRES_HEADER, TOKEN_VERSION_HEADER } from "../agent/headers";
import { readAccess, writeAccess } from "../auth/api-key";
import { signAgentToken, tokenSecrets, verifyAgentToken } from "../auth/agent-token";
import { checkOrigin, presentedCredential, protocolsWithoutCredential } from "../auth/credentials";
import { type AgentWithCounts, getAgent, listAgents, mirrorTokenVersion, raiseTokenVersion } from "../db/agents";
import { ApiError } from "../errors";
import { errorFields, log } from "../log";
import { AgentId, ErrorCode, ListAgentsQuery, StreamQuery, TokenRequest } from "../protocol";
import { optionalJsonBody, params, query } from "../validation";
import { agentHub, boundedAll } from "../agent/stub";

const AgentParam = z.object({ agentId: AgentId });

export const agentRoutes = new Hono<AppEnv>()
	.get("/agents", readAccess, query(ListAgentsQuery), async (c) => {
		const q = c.req.valid("query");
		const page = await c.var.db.run((db) => listAgents(db, { limit: q.limit, afterId: q.cursor }));
		return c.json({ items: await withLoad(c.env, page.items), nextCursor: page.nextCursor });
	})
	.get("/agents/:agentId", readAccess, params(AgentParam), async (c) => {
		const { agentId } = c.req.valid("param");
		const agent = await c.var.db.run((db) => getAgent(db, agentId));
		if (!agent) throw new ApiError(404, ErrorCode.NOT_FOUND, `no agent with id ${agentId}`);
		const [withCounts] = await withLoad(c.env, [agent]);
		return c.json(withCounts ?? { ...agent, concurrency: null, running: null });
	})
	.post(
		"/agents/:agentId/token",
		writeAccess,
		params(AgentParam),
		optionalJsonBody(TokenRequest),
		async (c) => {
			const { agentId } = c.req.valid("param");
			const { ttlSeconds } = c.req.valid("json");
			// The object knows the agent's current token version (raised by each revocation).
			const version = await currentTokenVersion(c.env, agentId);
			const token = await signAgentToken(agentId, tokenSecrets(c.env), ttlSeconds, { version });
			log("info", "agent.token_minted", { agentId, apiKeyId: c.get("apiKeyId"), ttlSeconds, version });
			return c.json({ agentId, ...token }, 201);
		},
	)
	/**
	 * Revokes every token minted for the agent so far and closes its open
	 * socket (4004). Mint a new token to let it back in.
	 */
	.post("/agents/:agentId/revoke", writeAccess, params(AgentParam), async (c) => {
		const { agentId } = c.req.valid("param");
		// Postgres first, so the revocation outlives the object's storage: an
		// object that lost it takes this version back before it admits a
		// token. An object not told now answers 503 below, and the caller retries.
		const mirrored = await c.var.db.run((db) => raiseTokenVersion(db, agentId));
		const hub = agentHub(c.env, agentId);
		const { version, closed } = await hub.revokeTokens(mirrored).catch((err: unknown) => {
			log("error", "agent.revoke_unreached", { agentId, mirrored, ...errorFields(err) });
			throw new ApiError(
				503,
				ErrorCode.AGENT_UNAVAILABLE,
				"the revocation is recorded in Postgres but the agent's object could not be reached to close its socket; retry",
				undefined,
				{ "retry-after": "5" },
			);
		});
		// The object was ahead: revocations from before Postgres kept a copy.
		if (version > mirrored) await c.var.db.run((db) => mirrorTokenVersion(db, agentId, version));
		log("warn", "agent.revoked", { agentId, apiKeyId: c.get("apiKeyId"), version });
		return c.json({ agentId, revoked: true, socketClosed: closed });
	})
	/**
	 * A live view of one agent (operator key): presence, every command status
	 * change and output, each numbered; `?since=<seq>&epoch=<epoch>` resumes without a gap.
	 * Forwarded to the agent's object, where the socket hibernates.
	 */
	.get("/agents/:agentId/stream", readAccess, params(AgentParam), query(StreamQuery), async (c) => {
		checkOrigin(c.req.raw, c.env);
		const { agentId } = c.req.valid("param");
		const resume = c.req.valid("query");
		if (c.req.header("upgrade")?.toLowerCase() !== "websocket") {
			throw new ApiError(426, ErrorCode.UPGRADE_REQUIRED, "this endpoint takes a WebSocket upgrade");
		}
		const headers = forwardedHeaders(c.req.raw.headers);
		headers.set(AGENT_ID_HEADER, agentId);
		headers.set(OBSERVER_RESUME_HEADER, JSON.stringify(resume));
		// The object counts observers per key (429 past the cap).
		headers.set(OBSERVER_KEY_HEADER, c.get("apiKeyId"));
		return agentHub(c.env, agentId).fetch(new Request(c.req.url, { method: "GET", headers }));
	})
	/**
	 * The agent's socket. Authenticated with the agent's own token, not an API
	 * key; the upgrade is forwarded to the agent's object so the socket can
	 * hibernate there (accepting it here in the worker could not).
	 */
	.get("/agents/:agentId/connect", params(AgentParam), async (c) => {
		const { agentId } = c.req.valid("param");
		checkOrigin(c.req.raw, c.env);
		const token = presentedCredential(c.req.raw);
		if (!token) {
			throw new ApiError(401, ErrorCode.UNAUTHORIZED, "missing agent token: send Authorization: Bearer <token>");
		}
		const check = await verifyAgentToken(token, tokenSecrets(c.env), agentId);
		if (!check.ok) {
			log("warn", "agent.auth_refused", { agentId, reason: check.reason });
			throw new ApiError(401, ErrorCode.UNAUTHORIZED, check.reason);
		}
		// After the token check, so a plain GET tells a client whose upgrade
		// failed whether its token was the reason (the SDK asks this way).
		if (c.req.header("upgrade")?.toLowerCase() !== "websocket") {
			// The probe must see a revocation too (on an upgrade, the object checks it).
			if (check.claims.ver < (await currentTokenVersion(c.env, agentId))) {
				throw new ApiError(401, ErrorCode.UNAUTHORIZED, "agent token was revoked: mint a new one");
			}
			throw new ApiError(426, ErrorCode.UPGRADE_REQUIRED, "this endpoint takes a WebSocket upgrade");
		}
		const headers = forwardedHeaders(c.req.raw.headers);
		headers.set(AGENT_ID_HEADER, agentId);
		headers.set(TOKEN_EXPIRES_HEADER, String(check.claims.exp * 1000));
		headers.set(TOKEN_VERSION_HEADER, String(check.claims.ver));
		return agentHub(c.env, agentId).fetch(new Request(c.req.url, { method: "GET", headers }));
	});

/**
 * The version a token must carry, from the agent's object. A new object (or
 * one whose storage was lost) reads it from Postgres first, and answers 503
 * while it cannot.
 */
function currentTokenVersion(env: Env, agentId: string): Promise<number> {
	return agentHub(env, agentId)
		.tokenVersion()
		.catch((err: unknown) => {
			log("warn", "agent.token_version_unavailable", { agentId, ...errorFields(err) });
			throw new ApiError(503, ErrorCode.AGENT_UNAVAILABLE, "the agent's token version could not be read; retry shortly", undefined, {
				"retry-after": "5",
			});
		});
}

/** Objects asked at once when a page of agents is listed. */
const LOAD_PARALLEL = 50;

/**
 * Adds each online agent's `concurrency` and `running` count, which only its
 * object knows (they change with every dispatch and result, so Postgres does
 * not keep them). Offline agents, and an object that cannot be reached, get
 * null: the list still answers.
 */
async function withLoad(
	env: Env,
	items: AgentWithCounts[],
): Promise<(AgentWithCounts & { concurrency: number | null; running: number | null })[]> {
	const loads = await boundedAll(items, LOAD_PARALLEL, (a) => (a.online ? agentHub(env, a.id).load() : Promise.resolve(null)));
	return items.map((a, i) => {
		const r = loads[i];
		const load = r?.status === "fulfilled" ? r.value : null;
		return { ...a, concurrency: load?.concurrency ?? null, running: load?.running ?? null };
	});
}

/**
 * The client's upgrade headers, without any it may not set: the object
 * trusts `x-switchyard-*` headers because only the worker sets them.
 */
function forwardedHeaders(raw: Headers): Headers {
	const headers = new Headers();
	for (const [k, v] of raw) {
		if (k.startsWith("x-switchyard-") || k === "authorization") continue;
		// The credential has been checked; the object gets the protocols without it.
		headers.set(k, k === "sec-websocket-protocol" ? protocolsWithoutCredential(v) : v);
	}
	return headers;
}
