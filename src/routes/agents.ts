import { Hono } from "hono";
import type { AppEnv } from "../app-env";
import { z } from "zod";
import { AGENT_ID_HEADER, OBSERVER_KEY_HEADER, OBSERVER_RESUME_HEADER, TOKEN_EXPIRES_HEADER, TOKEN_VERSION_HEADER } from "../agent/headers";
import { readAccess, writeAccess } from "../auth/api-key";
import { signAgentToken, tokenSecrets, verifyAgentToken } from "../auth/agent-token";
import { checkOrigin, presentedCredential, protocolsWithoutCredential } from "../auth/credentials";
import { type AgentWithCounts, cancelUntaken, getAgent, listAgents, mirrorTokenVersion, patchOperatorLabels, raiseTokenVersion, setPausedAt } from "../db/agents";
import { ApiError } from "../errors";
import { errorFields, log } from "../log";
import { AgentId, ErrorCode, LabelAgentRequest, ListAgentsQuery, MAX_LABELS, StopFleetRequest, StopQuery, StreamQuery, TokenRequest } from "../protocol";
import { jsonBody, optionalJsonBody, params, query } from "../validation";
import { stopFleet } from "./fleet-stop";
import { agentHub, boundedAll } from "../agent/stub";

const AgentParam = z.object({ agentId: AgentId });

