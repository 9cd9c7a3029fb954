/**
 * What keeps observers from taking an agent's object down (issue 15): caps
 * on observers, a replay bounded per connection, a log bounded in bytes, a
 * budget for what one observer is sent, and a rate for what it sends.
 */
import { runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import type { AgentHub } from "../../src/agent/agent-hub";
import type { AgentCore } from "../../src/agent/core";
import * as events from "../../src/agent/events";
import { EVENT_LOG_MAX_BYTES } from "../../src/agent/events";
import { PRUNE_EVERY_BYTES } from "../../src/agent/journal";
import { keyTag, OBSERVERS_PER_AGENT, OBSERVERS_PER_KEY, REPLAY_MAX_BYTES, refuseObserver } from "../../src/agent/observer-limits";
import { OBSERVER_TAG } from "../../src/agent/sockets";
import { agentHub } from "../../src/agent/stub";
import { CloseCode, ErrorCode } from "../../src/protocol";
import { AgentSocket, enqueue, expectError, uniqueAgentId, waitFor } from "../helpers/worker/harness";
import { type Frame, Observer, catchUp } from "../helpers/worker/observer";

const KEYS = ["test-operator-key", "test-second-key", "test-observer-key", "test-observer-key-2"];

function coreOf(instance: AgentHub): AgentCore {
	// SAFETY: a test reaching into the object it runs in.
	return (instance as unknown as { core: AgentCore }).core;
}

/** How many output events the agent's object has logged. */
function outputLogged(agentId: string): Promise<number> {
	return runInDurableObject(agentHub(env, agentId), (_i: AgentHub, state) =>
		state.storage.sql.exec<{ n: number }>("select count(*) as n from events where body like '%\"output\"%'").one().n,
	);
}

/**
 * An agent running `commands` commands that write output: `send(n)` writes
 * the next n chunks (`chunk(i)` for the i-th), round robin over them.
 */
async function verboseAgent(agentId: string, commands: number, chunk: (i: number) => string) {
	const agent = await AgentSocket.connect(agentId, { hello: { concurrency: commands } });
	const cmds: { id: string }[] = [];
	for (let i = 0; i < commands; i++) cmds.push(await enqueue(agentId, { action: "verbose" }));
	await agent.commands(commands);
	let sent = 0;
	const send = (n: number) => {
		for (const end = sent + n; sent < end; sent++) {
			agent.send({ type: "output", id: cmds[sent % commands]?.id ?? "", seq: Math.floor(sent / commands), data: chunk(sent) });
		}
	};
	/** `send(n)`, then waits until the object has logged every chunk sent so far. */
	const sendLogged = async (n: number) => {
		send(n);
		await waitFor(async () => (await outputLogged(agentId)) === sent, "all output logged");
	};
	return { agent, send, sendLogged };
}

/** Events seen across pages: numbered 1, 2, 3 … with no hole and none twice. */
function expectWhole(events: Frame[], from = 1): void {
	const seqs = events.map((f) => f.seq);
	expect(seqs).toEqual(seqs.map((_, i) => from + i));
}

/** An object's state holding observer sockets of one key in the given states (what refuseObserver reads). */
function stateWith(states: number[], key = "k"): DurableObjectState {
	const sockets = states.map((readyState) => ({ readyState }) as WebSocket);
	// SAFETY: refuseObserver reads getWebSockets(tag) only; every socket carries both tags.
	return { getWebSockets: (tag?: string) => (tag === OBSERVER_TAG || tag === keyTag(key) ? sockets : []) } as unknown as DurableObjectState;
}

describe("observer caps", () => {
	it("count closing sockets against twice the cap, so reconnects in a loop cannot pile replays up", () => {
		const { OPEN, CLOSING, CLOSED } = WebSocket;
		// A client resuming after a paused replay while its old socket still closes: let in.
		expect(refuseObserver(stateWith([...Array(OBSERVERS_PER_KEY - 1).fill(OPEN), CLOSING]), "k")).toBeNull();
		// Fewer open than the cap, but as many again still closing with their replays queued: refused.
		const piled = refuseObserver(stateWith([OPEN, ...Array(2 * OBSERVERS_PER_KEY - 1).fill(CLOSING)]), "k");
		expect(piled?.status).toBe(429);
		// Closed ones hold nothing.
		expect(refuseObserver(stateWith([OPEN, ...Array(4 * OBSERVERS_PER_KEY).fill(CLOSED)]), "k")).toBeNull();
	});

	it("refuses an observer past the per-key and the per-agent cap with 429 too_many_observers", async () => {
		expect(KEYS.length * OBSERVERS_PER_KEY).toBe(OBSERVERS_PER_AGENT);
		const agentId = uniqueAgentId();
		const attached: Observer[] = [];
		for (let i = 0; i < OBSERVERS_PER_KEY; i++) attached.push(await Observer.attach(agentId, {}, KEYS[0]));
		await expectError(await Observer.request(agentId, {}, KEYS[0]), 429, ErrorCode.TOO_MANY_OBSERVERS);
		for (const key of KEYS.slice(1)) for (let i = 0; i < OBSERVERS_PER_KEY; i++) attached.push(await Observer.attach(agentId, {}, key));
		// A key with none open is refused too: the agent has all it takes.
		await expectError(await Observer.request(agentId, {}, "test-read-only-key"), 429, ErrorCode.TOO_MANY_OBSERVERS);
		// One leaving makes room again.
		attached.shift()?.close();
		const next = await waitFor(async () => {
			const res = await Observer.request(agentId, {}, "test-read-only-key");
			return res.webSocket ?? undefined;
		}, "a free slot");
		next.accept();
		next.close(1000);
		for (const o of attached) o.close();
	});
});

describe("observer replay", () => {
	it("replays at most REPLAY_MAX_BYTES per connection, then says where it stopped; paging misses nothing, repeats nothing", async () => {
		const agentId = uniqueAgentId();
		const chunk = (i: number) => `${i}:`.padEnd(60 * 1024, "z");
		const { agent, send, sendLogged } = await verboseAgent(agentId, 4, chunk);
		await sendLogged(40);

		const first = await Observer.attach(agentId, { since: 0 });
		const closed = await first.closed;
		expect(closed.code).toBe(CloseCode.REPLAY_PAUSED);
		const paused = first.frames.at(-1);
		expect(paused).toEqual({ type: "replay_paused", through: first.lastSeq() });
		const replayed = first.events().reduce((sum, f) => sum + JSON.stringify(f).length, 0);
		expect(replayed).toBeLessThanOrEqual(REPLAY_MAX_BYTES);
		expect(first.events().length).toBeLessThan(40);

		// Live events arrive while the client is between pages.
		await sendLogged(8);
		const rest = await catchUp(agentId, { since: first.lastSeq(), epoch: first.epoch });
		expect(rest.pages).toBeGreaterThan(1);
		send(4);
		const seen = () => [...first.events(), ...rest.events, ...rest.live.events()];
		await waitFor(() => seen().filter((f) => f.type === "output").length >= 52, "live output");
		const all = seen();
		expectWhole(all);
		expect(all.filter((f) => f.type === "output").map((f) => f.data)).toEqual(Array.from({ length: 52 }, (_, i) => chunk(i)));
		rest.live.close();
		agent.close();
	});
});

describe("replay cost", () => {
	it("reads the log's end from the index, not from every event's body", async () => {
		const agentId = uniqueAgentId();
		// 16 commands of 4 chunks: 240 KiB each, under the per-command output cap.
		const { agent, sendLogged } = await verboseAgent(agentId, 16, () => "c".repeat(60 * 1024));
		const total = 64;
		await sendLogged(total);
		await runInDurableObject(agentHub(env, agentId), (_i: AgentHub, state) => {
			// The real functions, on a storage that keeps each statement's cursor for its rowsRead.
			const cursors: SqlStorageCursor<Record<string, SqlStorageValue>>[] = [];
			const sql = {
				exec: (query: string, ...bindings: unknown[]) => {
					const cursor = state.storage.sql.exec(query, ...bindings);
					cursors.push(cursor);
					return cursor;
				},
			} as unknown as SqlStorage;
			const rowsRead = () => cursors.reduce((n, c) => n + c.rowsRead, 0);

			expect(events.latestSeq(sql)).toBeGreaterThanOrEqual(total);
			// Its last index entry; a scan read every event, bodies' overflow pages included.
			expect(rowsRead()).toBeLessThanOrEqual(2);

			// A page of 1 MiB from the start: whole, in order, within its budget.
			const page = events.eventsAfter(sql, 0, events.PAGE, 1024 * 1024);
			expect(page.map((e) => e.seq)).toEqual(page.map((_, i) => i + 1));
			expect(page.reduce((n, e) => n + JSON.stringify(e.event).length, 0)).toBeLessThanOrEqual(1024 * 1024 + 4 * 1024);
		});
		agent.close();
	});
});

describe("prune cost", () => {
	it("sums the log's sizes for its byte bound from an index, not from every event's body", async () => {
		const agentId = uniqueAgentId();
		const { agent, sendLogged } = await verboseAgent(agentId, 4, () => "p".repeat(60 * 1024));
		await sendLogged(8);
		await runInDurableObject(agentHub(env, agentId), (_i: AgentHub, state) => {
			// `size` sits after the body in the row: read from the table, the sum walks each
			// event's overflow pages (an agent at its output ceiling pruned for ~7 % of a core).
			const plan = state.storage.sql
				.exec<{ detail: string }>(`explain query plan ${events.PRUNE_CUTOFF}`, 0, 0, 0, 0)
				.toArray()
				.map((r) => r.detail);
			expect(plan).toContainEqual(expect.stringMatching(/^(SCAN|SEARCH) events USING COVERING INDEX events_by_event_seq\b/));
			expect(plan.filter((d) => /^SCAN events$/.test(d)).length).toBeLessThanOrEqual(1);
		});
		agent.close();
	});
});

describe("replay rate", () => {
	it("drains an agent's log at REPLAY_RATE across its observers: past the burst, 429 replay_rate_limited until it refills", async () => {
		const agentId = uniqueAgentId();
		const { agent, sendLogged } = await verboseAgent(agentId, 4, () => "r".repeat(60 * 1024));
		await sendLogged(40);
		// A stopped clock and a small budget: 1 MiB of burst, nothing refilled until the clock moves.
		let now = Date.now();
		await runInDurableObject(agentHub(env, agentId), (instance: AgentHub) => {
			const observers = coreOf(instance).observers;
			observers.clock = () => now;
			observers.replayRate = { bytesPerSecond: 512 * 1024, burst: 1024 * 1024 };
		});
		// The burst goes to the first page; the next finds the budget spent.
		const first = await Observer.attach(agentId, { since: 0 });
		await first.closed;
		const through = first.lastSeq();
		const refused = await Observer.request(agentId, { since: through, epoch: first.epoch });
		await expectError(refused, 429, ErrorCode.REPLAY_RATE_LIMITED);
		expect(Number(refused.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
		// An observer that needs no replay is not held back: it asks for the live end.
		const live = await Observer.attach(agentId, {});
		live.close();
		// Two seconds later the bucket holds 1 MiB again: the next page comes, and it starts where the first stopped.
		now += 2_000;
		const second = await Observer.attach(agentId, { since: through, epoch: first.epoch });
		await waitFor(() => second.events().length > 0, "the next page");
		expectWhole([...first.events(), ...second.events()]);
		second.close();
		agent.close();
	});
});

describe("event log bytes", () => {
	it("keeps at most EVENT_LOG_MAX_BYTES of events, and an observer from the start is told of the gap", async () => {
		const agentId = uniqueAgentId();
		const stub = agentHub(env, agentId);
		const data = "q".repeat(60 * 1024);
		const count = Math.ceil(EVENT_LOG_MAX_BYTES / data.length) + 100;
		const kept = await runInDurableObject(stub, (instance: AgentHub, state) => {
			const core = coreOf(instance);
			// Output observers see without a Postgres write behind it: nothing here waits for confirmation.
			for (let i = 0; i < count; i += 50) {
				core.atomically(() => {
					for (let j = i; j < Math.min(count, i + 50); j++) core.journal.note({ type: "output", id: crypto.randomUUID(), chunk: 0, data }, Date.now());
				});
			}
			return state.storage.sql.exec<{ bytes: number }>("select sum(size) as bytes from events").one().bytes;
		});
		// Pruned as the log grows by PRUNE_EVERY_BYTES: past the bound by less than that and one transaction.
		expect(kept).toBeLessThanOrEqual(EVENT_LOG_MAX_BYTES + PRUNE_EVERY_BYTES + 50 * data.length);
		const observer = await Observer.attach(agentId, { since: 0 });
		const gap = await waitFor(() => observer.frames.find((f) => f.type === "gap"), "gap frame");
		expect(gap.through).toBeGreaterThan(0);
		observer.close();
	});
});

describe("slow observers", () => {
	it("closes an observer sent more than its budget with 4006; it resumes with ?since= and misses nothing", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "chatty" });
		await agent.next("command");
		const stub = agentHub(env, agentId);
		await runInDurableObject(stub, (instance: AgentHub) => {
			const observers = coreOf(instance).observers;
			// A small budget whose clock stands still, so no window ends under the test.
			const now = Date.now();
			observers.sendBudget = { bytes: 200 * 1024, windowMs: 10_000 };
			observers.clock = () => now;
		});
		const observer = await Observer.attach(agentId);
		const chunks = Array.from({ length: 10 }, (_, i) => `${i}:`.padEnd(60 * 1024, "s"));
		chunks.forEach((data, seq) => agent.send({ type: "output", id: cmd.id, seq, data }));
		expect((await observer.closed).code).toBe(CloseCode.SLOW_CONSUMER);
		const seen = observer.events().filter((f) => f.type === "output").length;
		expect(seen).toBeLessThan(chunks.length);
		await waitFor(async () => (await outputLogged(agentId)) === 10, "all output logged");
		const rest = await catchUp(agentId, { since: observer.lastSeq(), epoch: observer.epoch });
		const all = [...observer.events(), ...rest.events, ...rest.live.events()];
		expectWhole(all, all[0]?.seq);
		expect(all.filter((f) => f.type === "output").map((f) => f.data)).toEqual(chunks);
		rest.live.close();
		agent.close();
	});
});

describe("observer frames", () => {
	it("closes an observer that floods frames with 4005 instead of answering each one", async () => {
		const agentId = uniqueAgentId();
		const observer = await Observer.attach(agentId);
		for (let i = 0; i < 1_000; i++) observer.ws.send('{"type":"noise"}');
		expect((await observer.closed).code).toBe(CloseCode.RATE_LIMITED);
		const errors = observer.frames.filter((f) => f.type === "error").length;
		expect(errors).toBeGreaterThan(0);
		expect(errors).toBeLessThan(100);
		// 4005 is not terminal: it may come back.
		(await Observer.attach(agentId)).close();
	});
});
