/**
 * The faults. Each runs in the middle of a steady load and undoes itself
 * before it returns; it reports how many faults of each kind it made and how
 * long the system took to recover from each (every agent back, the outbox
 * empty, every command created before the heal finished), and details that
 * go into the results file.
 */
import { randomBytes } from "node:crypto";
import { startFaultProxy } from "../bench/lib/fault-proxy.ts";
import type { Child } from "../bench/lib/rpc.ts";
import type { Stack } from "../bench/lib/stack.ts";
import { sleep, wallNow } from "../bench/lib/stats.ts";
import { signAgentToken } from "../src/auth/agent-token.ts";
import { CLUSTER, clusterUnavailable, faketimeAvailable, setClockOffset, startClusterAgain, stopCluster } from "./cluster.ts";
import type { Config } from "./config.ts";
import { hostile } from "./hostile.ts";
import { batch } from "./http.ts";
import { type Partitionable, partitionable, partitionUnavailable } from "./netns.ts";

export interface FaultEnv {
	stack: Stack;
	cfg: Config;
	fleets: Child[];
	/** The namespace the fleets run in, for scenarios that cut the network. */
	net?: Partitionable;
	/** The scenario's action (every command it enqueues carries it) and agents. */
	action: string;
	ids: string[];
	/** Seconds from `healedAt` until recovered (see scenario.ts `recovered`); null if not within the timeout. */
	recovered(healedAt: number, timeoutMs?: number): Promise<number | null>;
}

export interface FaultReport {
	faults: Record<string, number>;
	recoveries: (number | null)[];
	/** Commands the fault enqueued itself (bursts), checked like the load's. */
	accepted?: string[];
	hostile?: Record<string, { tried: number; got: Record<string, number> }>;
	[detail: string]: unknown;
}

export interface Scenario {
	key: string;
	title: string;
	/** Why it cannot run on this machine or this stack, or undefined when it can. */
	unavailable?(stack: Stack): string | undefined;
	/** The scenario's own size, over the run's. */
	tune?(cfg: Config): Partial<Config>;
	/** Puts the fleets in a network the fault can cut (they dial wrangler dev on the host otherwise). */
	network?(stack: Stack): Promise<Partitionable>;
	/**
	 * The fleets get their tokens from the API (after a revocation, the only
	 * way back in): a new one per connect, or with "keep" one kept across
	 * reconnects until a connect is refused with 401, as the SDK does.
	 */
	mintTokens?: boolean | "keep";
	fault(env: FaultEnv): Promise<FaultReport>;
}

const secondsSince = (t: number) => Math.round((wallNow() - t) / 100) / 10;

/** Holds the fault for `ms`, undoes it, and measures the recovery. */
async function once(env: FaultEnv, kind: string, ms: number, on: () => void | Promise<void>, off: () => void | Promise<void>): Promise<FaultReport> {
	const t = wallNow();
	await on();
	try {
		await sleep(ms);
	} finally {
		await off();
	}
	const healedAt = wallNow();
	return { faults: { [kind]: 1 }, recoveries: [await env.recovered(healedAt)], seconds: Math.round((healedAt - t) / 100) / 10 };
}

/**
 * `n` faults, one every `everyMs` from the first: each is made, undone, and
 * its recovery measured until the next is due (null if it did not recover by then).
 */
async function repeated(env: FaultEnv, kind: string, n: number, everyMs: number, hit: (i: number) => Promise<Record<string, unknown> | undefined>): Promise<FaultReport> {
	const recoveries: (number | null)[] = [];
	const each: Record<string, unknown>[] = [];
	const start = wallNow();
	for (let i = 0; i < n; i++) {
		const detail = (await hit(i)) ?? {};
		const healedAt = wallNow();
		const nextAt = start + (i + 1) * everyMs;
		const rec = await env.recovered(healedAt, Math.max(i === n - 1 ? env.cfg.recoveryTimeoutMs : nextAt - healedAt, 1_000));
		recoveries.push(rec);
		each.push({ ...detail, recoverySeconds: rec });
		const wait = nextAt - wallNow();
		if (i < n - 1 && wait > 0) await sleep(wait);
	}
	return { faults: { [kind]: n }, recoveries, each };
}

