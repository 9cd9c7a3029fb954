/**
 * The per-isolate gate in front of Postgres connection setup, on a virtual
 * clock: what a fleet of objects reconnecting at once sees.
 */
import { describe, expect, it } from "vitest";
import { type Clock, ConnectGate, GateFullError } from "../../src/db/connect-gate.ts";

/** Time moves only when every pending task is waiting on it: one "event loop" per test. */
function virtualClock() {
	let now = 0;
	let sleepers: { at: number; wake: () => void }[] = [];
	let wakeups = 0;
	const clock: Clock = {
		now: () => now,
		sleep: (ms) =>
			new Promise<void>((wake) => {
				sleepers.push({ at: now + Math.max(0, ms), wake });
			}),
	};
	/** Runs until nothing is left to wake; returns the clock's end time. */
	async function drain(): Promise<number> {
		for (;;) {
			await new Promise((r) => setImmediate(r));
			if (sleepers.length === 0) return now;
			sleepers.sort((a, b) => a.at - b.at);
			const next = sleepers.shift();
			if (!next) return now;
			now = Math.max(now, next.at);
			wakeups++;
			next.wake();
		}
	}
	return { clock, drain, wakeups: () => wakeups, setNow: (t: number) => (now = t) };
}

describe("connection gate", () => {
	it("never runs more than `limit` setups at once, and every waiter gets through", async () => {
		const v = virtualClock();
		const gate = new ConnectGate(4, 0, v.clock);
		let running = 0;
		let peak = 0;
		const setup = async () => {
			running++;
			peak = Math.max(peak, running);
			await v.clock.sleep(20);
			running--;
			return "connected";
		};
		const fleet = Array.from({ length: 200 }, () => gate.run(Number.POSITIVE_INFINITY, setup));
		const end = v.drain();
		expect(await Promise.all(fleet)).toEqual(Array(200).fill("connected"));
		expect(peak).toBe(4);
		// 200 setups of 20 ms, 4 at a time, take at least a second; waiting by slot wastes little on top.
		expect(await end).toBeGreaterThanOrEqual(1000);
		expect(await end).toBeLessThan(1300);
	});

	it("wakes each waiter a few times while it waits, not on every poll", async () => {
		const v = virtualClock();
		const gate = new ConnectGate(16, 0, v.clock);
		const setup = () => v.clock.sleep(30);
		const fleet = Array.from({ length: 1000 }, () => gate.run(Number.POSITIVE_INFINITY, setup));
		const end = await v.drain();
		await Promise.all(fleet);
		const waiterWakes = v.wakeups() - 1000; // less one wake per setup finishing
		console.log(`1000 setups: ${end} ms, ${waiterWakes} waiter wakes`);
		// A few wakes per waiter (984 waited; here setups end in bursts of 16,
		// the worst case), where a poll every 10 ms over the ~1.9 s this takes
		// would have woken them ~100,000 times. And a free place is taken by
		// whoever wakes first, so the gate hardly idles: within a tenth of the
		// 1,875 ms that 1,000 setups of 30 ms, 16 at a time, take at best.
		expect(waiterWakes).toBeLessThan(984 * 8);
		expect(end).toBeLessThan(1875 * 1.1);
	});

	it("a waiter far back in a queue thousands long wakes about a dozen times, not once a second", async () => {
		const v = virtualClock();
		const gate = new ConnectGate(12, 4, v.clock);
		const setup = () => v.clock.sleep(100);
		// A fleet's catch-ups, a minute's worth of setups queued at once (a deploy).
		const fleet = Array.from({ length: 6000 }, () => gate.run(Number.POSITIVE_INFINITY, setup, "background"));
		const end = await v.drain();
		await Promise.all(fleet);
		const waiterWakes = v.wakeups() - 6000;
		console.log(`6000 queued setups: ${end} ms, ${waiterWakes} waiter wakes`);
		// 6,000 setups of 100 ms, 8 at a time, take 75 s at best, and the gate barely idles.
		expect(end).toBeLessThan(75_000 * 1.1);
		// Each waiter woken once a second would be about 225,000 wakes (an average
		// wait of 37.5 s); closing in on its turn, each wakes about a dozen times.
		expect(waiterWakes / 6000).toBeLessThan(15);
	});

	it("tells a waiter whose turn would come after its deadline when to come back, without running it", async () => {
		const v = virtualClock();
		const gate = new ConnectGate(1, 0, v.clock);
		const first = gate.run(Number.POSITIVE_INFINITY, () => v.clock.sleep(100));
		let ran = false;
		const late = gate
			.run(10, async () => {
				ran = true;
			})
			.catch((e: unknown) => e);
		await v.drain();
		await first;
		const err = await late;
		expect(err).toBeInstanceOf(GateFullError);
		expect((err as GateFullError).retryInMs).toBeGreaterThan(0);
		expect(ran).toBe(false);
		expect(gate.inFlight).toBe(0);
	});

	it("frees the place of a setup that failed", async () => {
		const v = virtualClock();
		const gate = new ConnectGate(1, 0, v.clock);
		await expect(gate.run(0, () => Promise.reject(new Error("refused")))).rejects.toThrow("refused");
		expect(gate.inFlight).toBe(0);
		await expect(gate.run(0, async () => "next")).resolves.toBe("next");
	});

	it("stops counting setups and waiters whose objects went away mid-wait, so they cannot close the gate", async () => {
		const v = virtualClock();
		const gate = new ConnectGate(2, 0, v.clock);
		// Two setups whose promises never settle: their objects were reset.
		void gate.run(Number.POSITIVE_INFINITY, () => new Promise(() => {}));
		void gate.run(Number.POSITIVE_INFINITY, () => new Promise(() => {}));
		expect(gate.inFlight).toBe(2);
		const next = gate.run(Number.POSITIVE_INFINITY, async () => "through");
		await v.drain();
		await expect(next).resolves.toBe("through");
		// It got in once the lost ones were taken for dead, not before.
		expect(v.clock.now()).toBeGreaterThan(120_000);
		expect(v.clock.now()).toBeLessThan(125_000);
	});

	it("lets a request in ahead of a fleet's queued catch-ups, on a place they may not take", async () => {
		const v = virtualClock();
		const gate = new ConnectGate(4, 1, v.clock);
		const setup = () => v.clock.sleep(30);
		// A deploy: 1,000 objects queue their catch-ups at once.
		const fleet = Array.from({ length: 1000 }, () => gate.run(Number.POSITIVE_INFINITY, setup, "background"));
		await new Promise((r) => setImmediate(r));
		expect(gate.inFlight).toBe(3); // the fourth place is kept for requests
		let answeredAt = -1;
		const request = gate.run(v.clock.now() + 10_000, async () => {
			answeredAt = v.clock.now();
		});
		const end = v.drain();
		await request;
		// At once, not after the ~7.5 s the queued catch-ups take.
		expect(answeredAt).toBe(0);
		await Promise.all(fleet);
		expect(await end).toBeGreaterThan(7_000);
	});
});

