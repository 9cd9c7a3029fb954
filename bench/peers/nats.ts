/**
 * Peer (a): NATS JetStream with explicit acks. Each agent is one NATS
 * connection (its socket) with a durable pull consumer on its own subject of
 * a file-backed work-queue stream. The loop, step for step with Switchyard:
 * the publish returns after the server stored the command (PubAck); the agent
 * sends an in-progress ack (`working`) on receipt where the SDK sends an
 * `ack` (lib/sdk-answer.ts; not for a command that finishes at once); it completes by publishing
 * its result to a file-backed results stream (PubAck) and then acking the
 * command with a confirmed ack (`ackAck`).
 */
import { AckPolicy, connect, type ConsumerMessages, type NatsConnection, RetentionPolicy, StorageType, StringCodec } from "nats";
import { sentAt } from "../lib/payload.ts";
import { sdkAnswer } from "../lib/sdk-answer.ts";
import { serve } from "../lib/rpc.ts";
import { sleep, wallNow } from "../lib/stats.ts";

export const STREAM = "SWITCHYARD_BENCH";
export const RESULTS = "SWITCHYARD_BENCH_RESULTS";
export const SUBJECT = "swbench.cmd";
const sc = StringCodec();

interface Agent {
	nc: NatsConnection;
	messages: ConsumerMessages;
}

const agents: Agent[] = [];
let latencies: number[] = [];
let received = 0;
let completed = 0;
let lastCompletedAt = 0;

/** Fresh streams for a run (the harness calls this once, before any fleet connects). */
async function setup(a: { url: string }) {
	const nc = await connect({ servers: a.url });
	const jsm = await nc.jetstreamManager();
	for (const name of [STREAM, RESULTS]) await jsm.streams.delete(name).catch(() => false);
	await jsm.streams.add({ name: STREAM, subjects: [`${SUBJECT}.>`], storage: StorageType.File, retention: RetentionPolicy.Workqueue });
	await jsm.streams.add({ name: RESULTS, subjects: ["swbench.res.>"], storage: StorageType.File });
	await nc.close();
	return null;
}

async function teardown(a: { url: string }) {
	const nc = await connect({ servers: a.url });
	const jsm = await nc.jetstreamManager();
	for (const name of [STREAM, RESULTS]) await jsm.streams.delete(name).catch(() => false);
	await nc.close();
	return null;
}

async function connectFleet(a: { url: string; ids: string[] }) {
	const started = wallNow();
	const acks = (await sdkAnswer()).some((f) => f.type === "ack");
	for (const id of a.ids) {
		const nc = await connect({ servers: a.url });
		const jsm = await nc.jetstreamManager();
		await jsm.consumers.add(STREAM, { durable_name: id, filter_subject: `${SUBJECT}.${id}`, ack_policy: AckPolicy.Explicit, ack_wait: 10_000_000_000 });
		const js = nc.jetstream();
		const consumer = await js.consumers.get(STREAM, id);
		const messages = await consumer.consume({ max_messages: 1000 });
		agents.push({ nc, messages });
		void (async () => {
			for await (const m of messages) {
				const payload = JSON.parse(sc.decode(m.data)) as unknown;
				const t = sentAt(payload);
				if (t !== undefined) latencies.push(wallNow() - t);
				received++;
				if (acks) m.working();
				await js.publish(`swbench.res.${id}`, sc.encode(JSON.stringify({ seq: m.seq, status: "completed", result: { ok: true } })));
				await m.ackAck();
				completed++;
				lastCompletedAt = wallNow();
			}
		})();
	}
	return { connected: a.ids.length, failed: 0, ms: wallNow() - started, errors: [] };
}

serve({
	setup,
	teardown,
	connect: connectFleet,
	drain: async () => {
		const out = { latencies, received, duplicates: 0, connected: agents.length, errors: [] };
		latencies = [];
		return out;
	},
	waitReceived: async (a: { n: number; timeoutMs: number }) => {
		const deadline = Date.now() + a.timeoutMs;
		while (received < a.n && Date.now() < deadline) await sleep(50);
		return { received };
	},
	/** Completions since the last reset: the fleet alone knows when its confirmed acks returned. */
	completed: async () => ({ n: completed, lastAt: lastCompletedAt }),
	reset: async () => {
		completed = 0;
		received = 0;
		return null;
	},
	close: async () => {
		for (const a of agents.splice(0)) {
			a.messages.stop();
			await a.nc.close();
		}
		received = 0;
		completed = 0;
		latencies = [];
		return null;
	},
});
