/**
 * Opening the agent socket with its token, on each platform the SDK runs on.
 * Only standard APIs here: no Node-only imports.
 */

/** The part of the WebSocket API the agent uses: met by browsers, Node 22+, Deno, Bun and Workers. */
export interface SocketLike {
	readonly readyState: number;
	send(data: string): void;
	close(code?: number, reason?: string): void;
	addEventListener(type: "open", listener: () => void): void;
	addEventListener(type: "message", listener: (e: { data: unknown }) => void): void;
	addEventListener(type: "close", listener: (e: { code: number; reason: string }) => void): void;
	addEventListener(type: "error", listener: (e: unknown) => void): void;
}

export type Connector = (url: string, token: string) => Promise<SocketLike>;

/** The server answered the upgrade with an HTTP error: 401 means the token was refused. */
export function isTerminalRefusal(err: unknown): err is ConnectRefused {
	// A refused token, or a URL/agent id the server does not know: retrying cannot help.
	return err instanceof ConnectRefused && [400, 401, 403, 404].includes(err.status);
}

export class ConnectRefused extends Error {
	override name = "ConnectRefused";
	constructor(
		readonly status: number,
		message: string,
	) {
		super(message);
	}
}

/**
 * Asks why an upgrade failed: the standard WebSocket API hides the HTTP
 * status. A plain GET to the same URL with the same token answers 401 for a
 * bad token (426 otherwise). Returns undefined when the server is unreachable.
 */
export async function probeRefusal(url: string, token: string): Promise<ConnectRefused | undefined> {
	try {
		const res = await fetch(url.replace(/^ws/, "http"), { headers: { authorization: `Bearer ${token}` } });
		// 426 means "that would have worked as an upgrade": the failure was elsewhere.
		if (res.status === 426 || res.ok) return undefined;
		const body = (await res.json().catch(() => ({}))) as { error?: { message?: string } };
		return new ConnectRefused(res.status, body.error?.message ?? `HTTP ${res.status}`);
	} catch {
		return undefined;
	}
}

/**
 * Workers: a fetch with `Upgrade: websocket` (the returned socket is already
 * open). Node 22+, Deno and Bun: the global WebSocket, whose constructor takes
 * headers as a non-standard option. Browsers cannot send headers; pass a
 * `connect` of your own there.
 */
export const defaultConnector: Connector = async (url, token) => {
	const g = globalThis as unknown as { WebSocketPair?: unknown; WebSocket?: unknown };
	if (g.WebSocketPair !== undefined) {
		const res = await fetch(url.replace(/^ws/, "http"), {
			headers: { upgrade: "websocket", authorization: `Bearer ${token}` },
		});
		const ws = (res as Response & { webSocket?: (SocketLike & { accept(): void }) | null }).webSocket;
		if (!ws) {
			const body = (await res.json().catch(() => ({}))) as { error?: { message?: string } };
			throw new ConnectRefused(res.status, body.error?.message ?? `HTTP ${res.status}`);
		}
		ws.accept();
		return ws;
	}
	if (typeof g.WebSocket !== "function") throw new Error("no WebSocket on this platform: pass `connect`");
	// SAFETY: checked to be a constructor above; the options object is the
	// headers extension Node (undici), Deno and Bun implement.
	const Ctor = g.WebSocket as new (url: string, opts: unknown) => SocketLike;
	return new Ctor(url, { headers: { authorization: `Bearer ${token}` } });
};

export const OPEN = 1;
