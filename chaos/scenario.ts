/**
 * One scenario on the running stack: agents in fleet processes, a steady
 * load of single enqueues from another process, the fault in the middle,
 * then a settle phase that ends when Postgres shows every accepted command
 * finished as the agents did (or the settle time runs out), and the check.
 */
import { agentIds } from "../bench/lib/payload.ts";
import { type Child, spawnChild } from "../bench/lib/rpc.ts";
import type { Stack } from "../bench/lib/stack.ts";
import { sleep, wallNow } from "../bench/lib/stats.ts";
import { type AgentsDid, backlogClearedAfter, openCount, type Verdict, verify } from "./check.ts";
import type { Config } from "./config.ts";
import type { Partitionable } from "./netns.ts";
import type { FaultEnv, Scenario } from "./scenarios.ts";

export interface Outcome {
	scenario: string;
	title: string;
	skipped?: string;
	error?: string;
	accepted?: number;
	/** Enqueue answers by HTTP status (`network`: no answer): refused ones are not accepted, so not lost. */
	answers?: Record<string, number>;
	verdict?: Omit<Verdict, "lost" | "invented" | "unrun"> & { lost: number; invented: number; unrun: number; lostIds: string[]; inventedIds: string[] };
	duplicatesDelivered?: number;
	/** Seconds from the end of the load until Postgres showed every command finished right; null: not within the settle time. */
	settleSeconds?: number | null;
	/** Seconds from the moment the fault was undone until every command created before it had finished. */
	backlogSeconds?: number;
	fault?: Record<string, unknown>;
}

interface Sent {
	ok: number;
	statuses: Record<string, number>;
	accepted?: string[];
	errorSamples: string[];
}

/**
 * Opens `ids` over `cfg.fleets` processes that reconnect after any close, as
 * the SDK does. They go into `fleets` as they start, so a failure still stops them.
 */
async function startFleets(stack: Stack, cfg: Config, ids: string[], fleets: Child[], net?: Partitionable): Promise<void> {
	const per = Math.ceil(ids.length / cfg.fleets);
	for (let i = 0; i < ids.length; i += per) fleets.push(spawnChild("load/agents.ts", {}, net?.wrapper));
	const connected = await Promise.all(
		fleets.map((f, i) =>
			f.call<{ failed: number; errors: string[] }>("connect", {
				wsBase: net?.wsBase ?? stack.wsBase,
				ids: ids.slice(i * per, (i + 1) * per),
				secret: stack.secret,
				deflate: false,
				parallel: 10,
				reconnect: true,
				concurrency: 10,
				answerDelayMs: cfg.answerDelayMs,
				connectTimeoutMs: 60_000,
			}),
		),
	);
	const failed = connected.reduce((s, c) => s + c.failed, 0);
	if (failed) throw new Error(`${failed} agents failed to connect: ${connected.flatMap((c) => c.errors).slice(0, 3).join("; ")}`);
}

async function agentsDid(fleets: Child[]): Promise<AgentsDid & { duplicates: number }> {
	const parts = await Promise.all(fleets.map((f) => f.call<{ received: string[]; reported: string[]; duplicates: number }>("ran")));
	return {
		received: new Set(parts.flatMap((p) => p.received)),
		reported: new Set(parts.flatMap((p) => p.reported)),
		duplicates: parts.reduce((s, p) => s + p.duplicates, 0),
	};
}

/** Polls until nothing of `action` is open and the check finds no loss, or the settle time ends. */
async function settle(stack: Stack, cfg: Config, fleets: Child[], action: string, accepted: string[]) {
	const loadEnd = wallNow();
	let settledAt: number | undefined;
	for (;;) {
		const c = await openCount(stack.pg, action);
		const late = wallNow() - loadEnd > cfg.settleMs;
		if ((c.open === 0 && c.total >= accepted.length) || late) {
			const did = await agentsDid(fleets);
			const v = await verify(stack.pg, action, accepted, did);
			if (v.lost.length === 0) settledAt = wallNow();
			if (settledAt !== undefined || late) return { v, did, settledAt, loadEnd };
		}
		await sleep(500);
	}
}

/** The steady load with the fault in its middle; resolves once the load has been answered. */
async function drive(s: Scenario, env: FaultEnv, enq: Child, action: string, ids: string[], log: (m: string) => void) {
	const { cfg, stack } = env;
	const load = enq.call<Sent>("steady", {
		transport: { kind: "http", base: stack.base, apiKey: stack.apiKey, action },
		agents: ids,
		count: Math.round((cfg.rate * cfg.loadMs) / 1000),
		rate: cfg.rate,
		maxInFlight: 64,
		keepIds: true,
	});
	await sleep(cfg.faultAtMs);
	log(`${s.key}: fault`);
	const fault = await s.fault(env);
	const healedAt = wallNow();
	log(`${s.key}: fault over ${JSON.stringify(fault)}`);
	const sent = await load;
	log(`${s.key}: load done, answers ${JSON.stringify(sent.statuses)}; settling`);
	return { fault, healedAt, sent };
}

export async function runScenario(s: Scenario, stack: Stack, cfg: Config, log: (m: string) => void): Promise<Outcome> {
	const out: Outcome = { scenario: s.key, title: s.title };
	const why = s.unavailable?.();
	if (why) return { ...out, skipped: why };
	const net = await s.network?.(stack);
	const action = `chaos.${s.key}`;
	const ids = agentIds(`chaos-${s.key}`, cfg.agents);
	const fleets: Child[] = [];
	const enq = spawnChild("load/enqueue.ts");
	try {
		await startFleets(stack, cfg, ids, fleets, net);
		log(`${s.key}: ${ids.length} agents connected in ${fleets.length} fleet processes; load ${cfg.rate}/s for ${cfg.loadMs / 1000} s`);
		const { fault, healedAt, sent } = await drive(s, { stack, cfg, fleets, net }, enq, action, ids, log);
		const accepted = sent.accepted ?? [];
		Object.assign(out, { fault, accepted: accepted.length, answers: sent.statuses });
		const r = await settle(stack, cfg, fleets, action, accepted);
		const { lost, invented, unrun, ...rest } = r.v;
		out.verdict = { ...rest, lost: lost.length, invented: invented.length, unrun: unrun.length, lostIds: lost.slice(0, 50), inventedIds: invented.slice(0, 50) };
		out.duplicatesDelivered = r.did.duplicates;
		out.settleSeconds = r.settledAt === undefined ? null : Math.round((r.settledAt - r.loadEnd) / 100) / 10;
		out.backlogSeconds = await backlogClearedAfter(stack.pg, action, healedAt);
	} catch (err) {
		out.error = err instanceof Error ? (err.stack ?? err.message) : String(err);
	} finally {
		await Promise.all(fleets.map((f) => f.call("close").catch(() => {})));
		for (const f of [...fleets, enq]) f.stop();
		await net?.close();
	}
	return out;
}
