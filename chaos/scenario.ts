/**
 * One scenario on the running stack: agents in fleet processes, a steady
 * load of single enqueues from another process, the fault in the middle,
 * then a settle phase that ends when Postgres shows every accepted command
 * finished as the agents did (or the settle time runs out), and the check.
 * A sampler reads the load's peaks every second meanwhile.
 */
import { agentIds } from "../bench/lib/payload.ts";
import { type Child, spawnChild } from "../bench/lib/rpc.ts";
import type { Stack } from "../bench/lib/stack.ts";
import { sleep, wallNow } from "../bench/lib/stats.ts";
import { type AgentsDid, backlogClearedAfter, openCount, type Verdict, verify } from "./check.ts";
import type { Config } from "./config.ts";
import type { Partitionable } from "./netns.ts";
import type { FaultEnv, FaultReport, Scenario } from "./scenarios.ts";

export interface LoadHeld {
	agents: number;
	/** Accepted enqueues per second over the load. */
	commandsPerSecond: number;
	/** Enqueue (created_at) to completed (completed_at), ms, over the completed commands. */
	enqueueToCompletedMs: { p50: number | null; p99: number | null };
	/** Highest sum of `agents.outbox_depth` (what the objects report holding for Postgres) seen. */
	peakOutboxDepth: number;
	/** Highest resident memory of the workerd processes (every object and the worker), MB. */
	peakRuntimeMemoryMB: number;
	/** Highest count of client backends in pg_stat_activity on the suite's cluster. */
	peakPostgresConnections: number;
	/** Highest count of the scenario's commands open at once. */
	peakOpenCommands: number;
}

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
	/** Commands an agent ran more than once (its dedup, kept for the process's life as on disk, should stop that). */
	executedMoreThanOnce?: number;
	/** Seconds from the end of the load until Postgres showed every command finished right; null: not within the settle time. */
	settleSeconds?: number | null;
	/** Seconds from the moment the fault was undone until every command created before it had finished. */
	backlogSeconds?: number;
	load?: LoadHeld;
	/** Faults by kind, with the recovery time of each (every agent back, outbox empty, backlog finished). */
	faults?: Record<string, number>;
	recoverySeconds?: { p50: number | null; p99: number | null; notRecovered: number };
	/** Hostile inputs by kind: how many and what they got (HTTP statuses, close codes). */
	hostile?: Record<string, { tried: number; got: Record<string, number> }>;
	/** Cuts the fleets made of their own sockets, by protocol point. */
	cuts?: Record<string, number>;
	fault?: Record<string, unknown>;
	/** PgBouncer exiting on its own during the scenario (restarted by the harness): a finding, the run fails. */
	pgbouncerCrashes?: { at: number; fatal: string }[];
}

interface Sent {
	ok: number;
	statuses: Record<string, number>;
	accepted?: string[];
	errorSamples: string[];
	startedAt: number;
	endedAt: number;
}

/**
 * Opens `ids` over `cfg.fleets` processes that reconnect after any close, as
 * the SDK does. They go into `fleets` as they start, so a failure still stops them.
 */
