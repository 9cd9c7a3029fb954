/**
 * Peer (b): Fastify + @fastify/websocket + BullMQ on Redis. Enqueue adds a
 * job; a BullMQ worker in the same process pushes it to the agent's socket,
 * records the ack as job progress and completes the job with the agent's
 * result. The Redis it uses is started by the harness with
 * `appendfsync always`, the durable setting Redis offers.
 */
import websocket from "@fastify/websocket";
import { type Job, Queue, Worker } from "bullmq";
import Fastify from "fastify";
import type { AddressInfo } from "node:net";
import type { WebSocket } from "ws";
import { serve } from "../lib/rpc.ts";
import { wallNow } from "../lib/stats.ts";
import { type AgentFrameIn, commandFrame, Completions, welcomeFrame } from "./hub-protocol.ts";

const completions = new Completions();

interface JobData {
	agentId: string;
	action: string;
	payload: unknown;
}

async function start(a: { redisPort: number }) {
	const connection = { host: "127.0.0.1", port: a.redisPort };
	const queue = new Queue<JobData>("switchyard-bench", { connection });
	const sockets = new Map<string, WebSocket>();
	const waiting = new Map<string, { job: Job<JobData>; resolve: (r: unknown) => void }>();

	const worker = new Worker<JobData>(
		"switchyard-bench",
		async (job) => {
			const ws = sockets.get(job.data.agentId);
			if (!ws) throw new Error(`agent ${job.data.agentId} is not connected`);
			const id = job.id ?? "";
			const result = new Promise<unknown>((resolve) => waiting.set(id, { job, resolve }));
			ws.send(commandFrame(id, job.data.action, job.data.payload, job.attemptsMade + 1));
			return result;
		},
		{ connection, concurrency: 1000 },
	);
	worker.on("completed", (job) => completions.add(job.data.action, wallNow()));

	const app = Fastify();
	await app.register(websocket, { options: { perMessageDeflate: false } });
	app.get<{ Params: { agentId: string } }>("/v1/agents/:agentId/connect", { websocket: true }, (socket, req) => {
		const { agentId } = req.params;
		sockets.get(agentId)?.close(4001);
		sockets.set(agentId, socket);
		socket.send(welcomeFrame(agentId));
		socket.on("message", (data: Buffer) => {
			const f = JSON.parse(data.toString()) as AgentFrameIn;
			const w = f.id ? waiting.get(f.id) : undefined;
			if (!w) return;
			if (f.type === "ack") void w.job.updateProgress({ acknowledged: true }).catch(() => {});
			else if (f.type === "result") {
				waiting.delete(f.id ?? "");
				w.resolve(f.result ?? null);
			}
		});
		socket.on("close", () => {
			if (sockets.get(agentId) === socket) sockets.delete(agentId);
		});
	});
	app.post<{ Params: { agentId: string }; Body: { action: string; payload: unknown } }>("/v1/agents/:agentId/commands", async (req, reply) => {
		const job = await queue.add("command", { agentId: req.params.agentId, action: req.body.action, payload: req.body.payload }, { removeOnComplete: false });
		return reply.code(201).send({ id: job.id });
	});
	await app.listen({ host: "127.0.0.1", port: 0 });
	return { port: (app.server.address() as AddressInfo).port };
}

serve({
	start,
	completed: async (a: { action: string }) => completions.get(a.action),
});
