/**
 * How the worker reaches agents' objects: a stub by the agent's id (the
 * platform names the object; inside it, `ctx.id.name` is the agent id), and
 * the bounded fan-out that hands committed commands over.
 */
import type { CommandRecord, OpenCommand } from "../db/commands";
import { errorFields, log } from "../log";
import type { AgentHub } from "./agent-hub";
import type { BufferInput } from "./buffer";

export function agentHub(env: Env, agentId: string): DurableObjectStub<AgentHub> {
	return env.AGENT_HUB.getByName(agentId);
}

/**
 * What the worker hands the object: the committed Postgres row, in the
 * object's terms. A catch-up's row comes without its payload (OpenCommand).
 */
export function toBufferInput(r: CommandRecord | OpenCommand): BufferInput {
	return {
		id: r.id,
		seq: r.seq,
		action: r.action,
		...("payload" in r ? { payload: r.payload } : {}),
		sessionId: r.sessionId,
		priority: r.priority,
		status: r.status === "dispatched" || r.status === "acknowledged" ? r.status : "pending",
		attempts: r.attempts,
		maxAttempts: r.maxAttempts,
		ackTimeoutSeconds: r.ackTimeoutSeconds,
		timeoutSeconds: r.timeoutSeconds,
		expiresAt: r.expiresAt?.getTime() ?? null,
		firstDispatchedAt: r.firstDispatchedAt?.getTime() ?? null,
		cancelRequested: r.cancelRequestedAt !== null,
	};
}

/** A batch may name up to 1,000 agents; this many objects are called at once. */
const FORWARD_PARALLEL = 50;

/** Runs `call` for every item, at most `parallel` at a time; settles every one. */
export async function boundedAll<T, R>(items: readonly T[], parallel: number, call: (item: T) => Promise<R>): Promise<PromiseSettledResult<R>[]> {
	const out: PromiseSettledResult<R>[] = [];
	for (let i = 0; i < items.length; i += parallel) {
		out.push(...(await Promise.allSettled(items.slice(i, i + parallel).map(call))));
	}
	return out;
}

/**
 * Hands committed commands to their agents' objects, one call per agent. A
 * failure is logged, not raised: the rows are durable and `pending`, and the
 * object reads them from Postgres on the agent's next connect, or the
 * recovery cron hands them over within a minute.
 */
export async function forward(env: Env, commands: readonly CommandRecord[]): Promise<void> {
	const byAgent = new Map<string, CommandRecord[]>();
	for (const c of commands) {
		const list = byAgent.get(c.agentId);
		if (list) list.push(c);
		else byAgent.set(c.agentId, [c]);
	}
	await boundedAll([...byAgent], FORWARD_PARALLEL, async ([agentId, list]) => {
		try {
			await agentHub(env, agentId).enqueue(list.map(toBufferInput));
		} catch (err) {
			log("warn", "command.forward_failed", { agentId, count: list.length, ...errorFields(err) });
		}
	});
}
