/**
 * An agent's WebSocket upgrade, which the worker has authenticated: the
 * object checks its own revocations, replaces any older socket, and starts
 * the connection (welcome, stops owed, the window, a catch-up read).
 */
import { acceptedSubprotocol } from "../auth/credentials";
import { log } from "../log";
import { CloseCode, ErrorCode, PROTOCOL_VERSION } from "../protocol";
import * as buffer from "./buffer";
import { type AgentCore, DEFAULT_CONCURRENCY } from "./core";
import { TOKEN_EXPIRES_HEADER, TOKEN_VERSION_HEADER } from "./headers";
import { AGENT_TAG, closeQuietly, generationTag } from "./sockets";
import type { Tx } from "./storage";

/**
 * An agent that has not said `hello` this long after connecting is taken to
 * run nothing from earlier connections: what it acknowledged before is sent
 * again (it deduplicates by id), instead of holding its window forever.
 */
export const HELLO_GRACE_MS = 10_000;

export function acceptAgent(core: AgentCore, request: Request, startCatchUp: () => void): Response {
	// Checked here, not only in the worker: this object is where a revocation lives.
	if (!core.auth.admits(Number(request.headers.get(TOKEN_VERSION_HEADER) ?? 0))) {
		log("warn", "agent.auth_refused", { agentId: core.name, reason: "agent token was revoked" });
		return Response.json({ error: { code: ErrorCode.UNAUTHORIZED, message: "agent token was revoked: mint a new one" } }, { status: 401 });
	}
	const tokenExpiresAt = Number(request.headers.get(TOKEN_EXPIRES_HEADER));
	const expiresAt = Number.isFinite(tokenExpiresAt) ? tokenExpiresAt : undefined;
	const now = Date.now();
	const replacing = core.currentSocket() !== undefined && core.state.get("connected") === true;
	const generation = core.generation() + 1;
	for (const old of core.ctx.getWebSockets(AGENT_TAG)) closeQuietly(old, CloseCode.REPLACED, "replaced by a newer connection for this agent");

	const pair = new WebSocketPair();
	const [client, server] = [pair[0], pair[1]];
	core.ctx.acceptWebSocket(server, [AGENT_TAG, generationTag(generation)]);
	const { requeued, sent } = core.atomically((tx) => {
		if (replacing) core.journal.note({ type: "presence", state: "replaced", generation: generation - 1 }, now);
		const requeued = startConnection(core, tx, generation, now, expiresAt);
		core.send(server, {
			type: "welcome",
			protocol: PROTOCOL_VERSION,
			agentId: core.name,
			generation,
			...(expiresAt !== undefined ? { tokenExpiresAt: new Date(expiresAt).toISOString() } : {}),
		});
		for (const c of buffer.cancelsOwed(core.sql, now)) core.send(server, { type: "cancel", id: c.id, reason: c.reason });
		return { requeued, sent: core.pump(tx).length };
	});
	core.wakeBy(now + HELLO_GRACE_MS);
	if (expiresAt !== undefined) core.wakeBy(expiresAt);
	log("info", "agent.connected", { agentId: core.name, generation, requeued, sent });
	// Rows that reached Postgres but never this object are picked up on every connect.
	startCatchUp();
	const protocol = acceptedSubprotocol(request.headers);
	return new Response(null, { status: 101, webSocket: client, headers: protocol ? { "sec-websocket-protocol": protocol } : {} });
}

/**
 * The new connection's state. Whatever the previous socket was sent and
 * never acknowledged goes back in the queue (a close event for it may never
 * have come: a crash), where it waits for this connection's hello to say
 * whether the agent holds it. Returns how many were requeued.
 */
function startConnection(core: AgentCore, tx: Tx, generation: number, now: number, expiresAt: number | undefined): number {
	core.state.set("generation", generation);
	core.state.set("connected", true);
	core.state.set("last_connected_at", now);
	core.state.set("last_seen_at", now);
	core.state.set("presence_dirty", true);
	core.state.set("concurrency", DEFAULT_CONCURRENCY);
	core.state.setTimer("hello", now + HELLO_GRACE_MS);
	if (expiresAt !== undefined) core.auth.startSession(expiresAt);
	core.heard(now);
	core.journal.note({ type: "presence", state: "connected", generation }, now);
	return buffer.requeueDispatched(tx, now, "reconnect");
}
