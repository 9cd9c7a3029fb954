/**
 * The enqueuer, in its own process. Two shapes of load, over any transport:
 * - `steady`: an open loop at a fixed rate (figure 1, latency);
 * - `flood`: N requests always in flight for a duration (figure 2, throughput).
 *
 * Transports: Switchyard's HTTP API (single or batch), which the floor worker
 * and the HTTP peers also serve, and a JetStream publish for the NATS peer.
 */
import { connect, type JetStreamClient, type NatsConnection, StringCodec } from "nats";
import { makePayload } from "../lib/payload.ts";
import { serve } from "../lib/rpc.ts";
import { sleep, wallNow } from "../lib/stats.ts";

export type Transport =
	| { kind: "http"; base: string; apiKey?: string; action: string }
	| { kind: "http-batch"; base: string; apiKey?: string; action: string; size: number }
	| { kind: "nats"; url: string; subjectPrefix: string };

interface Sent {
	ok: number;
	errors: number;
	/** Time for the enqueue call to answer (HTTP response, JetStream PubAck). */
	callMs: number[];
	errorSamples: string[];
	/** Answers by HTTP status (`network` when none came): the chaos suite's 503s. */
	statuses: Record<string, number>;
	/** Ids of the commands answered 201, when asked for (`keepIds`): what the chaos suite checks. */
	accepted?: string[];
}

let nats: { nc: NatsConnection; js: JetStreamClient } | undefined;
const sc = StringCodec();

/** Sends one call carrying the commands for `agents`; returns how many were accepted. */
async function send(t: Transport, agents: string[], seq: number, out: Sent): Promise<void> {
	const started = wallNow();
	try {
		if (t.kind === "nats") {
			nats ??= await (async () => {
				const nc = await connect({ servers: t.url });
				return { nc, js: nc.jetstream() };
			})();
			const js = nats.js;
			await Promise.all(agents.map((a, i) => js.publish(`${t.subjectPrefix}.${a}`, sc.encode(JSON.stringify(makePayload(seq + i))))));
		} else {
			const single = t.kind === "http";
			const first = agents[0] ?? "";
			const body = single
				? { action: t.action, payload: makePayload(seq) }
				: { commands: agents.map((agentId, i) => ({ agentId, action: t.action, payload: makePayload(seq + i) })) };
			const res = await fetch(single ? `${t.base}/v1/agents/${first}/commands` : `${t.base}/v1/commands/batch`, {
				method: "POST",
				headers: { "content-type": "application/json", ...(t.apiKey ? { authorization: `Bearer ${t.apiKey}` } : {}) },
				body: JSON.stringify(body),
			});
			const text = await res.text();
			out.statuses[res.status] = (out.statuses[res.status] ?? 0) + 1;
			if (res.status !== 201) throw new Error(`HTTP ${res.status}: ${text.slice(0, 200)}`);
			if (out.accepted && single) out.accepted.push((JSON.parse(text) as { id: string }).id);
		}
		out.ok += agents.length;
		out.callMs.push(wallNow() - started);
	} catch (err) {
		if (!(err instanceof Error && err.message.startsWith("HTTP "))) out.statuses.network = (out.statuses.network ?? 0) + 1;
		out.errors += agents.length;
		if (out.errorSamples.length < 10) out.errorSamples.push(err instanceof Error ? err.message : String(err));
	}
}

const perCall = (t: Transport) => (t.kind === "http-batch" ? t.size : 1);

const methods = {
	/** Answers once this process has loaded, so its start-up is not counted as load. */
	async ready() {
		return null;
	},
	/** `count` commands at `rate` per second, round-robin over `agents`, not waiting for answers (capped in flight). */
	async steady(a: { transport: Transport; agents: string[]; count: number; rate: number; maxInFlight?: number; keepIds?: boolean }) {
		const out: Sent = { ok: 0, errors: 0, callMs: [], errorSamples: [], statuses: {}, accepted: a.keepIds ? [] : undefined };
		const step = perCall(a.transport);
		const start = wallNow();
		const inFlight = new Set<Promise<void>>();
		for (let i = 0; i < a.count; i += step) {
			const due = start + (i / a.rate) * 1000;
			const wait = due - wallNow();
			if (wait > 1) await sleep(wait);
			while (inFlight.size >= (a.maxInFlight ?? 256)) await Promise.race(inFlight);
			const targets = Array.from({ length: Math.min(step, a.count - i) }, (_, k) => a.agents[(i + k) % a.agents.length] ?? "");
			const p = send(a.transport, targets, i, out).finally(() => inFlight.delete(p));
			inFlight.add(p);
		}
		await Promise.all(inFlight);
		return { ...out, startedAt: start, endedAt: wallNow() };
	},
	/** `concurrency` calls always in flight for `durationMs`. */
	async flood(a: { transport: Transport; agents: string[]; durationMs: number; concurrency: number }) {
		const out: Sent = { ok: 0, errors: 0, callMs: [], errorSamples: [], statuses: {} };
		const step = perCall(a.transport);
		const start = wallNow();
		let next = 0;
		const worker = async () => {
			while (wallNow() - start < a.durationMs) {
				const i = next;
				next += step;
				const targets = Array.from({ length: step }, (_, k) => a.agents[(i + k) % a.agents.length] ?? "");
				await send(a.transport, targets, i, out);
			}
		};
		await Promise.all(Array.from({ length: a.concurrency }, worker));
		return { ...out, startedAt: start, endedAt: wallNow() };
	},
	async close() {
		await nats?.nc.close();
		nats = undefined;
		return null;
	},
};

serve(methods);
