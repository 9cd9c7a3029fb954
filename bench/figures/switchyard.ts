/** Switchyard's figures against one running stack (embedded or real Postgres). */
import { agentIds } from "../lib/payload.ts";
import { spawnChild, type Child } from "../lib/rpc.ts";
import type { Stack } from "../lib/stack.ts";
import { sleep, summarize, wallNow } from "../lib/stats.ts";
import { pollUntil, type Target } from "./common.ts";

/**
 * Switchyard as the load reaches it: `runtime` (the default) is the workerd
 * runtime's own address, past wrangler dev's proxy, as the floor is
 * reached; `proxy` is the public port, as `npm run dev` serves it.
 */
export async function switchyardTarget(stack: Stack, via: "runtime" | "proxy" = "runtime"): Promise<Target> {
	const wsBase = via === "runtime" ? await stack.runtimeWsBase() : stack.wsBase;
	const base = wsBase.replace(/^ws/, "http");
	return {
		fleet: "load/agents.ts",
		roles: stack.roles,
		serving: ["runtime (workerd)"],
		connectArgs: (ids) => ({ wsBase, ids, secret: stack.secret, deflate: false, parallel: 20, reconnect: false, concurrency: 1000 }),
		transport: (action, batch) =>
			batch
				? { kind: "http-batch", base, apiKey: stack.apiKey, action, size: batch }
				: { kind: "http", base, apiKey: stack.apiKey, action },
		verify: async (action, expected, timeoutMs) => {
			const doneAt = await pollUntil(async () => {
				const { rows } = await stack.pg.query<{ status: string; n: string }>(
					"select status, count(*) as n from agent_commands where action = $1 group by status",
					[action],
				);
				const by = Object.fromEntries(rows.map((r) => [r.status, Number(r.n)]));
				const total = rows.reduce((s, r) => s + Number(r.n), 0);
				const bad = (by.failed ?? 0) + (by.cancelled ?? 0) + (by.expired ?? 0);
				return {
					done: (by.completed ?? 0) === expected && total === expected,
					fail: bad > 0 || total > expected ? `commands ${JSON.stringify(by)}, expected ${expected} completed` : undefined,
					progress: JSON.stringify(by),
				};
			}, timeoutMs);
			return { doneAt, detail: { whereTheTimeGoes: await breakdown(stack, action) } };
		},
	};
}

/**
 * Per-command segments from the row's own timestamps (all on this machine's
 * clock): the enqueuer's send time (payload.t) to the row's insert
 * (created_at: HTTP, worker, Postgres), to the object's dispatch
 * (dispatched_at: RPC into the object, SQLite buffer), to the object hearing
 * the result (completed_at: socket out, agent, socket back).
 */
async function breakdown(stack: Stack, action: string): Promise<Record<string, unknown>> {
	const { rows } = await stack.pg.query<{ sent: number; created: number; dispatched: number; completed: number }>(
		`select (payload->>'t')::float8 as sent,
			extract(epoch from created_at) * 1000 as created,
			extract(epoch from dispatched_at) * 1000 as dispatched,
			extract(epoch from completed_at) * 1000 as completed
		from agent_commands where action = $1`,
		[action],
	);
	const seg = (f: (r: (typeof rows)[number]) => number) => summarize(rows.map((r) => f(r)).filter(Number.isFinite));
	return {
		enqueueToRowInsertedMs: seg((r) => Number(r.created) - Number(r.sent)),
		rowInsertedToObjectDispatchMs: seg((r) => Number(r.dispatched) - Number(r.created)),
		dispatchToResultAtObjectMs: seg((r) => Number(r.completed) - Number(r.dispatched)),
	};
}

type Fleets = Child[];

/** workerd evicts an object idle for about 10 s; a little more, to be sure. */
const EVICTION_WAIT_MS = 12_000;

/** Sockets opening at once per fleet process in figures 3 and 4 (see connectFleets). */
const RAMP_PARALLEL = 8;