/** Drops random sockets every `everyMs` until `target` drops; the fleets reconnect with the SDK's backoff. */
const flaps: Scenario = {
	key: "flaps",
	title: "agent flaps: sockets dropped at random, agents reconnect",
	tune: (cfg) => ({ loadMs: cfg.faultAtMs + cfg.flaps.durationMs + 5_000 }),
	async fault(env) {
		const { cfg, fleets } = env;
		const started = wallNow();
		const until = started + cfg.flaps.durationMs;
		let dropped = 0;
		while (wallNow() < until && dropped < cfg.flaps.target) {
			const r = await Promise.all(fleets.map((f) => f.call<{ dropped: number }>("flap", { fraction: cfg.flaps.fraction })));
			dropped += r.reduce((s, x) => s + x.dropped, 0);
			await sleep(cfg.flaps.everyMs);
		}
		const rec = await env.recovered(wallNow());
		return { faults: { "socket dropped": dropped }, recoveries: [rec], everyMs: cfg.flaps.everyMs, fraction: cfg.flaps.fraction, seconds: secondsSince(started) };
	},
};

/**
 * Tokens revoked under load: every `everyMs` a share of the agents is
 * revoked through the API (their sockets close 4004, terminal for the SDK)
 * and each comes back with a token minted afterwards, as an operator would
 * re-provision it. Commands sent to it before, during and after must all
 * end as the agent answered them.
 */
const revoke: Scenario = {
	key: "revoke",
	title: "revocation under load: a share of the agents revoked every second, back with fresh tokens",
	mintTokens: true,
	async fault(env) {
		const { cfg, stack, ids } = env;
		const until = wallNow() + cfg.revoke.durationMs;
		const statuses: Record<string, number> = {};
		// What a token minted before its revocation got afterwards: 401, never 426 (the upgrade would have been let through).
		const oldToken: Record<string, number> = {};
		const call = (path: string, init: RequestInit = {}) =>
			fetch(`${stack.base}${path}`, { ...init, headers: { authorization: `Bearer ${stack.apiKey}`, "content-type": "application/json", ...init.headers } });
		let revoked = 0;
		while (wallNow() < until) {
			const picked = ids.filter(() => Math.random() < cfg.revoke.fraction);
			await Promise.all(
				picked.map(async (id) => {
					const path = `/v1/agents/${encodeURIComponent(id)}`;
					const minted = await call(`${path}/token`, { method: "POST", body: "{}" }).catch(() => null);
					const before = minted?.status === 201 ? ((await minted.json()) as { token: string }).token : null;
					const res = await call(`${path}/revoke`, { method: "POST" }).catch(() => null);
					const k = res ? String(res.status) : "network";
					statuses[k] = (statuses[k] ?? 0) + 1;
					await res?.arrayBuffer();
					if (res?.status !== 200) return;
					revoked++;
					if (!before) return;
					const probe = await fetch(`${stack.base}${path}/connect`, { headers: { authorization: `Bearer ${before}` } }).catch(() => null);
					const p = probe ? String(probe.status) : "network";
					oldToken[p] = (oldToken[p] ?? 0) + 1;
					await probe?.arrayBuffer();
				}),
			);
			await sleep(cfg.revoke.everyMs);
		}
		const rec = await env.recovered(wallNow());
		if ((oldToken["426"] ?? 0) > 0) throw new Error(`${oldToken["426"]} tokens minted before their revocation were still admitted`);
		return {
			faults: { "tokens revoked": revoked },
			recoveries: [rec],
			revokeStatuses: statuses,
			revokedTokenProbes: oldToken,
			seconds: cfg.revoke.durationMs / 1000,
		};
	},
};

