/**
 * Bare-Durable-Object floor: the same URLs and frames as Switchyard
 * (`/v1/agents/:id/connect`, `POST /v1/agents/:id/commands`, `welcome`,
 * `command`), so the benchmark's agents and enqueuer drive it unchanged.
 * What it leaves out is exactly what Switchyard adds: Postgres, the SQLite
 * buffer and outbox, validation, tokens. Given a DATABASE_URL it is the
 * durable floor instead: Postgres put back, and nothing else (durable.ts).
 */
import { DurableObject } from "cloudflare:workers";
import { type DurableEnv, insertCommands, ObjectDurability, type Pushed, type Row } from "./durable";

/** This worker's bindings, declared here: it is a benchmark fixture, not the product (no generated types). */
interface FloorEnv extends DurableEnv {
	FLOOR: DurableObjectNamespace<FloorAgent>;
}

export class FloorAgent extends DurableObject<FloorEnv> {
	/** Set only for the durable floor. */
	private readonly durable: ObjectDurability | undefined;

	constructor(ctx: DurableObjectState, env: FloorEnv) {
		super(ctx, env);
		if (env.DATABASE_URL) this.durable = new ObjectDurability(ctx.storage.sql, env.DATABASE_URL, env.NEON_WS_PROXY);
	}

	override async fetch(request: Request): Promise<Response> {
		const pair = new WebSocketPair();
		this.ctx.acceptWebSocket(pair[1]);
		pair[1].send(JSON.stringify({ type: "welcome", protocol: 1, agentId: request.headers.get("x-agent-id"), generation: 1 }));
		return new Response(null, { status: 101, webSocket: pair[0] });
	}

	/** Pushes command frames to every socket of this agent; returns how many sockets got them. */
	push(...commands: Pushed[]): number {
		this.durable?.take(commands);
		const sockets = this.ctx.getWebSockets();
		for (const ws of sockets) for (const { frame } of commands) ws.send(frame);
		return sockets.length;
	}

	// The bare floor reads acks and results and drops them; the durable one records results.
	override async webSocketMessage(_ws: WebSocket, message: string | ArrayBuffer): Promise<void> {
		if (!this.durable || typeof message !== "string") return;
		const frame = JSON.parse(message) as { type?: string; id?: string; status?: string };
		if (frame.type === "result" && frame.id && frame.status) await this.durable.finish(frame.id, frame.status);
	}
	override async webSocketClose(ws: WebSocket, code: number): Promise<void> {
		ws.close(code === 1005 || code === 1006 ? 1000 : code);
	}
}

function commandFrame(action: string, payload: unknown): { id: string; frame: string } {
	const id = crypto.randomUUID();
	return { id, frame: JSON.stringify({ type: "command", id, action, payload, sessionId: null, priority: 5, attempt: 1 }) };
}

/** The durable floor commits the rows before anything is forwarded; the bare one has none. */
async function commit(env: FloorEnv, rows: Row[]): Promise<void> {
	if (env.DATABASE_URL) await insertCommands(env.DATABASE_URL, env.NEON_WS_PROXY, rows);
}

/**
 * Batch enqueue, the same body as Switchyard's `POST /v1/commands/batch`:
 * one RPC per agent in the batch, carrying that agent's frames.
 */
async function batch(request: Request, env: FloorEnv): Promise<Response> {
	const body = await request.json<{ commands: { agentId: string; action: string; payload: unknown }[] }>();
	const byAgent = new Map<string, Pushed[]>();
	const rows: Row[] = [];
	for (const c of body.commands) {
		const { id, frame } = commandFrame(c.action, c.payload);
		rows.push({ id, agentId: c.agentId, action: c.action, payload: c.payload });
		byAgent.set(c.agentId, [...(byAgent.get(c.agentId) ?? []), { id, frame }]);
	}
	await commit(env, rows);
	const ids = rows.map((r) => r.id);
	await Promise.all([...byAgent].map(([agentId, commands]) => env.FLOOR.get(env.FLOOR.idFromName(agentId)).push(...commands)));
	return Response.json({ ids }, { status: 201 });
}

export default {
	async fetch(request: Request, env: FloorEnv): Promise<Response> {
		const path = new URL(request.url).pathname;
		// What the harness probes to find the runtime behind wrangler dev's proxy, as on Switchyard.
		if (path === "/healthz") return Response.json({ ok: true });
		if (path === "/v1/commands/batch" && request.method === "POST") return batch(request, env);
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
		const { id, frame } = commandFrame(body.action, body.payload);
		await commit(env, [{ id, agentId, action: body.action, payload: body.payload }]);
		const sent = await stub.push({ id, frame });
		return Response.json({ id, sent }, { status: 201 });
	},
} satisfies ExportedHandler<FloorEnv>;