/**
 * Opens `ids` across fleet processes of `perProcess` agents, `parallel`
 * sockets opening at once in each. Figures 3 and 4 open gently: every object
 * stays live (SQLite files open) for seconds after its connect, and a fast
 * ramp took workerd past its open-file limit on the live ones alone.
 */
async function connectFleets(wsBase: string, stack: Pick<Stack, "secret">, ids: string[], deflate: boolean, reconnect: boolean, perProcess = 5000, budgetMs?: number, parallel = 25): Promise<{ fleets: Fleets; ms: number; connected: number; live: number; errors: string[] }> {
	const fleets: Fleets = [];
	const started = wallNow();
	const parts: string[][] = [];
	for (let i = 0; i < ids.length; i += perProcess) parts.push(ids.slice(i, i + perProcess));
	const results = await Promise.all(
		parts.map(async (part) => {
			const fleet = spawnChild("load/agents.ts");
			fleets.push(fleet);
			return fleet.call<{ connected: number; live: number; failed: number; errors: string[] }>("connect", {
				wsBase,
				ids: part,
				secret: stack.secret,
				deflate,
				parallel,
				reconnect,
				concurrency: 10,
				connectTimeoutMs: 120_000,
				budgetMs,
			});
		}),
	);
	return {
		fleets,
		ms: wallNow() - started,
		connected: results.reduce((s, r) => s + r.connected, 0),
		live: results.reduce((s, r) => s + r.live, 0),
		errors: results.flatMap((r) => r.errors).slice(0, 5),
	};
}

async function closeFleets(fleets: Fleets): Promise<void> {
	await Promise.all(fleets.map((f) => f.call("close").catch(() => {})));
	for (const f of fleets) f.stop();
}

/**
 * RSS once the agents just connected are idle. An object that has just
 * served a connect is live and holds its SQLite files (three descriptors);
 * workerd evicts it after about 10 s idle (hibernation), leaving the socket
 * alone (two descriptors). Waits out that eviction, then until the
 * descriptor count stops falling (6 s apart, at most 45 s), so each step is
 * read at rest, as an idle fleet is. (A first look at 3 s saw a small step's
 * objects all still live and the count not yet falling.)
 */
async function settledRss(stack: Pick<Stack, "workerdRss" | "workerdOpenFiles">): Promise<number> {
	await sleep(EVICTION_WAIT_MS);
	const until = wallNow() + 45_000;
	let before = stack.workerdOpenFiles().open;
	while (wallNow() < until) {
		await sleep(6_000);
		const now = stack.workerdOpenFiles().open;
		if (now >= before * 0.995) break;
		before = now;
	}
	return stack.workerdRss();
}

export interface RampStep {
	target: number;
	connected: number;
	connectSeconds: number;
	rssBytes: number;
	bytesPerAgent: number;
	/** Descriptors the busiest workerd process holds once the step is idle, and per agent held. */
	openFiles: number;
	filesPerAgent: number;
	/** The most it held while the step connected, and how far that was above rest. */
	peakOpenFiles: number;
	connectExcessFiles: number;
	errors: string[];
}

/**
 * Figure 3: idle agents held at once, in steps, and workerd's resident memory
 * per connected agent. Stops at the first step that cannot connect fully.
 */
