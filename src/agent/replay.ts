/**
 * One connection's replay of the event log (docs/protocol.md, Observers):
 * what the observer missed, from `since` up to `latest`, but no more than
 * REPLAY_MAX_BYTES of it. Past that the replay stops at an event boundary,
 * says where (`replay_paused`) and closes the socket (4007): the client
 * resumes with `?since=<through>`. The object keeps no cursor, so a replay
 * costs nothing across hibernation, and a client that reads slowly is paced
 * by its own reconnects instead of piling frames up in the object.
 */
import { CloseCode, type ObserverEvent, type ObserverFrame } from "../protocol";
import * as events from "./events";
import { REPLAY_MAX_BYTES } from "./observer-limits";
import { closeQuietly } from "./sockets";

/**
 * Sends what follows `since` (or a `gap` first), up to `max` characters;
 * returns the seq it paused after (null if it reached `latest`) and the
 * characters of events it sent.
 */
export function replay(sql: SqlStorage, ws: WebSocket, since: number, latest: number, max = REPLAY_MAX_BYTES): { paused: number | null; sent: number } {
	const pruned = events.prunedThrough(sql);
	if (since < pruned) sendFrame(ws, { type: "gap", since, through: pruned });
	let sent = 0;
	let through = Math.max(since, pruned);
	while (through < latest) {
		// Read about what may still be sent, so the last page is not read for nothing.
		const page = events.eventsAfter(sql, through, events.PAGE, Math.max(1, Math.min(events.PAGE_BYTES, max - sent)));
		if (page.length === 0) break;
		for (const e of page) {
			if (e.seq > latest) return { paused: null, sent };
			const text = JSON.stringify(framed(e));
			// The first event always goes, so every connection makes progress.
			if (sent > 0 && sent + text.length > max) return { paused: pause(ws, through), sent };
			trySend(ws, text);
			sent += text.length;
			through = e.seq;
		}
	}
	return { paused: null, sent };
}

function pause(ws: WebSocket, through: number): number {
	sendFrame(ws, { type: "replay_paused", through });
	closeQuietly(ws, CloseCode.REPLAY_PAUSED, "replay paused: resume with ?since=");
	return through;
}

export function framed(e: events.Logged): ObserverFrame {
	return { ...e.event, seq: e.seq, at: new Date(e.at).toISOString() } as ObserverEvent & { seq: number; at: string };
}

export function sendFrame(ws: WebSocket, frame: ObserverFrame): void {
	trySend(ws, JSON.stringify(frame));
}

function trySend(ws: WebSocket, text: string): void {
	try {
		ws.send(text);
	} catch {
		// closing; it resumes with ?since= when it returns
	}
}