/** What the runtime answers a plain GET of the connect route with `token`: 426 if it took the token, 401 if not. */
async function tokenProbe(stack: Stack, agentId: string, token: string): Promise<string> {
	const res = await fetch(`${stack.base}/v1/agents/${encodeURIComponent(agentId)}/connect`, { headers: { authorization: `Bearer ${token}` } }).catch(() => null);
	await res?.arrayBuffer();
	return res ? String(res.status) : "network";
}

/**
 * The agent token secret rotated under load, as a deploy with new secrets
 * does it: the runtime restarts signing with a new secret and still taking
 * the old one as AGENT_TOKEN_SECRET_PREVIOUS, so agents come back on the
 * tokens they hold; then it restarts without the old one, so those tokens
 * are refused (401) and each agent gets a new one from the API. Agents keep
 * their token across reconnects, as the SDK does. Probes check what a token
 * signed with each secret gets after each step.
 */
const rotate: Scenario = {
	key: "rotate",
	title: "secret rotation under load: restart on a new secret keeping the old as previous, then without it",
	mintTokens: "keep",
	async fault(env) {
		const { stack, fleets } = env;
		const old = stack.secret;
		const next = randomBytes(32).toString("base64url");
		const probeId = "chaos-rotate-probe";
		const sign = async (secret: string) => (await signAgentToken(probeId, { current: secret }, 3600)).token;
		const oldToken = await sign(old);
		const tokens = async () => {
			const s = await Promise.all(fleets.map((f) => f.call<{ tokens: { minted: number; refused401: number } }>("status", {})));
			return s.reduce((t, x) => ({ minted: t.minted + x.tokens.minted, refused401: t.refused401 + x.tokens.refused401 }), { minted: 0, refused401: 0 });
		};
		const atStart = await tokens();
		const recoveries: (number | null)[] = [];

		await stack.setTokenSecrets(next, old);
		recoveries.push(await env.recovered(wallNow()));
		const whileBoth = { oldToken: await tokenProbe(stack, probeId, oldToken), newToken: await tokenProbe(stack, probeId, await sign(next)) };
		const afterFirst = await tokens();

		await stack.setTokenSecrets(next);
		recoveries.push(await env.recovered(wallNow()));
		const afterDrop = { oldToken: await tokenProbe(stack, probeId, oldToken), newToken: await tokenProbe(stack, probeId, await sign(next)) };
		const atEnd = await tokens();

		const wrong = [
			whileBoth.oldToken !== "426" && `an old-secret token got ${whileBoth.oldToken} while the old secret was still previous`,
			whileBoth.newToken !== "426" && `a new-secret token got ${whileBoth.newToken} after the rotation`,
			afterDrop.oldToken !== "401" && `an old-secret token got ${afterDrop.oldToken} after the old secret was dropped`,
			afterDrop.newToken !== "426" && `a new-secret token got ${afterDrop.newToken} after the old secret was dropped`,
		].filter(Boolean);
		if (wrong.length) throw new Error(wrong.join("; "));
		return {
			faults: { "secret rotated (old kept as previous)": 1, "previous secret dropped": 1 },
			recoveries,
			probes: { whileBoth, afterDrop },
			agentTokens: {
				refusedWhileBoth: afterFirst.refused401 - atStart.refused401,
				refusedAfterDrop: atEnd.refused401 - afterFirst.refused401,
				mintedAfterDrop: atEnd.minted - afterFirst.minted,
			},
		};
	},
};

/**
 * The fleets cut their own sockets at chosen points of the protocol: right
 * after a command arrives, instead of its ack, right after its result.
 */
const cuts: Scenario = {
	key: "cuts",
	title: "protocol-point flaps: agents cut their socket after a command, before an ack, after a result",
	tune: (cfg) => ({ agents: cfg.cuts.agents, fleets: cfg.cuts.fleets, rate: cfg.cuts.rate, loadMs: cfg.faultAtMs + cfg.cuts.durationMs + 5_000 }),
	async fault(env) {
		const { cfg, fleets } = env;
		const p = cfg.cuts.probability;
		await Promise.all(fleets.map((f) => f.call("configure", { cuts: { afterCommand: p, beforeAck: p, afterResult: p } })));
		await sleep(cfg.cuts.durationMs);
		await Promise.all(fleets.map((f) => f.call("configure", { cuts: { afterCommand: 0, beforeAck: 0, afterResult: 0 } })));
		const healedAt = wallNow();
		const made = await Promise.all(fleets.map((f) => f.call<{ cuts: Record<string, number> }>("ran")));
		const faults: Record<string, number> = {};
		for (const m of made) for (const [k, n] of Object.entries(m.cuts)) faults[`cut ${k}`] = (faults[`cut ${k}`] ?? 0) + n;
		return { faults, recoveries: [await env.recovered(healedAt)], probability: p, seconds: cfg.cuts.durationMs / 1000 };
	},
};

