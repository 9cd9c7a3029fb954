/**
 * What the object does when Postgres refuses a status change outright (a
 * constraint, an operator's rule), not for an outage: the rest of the batch
 * is written, the refused change is parked and tried again, never dropped,
 * and its command is not forgotten meanwhile, so a catch-up cannot send a
 * finished command again.
 */
import { runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import type { AgentHub } from "../../src/agent/agent-hub";
import { agentHub } from "../../src/agent/stub";
import { PRUNE_AFTER_MS, prune } from "../../src/agent/storage";
import {
	AgentSocket,
	api,
	apiCommand,
	enqueue,
	expectError,
	query,
	sql,
	uniqueAgentId,
	waitFor,
	waitForStatus,
} from "../helpers/worker/harness";

/** A rule in Postgres that refuses `commandId` being completed, until it is lifted. */
async function refuseCompletion(commandId: string): Promise<() => Promise<void>> {
	const name = `refuse_${commandId.replaceAll("-", "")}`;
	await query(
		sql.raw(`create function ${name}() returns trigger language plpgsql as $$
			begin
				if new.id = '${commandId}' and new.status = 'completed' then raise exception 'refused by an operator rule'; end if;
				return new;
			end $$`),
	);
	await query(sql.raw(`create trigger ${name} before update on agent_commands for each row execute function ${name}()`));
	return async () => {
		await query(sql.raw(`drop trigger ${name} on agent_commands`));
		await query(sql.raw(`drop function ${name}()`));
	};
}

describe("a status change Postgres refuses", () => {
	it("is parked while the rest of its batch is written, keeps its command, and is written once Postgres takes it", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const refused = await enqueue(agentId, { action: "refused" });
		const fine = await enqueue(agentId, { action: "fine" });
		await agent.commands(2);
		for (const c of [refused, fine]) await waitFor(async () => (await apiCommand(c.id)).status === "dispatched", "dispatched");
		const lift = await refuseCompletion(refused.id);
		try {
			for (const c of [refused, fine]) agent.send({ type: "result", id: c.id, status: "completed", result: { n: 1 } });
			await waitForStatus(fine.id, "completed");
			const stub = agentHub(env, agentId);
			await waitFor(async () => (await stub.inspect()).parked === 1, "the refused change parked");
			expect((await apiCommand(refused.id)).status).toBe("dispatched");
			// Operators see it in the agent's outbox depth.
			await waitFor(async () => {
				const [row] = await query<{ outbox_depth: number }>(sql`select outbox_depth from agents where id = ${agentId}`);
				return row?.outbox_depth === 1;
			}, "outbox depth 1 in Postgres");
			// Long after it finished, the object still keeps the command Postgres has not heard the end of.
			const kept = await runInDurableObject(stub, (_i: AgentHub, state) => {
				prune(state.storage.sql, Date.now() + PRUNE_AFTER_MS + 60_000);
				return state.storage.sql.exec("select id from commands where id = ?", refused.id).toArray().length;
			});
			expect(kept).toBe(1);
		} finally {
			await lift();
		}
		// Retried on its own backoff, with the agent's result.
		await waitForStatus(refused.id, "completed");
		expect((await apiCommand(refused.id)).result).toEqual({ n: 1 });
		await waitFor(async () => (await agentHub(env, agentId).inspect()).parked === 0, "nothing parked");
		await waitFor(async () => {
			const [row] = await query<{ outbox_depth: number }>(sql`select outbox_depth from agents where id = ${agentId}`);
			return row?.outbox_depth === 0;
		}, "outbox depth 0 in Postgres");
		agent.close();
	});
});

/** Takes away what migration 0014 created, as if this version were deployed before it ran. */
async function withoutMigration0014<T>(fn: () => Promise<T>): Promise<T> {
	const functions = [
		{ name: "write_status", args: "jsonb, jsonb, jsonb, integer" },
		{ name: "enqueue_commands", args: "jsonb, text, integer" },
	];
	const rename = (from: string, args: string, to: string) => query(sql.raw(`alter function ${from}(${args}) rename to ${to}`));
	for (const f of functions) await rename(f.name, f.args, `${f.name}_away`);
	try {
		return await fn();
	} finally {
		for (const f of functions) await rename(`${f.name}_away`, f.args, f.name);
	}
}

describe("a database missing a migration this version needs", () => {
	it("answers enqueues 503 and keeps the object's writes, output included, until it is migrated", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "run" });
		await agent.commands(1);
		await waitForStatus(cmd.id, "dispatched");
		await withoutMigration0014(async () => {
			const res = await api(`/v1/agents/${agentId}/commands`, { method: "POST", json: { action: "later" } });
			await expectError(res, 503, "db_not_migrated");
			expect(res.headers.get("retry-after")).toBe("30");
			agent.send({ type: "output", id: cmd.id, seq: 0, data: "built\n" });
			agent.send({ type: "result", id: cmd.id, status: "completed", result: { ok: true } });
			const stub = agentHub(env, agentId);
			// Two failed flushes (1 s, then 2 s of backoff): held for later, not salvaged, parked or dropped.
			await new Promise((r) => setTimeout(r, 2_500));
			const held = await stub.inspect();
			expect(held.outbox).toBeGreaterThan(0);
			expect(held.parked).toBe(0);
			const row = await apiCommand(cmd.id);
			expect(row.status).toBe("dispatched");
		});
		await waitForStatus(cmd.id, "completed", 20_000);
		const [row] = await query<{ output: string; result: unknown }>(sql`select output, result from agent_commands where id = ${cmd.id}`);
		expect(row).toEqual({ output: "built\n", result: { ok: true } });
		expect((await enqueue(agentId, { action: "after" })).status).toBe("pending");
		await waitFor(async () => (await agentHub(env, agentId).inspect()).outbox === 0, "outbox empty");
		agent.close();
	});
});
