import { Hono } from "hono";
import type { AppEnv } from "../app-env";
import { z } from "zod";
import { AGENT_ID_HEADER, OBSERVER_RESUME_HEADER } from "../agent/agent-hub";
import { bearerToken, requireApiKey } from "../auth/api-key";
import { signAgentToken, verifyAgentToken } from "../auth/agent-token";
import { withDb } from "../db/client";
import { getAgent, listAgents } from "../db/agents";
import { ApiError } from "../errors";
import { log } from "../log";
import { AgentId, ErrorCode, ListAgentsQuery, StreamQuery, TokenRequest } from "../protocol";
import { optionalJsonBody, params, query } from "../validation";
import { agentHub } from "./commands";

const AgentParam = z.object({ agentId: AgentId });

export const agentRoutes = new Hono<AppEnv>()
	.get("/agents", requireApiKey, query(ListAgentsQuery), async (c) => {
		const q = c.req.valid("query");
		const page = await withDb(c.env, (db) => listAgents(db, { limit: q.limit, afterId: q.cursor }));
		return c.json(page);
	})
	.get("/agents/:agentId", requireApiKey, params(AgentParam), async (c) => {
		const { agentId } = c.req.valid("param");
		const agent = await withDb(c.env, (db) => getAgent(db, agentId));
		if (!agent) throw new ApiError(404, ErrorCode.NOT_FOUND, `no agent with id ${agentId}`);
		return c.json(agent);
	})
	.post(
		"/agents/:agentId/token",
		requireApiKey,
		params(AgentParam),
		optionalJsonBody(TokenRequest),
		async (c) => {
			const { agentId } = c.req.valid("param");
			const { ttlSeconds } = c.req.valid("json");
			const token = await signAgentToken(agentId, tokenSecret(c.env), ttlSeconds);
			return c.json({ agentId, ...token }, 201);
		},
	)
	/**
	 * A live view of one agent (operator key): presence, every command status
	 * change and output, each numbered; `?since=<seq>&epoch=<epoch>` resumes without a gap.
	 * Forwarded to the agent's object, where the socket hibernates.
	 */
	.get("/agents/:agentId/stream", requireApiKey, params(AgentParam), query(StreamQuery), async (c) => {
		const { agentId } = c.req.valid("param");
		const resume = c.req.valid("query");
		if (c.req.header("upgrade")?.toLowerCase() !== "websocket") {
			throw new ApiError(426, ErrorCode.UPGRADE_REQUIRED, "this endpoint takes a WebSocket upgrade");
		}
		const headers = forwardedHeaders(c.req.raw.headers);
		headers.set(AGENT_ID_HEADER, agentId);
		headers.set(OBSERVER_RESUME_HEADER, JSON.stringify(resume));
		return agentHub(c.env, agentId).fetch(new Request(c.req.url, { method: "GET", headers }));
	})
	/**
	 * The agent's socket. Authenticated with the agent's own token, not an API
	 * key; the upgrade is forwarded to the agent's object so the socket can
	 * hibernate there (accepting it here in the worker could not).
	 */
	.get("/agents/:agentId/connect", params(AgentParam), async (c) => {
		const { agentId } = c.req.valid("param");
		const token = bearerToken(c.req.header("authorization"));
		if (!token) {
			throw new ApiError(401, ErrorCode.UNAUTHORIZED, "missing agent token: send Authorization: Bearer <token>");
		}
		const check = await verifyAgentToken(token, tokenSecret(c.env), agentId);
		if (!check.ok) {
			log("warn", "agent.auth_refused", { agentId, reason: check.reason });
			throw new ApiError(401, ErrorCode.UNAUTHORIZED, check.reason);
		}
		// After the token check, so a plain GET tells a client whose upgrade
		// failed whether its token was the reason (the SDK asks this way).
		if (c.req.header("upgrade")?.toLowerCase() !== "websocket") {
			throw new ApiError(426, ErrorCode.UPGRADE_REQUIRED, "this endpoint takes a WebSocket upgrade");
		}
		const headers = forwardedHeaders(c.req.raw.headers);
		headers.set(AGENT_ID_HEADER, agentId);
		return agentHub(c.env, agentId).fetch(new Request(c.req.url, { method: "GET", headers }));
	});

/**
 * The client's upgrade headers, without any it may not set: the object
 * trusts `x-switchyard-*` headers because only the worker sets them.
 */
function forwardedHeaders(raw: Headers): Headers {
	const headers = new Headers();
	for (const [k, v] of raw) {
		if (!k.startsWith("x-switchyard-") && k !== "authorization") headers.set(k, v);
	}
	return headers;
}

function tokenSecret(env: Env): string {
	if (!env.AGENT_TOKEN_SECRET || env.AGENT_TOKEN_SECRET.length < 32) {
		// A deploy without a real secret must not mint or accept guessable tokens.
		throw new Error("AGENT_TOKEN_SECRET is missing or shorter than 32 characters");
	}
	return env.AGENT_TOKEN_SECRET;
}
