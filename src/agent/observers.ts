/**
 * An agent's observers: read-only sockets accepted by the agent's object
 * (tagged, so they hibernate with it) that replay the event log from where
 * they left off and then receive each event as it is logged.
 */
import { log } from "../log";
import { type ObserverEvent, type ObserverFrame, StreamQuery } from "../protocol";
import * as events from "./events";
import { OBSERVER_TAG } from "./sockets";
import type { State } from "./state";

/** The resume point the worker forwarded, or null if the header is missing or not one. */
export function parseResume(header: string | null): StreamQuery | null {
	if (header === null) return null;
	try {
		const parsed = StreamQuery.safeParse(JSON.parse(header));
		return parsed.success ? parsed.data : null;
	} catch {
		return null;
	}
}

export class Observers {
	constructor(
		private readonly ctx: DurableObjectState,
		private readonly sql: SqlStorage,
		private readonly state: State,
	) {}

	/** Where broadcasts resume; written with the next transaction (a lost value only repeats events to observers). */
	private mark(seq: number): void {
		this.state.set("published_seq", seq);
	}

	/**
	 * Replays what the observer missed since `since` (or says that part is
	 * gone), then it receives every new event. A resume point from another
	 * storage epoch, or past the end of this log, means the log it was read
	 * from no longer exists: the observer is told (`reset`) and replays this
	 * log from its start.
	 */
	accept(agentId: string, resume: StreamQuery, protocol?: string): Response {
		// Everything logged so far goes out to existing observers first, so the
		// replay below and later broadcasts neither overlap nor leave a hole.
		this.publish();
		const pair = new WebSocketPair();
		const [client, server] = [pair[0], pair[1]];
		this.ctx.acceptWebSocket(server, [OBSERVER_TAG]);
		const latest = events.latestSeq(this.sql);
		// Replay covers up to `latest`; broadcasts carry on from there.
		this.mark(latest);
		const epoch = this.state.epoch();
		send(server, { type: "observing", agentId, epoch, latestSeq: latest });
		let since = resume.since;
		if (since !== undefined && ((resume.epoch !== undefined && resume.epoch !== epoch) || since > latest)) {
			send(server, { type: "reset", since, epoch });
			since = 0;
		}
		if (since !== undefined && since < latest) {
			const pruned = events.prunedThrough(this.sql);
			if (since < pruned) send(server, { type: "gap", since, through: pruned });
			// Page by page up to `latest`, so a long replay neither stops short nor holds the whole log in memory.
			for (let from = Math.max(since, pruned); from < latest; ) {
				const page = events.eventsAfter(this.sql, from);
				if (page.length === 0) break;
				for (const e of page) send(server, framed(e));
				from = page[page.length - 1]?.seq ?? latest;
			}
		}
		log("info", "observer.attached", { agentId, since: resume.since, latest, observers: this.ctx.getWebSockets(OBSERVER_TAG).length });
		return new Response(null, {
			status: 101,
			webSocket: client,
			headers: protocol ? { "sec-websocket-protocol": protocol } : {},
		});
	}

	/**
	 * Sends every event logged since the last publish to every observer. With
	 * none, it reads nothing: it runs after every change, and most agents are
	 * watched by nobody. `accept` marks where a first observer's replay ends.
	 */
	publish(): void {
		const observers = this.ctx.getWebSockets(OBSERVER_TAG);
		if (observers.length === 0) return;
		for (;;) {
			const from = this.state.get("published_seq") ?? 0;
			const fresh = events.eventsAfter(this.sql, from);
			if (fresh.length === 0) return;
			this.mark(fresh[fresh.length - 1]?.seq ?? from);
			for (const e of fresh) {
				const text = JSON.stringify(framed(e));
				for (const ws of observers) {
					try {
						ws.send(text);
					} catch {
						// a closing observer; it resumes with ?since= when it returns
					}
				}
			}
		}
	}
}

function framed(e: events.Logged): ObserverFrame {
	return { ...e.event, seq: e.seq, at: new Date(e.at).toISOString() } as ObserverEvent & { seq: number; at: string };
}

function send(ws: WebSocket, frame: ObserverFrame): void {
	try {
		ws.send(JSON.stringify(frame));
	} catch {
		// closing
	}
}
