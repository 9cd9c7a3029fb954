/**
 * The two loops every system runs the same way: latency at a steady rate
 * (figure 1) and throughput under a flood (figure 2). A `Target` says how to
 * reach one system: its agent fleet, its enqueue transport, and how to check
 * that every command was durably completed.
 */
import type { Transport } from "../load/enqueue.ts";
import { fixedRoles, joinRoles, perCommandMs, type Roles, startCpu } from "../lib/cpu.ts";
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
	/** The system's processes by role, for CPU per command (lib/cpu.ts). */
	roles?: Roles;
	/**
	 * The roles whose CPU is the figure's headline: the workerd runtime for
	 * Switchyard and the floor (not wrangler's proxy or Node), the server
	 * and broker processes for a peer.
	 */
	serving?: string[];
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

/**
 * Whether the floor and the peers run figure `f` (f1 or f2): when it was
 * asked for, or when no Switchyard figure was named (`--only floor,peers`).
 */
export function wants(only: Set<string>, f: string): boolean {
	return only.has(f) || !["f1", "f2", "f3", "f4", "f5"].some((x) => only.has(x));
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
			if (s.min < -1) throw new Error(`clocks disagree: a command received ${-s.min} ms before it was sent`);
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

export interface Step {
	concurrency: number;
	/** Commands per second, first send to the last one completed (drain included). */
	rate: number;
	commands: number;
	enqueueSeconds: number;
	drainSeconds: number;
	enqueueCallMs: ReturnType<typeof summarize>;
	receiptLatencyMs: ReturnType<typeof summarize>;
	/** CPU milliseconds per completed command, by process role. */
	cpuMsPerCommand: Record<string, number>;
	/** Of those, the roles in `Target.serving`, summed. */
	servingCpuMsPerCommand: number;
	duplicates: number;
	error?: string;
	detail?: Record<string, unknown>;
}

/** One flood: `concurrency` enqueue calls in flight for `durationMs`, then until every command is completed. */
export async function throughputStep(
	t: Target,
	a: { tag: string; agents: number; durationMs: number; concurrency: number; batch?: number },
): Promise<Step> {
	const ids = agentIds(a.tag, a.agents);
	return withFleet(t, ids, async (fleet) => {
		const enq = spawnChild("load/enqueue.ts");
		// Its start-up (tsx compiling it, the NATS client loading) took 1 to 2 CPU
		// seconds, which the enqueuer's column counted as per-command load.
		await enq.call("ready");
		const cpu = startCpu(joinRoles(t.roles ?? (() => ({})), fixedRoles({ "load: agents (node)": [fleet.proc.pid], "load: enqueuer (node)": [enq.proc.pid] })));
		try {
			const sent = await enq.call<Sent>("flood", {
				transport: t.transport(a.tag, a.batch),
				agents: ids,
				durationMs: a.durationMs,
				concurrency: a.concurrency,
			});
			if (sent.errors) throw new Error(`${sent.errors} enqueue errors: ${sent.errorSamples.slice(0, 3).join("; ")}`);
			const v = await t.verify(a.tag, sent.ok, 120_000, fleet);
			await fleet.call("waitReceived", { n: sent.ok, timeoutMs: 30_000 });
			const seconds = cpu.stop();
			const d = await fleet.call<FleetDrain>("drain");
			if (d.received - d.duplicates < sent.ok) throw new Error(`lost commands: ${sent.ok} accepted, ${d.received - d.duplicates} received`);
			// The harness saw them done after the enqueuer's last send, or the two disagree on the time.
			if (v.doneAt < sent.endedAt - 50) throw new Error(`clocks disagree: completion seen ${Math.round(sent.endedAt - v.doneAt)} ms before the last send`);
			const perCommand = perCommandMs(seconds, sent.ok);
			const serving = (t.serving ?? []).reduce((sum, role) => sum + (perCommand[role] ?? 0), 0);
			return {
				concurrency: a.concurrency,
				rate: Math.round((sent.ok / (v.doneAt - sent.startedAt)) * 100_000) / 100,
				commands: sent.ok,
				enqueueSeconds: (sent.endedAt - sent.startedAt) / 1000,
				drainSeconds: Math.round(v.doneAt - sent.endedAt) / 1000,
				enqueueCallMs: summarize(sent.callMs),
				receiptLatencyMs: summarize(d.latencies),
				cpuMsPerCommand: perCommand,
				servingCpuMsPerCommand: Math.round(serving * 100) / 100,
				duplicates: d.duplicates,
				detail: v.detail,
			};
		} finally {
			cpu.stop();
			await enq.call("close").catch(() => {});
			enq.stop();
		}
	});
}

/**
 * Figure 2, throughput at saturation: the same sweep of calls in flight for
 * every system (config `f2.sweep`), each step a fresh fleet and flood. The
 * sweep stops at the first step with an error (refused or lost commands)
 * or at the second step in a row that gains less than 5% over the best so
 * far (more calls in flight then only add queueing). One flat step is not
 * enough: on a shared 2-core machine one step's rate moves by 10% from run
 * to run, and a single noisy step stopped sweeps below their best. The
 * headline is the best step's rate; the latency at that point and CPU per
 * command come from the same step.
 */
export async function saturation(
	t: Target,
	a: { tag: string; agents: number; durationMs: number; sweep: number[]; batch?: number },
): Promise<{ best: Step; steps: Step[]; stoppedBy: string }> {
	const steps: Step[] = [];
	let best: Step | undefined;
	let stoppedBy = "end of sweep";
	/** Steps in a row that gained less than 5% over the best. */
	let flat = 0;
	for (const concurrency of a.sweep) {
		let step: Step;
		try {
			step = await throughputStep(t, { ...a, tag: `${a.tag}-c${concurrency}`, concurrency });
		} catch (err) {
			const error = err instanceof Error ? err.message : String(err);
			steps.push({ concurrency, error } as Step);
			stoppedBy = `error at ${concurrency} in flight: ${error.slice(0, 300)}`;
			break;
		}
		steps.push(step);
		process.stdout.write(`[bench]     ${a.tag}: ${concurrency} in flight: ${step.rate} cmd/s, call p50 ${step.enqueueCallMs.median} ms, receipt p50/p99 ${step.receiptLatencyMs.median}/${step.receiptLatencyMs.p99} ms, serving CPU ${step.servingCpuMsPerCommand} ms/cmd\n`);
		const gained = !best || step.rate >= best.rate * 1.05;
		if (!best || step.rate > best.rate) best = step;
		flat = gained ? 0 : flat + 1;
		if (flat === 2) {
			stoppedBy = `no gain at ${steps.at(-2)?.concurrency} or ${concurrency} in flight (best ${best.rate} at ${best.concurrency})`;
			break;
		}
	}
	if (!best) throw new Error(`no step completed without error: ${stoppedBy}`);
	return { best, steps, stoppedBy };
}

/** The headline entry of a saturation sweep, for Results.measure. */
export function saturationEntry(r: Awaited<ReturnType<typeof saturation>>, a: { agents: number; batch?: number }) {
	const { best } = r;
	return {
		value: best.rate,
		detail: {
			agents: a.agents,
			batch: a.batch ?? 1,
			bestConcurrency: best.concurrency,
			commands: best.commands,
			enqueueCallMs: best.enqueueCallMs,
			receiptLatencyMs: best.receiptLatencyMs,
			cpuMsPerCommand: best.cpuMsPerCommand,
			servingCpuMsPerCommand: best.servingCpuMsPerCommand,
			stoppedBy: r.stoppedBy,
			sweep: r.steps.map(({ detail: _d, ...s }) => s),
			...best.detail,
		},
	};
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

/**
 * Figure 2 for one system: the saturation sweep's best rate (`f2.throughput.<mode>`)
 * and the CPU per completed command at that step (`f2.cpu.<mode>`).
 */
export async function measureSaturation(
	results: Results,
	system: string,
	postgres: string | undefined,
	t: Target,
	a: { tag: string; agents: number; durationMs: number; sweep: number[]; batch?: number },
): Promise<void> {
	const mode = a.batch ? "batch" : "single";
	const tput = results.figure(
		`f2.throughput.${mode}`,
		a.batch
			? `Throughput at saturation, enqueue → completed, ${a.agents} agents, batch enqueue (${a.batch} per call), best of calls in flight ${a.sweep.join("/")}`
			: `Throughput at saturation, enqueue → completed, ${a.agents} agents, single enqueue, best of calls in flight ${a.sweep.join("/")}`,
		"cmd/s",
		false,
	);
	const cpu = results.figure(
		`f2.cpu.${mode}`,
		`CPU per completed command at that point (${mode} enqueue): workerd runtime for Switchyard and the floor, server and broker for a peer`,
		"ms",
		true,
	);
	let run: Awaited<ReturnType<typeof saturation>> | undefined;
	await results.measure(tput, system, postgres, async () => {
		run = await saturation(t, a);
		return saturationEntry(run, a);
	});
	const best = run?.best;
	if (best) {
		await results.measure(cpu, system, postgres, async () => ({
			value: best.servingCpuMsPerCommand,
			detail: { serving: t.serving ?? [], concurrency: best.concurrency, commands: best.commands, cpuMsPerCommand: best.cpuMsPerCommand },
		}));
	}
}