/** One fleet process frozen past the ack timeout: its sockets stay open and silent. */
const slow: Scenario = {
	key: "slow",
	title: "slow agents: one fleet process SIGSTOPped past the ack timeout",
	async fault(env) {
		const { cfg, fleets } = env;
		const pid = fleets[0]?.proc.pid;
		if (pid === undefined) throw new Error("no fleet process to freeze");
		// Resumed however the harness ends, so the fleet can see it go and exit.
		const resume = () => process.kill(pid, "SIGCONT");
		const r = await once(
			env,
			"fleet frozen",
			cfg.slowMs,
			() => {
				process.once("exit", resume);
				process.kill(pid, "SIGSTOP");
			},
			() => {
				process.off("exit", resume);
				resume();
			},
		);
		return { ...r, frozenAgents: Math.ceil(cfg.agents / cfg.fleets) };
	},
};

/** workerd and wrangler killed with SIGKILL, started again on the same persisted state. */
const crash: Scenario = {
	key: "crash",
	title: "runtime crash: wrangler dev and workerd SIGKILLed, restarted on their state",
	async fault(env) {
		const { stack, cfg } = env;
		const t = wallNow();
		await stack.stopWrangler(0);
		await sleep(cfg.crashDownMs);
		const restart = wallNow();
		await stack.startWrangler();
		const healedAt = wallNow();
		return { faults: { "runtime SIGKILL": 1 }, recoveries: [await env.recovered(healedAt)], killToHealthySeconds: secondsSince(t), restartToHealthySeconds: secondsSince(restart) };
	},
};

/**
 * A crash loop: the runtime SIGKILLed again and again under load. Before
 * each kill a burst of commands over every agent is enqueued, so that (with
 * agents that take seconds to answer) a few hundred are in flight when it dies.
 */
const crashloop: Scenario = {
	key: "crashloop",
	title: "crash loop: the runtime SIGKILLed repeatedly with hundreds of commands in flight",
	tune: (cfg) => ({ answerDelayMs: cfg.crashLoop.answerDelayMs, loadMs: cfg.faultAtMs + cfg.crashLoop.kills * cfg.crashLoop.everyMs + 5_000 }),
	async fault(env) {
		const { stack, cfg, action, ids } = env;
		const accepted: string[] = [];
		const r = await repeated(env, "runtime SIGKILL", cfg.crashLoop.kills, cfg.crashLoop.everyMs, async () => {
			const b = await batch(stack, action, [...ids, ...ids].slice(0, cfg.crashLoop.burst));
			accepted.push(...b.ids);
			await sleep(1_500);
			const inFlight = await stack.pg
				.query<{ n: string }>("select count(*) as n from agent_commands where action = $1 and status in ('pending','dispatched','acknowledged')", [action])
				.then((x) => Number(x.rows[0]?.n), () => null);
			const t = wallNow();
			await stack.stopWrangler(0);
			await sleep(cfg.crashDownMs);
			await stack.startWrangler();
			return { inFlightAtKill: inFlight, burstStatus: b.status, killToHealthySeconds: secondsSince(t) };
		});
		return { ...r, accepted };
	},
};

/** The relay drops every database connection and refuses new ones: Postgres is gone for the worker and the objects. */
const outage: Scenario = {
	key: "outage",
	title: "Postgres outage: the relay drops and refuses every database connection",
	fault: (env) =>
		once(
			env,
			"db refused",
			env.cfg.outageMs,
			() => env.stack.setDbDown(true),
			() => env.stack.setDbDown(false),
		),
};

