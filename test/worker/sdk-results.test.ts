/**
 * The SDK keeps a finished command's result for as long as the server may
 * ask for it again. Regression: an `error` frame naming the command, such as
 * `rate_limited` for a trailing output frame (the server drops output over
 * the frame rate, never a result), made the SDK forget the result; when the
 * result itself had been lost with its connection, the redelivery ran the
 * command a second time.
 */
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { agentHub } from "../../src/agent/stub";
import { Agent } from "../../src/sdk/agent";
import type { SocketLike } from "../../src/sdk/transport";
import { connectHere, enqueue, freezeFrameBucket, tokenFor, uniqueAgentId, waitFor, waitForStatus } from "../helpers/worker/harness";

/**
 * Connects like connectHere; on the first connection, result frames are
 * swallowed, as if the network had lost them along with the socket.
 */
function losingFirstResults() {
	const sockets: SocketLike[] = [];
	const connect = async (url: string, token: string): Promise<SocketLike> => {
		const ws = await connectHere(url, token);
		const first = sockets.length === 0;
		sockets.push(ws);
		if (!first) return ws;
		return {
			get readyState() {
				return ws.readyState;
			},
			send: (data: string) => {
				if (!data.includes('"type":"result"')) ws.send(data);
			},
			close: (code, reason) => ws.close(code, reason),
			addEventListener: ws.addEventListener.bind(ws) as SocketLike["addEventListener"],
		};
	};
	return { connect, sockets };
}

describe("the SDK's finished results", () => {
	it("a rate-limited trailing output does not make the SDK forget the result: a redelivery is answered, not run again", async () => {
		const agentId = uniqueAgentId("sdk");
		const { connect, sockets } = losingFirstResults();
		const agent = new Agent({
			url: "https://switchyard.test",
			agentId,
			token: await tokenFor(agentId),
			connect,
			concurrency: 3,
			backoff: { initialMs: 10, maxMs: 50 },
		});
		let runs = 0;
		agent.handle("build", (_payload, ctx) => {
			runs++;
			for (let i = 0; i < 3; i++) ctx.output(`step ${i}\n`);
			return { run: runs };
		});
		const refusals: string[] = [];
		agent.on("error", (e) => refusals.push(e.error.message));
		agent.start();
		await agent.whenOpen();
		// The hello is in before the budget goes: its concurrency is the object's.
		await waitFor(async () => (await agentHub(env, agentId).inspect()).concurrency === 3, "the agent's hello");
		// 1 frame a second and none left: every output frame is refused (acks and results are always taken).
		await freezeFrameBucket(agentId, 1, { empty: true });

		const cmd = await enqueue(agentId, { action: "build" });
		await waitFor(() => refusals.some((m) => m.includes("rate_limited")), "the trailing output to be refused");
		// The result went nowhere: drop the socket it was sent on. The server sends the command again.
		sockets[0]?.close(1011, "test: connection lost");
		// Sent again within its ack deadline, so still its first attempt; run once.
		expect(await waitForStatus(cmd.id, "completed")).toMatchObject({ result: { run: 1 }, attempts: 1 });
		expect(runs).toBe(1);
		await agent.stop({ graceMs: 1_000 });
	});
});
