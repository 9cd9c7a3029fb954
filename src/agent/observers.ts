/**
 * An agent's observers: read-only sockets accepted by the agent's object
 * (tagged, so they hibernate with it) that replay the event log from where
 * they left off (./replay.ts) and then receive each event as it is logged.
 * What they may cost the object is bounded in ./observer-limits.ts.
 */
import { acceptedSubprotocol } from "../auth/credentials";
import { log } from "../log";
import { CloseCode, ErrorCode, StreamQuery } from "../protocol";
import * as events from "./events";
import { FrameRateLimiter } from "./frame-limits";
import { OBSERVER_KEY_HEADER } from "./headers";
import {
	OBSERVER_FRAMES_PER_SECOND,
	OBSERVER_SEND_BUDGET,
	REPLAY_MAX_BYTES,
	REPLAY_MIN_PAGE,
	REPLAY_RATE,
	ReplayBucket,
	SendBudget,
	keyTag,
	refuseObserver,
	refuseReplay,
} from "./observer-limits";
import { framed, replay, sendFrame } from "./replay";
import { OBSERVER_TAG, closeQuietly, send } from "./sockets";
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

/** How often a refusal of the same kind is logged, at most. */
const REFUSAL_LOG_MS = 10_000;

export class Observers {
	/** Live characters one observer may be sent per window (a test may shrink it). */
	sendBudget = OBSERVER_SEND_BUDGET;
	/** The budgets' and frame buckets' clock (a test may stop it). */
	clock = () => Date.now();
	/** Per socket, in memory: a socket woken from hibernation was idle, and starts afresh. */
	private readonly budgets = new WeakMap<WebSocket, SendBudget>();
	/** What this agent's observers may replay a second, together (a test may set it before the first replay). */
	replayRate = REPLAY_RATE;
	private bucket: ReplayBucket | undefined;

	/** Refusals not logged since the last one that was, by event. */
	private readonly quiet = new Map<string, { at: number; suppressed: number }>();

	/**
	 * A refusal's log line, at most one per event every REFUSAL_LOG_MS, with
	 * how many were not logged: a client retrying in a loop made one line a
	 * refusal (1,391 in 15 s in the chaos suite), and under wrangler dev each
	 * line costs the runtime more than the refusal.
	 */
	private logRefusal(event: string, fields: Record<string, unknown>): void {
		const now = this.clock();
		const q = this.quiet.get(event);
		if (q && now - q.at < REFUSAL_LOG_MS) {
			q.suppressed++;
			return;
		}
		log("warn", event, { ...fields, ...(q?.suppressed ? { notLoggedSince: q.suppressed } : {}) });
		this.quiet.set(event, { at: now, suppressed: 0 });
	}

	private get replayBucket(): ReplayBucket {
		this.bucket ??= new ReplayBucket(this.replayRate, this.clock());
		return this.bucket;
	}
	private readonly buckets = new WeakMap<WebSocket, FrameRateLimiter>();

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
	 * log from its start. Refused (429) past the caps.
	 */
	accept(agentId: string, resume: StreamQuery, headers: Headers): Response {
		// Only the worker sets it; without it (a wiring bug) every such observer shares one count.
		const apiKeyId = headers.get(OBSERVER_KEY_HEADER) ?? "unknown";
		const refusal = refuseObserver(this.ctx, apiKeyId);
		if (refusal) {
			this.logRefusal("observer.refused", { agentId, apiKeyId });
			return refusal;
		}
		// Everything logged so far goes out to existing observers first, so the
		// replay below and later broadcasts neither overlap nor leave a hole.
		this.publish();
		const latest = events.latestSeq(this.sql);
		const epoch = this.state.epoch();
		const reset = resume.since !== undefined && ((resume.epoch !== undefined && resume.epoch !== epoch) || resume.since > latest);
		const since = reset ? 0 : resume.since;
		const now = this.clock();
		const budget = since !== undefined && since < latest ? this.replayBucket.available(now) : Number.POSITIVE_INFINITY;
		if (budget < REPLAY_MIN_PAGE) {
			const retryAfter = this.replayBucket.secondsUntil(REPLAY_MIN_PAGE, now);
			this.logRefusal("observer.replay_rate_limited", { agentId, apiKeyId, retryAfter });
			return refuseReplay(retryAfter);
		}
		const pair = new WebSocketPair();
		const [client, server] = [pair[0], pair[1]];
		this.ctx.acceptWebSocket(server, [OBSERVER_TAG, keyTag(apiKeyId)]);
		// Replay covers up to `latest`; broadcasts carry on from there.
		this.mark(latest);
		sendFrame(server, { type: "observing", agentId, epoch, latestSeq: latest });
		if (reset) sendFrame(server, { type: "reset", since: resume.since ?? 0, epoch });
		let paused: number | null = null;
		if (since !== undefined && since < latest) {
			const page = replay(this.sql, server, since, latest, Math.min(REPLAY_MAX_BYTES, budget));
			this.replayBucket.spend(page.sent);
			paused = page.paused;
		}
		log("info", "observer.attached", { agentId, apiKeyId, since: resume.since, latest, paused });
		const protocol = acceptedSubprotocol(headers);
		return new Response(null, { status: 101, webSocket: client, headers: protocol ? { "sec-websocket-protocol": protocol } : {} });
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
				for (const ws of observers) this.deliver(ws, text);
			}
		}
	}

	/**
	 * One live event to one observer, within its budget. Past it, the
	 * observer is closed (4006) before this event, so what it saw last is
	 * where its `?since=` resumes: nothing missed, nothing twice.
	 */
	private deliver(ws: WebSocket, text: string): void {
		if (ws.readyState !== WebSocket.OPEN) return; // paused, cut, or closing: it resumes with ?since=
		const now = this.clock();
		let budget = this.budgets.get(ws);
		if (!budget) this.budgets.set(ws, (budget = new SendBudget(this.sendBudget, now)));
		if (!budget.take(text.length, now)) {
			log("warn", "observer.slow_consumer", { budget: this.sendBudget });
			closeQuietly(ws, CloseCode.SLOW_CONSUMER, "sent more than an observer may take: resume with ?since=");
			return;
		}
		try {
			ws.send(text);
		} catch {
			// closing; it resumes with ?since= when it returns
		}
	}

	/**
	 * A frame from an observer, which only listens (exact-text pings are
	 * answered at the edge): told so while within its rate, ignored past it,
	 * and closed (4005) once it keeps going, so a flood costs no reply each.
	 */
	heard(ws: WebSocket): void {
		const now = this.clock();
		let bucket = this.buckets.get(ws);
		if (!bucket) this.buckets.set(ws, (bucket = new FrameRateLimiter(OBSERVER_FRAMES_PER_SECOND, now)));
		const verdict = bucket.take(now);
		if (verdict === "ok") send(ws, { type: "error", code: ErrorCode.INVALID_FRAME, message: "observers only listen" });
		else if (verdict === "abusive") closeQuietly(ws, CloseCode.RATE_LIMITED, "frame rate limit exceeded");
	}
}
