/**
 * The five faults. Each runs in the middle of a steady load and undoes
 * itself before it returns; what it reports goes into the results file.
 */
import type { Child } from "../bench/lib/rpc.ts";
import type { Stack } from "../bench/lib/stack.ts";
import { sleep, wallNow } from "../bench/lib/stats.ts";
import type { Config } from "./config.ts";
import { type Partitionable, partitionable, partitionUnavailable } from "./netns.ts";

export interface FaultEnv {
	stack: Stack;
	cfg: Config;
	fleets: Child[];
	/** The namespace the fleets run in, for scenarios that cut the network. */
	net?: Partitionable;
}

export interface Scenario {
	key: string;
	title: string;
	/** Why it cannot run on this machine, measured, or undefined when it can. */
	unavailable?(): string | undefined;
	/** Puts the fleets in a network the fault can cut (they dial wrangler dev on the host otherwise). */
	network?(stack: Stack): Promise<Partitionable>;
	fault(env: FaultEnv): Promise<Record<string, unknown>>;
}

const secondsSince = (t: number) => Math.round((wallNow() - t) / 100) / 10;

/** Drops random sockets every `everyMs`; the fleets reconnect with the SDK's backoff. */
const flaps: Scenario = {
	key: "flaps",
	title: "agent flaps: sockets dropped at random, agents reconnect",
	async fault({ cfg, fleets }) {
		const until = wallNow() + cfg.flaps.durationMs;
		let dropped = 0;
		while (wallNow() < until) {
			const r = await Promise.all(fleets.map((f) => f.call<{ dropped: number }>("flap", { fraction: cfg.flaps.fraction })));
			dropped += r.reduce((s, x) => s + x.dropped, 0);
			await sleep(cfg.flaps.everyMs);
		}
		return { socketsDropped: dropped, everyMs: cfg.flaps.everyMs, fraction: cfg.flaps.fraction, seconds: cfg.flaps.durationMs / 1000 };
	},
};

/** One fleet process frozen past the ack timeout: its sockets stay open and silent. */
const slow: Scenario = {
	key: "slow",
	title: "slow agents: one fleet process SIGSTOPped past the ack timeout",
	async fault({ cfg, fleets }) {
		const pid = fleets[0]?.proc.pid;
		if (pid === undefined) throw new Error("no fleet process to freeze");
		const t = wallNow();
		// Resumed however the harness ends, so the fleet can see it go and exit.
		const resume = () => process.kill(pid, "SIGCONT");
		process.once("exit", resume);
		process.kill(pid, "SIGSTOP");
		try {
			await sleep(cfg.slowMs);
		} finally {
			process.off("exit", resume);
			resume();
		}
		return { frozenAgents: Math.ceil(cfg.agents / cfg.fleets), frozenSeconds: secondsSince(t) };
	},
};

/** workerd and wrangler killed with SIGKILL, started again on the same persisted state. */
const crash: Scenario = {
	key: "crash",
	title: "runtime crash: wrangler dev and workerd SIGKILLed, restarted on their state",
	async fault({ stack, cfg }) {
		const t = wallNow();
		await stack.stopWrangler(0);
		await sleep(cfg.crashDownMs);
		const restart = wallNow();
		await stack.startWrangler();
		return { killToHealthySeconds: secondsSince(t), restartToHealthySeconds: secondsSince(restart) };
	},
};

/** The relay drops every database connection and refuses new ones: Postgres is gone for the worker and the objects. */
const outage: Scenario = {
	key: "outage",
	title: "Postgres outage: the relay drops and refuses every database connection",
	async fault({ stack, cfg }) {
		const t = wallNow();
		stack.setDbDown(true);
		try {
			await sleep(cfg.outageMs);
		} finally {
			stack.setDbDown(false);
		}
		return { outageSeconds: secondsSince(t) };
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
	async fault({ cfg, net }) {
		if (!net) throw new Error("the partition scenario needs its namespace");
		const t = wallNow();
		net.cut();
		try {
			await sleep(cfg.partitionMs);
		} finally {
			net.heal();
		}
		return { partitionSeconds: secondsSince(t) };
	},
};

export const SCENARIOS: Scenario[] = [flaps, slow, crash, outage, partition];
