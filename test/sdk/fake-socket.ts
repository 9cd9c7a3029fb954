/**
 * An in-memory stand-in for the agent's WebSocket, playing the server's side
 * by hand: unit tests of the SDK's rules (dedup, cancel, drain, reconnect)
 * without a network. The end-to-end tests use the real server.
 */
import type { Connector, SocketLike } from "../../src/sdk/transport.ts";

type Listeners = { [K in "open" | "message" | "close" | "error"]: ((e: never) => void)[] };

export class FakeSocket implements SocketLike {
	readyState = 0;
	readonly sent: Record<string, unknown>[] = [];
	private readonly listeners: Listeners = { open: [], message: [], close: [], error: [] };

	addEventListener(type: keyof Listeners, listener: (e: never) => void): void {
		this.listeners[type].push(listener);
	}

	send(data: string): void {
		if (this.readyState !== 1) throw new Error("send on a socket that is not open");
		this.sent.push(JSON.parse(data));
	}

	close(code = 1000, reason = ""): void {
		if (this.readyState === 3) return;
		this.readyState = 3;
		for (const l of this.listeners.close) (l as (e: { code: number; reason: string }) => void)({ code, reason });
	}

	// ---- the server's side

	open(generation = 1): void {
		this.openOnly();
		this.welcome(generation);
	}

	/** The socket opens; the server's welcome has not arrived yet. */
	openOnly(): void {
		this.readyState = 1;
		for (const l of this.listeners.open) (l as () => void)();
	}

	welcome(generation = 1): void {
		this.deliver({ type: "welcome", protocol: 1, agentId: "a", generation });
	}

	deliver(frame: object): void {
		for (const l of this.listeners.message) (l as (e: { data: unknown }) => void)({ data: JSON.stringify(frame) });
	}

	command(id: string, action: string, payload: unknown = {}, attempt = 1): void {
		this.deliver({ type: "command", id, action, payload, sessionId: null, priority: 5, attempt });
	}

	/** Frames of one type the agent sent, in order. */
	of(type: string): Record<string, unknown>[] {
		return this.sent.filter((f) => f.type === type);
	}
}

/** A connector that hands out fresh FakeSockets; `next()` yields them in order, waiting if needed. */
export function fakeConnector(): {
	connect: Connector;
	sockets: FakeSocket[];
	/** The token each connection attempt presented, in order. */
	tokens: string[];
	next(): Promise<FakeSocket>;
} {
	const sockets: FakeSocket[] = [];
	const tokens: string[] = [];
	let taken = 0;
	let wake: (() => void) | undefined;
	return {
		sockets,
		tokens,
		connect: async (_url, token) => {
			tokens.push(token);
			const s = new FakeSocket();
			sockets.push(s);
			wake?.();
			return s;
		},
		next: async () => {
			while (sockets.length <= taken) await new Promise<void>((r) => (wake = r));
			return sockets[taken++] as FakeSocket;
		},
	};
}

export const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

export async function until(check: () => boolean, what: string, timeoutMs = 2_000): Promise<void> {
	const deadline = Date.now() + timeoutMs;
	while (!check()) {
		if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
		await tick(5);
	}
}
