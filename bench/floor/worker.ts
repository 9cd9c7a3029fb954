/**
 * Bare-Durable-Object floor: the same URLs and frames as Switchyard
 * (`/v1/agents/:id/connect`, `POST /v1/agents/:id/commands`, `welcome`,
 * `command`), so the benchmark's agents and enqueuer drive it unchanged.
 * What it leaves out is exactly what Switchyard adds: Postgres, the SQLite
 * buffer and outbox, validation, tokens.
 */
import { DurableObject } from "cloudflare:workers";

/** This worker's bindings, declared here: it is a benchmark fixture, not the product (no generated types). */
interface FloorEnv {
	FLOOR: DurableObjectNamespace<FloorAgent>;
}

export class FloorAgent extends DurableObject<FloorEnv> {
	override async fetch(request: Request): Promise<Response> {
		const pair = new WebSocketPair();
		this.ctx.acceptWebSocket(pair[1]);
		pair[1].send(JSON.stringify({ type: "welcome", protocol: 1, agentId: request.headers.get("x-agent-id"), generation: 1 }));
		return new Response(null, { status: 101, webSocket: pair[0] });
	}

	/** Pushes one command frame to every socket of this agent; returns how many got it. */
	push(frame: string): number {
		const sockets = this.ctx.getWebSockets();
		for (const ws of sockets) ws.send(frame);
		return sockets.length;
	}

	// Acks and results are read and dropped: the floor keeps no state.
	override async webSocketMessage(): Promise<void> {}
	override async webSocketClose(ws: WebSocket, code: number): Promise<void> {
		ws.close(code === 1005 || code === 1006 ? 1000 : code);
	}
}

export default {
	async fetch(request: Request, env: FloorEnv): Promise<Response> {
		const path = new URL(request.url).pathname;
		// What the harness probes to find the runtime behind wrangler dev's proxy, as on Switchyard.
		if (path === "/healthz") return Response.json({ ok: true });
		const m = /^\/v1\/agents\/([^/]+)\/(connect|commands)$/.exec(path);
		if (!m?.[1]) return new Response("not found", { status: 404 });
		const agentId = decodeURIComponent(m[1]);
		const stub = env.FLOOR.get(env.FLOOR.idFromName(agentId));
		if (m[2] === "connect") {
			const headers = new Headers(request.headers);
			headers.set("x-agent-id", agentId);
			return stub.fetch(new Request(request.url, { headers }));
		}
		const body = await request.json<{ action: string; payload: unknown }>();
		const id = crypto.randomUUID();
		const frame = { type: "command", id, action: body.action, payload: body.payload, sessionId: null, priority: 5, attempt: 1 };
		const sent = await stub.push(JSON.stringify(frame));
		return Response.json({ id, sent }, { status: 201 });
	},
} satisfies ExportedHandler<FloorEnv>;