async function startFleets(stack: Stack, cfg: Config, ids: string[], fleets: Child[], net?: Partitionable, mintTokens: Scenario["mintTokens"] = false): Promise<void> {
	const per = Math.ceil(ids.length / cfg.fleets);
	for (let i = 0; i < ids.length; i += per) fleets.push(spawnChild("load/agents.ts", {}, net?.wrapper));
	await Promise.all(fleets.map((f) => f.call("configure", { withOutput: true })));
	const connected = await Promise.all(
		fleets.map((f, i) =>
			f.call<{ failed: number; errors: string[] }>("connect", {
				wsBase: net?.wsBase ?? stack.wsBase,
				ids: ids.slice(i * per, (i + 1) * per),
				secret: stack.secret,
				...(mintTokens ? { mint: { base: stack.base, apiKey: stack.apiKey, keep: mintTokens === "keep" } } : {}),
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

interface Ran {
	received: string[];
	reported: string[];
	duplicates: number;
	executedTwice: string[];
	stops: string[];
	cuts: Record<string, number>;
}

async function agentsDid(fleets: Child[]): Promise<AgentsDid & { duplicates: number; executedTwice: number; cuts: Record<string, number> }> {
	const parts = await Promise.all(fleets.map((f) => f.call<Ran>("ran")));
	const cuts: Record<string, number> = {};
	for (const p of parts) for (const [k, n] of Object.entries(p.cuts)) cuts[k] = (cuts[k] ?? 0) + n;
	return {
		received: new Set(parts.flatMap((p) => p.received)),
		reported: new Set(parts.flatMap((p) => p.reported)),
		stops: new Set(parts.flatMap((p) => p.stops)),
		duplicates: parts.reduce((s, p) => s + p.duplicates, 0),
		executedTwice: parts.reduce((s, p) => s + p.executedTwice.length, 0),
		cuts,
	};
}

/** Polls until nothing of `action` is open and the check finds no loss, or the settle time ends. */
async function settle(stack: Stack, cfg: Config, fleets: Child[], action: string, accepted: string[]) {
	const loadEnd = wallNow();
	let settledAt: number | undefined;
	for (;;) {
		const c = await openCount(stack.pg, action).catch(() => undefined);
		const late = wallNow() - loadEnd > cfg.settleMs;
		if ((c && c.open === 0 && c.total >= accepted.length) || late) {
			const did = await agentsDid(fleets);
			const v = await verify(stack.pg, action, accepted, did, true);
			if (v.lost.length === 0) settledAt = wallNow();
			if (settledAt !== undefined || late) return { v, did, settledAt, loadEnd };
		}
		await sleep(500);
	}
}

/** Reads the load's peaks every second until stopped; a failed read (Postgres down) is skipped. */
function sampler(stack: Stack, action: string) {
	const peak = { outbox: 0, rss: 0, conns: 0, open: 0 };
	let stopped = false;
	const tick = async () => {
		peak.rss = Math.max(peak.rss, stack.workerdRss());
		const q = async (sql: string) => Number((await stack.pg.query<{ n: string }>(sql)).rows[0]?.n ?? 0);
		await Promise.all([
			q("select coalesce(sum(outbox_depth), 0) as n from agents").then((n) => void (peak.outbox = Math.max(peak.outbox, n))),
			q("select count(*) as n from pg_stat_activity where backend_type = 'client backend'").then((n) => void (peak.conns = Math.max(peak.conns, n))),
			openCount(stack.pg, action).then((c) => void (peak.open = Math.max(peak.open, c.open))),
		]).catch(() => {});
	};
	const loop = (async () => {
		while (!stopped) {
			await Promise.race([tick(), sleep(2_000)]);
			await sleep(1_000);
		}
	})();
	return {
		peak,
		stop: async () => {
			stopped = true;
			await loop;
		},
	};
}

async function latencies(stack: Stack, action: string): Promise<{ p50: number | null; p99: number | null }> {
	const { rows } = await stack.pg.query<{ p50: number | null; p99: number | null }>(
		`select percentile_cont(0.5) within group (order by ms) as p50, percentile_cont(0.99) within group (order by ms) as p99
		 from (select extract(epoch from completed_at - created_at) * 1000 as ms from agent_commands where action = $1 and status = 'completed') x`,
		[action],
	);
	const r = (x: number | null | undefined) => (x == null ? null : Math.round(Number(x)));
	return { p50: r(rows[0]?.p50), p99: r(rows[0]?.p99) };
}

/**
 * Resolves with the seconds from `healedAt` until every agent is connected
 * again, the objects report an empty outbox, and every command of the
 * scenario created before `healedAt` is finished in Postgres; null when that
 * did not happen within `timeoutMs`.
 */
export async function recovered(stack: Stack, fleets: Child[], action: string, healedAt: number, timeoutMs: number): Promise<number | null> {
	const deadline = healedAt + timeoutMs;
	while (wallNow() < deadline) {
		try {
			const st = await Promise.all(fleets.map((f) => f.call<{ agents: number; connected: number }>("status")));
			const back = st.every((s) => s.connected === s.agents);
			if (back) {
				const { rows } = await stack.pg.query<{ open: string; outbox: string }>(
					`select (select count(*) from agent_commands where action = $1 and status in ('pending','dispatched','acknowledged')
					         and created_at <= to_timestamp($2::float8 / 1000)) as open,
					        (select coalesce(sum(outbox_depth), 0) from agents) as outbox`,
					[action, healedAt],
				);
				if (Number(rows[0]?.open) === 0 && Number(rows[0]?.outbox) === 0) return Math.round((wallNow() - healedAt) / 100) / 10;
			}
		} catch {
			// Postgres still away: not recovered yet.
		}
		await sleep(250);
	}
	return null;
}

/** The steady load with the fault in its middle; resolves once the load has been answered. */
async function drive(s: Scenario, env: FaultEnv, enq: Child, ids: string[], log: (m: string) => void) {
	const { cfg, stack, action } = env;
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
	log(`${s.key}: fault over ${JSON.stringify(fault).slice(0, 600)}`);
	const sent = await load;
	log(`${s.key}: load done, answers ${JSON.stringify(sent.statuses)}; settling`);
	return { fault, healedAt, sent };
}

function p(xs: number[], q: number): number | null {
	const sorted = [...xs].sort((a, b) => a - b);
	if (!sorted.length) return null;
	return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] ?? null;
}

export async function runScenario(s: Scenario, stack: Stack, base: Config, log: (m: string) => void): Promise<Outcome> {
	const out: Outcome = { scenario: s.key, title: s.title };
	const why = s.unavailable?.(stack);
	if (why) return { ...out, skipped: why };
	const cfg: Config = { ...base, ...s.tune?.(base) };
	const net = await s.network?.(stack);
	const action = `chaos.${s.key}`;
	const ids = agentIds(`chaos-${s.key}`, cfg.agents);
	const fleets: Child[] = [];
	const enq = spawnChild("load/enqueue.ts");
	const sampling = sampler(stack, action);
	const crashesBefore = stack.bouncer?.crashes.length ?? 0;
	try {
		await startFleets(stack, cfg, ids, fleets, net, s.mintTokens);
		log(`${s.key}: ${ids.length} agents connected in ${fleets.length} fleet processes; load ${cfg.rate}/s for ${cfg.loadMs / 1000} s`);
		const env: FaultEnv = { stack, cfg, fleets, net, action, ids, recovered: (at, ms) => recovered(stack, fleets, action, at, ms ?? cfg.recoveryTimeoutMs) };
		const { fault, healedAt, sent } = await drive(s, env, enq, ids, log);
		const { faults, recoveries, hostile, accepted: extra, ...detail } = fault as FaultReport;
		const accepted = [...(sent.accepted ?? []), ...(extra ?? [])];
		Object.assign(out, { fault: detail, faults, hostile, accepted: accepted.length, answers: sent.statuses });
		const rec = recoveries.filter((x): x is number => x !== null);
		out.recoverySeconds = { p50: p(rec, 0.5), p99: p(rec, 0.99), notRecovered: recoveries.length - rec.length };
		const r = await settle(stack, cfg, fleets, action, accepted);
		const { lost, invented, unrun, ...rest } = r.v;
		out.verdict = { ...rest, lost: lost.length, invented: invented.length, unrun: unrun.length, lostIds: lost.slice(0, 50), inventedIds: invented.slice(0, 50) };
		out.duplicatesDelivered = r.did.duplicates;
		out.executedMoreThanOnce = r.did.executedTwice;
		if (Object.values(r.did.cuts).some((n) => n > 0)) out.cuts = r.did.cuts;
		out.settleSeconds = r.settledAt === undefined ? null : Math.round((r.settledAt - r.loadEnd) / 100) / 10;
		out.backlogSeconds = await backlogClearedAfter(stack.pg, action, healedAt);
		await sampling.stop();
		const seconds = Math.max(1, (sent.endedAt - sent.startedAt) / 1000);
		out.load = {
			agents: cfg.agents,
			commandsPerSecond: Math.round((accepted.length / seconds) * 10) / 10,
			enqueueToCompletedMs: await latencies(stack, action),
			peakOutboxDepth: sampling.peak.outbox,
			peakRuntimeMemoryMB: Math.round(sampling.peak.rss / 1e6),
			peakPostgresConnections: sampling.peak.conns,
			peakOpenCommands: sampling.peak.open,
		};
	} catch (err) {
		out.error = err instanceof Error ? (err.stack ?? err.message) : String(err);
	} finally {
		const crashes = stack.bouncer?.crashes.slice(crashesBefore) ?? [];
		if (crashes.length) out.pgbouncerCrashes = crashes;
		await sampling.stop();
		await Promise.all(fleets.map((f) => f.call("close").catch(() => {})));
		for (const f of [...fleets, enq]) f.stop();
		await net?.close();
	}
	return out;
}

