/**
 * The stream is ahead of the API: an agent's object tells observers of a
 * transition at once, and writes it to Postgres (which the API reads) a
 * moment later. So a status frame is shown as it arrives, laid over the
 * command as the API last returned it, and the command is read again
 * shortly after for what only the API has (timings, result, blockedReason).
 */
import type { ObserverFrame } from "switchyard-protocol";
import { TERMINAL } from "./meaning";

type StatusFrame = Extract<ObserverFrame, { type: "status" }>;

interface Overlaid {
	status: string;
	errorCode: string | null;
	blockedReason: string | null;
}

/** Reads again after these delays, so the Postgres write has landed by the last one. */
export const REREAD_AFTER_MS = [60, 1_200, 4_000];

export class LiveStatus {
	private readonly latest = new Map<string, StatusFrame>();

	/** Remembers the newest frame for its command. */
	see(frame: StatusFrame): void {
		const prev = this.latest.get(frame.id);
		if (!prev || prev.seq < frame.seq) this.latest.set(frame.id, frame);
	}

	/** The command with the stream's newer status laid over it. */
	overlay<C extends Overlaid & { id: string }>(c: C): C {
		const f = this.latest.get(c.id);
		// The stream has no holes (it resumes with since=), so its last word is the newest.
		if (!f || c.status === f.to) return c;
		return { ...c, status: f.to, errorCode: f.errorCode ?? c.errorCode, blockedReason: TERMINAL.has(f.to) ? null : c.blockedReason };
	}
}
