/**
 * What the SDK sends back for a command its handler finishes at once, read
 * from the SDK itself: a real `Agent` (src/sdk/agent.ts) on an in-memory
 * socket gets a `welcome` and one `command`, and the frames it answers with
 * are recorded. The benchmark's raw fleet (thousands of sockets, one
 * process) replays that answer for every command, so the bench agents do
 * what the SDK does: since the SDK sends the `result` alone for a command
 * that finishes at once (no `ack`), so does the bench; were that to
 * change, the bench would follow.
 */
import { PROTOCOL_VERSION } from "../../src/protocol.ts";
import { Agent } from "../../src/sdk/agent.ts";
import type { SocketLike } from "../../src/sdk/transport.ts";

const PROBE_ID = "00000000-0000-4000-8000-000000000000";

export type Answer = Record<string, unknown>[];

export async function sdkAnswer(result: unknown = { ok: true }): Promise<Answer> {
	const sent: Record<string, unknown>[] = [];
	const listeners = new Map<string, ((e: never) => void)[]>();
	const socket: SocketLike = {
		readyState: 1,
		send: (data) => sent.push(JSON.parse(data) as Record<string, unknown>),
		close: () => {},
		addEventListener: (type: string, l: (e: never) => void) => listeners.set(type, [...(listeners.get(type) ?? []), l]),
	};
	const deliver = (frame: object) => {
		for (const l of listeners.get("message") ?? []) (l as (e: { data: unknown }) => void)({ data: JSON.stringify(frame) });
	};
	const agent = new Agent({ url: "ws://sdk-probe.invalid", agentId: "sdk-probe", token: "probe", connect: async () => socket, heartbeatMs: 3_600_000 });
	agent.handle("probe", () => result);
	agent.start();
	// The connector is async: deliver the welcome once the socket is wired.
	for (let i = 0; i < 50 && !listeners.get("message"); i++) await new Promise((r) => setTimeout(r, 1));
	deliver({ type: "welcome", protocol: PROTOCOL_VERSION, agentId: "sdk-probe", generation: 1 });
	deliver({ type: "command", id: PROBE_ID, action: "probe", payload: {}, sessionId: null, priority: 5, attempt: 1 });
	for (let i = 0; i < 100 && !sent.some((f) => f.type === "result"); i++) await new Promise((r) => setTimeout(r, 1));
	await agent.stop({ graceMs: 0 }).catch(() => {});
	const answer = sent.filter((f) => f.id === PROBE_ID);
	if (!answer.some((f) => f.type === "result")) throw new Error(`the SDK did not answer a command with a result: ${JSON.stringify(sent)}`);
	return answer;
}

/** The answer for command `id`: the SDK's frames with the id put in. */
export function answerFor(answer: Answer, id: string): string[] {
	return answer.map((f) => JSON.stringify({ ...f, id }));
}
