/**
 * What one command costs its agent's object, counted, not timed: SQLite
 * statements and transactions from enqueue to `completed` in Postgres, and
 * what is left on the alarm afterwards. A budget that is passed means a
 * change put work back on every command's path.
 */
import { evictDurableObject, runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import type { AgentHub } from "../../src/agent/agent-hub";
import type { AgentCore } from "../../src/agent/core";
import { agentHub } from "../../src/agent/stub";
import { connectSettled, enqueue, objectSettled, query, sql, uniqueAgentId, waitFor, waitForStatus } from "../helpers/worker/harness";

/**
 * Statements for one command from enqueue to `completed`, over every event and
 * its share of the flushes: 11 with one flush, and room for what a second
 * flush adds when the answer comes after the first one's linger.
 */
const STATEMENT_BUDGET = 13;
/**
 * SQLite rows written for the same round trip, index entries included: what
 * Cloudflare bills most for a command (docs/performance.md, "Production, on
 * paper"). 19 with one flush; room for the state write of a second one.
 */
const ROWS_WRITTEN_BUDGET = 22;

interface Cost {
	statements: string[];
	/** Each statement's cursor: SQLite counts the rows it read and wrote there (what Cloudflare bills). */
	cursors: SqlStorageCursor<Record<string, SqlStorageValue>>[];
	transactions: number;
	alarmsSet: number;
	/** Round trips to Postgres (status writes, reads). */
	postgresCalls: number;
	/** Set while the test itself looks inside the object. */
	paused: boolean;
}

/** Counts what the object asks of its storage from now on. */
function meter(stub: ReturnType<typeof agentHub>): Promise<void> {
	return runInDurableObject(stub, (instance: AgentHub) => {
		// SAFETY: a test reaching into the object for the storage handles it uses.
		const core = (instance as unknown as { core: AgentCore }).core;
		const cost: Cost = { statements: [], cursors: [], transactions: 0, alarmsSet: 0, postgresCalls: 0, paused: false };
		(instance as unknown as { cost: Cost }).cost = cost;
		const sql = core.sql;
		const exec = sql.exec.bind(sql);
		sql.exec = ((query: string, ...params: SqlStorageValue[]) => {
			const cursor = exec(query, ...params);
			if (!cost.paused) {
				cost.statements.push(query.replace(/\s+/g, " ").slice(0, 60));
				cost.cursors.push(cursor);
			}
			return cursor;
		}) as typeof sql.exec;
		const storage = core.ctx.storage;
		const transactionSync = storage.transactionSync.bind(storage);
		storage.transactionSync = (<T>(fn: () => T): T => {
			cost.transactions++;
			return transactionSync(fn);
		}) as typeof storage.transactionSync;
		const run = core.db.run.bind(core.db);
		core.db.run = ((fn) => {
			if (!cost.paused) cost.postgresCalls++;
			return run(fn);
		}) as typeof core.db.run;
		const setAlarm = storage.setAlarm.bind(storage);
		storage.setAlarm = ((at: number | Date) => {
			cost.alarmsSet++;
			return setAlarm(at);
		}) as typeof storage.setAlarm;
	});
}

/**
 * Waits until the object is quiet: no read or flush running, nothing unsynced
 * and no presence to write, and with `alarmSettled` the alarm set exactly
 * (after a connect; an answered command's stale alarm is left to fire while
 * the agent is connected). Reads only what the object holds in memory, so
 * nothing is metered. Deferred state (a confirmation) may still wait for the
 * next commit: in steady use it rides with the next command's.
 */
async function quiet(stub: ReturnType<typeof agentHub>, opts: { alarmSettled?: boolean } = {}): Promise<void> {
	await waitFor(
		() =>
			runInDurableObject(stub, (instance: AgentHub) => {
				// SAFETY: a test reading the object's in-memory state.
				const hub = instance as unknown as {
					cost?: Cost;
					core: AgentCore;
					flushJob: { busy: boolean };
					catchUpJob: { busy: boolean };
				};
				if (hub.cost) hub.cost.paused = true;
				const { core } = hub;
				const done =
					!hub.flushJob.busy &&
					!hub.catchUpJob.busy &&
					core.journal.unsynced() === 0 &&
					!core.state.get("presence_dirty") &&
					!(opts.alarmSettled && core.alarm.isStale);
				if (hub.cost) hub.cost.paused = false;
				return done;
			}),
		"the object to be quiet",
	);
}

type CostSeen = Omit<Cost, "cursors"> & { rowsRead: number; rowsWritten: number };

function costOf(stub: ReturnType<typeof agentHub>): Promise<CostSeen> {
	return runInDurableObject(stub, (instance: AgentHub) => {
		const { cursors, ...cost } = (instance as unknown as { cost: Cost }).cost;
		const sum = (f: (c: SqlStorageCursor<Record<string, SqlStorageValue>>) => number) => cursors.reduce((n, c) => n + f(c), 0);
		return { ...cost, statements: [...cost.statements], rowsRead: sum((c) => c.rowsRead), rowsWritten: sum((c) => c.rowsWritten) };
	});
}

describe("what one command costs its agent's object", () => {
	it(`a round trip (enqueue, dispatch, ack, result, flush) takes at most ${STATEMENT_BUDGET} statements, ${ROWS_WRITTEN_BUDGET} rows written and one transaction per event`, async ({
		annotate,
	}) => {
		const agentId = uniqueAgentId();
		const agent = await connectSettled(agentId);
		const stub = agentHub(env, agentId);
		// What the connect left (its catch-up, its presence write, the alarm's
		// exact setting after the hello) must not be counted as the command's.
		await objectSettled(agentId);
		await quiet(stub, { alarmSettled: true });
		const agentRow = () => query<{ xmin: string }>(sql`select xmin::text from agents where id = ${agentId}`);
		const [agentBefore] = await agentRow();
		await meter(stub);

		const cmd = await enqueue(agentId, { action: "count" });
		const frame = await agent.next("command");
		agent.send({ type: "ack", id: frame.id });
		agent.send({ type: "result", id: frame.id, status: "completed", result: { ok: true } });
		await waitForStatus(cmd.id, "completed");
		await quiet(stub);

		const cost = await costOf(stub);
		await annotate(
			`${cost.postgresCalls} Postgres round trips, ` +
				`${cost.statements.length} statements in ${cost.transactions} transactions, ${cost.alarmsSet} alarm writes, ` +
				`${cost.rowsRead} rows read, ${cost.rowsWritten} rows written:\n${cost.statements.join("\n")}`,
		);
		expect(cost.statements.length).toBeLessThanOrEqual(STATEMENT_BUDGET);
		expect(cost.rowsWritten).toBeGreaterThan(0);
		expect(cost.rowsWritten).toBeLessThanOrEqual(ROWS_WRITTEN_BUDGET);
		// One status write when the answer comes within the flush's linger, as here
		// unless the machine stalls; never one per change (taken, dispatched, ack, result).
		expect(cost.postgresCalls).toBeGreaterThan(0);
		expect(cost.postgresCalls).toBeLessThanOrEqual(2);
		// The agent's row (connection, outbox depth) did not change, so it was not rewritten.
		expect(await agentRow()).toEqual([agentBefore]);
		// Enqueue, ack and result are one transaction each. Postgres's confirmation
		// takes none of its own: it rides with the next commit (or a timer's, when
		// none comes within DEFERRED_WRITE_MS, which a slow machine may reach).
		expect(cost.transactions).toBeLessThanOrEqual(4);
		// The dispatch's ack deadline moves the alarm earlier; the answer does not
		// move it back while the agent is connected (that was a second write).
		expect(cost.alarmsSet).toBeLessThanOrEqual(1);
		// The stale alarm fires once and leaves nothing but the agent's silence check, minutes out.
		expect(await runDurableObjectAlarm(stub)).toBe(true);
		const alarm = await runInDurableObject(stub, (_i: AgentHub, state) => state.storage.getAlarm());
		expect(alarm).toBeGreaterThan(Date.now() + 4 * 60_000);
		agent.close();
	});

	it("leaves no alarm armed once the agent has gone and everything reached Postgres", async () => {
		const agentId = uniqueAgentId();
		const agent = await connectSettled(agentId);
		const cmd = await enqueue(agentId, { action: "count" });
		const frame = await agent.next("command");
		agent.send({ type: "result", id: frame.id, status: "completed" });
		await waitForStatus(cmd.id, "completed");
		agent.close();
		await agent.closed;
		await objectSettled(agentId, { connected: false });
		expect(await runDurableObjectAlarm(agentHub(env, agentId))).toBe(false);
	});

	it("the platform names the object: an alarm in a fresh instance acts for the agent named by ctx.id.name", async () => {
		const agentId = uniqueAgentId();
		const agent = await connectSettled(agentId);
		const stub = agentHub(env, agentId);
		// Silent for six minutes, as far as the object knows; then a fresh instance runs the alarm.
		// Quiet first: a write still owed from the connect would stamp last_seen_at afresh.
		await quiet(stub, { alarmSettled: true });
		await runInDurableObject(stub, async (instance: AgentHub, state) => {
			state.storage.sql.exec("update meta set value = ? where key = 'last_seen_at'", String(Date.now() - 6 * 60_000));
			instance.reloadState();
			// An hour out, so that no alarm (a catch-up's safety net, seconds out) fires by
			// itself while the eviction waits for the object's timers: the fresh instance runs it.
			await state.storage.setAlarm(Date.now() + 60 * 60_000);
		});
		await evictDurableObject(stub);
		expect(await runDurableObjectAlarm(stub)).toBe(true);
		expect((await agent.closed).code).toBe(4002);
		// The presence it wrote is this agent's: the name came from the platform, not from storage.
		await waitFor(async () => {
			const [row] = await query<{ connected: boolean }>(sql`select connected from agents where id = ${agentId}`);
			return row?.connected === false;
		}, "the agent shown offline");
		expect(await runInDurableObject(stub, (_i: AgentHub, state) => state.id.name)).toBe(agentId);
	});
});
