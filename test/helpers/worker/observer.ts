/**
 * An observer's end of an agent's stream (docs/protocol.md, Observers),
 * through the worker's real upgrade, for the tests that watch agents.
 */
import { exports } from "cloudflare:workers";
import { API_KEY, BASE, waitFor } from "./harness";

export type Frame = Record<string, unknown> & { type: string; seq?: number };
export type Resume = { since?: number; epoch?: string };

export class Observer {
	readonly frames: Frame[] = [];
	/** The close the server (or the client) made, once it happened. */
	closedWith: { code: number; reason: string } | undefined;
	readonly closed: Promise<{ code: number; reason: string }>;

	private constructor(readonly ws: WebSocket) {
		ws.addEventListener("message", (e) => {
			this.frames.push(JSON.parse(String(e.data)));
		});
		this.closed = new Promise((resolve) =>
			ws.addEventListener("close", (e) => {
				this.closedWith = { code: e.code, reason: e.reason };
				resolve(this.closedWith);
			}),
		);
	}

	/** The raw answer to an observer upgrade (a refusal has no socket). */
	static request(agentId: string, resume: Resume = {}, key = API_KEY): Promise<Response> {
		const query = new URLSearchParams(Object.entries(resume).map(([k, v]) => [k, String(v)])).toString();
		return exports.default.fetch(`${BASE}/v1/agents/${agentId}/stream${query ? `?${query}` : ""}`, {
			headers: { upgrade: "websocket", authorization: `Bearer ${key}` },
		});
	}

	static async attach(agentId: string, resume: Resume = {}, key = API_KEY): Promise<Observer> {
		const res = await Observer.request(agentId, resume, key);
		if (!res.webSocket) throw new Error(`stream: ${res.status} ${await res.text()}`);
		res.webSocket.accept();
		const o = new Observer(res.webSocket);
		await waitFor(() => o.frames.some((f) => f.type === "observing"), "observing frame");
		return o;
	}

	get epoch(): string {
		return String(this.frames.find((f) => f.type === "observing")?.epoch);
	}

	/** The last event seq this observer saw, or `fallback`. */
	lastSeq(fallback = 0): number {
		return this.events().at(-1)?.seq ?? fallback;
	}

	events(): Frame[] {
		return this.frames.filter((f) => f.seq !== undefined);
	}

	statusOf(id: string): string[] {
		return this.events()
			.filter((f) => f.type === "status" && f.id === id)
			.map((f) => `${f.from}>${f.to}`);
	}

	close(): void {
		this.ws.close(1000);
	}
}

/**
 * Follows an agent's stream from `resume` the way a client must: a replay
 * that pauses (`replay_paused`, then close 4007) is resumed from where it
 * stopped, until one connection has caught up with the log's end. Returns
 * the events the paused connections saw, and that last, live, observer
 * (which holds the rest).
 */
export async function catchUp(agentId: string, resume: Resume, key = API_KEY): Promise<{ events: Frame[]; live: Observer; pages: number }> {
	const events: Frame[] = [];
	let { since, epoch } = resume;
	for (let pages = 1; ; pages++) {
		const o = await Observer.attach(agentId, { ...(since === undefined ? {} : { since }), ...(epoch ? { epoch } : {}) }, key);
		const latest = Number(o.frames.find((f) => f.type === "observing")?.latestSeq);
		const paused = await waitFor(() => {
			const p = o.frames.find((f) => f.type === "replay_paused");
			if (p) return o.closedWith ? p : undefined;
			return o.lastSeq(since ?? latest) >= latest ? "caught up" : undefined;
		}, "a page of replay");
		epoch = o.epoch;
		if (paused === "caught up") return { events, live: o, pages };
		events.push(...o.events());
		since = Number(paused.through);
	}
}