export async function connectionRamp(stack: Pick<Stack, "secret" | "workerdRss" | "workerdOpenFiles" | "runtimeWsBase">, a: { tag: string; steps: number[]; deflate: boolean; budgetMs: number }) {
	const baseline = await settledRss(stack);
	// Past wrangler dev's proxy, straight to the runtime (Stack.runtimeWsBase).
	const wsBase = await stack.runtimeWsBase();
	const filesBefore = stack.workerdOpenFiles();
	const steps: RampStep[] = [];
	const fleets: Fleets = [];
	let held = 0;
	let stoppedBy: string | undefined;
	const started = wallNow();
	try {
		for (const target of a.steps) {
			const left = a.budgetMs - (wallNow() - started);
			if (left <= 0) break;
			// Past the open-file limit, workerd fails to open SQLite files and
			// sockets, and at the limit it aborted (seen here): stop where the
			// measured figures say the next step's peak would cross it. The peak
			// is the rest figure for the agents then held plus what connecting
			// adds above rest (objects live after their connect), as last measured.
			const last = steps[steps.length - 1];
			if (last && filesBefore.limit) {
				const projected = last.openFiles + last.filesPerAgent * (target - held) + last.connectExcessFiles;
				if (projected * 1.03 > filesBefore.limit) {
					stoppedBy = `the next step (${target} agents) would peak at about ${Math.round(projected)} open files while connecting, within 3% of workerd's limit of ${filesBefore.limit}`;
					process.stdout.write(`[bench]     ${a.tag}: stopped: ${stoppedBy}\n`);
					break;
				}
			}
			const ids = agentIds(a.tag, target - held, held);
			const restBefore = last?.openFiles ?? filesBefore.open;
			let peak = restBefore;
			const sampler = setInterval(() => {
				peak = Math.max(peak, stack.workerdOpenFiles().open);
			}, 500);
			const r = await connectFleets(wsBase, stack, ids, a.deflate, false, 5000, left, RAMP_PARALLEL).finally(() => clearInterval(sampler));
			fleets.push(...r.fleets);
			const added = r.connected;
			held += added;
			const rss = await settledRss(stack);
			const files = stack.workerdOpenFiles().open;
			const perAgent = (files - filesBefore.open) / held;
			steps.push({
				target,
				connected: held,
				connectSeconds: r.ms / 1000,
				rssBytes: rss,
				bytesPerAgent: Math.round((rss - baseline) / held),
				openFiles: files,
				filesPerAgent: Number(perAgent.toFixed(2)),
				peakOpenFiles: peak,
				connectExcessFiles: Math.max(0, Math.round(peak - (restBefore + perAgent * added))),
				errors: r.errors,
			});
			process.stdout.write(`[bench]     ${a.tag}: ${held}/${target} connected in ${(r.ms / 1000).toFixed(1)} s, workerd RSS ${(rss / 2 ** 20).toFixed(0)} MiB, ${files} open files at rest, ${peak} at peak (limit ${filesBefore.limit ?? "?"})\n`);
			if (held < target) break;
		}
	} finally {
		await closeFleets(fleets);
	}
	const last = steps[steps.length - 1];
	return {
		value: (last?.bytesPerAgent ?? Number.NaN) / 1024,
		detail: { connectedTo: "the workerd runtime, past wrangler dev's proxy", budgetSeconds: a.budgetMs / 1000, baselineRssBytes: baseline, openFileLimit: filesBefore.limit, stoppedBy, maxConnected: last?.connected ?? 0, reachedTarget: last ? last.connected >= (a.steps.at(-1) ?? 0) : false, steps, deflateOffered: a.deflate },
	};
}

/**
 * Figure 4: `n` agents connected (reconnecting with the SDK's backoff and
 * jitter); wrangler dev is killed, one command per agent is inserted straight
 * into Postgres while it is down, and wrangler dev starts again. Timed from
 * the restart until every agent is back and has its command.
 */
/** A storm slower than this counts as broken: some agent never got its command back. */
const STORM_LIMIT_MS = 600_000;

