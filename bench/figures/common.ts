/**
 * The two loops every system runs the same way: latency at a steady rate
 * (figure 1) and throughput under a flood (figure 2). A `Target` says how to
 * reach one system: its agent fleet, its enqueue transport, and how to check
 * that every command was durably completed.
 */
import type { Transport } from "../load/enqueue.ts";
import { agentIds } from "../lib/payload.ts";
import type { Results } from "../lib/results.ts";
import { type Child, spawnChild } from "../lib/rpc.ts";
import { summarize, wallNow } from "../lib/stats.ts";

export interface Target {
	/** The fleet module under bench/ (`load/agents.ts`, or a peer's own). */
	fleet: string;
	connectArgs(ids: string[]): Record<string, unknown>;
	transport(action: string, batch?: number): Transport;
	/**
	 * Waits until `expected` commands tagged `action` are completed where this
	 * system keeps them; returns the wall time that was first seen, and any
	 * breakdown it can give. Throws when a command is lost or failed.
	 */
	verify(action: string, expected: number, timeoutMs: number, fleet: Child): Promise<{ doneAt: number; detail?: Record<string, unknown> }>;
}

interface FleetDrain {
	latencies: number[];
	received: number;
	duplicates: number;
	connected: number;
	errors: string[];
}
interface Sent {
	ok: number;
	errors: number;
	callMs: number[];
	errorSamples: string[];
	startedAt: number;
	endedAt: number;
}

export async function withFleet<T>(
	t: Target,
	ids: string[],
	fn: (fleet: Child) => Promise<T>,
): Promise<T> {
	const fleet = spawnChild(t.fleet);
	try {
		const c = await fleet.call<{ connected: number; failed: number; ms: number; errors: string[] }>("connect", t.connectArgs(ids));
		if (c.failed > 0) throw new Error(`${c.failed} of ${ids.length} agents failed to connect: ${c.errors.slice(0, 3).join("; ")}`);
		return await fn(fleet);
	} finally {
		await fleet.call("close").catch(() => {});
		fleet.stop();
	}
}

export function latencyFigure(results: Results, agents: number) {
	return results.figure(`f1.latency.${agents}`, `Enqueue → agent receipt, ${agents} agent${agents > 1 ? "s" : ""}`, "ms", true);
}

/** Figure 1: `count` commands at `rate`/s over `agents` agents; enqueue start to agent receipt. */
export async function latencyRun(t: Target, a: { tag: string; agents: number; count: number; rate: number }) {
	const ids = agentIds(a.tag, a.agents);
	return withFleet(t, ids, async (fleet) => {
		const enq = spawnChild("load/enqueue.ts");
		try {
			const sent = await enq.call<Sent>("steady", { transport: t.transport(a.tag), agents: ids, count: a.count, rate: a.rate });
			if (sent.errors) throw new Error(`${sent.errors} enqueue errors: ${sent.errorSamples.slice(0, 3).join("; ")}`);
			await fleet.call("waitReceived", { n: a.count, timeoutMs: 60_000 });
			const d = await fleet.call<FleetDrain>("drain");
			if (d.received - d.duplicates < a.count) throw new Error(`lost commands: ${a.count} sent, ${d.received - d.duplicates} received`);
			const v = await t.verify(a.tag, a.count, 120_000, fleet);
			const s = summarize(d.latencies);
			return {
				value: s.median,
				samples: d.latencies,
				detail: {
					agents: a.agents,
					rate: a.rate,
					commands: a.count,
					duplicates: d.duplicates,
					enqueueCallMs: summarize(sent.callMs),
					achievedRate: Math.round((sent.ok / (sent.endedAt - sent.startedAt)) * 1000),
					...v.detail,
				},
			};
		} finally {
			await enq.call("close").catch(() => {});
			enq.stop();
		}
	});
}

/** Figure 2: `concurrency` enqueue calls in flight for `durationMs`; commands per second until all completed. */
export async function throughputRun(
	t: Target,
	a: { tag: string; agents: number; durationMs: number; concurrency: number; batch?: number },
) {
	const ids = agentIds(a.tag, a.agents);
	return withFleet(t, ids, async (fleet) => {
		const enq = spawnChild("load/enqueue.ts");
		try {
			const sent = await enq.call<Sent>("flood", {
				transport: t.transport(a.tag, a.batch),
				agents: ids,
				durationMs: a.durationMs,
				concurrency: a.concurrency,
			});
			if (sent.errors) throw new Error(`${sent.errors} enqueue errors: ${sent.errorSamples.slice(0, 3).join("; ")}`);
			const v = await t.verify(a.tag, sent.ok, 300_000, fleet);
			await fleet.call("waitReceived", { n: sent.ok, timeoutMs: 30_000 });
			const d = await fleet.call<FleetDrain>("drain");
			if (d.received - d.duplicates < sent.ok) throw new Error(`lost commands: ${sent.ok} accepted, ${d.received - d.duplicates} received`);
			const seconds = (v.doneAt - sent.startedAt) / 1000;
			return {
				value: sent.ok / seconds,
				samples: d.latencies,
				detail: {
					agents: a.agents,
					commands: sent.ok,
					concurrency: a.concurrency,
					batch: a.batch ?? 1,
					enqueueSeconds: (sent.endedAt - sent.startedAt) / 1000,
					enqueueRate: Math.round((sent.ok / (sent.endedAt - sent.startedAt)) * 1000),
					drainSeconds: Math.round(v.doneAt - sent.endedAt) / 1000,
					totalSeconds: seconds,
					enqueueCallMs: summarize(sent.callMs),
					receiptLatencyMs: summarize(d.latencies),
					duplicates: d.duplicates,
					...v.detail,
				},
			};
		} finally {
			await enq.call("close").catch(() => {});
			enq.stop();
		}
	});
}

/** Polls `check` until it reports `done`; `doneAt` is the wall time it first did. */
export async function pollUntil(
	check: () => Promise<{ done: boolean; fail?: string; progress: string }>,
	timeoutMs: number,
	intervalMs = 100,
): Promise<number> {
	const deadline = Date.now() + timeoutMs;
	let last = "";
	for (;;) {
		const r = await check();
		if (r.fail) throw new Error(r.fail);
		if (r.done) return wallNow();
		last = r.progress;
		if (Date.now() > deadline) throw new Error(`not all commands completed within ${timeoutMs} ms: ${last}`);
		await new Promise((res) => setTimeout(res, intervalMs));
	}
}
