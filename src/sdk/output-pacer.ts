/**
 * Paces a command's output onto the socket. The server takes at most
 * AGENT_FRAME_RATE_LIMIT frames a second from an agent (100 by default) and
 * drops output frames beyond that with a `rate_limited` error, so output is
 * coalesced and sent within a budget of its own (half the server's default),
 * leaving room for acks, results and pings. Nothing is reordered: each
 * command's chunks go out in order, with consecutive `seq` numbers.
 */
import { MAX_OUTPUT_CHUNK } from "../protocol";

export const DEFAULT_OUTPUT_FRAMES_PER_SECOND = 50;
const TICK_MS = 20;

export type SendOutput = (id: string, seq: number, data: string) => void;

export class OutputPacer {
	private readonly pending = new Map<string, { text: string; seq: number }>();
	private tokens: number;
	private last: number;
	private timer: ReturnType<typeof setTimeout> | undefined;

	constructor(
		private readonly send: SendOutput,
		private readonly rate = DEFAULT_OUTPUT_FRAMES_PER_SECOND,
		private readonly now: () => number = Date.now,
	) {
		this.tokens = rate;
		this.last = now();
	}

	write(id: string, chunk: string): void {
		if (chunk === "") return;
		const entry = this.pending.get(id) ?? { text: "", seq: 0 };
		entry.text += chunk;
		this.pending.set(id, entry);
		this.pump();
	}

	/** Sends everything held for `id` now, whatever the budget: its result must come after all of it. */
	flush(id: string): void {
		const entry = this.pending.get(id);
		while (entry && entry.text !== "") this.sendOne(id, entry);
	}

	/** Forgets `id` (finished and flushed, or abandoned). */
	forget(id: string): void {
		this.pending.delete(id);
	}

	stop(): void {
		if (this.timer !== undefined) clearTimeout(this.timer);
		this.timer = undefined;
	}

	private pump(): void {
		const now = this.now();
		this.tokens = Math.min(this.rate, this.tokens + ((now - this.last) / 1000) * this.rate);
		this.last = now;
		for (const [id, entry] of this.pending) {
			while (entry.text !== "" && this.tokens >= 1) {
				this.tokens -= 1;
				this.sendOne(id, entry);
			}
		}
		const waiting = [...this.pending.values()].some((e) => e.text !== "");
		if (waiting && this.timer === undefined) {
			this.timer = setTimeout(() => {
				this.timer = undefined;
				this.pump();
			}, TICK_MS);
		}
	}

	private sendOne(id: string, entry: { text: string; seq: number }): void {
		let end = Math.min(MAX_OUTPUT_CHUNK, entry.text.length);
		// Never cut a surrogate pair: each half alone is refused by the server.
		const last = entry.text.charCodeAt(end - 1);
		if (end < entry.text.length && last >= 0xd800 && last <= 0xdbff) end--;
		this.send(id, entry.seq++, entry.text.slice(0, end));
		entry.text = entry.text.slice(end);
	}
}