export const agentRoutes = new Hono<AppEnv>()
	.get("/agents", readAccess, query(ListAgentsQuery), async (c) => {
		const q = c.req.valid("query");
		const filter = { labels: q.label ? Object.fromEntries(q.label) : undefined, online: q.online, prefix: q.prefix };
		if (q.label && new Set(q.label.map(([k]) => k)).size < q.label.length) {
			throw new ApiError(400, ErrorCode.VALIDATION_FAILED, "invalid query: label: each key at most once (all must match)");
		}
		const page = await c.var.db.run((db) => listAgents(db, { limit: q.limit, afterId: q.cursor, filter }));
		return c.json({ items: await withLoad(c.env, page.items), nextCursor: page.nextCursor });
	})
	.get("/agents/:agentId", readAccess, params(AgentParam), async (c) => {
		const { agentId } = c.req.valid("param");
		const agent = await c.var.db.run((db) => getAgent(db, agentId));
		if (!agent) throw new ApiError(404, ErrorCode.NOT_FOUND, `no agent with id ${agentId}`);
		const [withCounts] = await withLoad(c.env, [agent]);
		return c.json(withCounts ?? { ...agent, running: null });
	})
	/**
	 * The operator's labels: `{"labels": {"k": "v", "gone": null}}` sets and
	 * removes; they win over the agent's own on a clash. An agent that never
	 * connected gets its row, so it can be labelled before its first connect.
	 */
	.patch("/agents/:agentId", writeAccess, params(AgentParam), jsonBody(LabelAgentRequest), async (c) => {
		const { agentId } = c.req.valid("param");
		const { labels } = c.req.valid("json");
		const fits = await c.var.db.run((db) => patchOperatorLabels(db, agentId, labels));
		if (!fits) {
			throw new ApiError(400, ErrorCode.VALIDATION_FAILED, `invalid request body: labels: an agent holds at most ${MAX_LABELS} operator labels; remove some (null) first`);
		}
		log("info", "agent.labelled", { agentId, apiKeyId: c.get("apiKeyId"), keys: Object.keys(labels) });
		return c.json(await agentRecord(c.env, c.var.db, agentId));
	})
	/** Stops dispatching to the agent; what it runs keeps running. Survives restarts. */
	.post("/agents/:agentId/pause", writeAccess, params(AgentParam), async (c) => {
		const { agentId } = c.req.valid("param");
		const { pausedAt } = await callAgent(agentId, () => agentHub(c.env, agentId).pause());
		await c.var.db.run((db) => setPausedAt(db, [{ id: agentId, pausedAt }]));
		log("warn", "agent.paused", { agentId, apiKeyId: c.get("apiKeyId") });
		return c.json({ agentId, paused: true as const, pausedAt: new Date(pausedAt).toISOString() });
	})
	/** Lifts a pause; what waited is sent at once. */
	.post("/agents/:agentId/resume", writeAccess, params(AgentParam), async (c) => {
		const { agentId } = c.req.valid("param");
		await callAgent(agentId, () => agentHub(c.env, agentId).resume());
		await c.var.db.run((db) => setPausedAt(db, [{ id: agentId, pausedAt: null }]));
		log("info", "agent.resumed", { agentId, apiKeyId: c.get("apiKeyId") });
		return c.json({ agentId, paused: false as const, pausedAt: null });
	})
	/**
	 * Cancels every open command of the agent: queued ones end `cancelled`,
	 * running ones are sent the cancel frame. `?pause=true` also pauses it.
	 */
	.post("/agents/:agentId/stop", writeAccess, params(AgentParam), query(StopQuery), async (c) => {
		const { agentId } = c.req.valid("param");
		const pause = c.req.valid("query").pause === true;
		const actor = c.get("apiKeyId");
		const stopped = await agentHub(c.env, agentId)
			.stop({ pause, actor })
			.catch(async (err: unknown) => {
				// Whatever it has not taken must not be delivered by a later catch-up.
				await c.var.db.run((db) => cancelUntaken(db, [agentId]));
				throw unreachable(agentId, err);
			});
		await c.var.db.run(async (db) => {
			if (!stopped.complete) await cancelUntaken(db, [agentId]);
			if (stopped.pausedAt !== null && pause) await setPausedAt(db, [{ id: agentId, pausedAt: stopped.pausedAt }]);
		});
		log("warn", "agent.stop", { agentId, apiKeyId: actor, cancelled: stopped.cancelled, cancelRequested: stopped.cancelRequested, pause });
		return c.json({ agentId, cancelled: stopped.cancelled, cancelRequested: stopped.cancelRequested, paused: stopped.pausedAt !== null });
	})
	/**
	 * The fleet's emergency stop: every agent the selector matches, as
	 * `/agents/{id}/stop` does for one. `{"selector": {"all": true}}` for all.
	 */
	.post("/agents/stop", writeAccess, jsonBody(StopFleetRequest), async (c) => {
		const body = c.req.valid("json");
		const answer = await stopFleet(c.env, c.var.db, body, c.get("apiKeyId"));
		log("warn", "fleet.stop", { apiKeyId: c.get("apiKeyId"), selector: body.selector, ...answer, unreached: answer.unreached.length });
		return c.json(answer);
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

/** An agent object that cannot be reached is a transient condition, like a database outage. */
function unreachable(agentId: string, err: unknown): ApiError {
	log("warn", "agent.unreachable", { agentId, ...errorFields(err) });
	return new ApiError(503, ErrorCode.AGENT_UNAVAILABLE, "the agent's object is unavailable; retry shortly");
}

async function callAgent<T>(agentId: string, call: () => Promise<T>): Promise<T> {
	try {
		return await call();
	} catch (err) {
		throw unreachable(agentId, err);
	}
}

/** The agent's record as GET /v1/agents/{id} answers it. */
async function agentRecord(env: Env, db: AppEnv["Variables"]["db"], agentId: string) {
	const agent = await db.run((d) => getAgent(d, agentId));
	if (!agent) throw new ApiError(404, ErrorCode.NOT_FOUND, `no agent with id ${agentId}`);
	const [withCounts] = await withLoad(env, [agent]);
	return withCounts ?? { ...agent, running: null };
}

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
): Promise<(AgentWithCounts & { running: number | null })[]> {
	const loads = await boundedAll(items, LOAD_PARALLEL, (a) => (a.online ? agentHub(env, a.id).load() : Promise.resolve(null)));
	return items.map((a, i) => {
		const r = loads[i];
		const load = r?.status === "fulfilled" ? r.value : null;
		// Offline (or unreachable), the last hello's concurrency from Postgres stands.
		return { ...a, concurrency: load?.concurrency ?? a.concurrency, running: load?.running ?? null };
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
