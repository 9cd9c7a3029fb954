/**
 * The one command every system under test carries: the same action name and
 * payload bytes for Switchyard, the floor and every peer. `t` is the
 * enqueuer's wall clock just before the request starts, so the agent's
 * process can compute enqueue-to-receipt latency on its own.
 */
import { wallNow } from "./stats.ts";

export const PAYLOAD_TEXT = "benchmark payload: ".padEnd(96, "x");

export interface BenchPayload {
	t: number;
	seq: number;
	text: string;
}

export function makePayload(seq: number): BenchPayload {
	return { t: wallNow(), seq, text: PAYLOAD_TEXT };
}

/** The send time carried by a received payload, if it is one of ours. */
export function sentAt(payload: unknown): number | undefined {
	const t = (payload as { t?: unknown } | null)?.t;
	return typeof t === "number" ? t : undefined;
}

/** Agent ids of one figure: `<prefix>-0 … <prefix>-(n-1)`. */
export function agentIds(prefix: string, n: number, from = 0): string[] {
	return Array.from({ length: n }, (_, i) => `${prefix}-${from + i}`);
}