const ownCluster = (stack: Stack) =>
	clusterUnavailable() ?? (new URL(stack.databaseUrl).port === String(CLUSTER.port) ? undefined : "needs the suite's own cluster, not the machine's");

/** The suite's own PostgreSQL stopped with `-m immediate` (a crash: no checkpoint) and started again. */
const pgrestart: Scenario = {
	key: "pgrestart",
	title: "Postgres restart: the cluster stopped -m immediate under load, then started",
	unavailable: ownCluster,
	fault: (env) =>
		repeated(env, "postgres immediate stop", env.cfg.pgRestart.restarts, env.cfg.pgRestart.everyMs, async () => {
			const t = wallNow();
			stopCluster("immediate");
			await sleep(env.cfg.pgRestart.downMs);
			startClusterAgain();
			return { downSeconds: secondsSince(t) };
		}),
};

/** PgBouncer SIGKILLed (every pooled connection gone at once) and started again on its port. */
const bouncer: Scenario = {
	key: "bouncer",
	title: "PgBouncer restart: SIGKILLed under load, started again on its port",
	unavailable: (stack) => (stack.bouncer ? undefined : "no PgBouncer in this stack"),
	fault: (env) =>
		repeated(env, "pgbouncer SIGKILL", env.cfg.bouncerRestart.restarts, env.cfg.bouncerRestart.everyMs, async () => {
			const t = wallNow();
			await env.stack.bouncer?.restart(env.cfg.bouncerRestart.downMs);
			return { downSeconds: secondsSince(t) };
		}),
};

const needsLink = (stack: Stack) => (stack.dbLink ? undefined : "no fault proxy between the relay and PgBouncer");

/** Runtime to Postgres: bytes stop moving both ways, nothing closes; on heal they move on. */
const dbblackhole: Scenario = {
	key: "dbblackhole",
	title: "runtime↔Postgres blackhole: the link goes silent (no reset), then carries on",
	unavailable: needsLink,
	fault: (env) =>
		once(
			env,
			"db link blackholed",
			env.cfg.dbBlackholeMs,
			() => env.stack.dbLink?.setBlackhole(true),
			() => env.stack.dbLink?.setBlackhole(false),
		),
};

/** Runtime to Postgres: every chunk each way delayed. */
const dbslow: Scenario = {
	key: "dbslow",
	title: "runtime↔Postgres slow link: every chunk each way delayed",
	unavailable: needsLink,
	async fault(env) {
		const r = await once(
			env,
			"db link slowed",
			env.cfg.dbSlow.durationMs,
			() => env.stack.dbLink?.setDelay(env.cfg.dbSlow.delayMs),
			() => env.stack.dbLink?.setDelay(0),
		);
		return { ...r, delayMs: env.cfg.dbSlow.delayMs };
	},
};

/** Runtime to Postgres: every open connection reset at once, repeatedly. */
const dbreset: Scenario = {
	key: "dbreset",
	title: "runtime↔Postgres resets: every database connection reset, repeatedly",
	unavailable: needsLink,
	async fault(env) {
		let reset = 0;
		const r = await repeated(env, "db link reset", env.cfg.dbResets.resets, env.cfg.dbResets.everyMs, async () => {
			const n = env.stack.dbLink?.reset() ?? 0;
			reset += n;
			return { connectionsReset: n };
		});
		return { ...r, connectionsReset: reset };
	},
};

/**
 * Unclear commits: on a share of transactions that commit, the proxy drops
 * Postgres's reply and cuts the connection after the commit, so the worker
 * or the object sees an error for a write that landed.
 */
const unclear: Scenario = {
	key: "unclear",
	title: "unclear commits: the reply to a share of committed writes dropped, the connection cut",
	unavailable: needsLink,
	async fault(env) {
		const link = env.stack.dbLink;
		const before = link?.unclear() ?? 0;
		const r = await once(
			env,
			"commit reply dropped",
			env.cfg.unclear.durationMs,
			() => link?.setUnclearCommits(env.cfg.unclear.share),
			() => link?.setUnclearCommits(0),
		);
		const dropped = (link?.unclear() ?? 0) - before;
		return { ...r, faults: { "commit reply dropped": dropped }, share: env.cfg.unclear.share };
	},
};

