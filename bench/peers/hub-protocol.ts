/**
 * What the two WebSocket hub peers share: the same URLs and frames as
 * Switchyard (so the same agent fleet and enqueuer drive them), and a
 * completion counter the harness reads through IPC.
 */
import type { IncomingMessage } from "node:http";

export const CONNECT_PATH = /^\/v1\/agents\/([^/]+)\/connect$/;
export const ENQUEUE_PATH = /^\/v1\/agents\/([^/]+)\/commands$/;

export interface AgentFrameIn {
	type: string;
	id?: string;
	status?: string;
	result?: unknown;
}

export function commandFrame(id: string, action: string, payload: unknown, attempt = 1): string {
	return JSON.stringify({ type: "command", id, action, payload, sessionId: null, priority: 5, attempt });
}

export function welcomeFrame(agentId: string): string {
	return JSON.stringify({ type: "welcome", protocol: 1, agentId, generation: 1 });
}

/** Completions as the peer records them durably, by action tag. */
export class Completions {
	private readonly byAction = new Map<string, { n: number; lastAt: number }>();
	add(action: string, at: number): void {
		const c = this.byAction.get(action) ?? { n: 0, lastAt: 0 };
		c.n++;
		c.lastAt = Math.max(c.lastAt, at);
		this.byAction.set(action, c);
	}
	get(action: string): { n: number; lastAt: number } {
		return this.byAction.get(action) ?? { n: 0, lastAt: 0 };
	}
}

export async function readJson(req: IncomingMessage): Promise<unknown> {
	const chunks: Buffer[] = [];
	for await (const c of req) chunks.push(c as Buffer);
	return JSON.parse(Buffer.concat(chunks).toString());
}