export async function reconnectStorm(stack: Stack, a: { tag: string; agents: number }) {
	const ids = agentIds(a.tag, a.agents);
	const r = await connectFleets(await stack.runtimeWsBase(), stack, ids, false, true, 2500, undefined, RAMP_PARALLEL);
	try {
		if (r.live < ids.length) throw new Error(`only ${r.live} of ${ids.length} agents connected before the storm (${r.connected} opened): ${r.errors.join("; ")}`);
		await Promise.all(r.fleets.map((f) => f.call("mark")));
		const killedAt = wallNow();
		await stack.stopWrangler();
		const action = `${a.tag}.cmd`;
		await stack.pg.query(
			`insert into agent_commands (agent_id, action, payload)
			 select $1 || '-' || i, $2, jsonb_build_object('storm', true) from generate_series(0, $3::int - 1) as i`,
			[a.tag, action, a.agents],
		);
		const restartAt = wallNow();
		// Agents reconnect as soon as the port opens; /healthz (a Postgres
		// query) may answer late while thousands of reconnects hold the one
		// workerd thread, and that delay is part of what is measured.
		await stack.startWrangler(STORM_LIMIT_MS);
		const healthyAt = wallNow();
		// The runtime came back on a new port: the agents' address changes, as a
		// load balancer's would not. Until told, they retry the old one and back off.
		const runtime = await stack.runtimeWsBase();
		await Promise.all(r.fleets.map((f) => f.call("retarget", { wsBase: runtime })));
		const retargetedAt = wallNow();
		const waits = await Promise.all(
			r.fleets.map((f) =>
				f.call<{ complete: boolean; agents: number; reconnected: number; gotCommand: number; lastWelcomeAt: number; lastCommandAt: number; firstCommandTimes: number[]; retryFailures: Record<string, number> }>(
					"waitEveryAgent",
					{ timeoutMs: STORM_LIMIT_MS },
				),
			),
		);
		const complete = waits.every((w) => w.complete);
		const gotCommand = waits.reduce((s, w) => s + w.gotCommand, 0);
		if (!complete) throw new Error(`storm incomplete after ${STORM_LIMIT_MS / 1000} s: ${waits.reduce((s, w) => s + w.reconnected, 0)} reconnected, ${gotCommand} got their command`);
		const lastCommandAt = Math.max(...waits.map((w) => w.lastCommandAt));
		await pollUntil(async () => {
			const { rows } = await stack.pg.query<{ n: string }>("select count(*) as n from agent_commands where action = $1 and status = 'completed'", [action]);
			return { done: Number(rows[0]?.n) === a.agents, progress: `${rows[0]?.n} completed` };
		}, 120_000);
		const perAgent = waits.flatMap((w) => w.firstCommandTimes).map((t) => (t - restartAt) / 1000);
		return {
			value: (lastCommandAt - restartAt) / 1000,
			samples: perAgent,
			detail: {
				agents: a.agents,
				downSeconds: (restartAt - killedAt) / 1000,
				connectedTo: "the workerd runtime, past wrangler dev's proxy; told its new port after the restart",
				restartToHealthySeconds: (healthyAt - restartAt) / 1000,
				healthyToRetargetedSeconds: (retargetedAt - healthyAt) / 1000,
				healthyToAllCommandsSeconds: (lastCommandAt - healthyAt) / 1000,
				restartToLastReconnectSeconds: (Math.max(...waits.map((w) => w.lastWelcomeAt)) - restartAt) / 1000,
				reconnectFailures: sumCounts(waits.map((w) => w.retryFailures)),
				note: "samples: seconds from restart to each agent's command; reconnectFailures: failed attempts by reason, before and after the restart",
			},
		};
	} finally {
		await closeFleets(r.fleets);
	}
}

function sumCounts(parts: Record<string, number>[]): Record<string, number> {
	const out: Record<string, number> = {};
	for (const p of parts) for (const [k, v] of Object.entries(p)) out[k] = (out[k] ?? 0) + v;
	return out;
}

/** Figure 5: agent output chunk to observer receipt. */
export async function streaming(stack: Stack, a: { tag: string; chunks: number; rate: number }) {
	const child = spawnChild("load/agents.ts");
	try {
		const r = await child.call<{ latency: number[]; sent: number }>("stream", {
			wsBase: stack.wsBase,
			base: stack.base,
			apiKey: stack.apiKey,
			secret: stack.secret,
			agentId: `${a.tag}-0`,
			chunks: a.chunks,
			rate: a.rate,
		});
		if (r.latency.length < r.sent) throw new Error(`observer received ${r.latency.length} of ${r.sent} chunks`);
		return { value: summarize(r.latency).median, samples: r.latency, detail: { chunks: a.chunks, rate: a.rate } };
	} finally {
		child.stop();
	}
}
