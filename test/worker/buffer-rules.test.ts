/**
 * The delivery rules of src/agent/buffer.ts, run against a real agent
 * object's SQLite with no socket and no Postgres: a fresh object per test,
 * its transaction primitive, and the rules called directly. Milliseconds
 * each; the end-to-end files keep the guarantees a user sees.
 */
import { runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import type { AgentHub } from "../../src/agent/agent-hub";
import * as answers from "../../src/agent/answers";
import * as buffer from "../../src/agent/buffer";
import type { AgentCore } from "../../src/agent/core";
import { getCommand } from "../../src/agent/storage";
import { uniqueAgentId } from "../helpers/worker/harness";

const T0 = 1_800_000_000_000;
let seq = 0;

function command(overrides: Partial<buffer.BufferInput> = {}): buffer.BufferInput {
	seq++;
	return {
		id: crypto.randomUUID(),
		seq,
		action: "act",
		payload: { n: seq },
		sessionId: null,
		priority: 5,
		status: "pending",
		attempts: 0,
		maxAttempts: 5,
		ackTimeoutSeconds: 10,
		timeoutSeconds: null,
		expiresAt: null,
		firstDispatchedAt: null,
		cancelRequested: false,
		...overrides,
	};
}

/** Runs `fn` inside a fresh agent object, with its core (storage, journal, counts) and no Postgres. */
function inFreshObject<T>(fn: (core: AgentCore) => T): Promise<T> {
	const stub = env.AGENT_HUB.getByName(uniqueAgentId("rules"));
	return runInDurableObject(stub, (instance: AgentHub) => {
		// SAFETY: a test reaching into the object for its storage primitives.
		return fn((instance as unknown as { core: AgentCore }).core);
	});
}

function add(core: AgentCore, ...inputs: buffer.BufferInput[]): void {
	core.atomically((tx) => {
		for (const c of inputs) expect(buffer.addCommand(tx, c, T0)).not.toBeNull();
	});
}

function fill(core: AgentCore, concurrency: number, now = T0, generation = 1): string[] {
	return core.atomically((tx) => buffer.fillWindow(tx, concurrency, generation, now)).frames.map((f) => f.id);
}

const statusOf = (core: AgentCore, id: string) => getCommand(core.sql, id)?.status;

describe("the buffer's delivery rules", () => {
	it("sends in priority order, then enqueue order, never more than the window", async () => {
		await inFreshObject((core) => {
			const low = command({ priority: 1 });
			const high = command({ priority: 9 });
			const midA = command();
			const midB = command();
			add(core, low, high, midA, midB);
			expect(fill(core, 2)).toEqual([high.id, midA.id]);
			// The window is full: nothing more goes out until an answer frees a place.
			expect(fill(core, 2)).toEqual([]);
			expect(core.atomically((tx) => answers.finish(tx, high.id, { status: "completed" }, T0))).toBe("applied");
			expect(fill(core, 2)).toEqual([midB.id]);
			expect(core.counts.inFlight).toBe(2);
			expect(core.counts.pending).toBe(1);
		});
	});

	it("expires a command whose ttl ran out before it was sent, instead of sending it", async () => {
		await inFreshObject((core) => {
			const stale = command({ expiresAt: T0 + 1_000 });
			const fresh = command();
			add(core, stale, fresh);
			expect(fill(core, 5, T0 + 2_000)).toEqual([fresh.id]);
			expect(statusOf(core, stale.id)).toBe("expired");
		});
	});

	it("a ttl bounds only the wait for a first dispatch: a command sent once never expires", async () => {
		await inFreshObject((core) => {
			const c = command({ expiresAt: T0 + 1_000 });
			add(core, c);
			expect(fill(core, 1)).toEqual([c.id]);
			core.atomically((tx) => buffer.requeueDispatched(tx, T0 + 1, "disconnected"));
			expect(buffer.nextDeadline(core.sql)).toBeNull();
			core.atomically((tx) => buffer.runDueTimers(tx, T0 + 2_000));
			expect(statusOf(core, c.id)).toBe("pending");
			expect(fill(core, 1, T0 + 2_000)).toEqual([c.id]);
		});
	});

	it("fails a command as undeliverable once its attempts are spent", async () => {
		await inFreshObject((core) => {
			const c = command({ maxAttempts: 2 });
			add(core, c);
			for (let attempt = 1; attempt <= 2; attempt++) {
				expect(fill(core, 1, T0 + attempt * 20_000)).toEqual([c.id]);
				// No ack within ackTimeoutSeconds: back in the queue.
				core.atomically((tx) => buffer.runDueTimers(tx, T0 + attempt * 20_000 + 11_000));
				expect(statusOf(core, c.id)).toBe("pending");
			}
			expect(fill(core, 1, T0 + 60_000)).toEqual([]);
			expect(statusOf(core, c.id)).toBe("failed");
		});
	});

	it("a hello that no longer lists an acknowledged command sends it again; one it lists stays running", async () => {
		await inFreshObject((core) => {
			const lost = command();
			const kept = command();
			add(core, lost, kept);
			expect(fill(core, 2, T0, 1)).toEqual([lost.id, kept.id]);
			core.atomically((tx) => {
				expect(answers.acknowledge(tx, lost.id, T0, 1)).toBe("applied");
				expect(answers.acknowledge(tx, kept.id, T0, 1)).toBe("applied");
			});
			// The agent restarted: a new connection (generation 2) says it runs only `kept`.
			expect(core.atomically((tx) => answers.applyHello(tx, new Set([kept.id]), T0 + 1, 2))).toBe(1);
			expect(statusOf(core, lost.id)).toBe("pending");
			expect(statusOf(core, kept.id)).toBe("acknowledged");
			expect(fill(core, 2, T0 + 2, 2)).toEqual([lost.id]);
		});
	});

	it("cancels a queued command at once, and asks the agent about a dispatched one", async () => {
		await inFreshObject((core) => {
			const sent = command();
			const queued = command();
			add(core, sent, queued);
			expect(fill(core, 1)).toEqual([sent.id]);
			expect(core.atomically((tx) => buffer.requestCancel(tx, queued.id, T0, "api:k"))).toBe("cancelled");
			expect(core.atomically((tx) => buffer.requestCancel(tx, sent.id, T0, "api:k"))).toBe("cancel_requested");
			expect(statusOf(core, queued.id)).toBe("cancelled");
			expect(statusOf(core, sent.id)).toBe("dispatched");
			expect(buffer.cancelsOwed(core.sql, T0)).toEqual([{ id: sent.id, reason: "requested" }]);
			// A cancelled command is never sent.
			expect(fill(core, 5)).toEqual([]);
		});
	});

	it("takes an ack once: a second one is a duplicate, an ack for a command never sent is refused", async () => {
		await inFreshObject((core) => {
			const c = command();
			const unsent = command();
			add(core, c, unsent);
			expect(fill(core, 1)).toEqual([c.id]);
			expect(core.atomically((tx) => answers.acknowledge(tx, c.id, T0, 1))).toBe("applied");
			expect(core.atomically((tx) => answers.acknowledge(tx, c.id, T0, 1))).toBe("duplicate");
			expect(core.atomically((tx) => answers.acknowledge(tx, unsent.id, T0, 1))).toBe("not_dispatched");
			expect(core.atomically((tx) => answers.acknowledge(tx, crypto.randomUUID(), T0, 1))).toBe("unknown");
		});
	});

	it("buffers each command once, whatever Postgres hands over again", async () => {
		await inFreshObject((core) => {
			const c = command();
			add(core, c);
			expect(core.atomically((tx) => buffer.addCommand(tx, c, T0))).toBeNull();
			expect(core.counts.pending).toBe(1);
		});
	});

	it("journals every change in the transaction that made it: a rolled-back change leaves nothing behind", async () => {
		await inFreshObject((core) => {
			const c = command();
			expect(() =>
				core.atomically((tx) => {
					buffer.addCommand(tx, c, T0);
					throw new Error("boom");
				}),
			).toThrow("boom");
			expect(statusOf(core, c.id)).toBeUndefined();
			expect(core.journal.unsynced()).toBe(0);
			expect(core.counts.pending).toBe(0);
			add(core, c);
			expect(core.journal.unsynced()).toBe(1);
		});
	});
});