/** nftables drops every packet between the fleets' namespace and the host. */
const partition: Scenario = {
	key: "partition",
	title: "network partition: nftables drops the fleets' traffic in their namespace",
	unavailable: partitionUnavailable,
	network: (stack) => {
		const url = new URL(stack.base);
		return partitionable({ host: url.hostname, port: Number(url.port) });
	},
	async fault(env) {
		const net = env.net;
		if (!net) throw new Error("the partition scenario needs its namespace");
		return once(
			env,
			"agents partitioned",
			env.cfg.partitionMs,
			() => net.cut(),
			() => net.heal(),
		);
	},
};

/**
 * The agents' link to the runtime misbehaves in a TCP proxy they all dial
 * through: every byte waits `delayMs` each way (a far or congested network,
 * past nothing the protocol times), then every connection is reset at once,
 * several times (a NAT or load balancer dropping its table): the whole fleet
 * reconnects together.
 */
const agentlink: Scenario = {
	key: "agentlink",
	title: "agents' link: added latency each way, then every agent connection reset at once",
	network: async (stack) => {
		const url = new URL(stack.base);
		const link = await startFaultProxy({ host: url.hostname, port: Number(url.port) }, { postgres: false });
		return {
			wsBase: `ws://127.0.0.1:${link.port}`,
			wrapper: [],
			cut: () => link.setBlackhole(true),
			heal: () => link.setBlackhole(false),
			close: () => link.close(),
			link,
		};
	},
	async fault(env) {
		const link = env.net?.link;
		if (!link) throw new Error("the agentlink scenario needs its proxy");
		const { delayMs, slowMs, resets, everyMs } = env.cfg.agentLink;
		const slow = await once(
			env,
			`link slowed by ${delayMs} ms each way`,
			slowMs,
			() => link.setDelay(delayMs),
			() => link.setDelay(0),
		);
		let dropped = 0;
		const reset = await repeated(env, "every agent connection reset", resets, everyMs, async () => {
			const n = link.reset();
			dropped += n;
			return { connections: n };
		});
		return {
			faults: { ...slow.faults, ...reset.faults },
			recoveries: [...slow.recoveries, ...reset.recoveries],
			delayMs,
			slowSeconds: slowMs / 1000,
			connectionsReset: dropped,
			resets: reset.each,
		};
	},
};

/**
 * The database clock (libfaketime in the suite's cluster) skewed ahead, then
 * jumped back behind the real clock, then put right: Postgres's now() (every
 * created_at, every retention and expiry written in SQL) disagrees with the
 * runtime's clock while the load runs.
 */
const clock: Scenario = {
	key: "clock",
	title: "database clock: skewed ahead, jumped behind, put right (faketime)",
	unavailable: (stack) => ownCluster(stack) ?? (faketimeAvailable() ? undefined : "faketime is not installed (Debian: faketime)"),
	async fault(env) {
		const { skewSeconds, jumpSeconds, stepMs } = env.cfg.clock;
		setClockOffset(skewSeconds);
		await sleep(stepMs);
		setClockOffset(-jumpSeconds);
		await sleep(stepMs);
		setClockOffset(0);
		// libfaketime re-reads the offset within a second.
		await sleep(1_500);
		const healedAt = wallNow();
		return { faults: { "db clock skewed ahead": 1, "db clock jumped behind": 1 }, recoveries: [await env.recovered(healedAt)], skewSeconds, jumpBackSeconds: jumpSeconds, stepSeconds: stepMs / 1000 };
	},
};

export const SCENARIOS: Scenario[] = [flaps, revoke, rotate, cuts, slow, crash, crashloop, outage, pgrestart, bouncer, dbblackhole, dbslow, dbreset, unclear, partition, agentlink, clock, hostile];
