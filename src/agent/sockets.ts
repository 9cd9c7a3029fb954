/**
 * The agent object's sockets. Each agent socket is tagged with its
 * connection generation, so the current one is found by tag, not by
 * reading every socket's attachment; observers carry their own tag.
 */
import type { ServerFrame } from "../protocol";

export const AGENT_TAG = "agent";
export const OBSERVER_TAG = "observer";

export function generationTag(generation: number): string {
	return `gen:${generation}`;
}

/** The open agent socket of `generation`, if any. */
export function socketOf(ctx: DurableObjectState, generation: number | undefined): WebSocket | undefined {
	if (generation === undefined) return undefined;
	return ctx.getWebSockets(generationTag(generation)).find((ws) => ws.readyState === WebSocket.OPEN);
}

/** The generation an agent socket was accepted for; undefined for an observer or a foreign socket. */
export function generationOf(ctx: DurableObjectState, ws: WebSocket): number | undefined {
	try {
		const tag = ctx.getTags(ws).find((t) => t.startsWith("gen:"));
		return tag === undefined ? undefined : Number(tag.slice(4));
	} catch {
		return undefined; // not a socket this object accepted
	}
}

export function isObserver(ctx: DurableObjectState, ws: WebSocket): boolean {
	try {
		return ctx.getTags(ws).includes(OBSERVER_TAG);
	} catch {
		return false;
	}
}

/** Sends a frame; a socket that is going away loses it, and what it held is redelivered on reconnect. */
export function send(ws: WebSocket, frame: ServerFrame): boolean {
	try {
		ws.send(JSON.stringify(frame));
		return true;
	} catch {
		return false;
	}
}

/**
 * Closes a socket without raising: 1005, 1006 and 1015 are reserved (they
 * describe a close, they cannot be sent), and answering a peer's close on a
 * dead transport raises "Network connection lost" (partyserver shipped such
 * a reply and reverted it).
 */
export function closeQuietly(ws: WebSocket, code: number, reason: string): void {
	if (code === 1005 || code === 1006 || code === 1015) return;
	try {
		ws.close(code, reason);
	} catch {
		// already closing or closed
	}
}
