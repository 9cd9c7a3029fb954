/**
 * Peer (c): the single-server design the edge design replaces. One Node
 * process: `ws` for agent sockets, `pg` for the same rows Switchyard writes
 * (agent_commands and command_events, from the same migrations), an HTTP
 * enqueue endpoint. Every status change is a committed UPDATE plus its event
 * row before the next step, as in Switchyard.
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import pg from "pg";
import { WebSocketServer, type WebSocket } from "ws";
import { serve } from "../lib/rpc.ts";
import { wallNow } from "../lib/stats.ts";
import { type AgentFrameIn, commandFrame, Completions, CONNECT_PATH, ENQUEUE_PATH, readJson, welcomeFrame } from "./hub-protocol.ts";

const completions = new Completions();

async function start(a: { databaseUrl: string }) {
	const db = new pg.Pool({ connectionString: a.databaseUrl, max: 20 });
	db.on("error", () => {});
	const sockets = new Map<string, WebSocket>();
	const actions = new Map<string, string>();

	/** One statement: the status change and its audit event. */
	const transition = (id: string, from: string, to: string, extra = "", result: unknown = null) =>
		db.query(
			`with u as (update agent_commands set status = $2, updated_at = now()${extra} where id = $1 returning id)
			 insert into command_events (command_id, from_status, to_status, actor, detail) select id, $3, $2, 'peer', $4::jsonb from u`,
			[id, to, from, JSON.stringify(result)],
		);

	const http = createServer(async (req, res) => {
		const m = ENQUEUE_PATH.exec(req.url ?? "");
		if (req.method !== "POST" || !m?.[1]) {
			res.writeHead(404).end();
			return;
		}
		try {
			const agentId = decodeURIComponent(m[1]);
			const body = (await readJson(req)) as { action: string; payload: unknown };
			const { rows } = await db.query<{ id: string }>(
				`with c as (insert into agent_commands (agent_id, action, payload) values ($1, $2, $3) returning id)
				 insert into command_events (command_id, to_status, actor) select id, 'pending', 'peer' from c returning command_id as id`,
				[agentId, body.action, JSON.stringify(body.payload)],
			);
			const id = rows[0]?.id ?? "";
			actions.set(id, body.action);
			res.writeHead(201, { "content-type": "application/json" }).end(JSON.stringify({ id }));
			const ws = sockets.get(agentId);
			if (ws) {
				await transition(id, "pending", "dispatched", ", dispatched_at = now(), attempts = attempts + 1");
				ws.send(commandFrame(id, body.action, body.payload));
			}
		} catch (err) {
			if (!res.headersSent) res.writeHead(503).end(String(err));
		}
	});
	const wss = new WebSocketServer({ server: http, perMessageDeflate: false });
	wss.on("connection", (ws, req) => {
		const agentId = decodeURIComponent(CONNECT_PATH.exec(req.url ?? "")?.[1] ?? "");
		sockets.get(agentId)?.close(4001);
		sockets.set(agentId, ws);
		ws.send(welcomeFrame(agentId));
		// One socket's frames are applied in order, as Switchyard's object does.
		let chain = Promise.resolve();
		// An agent that answers at once sends its result without an ack (as the SDK does).
		const acked = new Set<string>();
		const handle = async (f: AgentFrameIn) => {
			if (!f.id) return;
			try {
				if (f.type === "ack") {
					await transition(f.id, "dispatched", "acknowledged", ", acknowledged_at = now()");
					acked.add(f.id);
				} else if (f.type === "result") {
					await transition(f.id, acked.delete(f.id) ? "acknowledged" : "dispatched", "completed", ", completed_at = now(), result = $4::jsonb", f.result ?? null);
					completions.add(actions.get(f.id) ?? "", wallNow());
					actions.delete(f.id);
				}
			} catch {
				// not counted as completed; the harness's verification catches it
			}
		};
		ws.on("message", (data) => {
			const f = JSON.parse(data.toString()) as AgentFrameIn;
			chain = chain.then(() => handle(f));
		});
		ws.on("close", () => {
			if (sockets.get(agentId) === ws) sockets.delete(agentId);
		});
	});
	await new Promise<void>((r) => http.listen(0, "127.0.0.1", () => r()));
	return { port: (http.address() as AddressInfo).port };
}

serve({
	start,
	completed: async (a: { action: string }) => completions.get(a.action),
});
