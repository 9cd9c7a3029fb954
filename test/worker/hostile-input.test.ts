/**
 * The hostile-input suite: generated bad HTTP requests and bad WebSocket
 * frames thrown at the running worker, plus hand-written hostile values.
 * Whatever comes in: no 5xx, every refusal has the documented shape (a JSON
 * error body, an `error` frame), sockets and objects stay healthy, and every
 * command accepted before, during and after is stored and delivered.
 */
import { env, exports } from "cloudflare:workers";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { AgentFrame, PING_TEXT, ServerFrame } from "../../src/protocol";
import { TEST_READ_KEY } from "../helpers/test-secrets";
import {
	API_KEY,
	AgentSocket,
	BASE,
	api,
	enqueue,
	uniqueAgentId,
	waitFor,
	waitForStatus,
} from "../helpers/worker/harness";

const HTTP_RUNS = 10_000;
const SOCKETS = 53;
/** Under the per-socket burst (200, less the hello), so nothing is refused for rate: every frame is judged on its content. */
const FRAMES_PER_SOCKET = 190;
/** The canary's commands go through another key, so the fuzzer's enqueues cannot rate-limit them. */
const CANARY_KEY = "test-second-key";

const HOSTILE_STRINGS = [
	"'; DROP TABLE agent_commands; --",
	'" OR 1=1 --',
	"Robert'); DELETE FROM command_events;--",
	"$1",
	"\\",
	"%s%s%s%n",
	"<script>alert(1)</script>",
	"\u202Ereversed",
	"\u2028\u2029",
	"🙂🏳️‍🌈",
	"\uFEFF",
	"x".repeat(10_000),
];

// ---------------------------------------------------------------- requests

const printable = fc.string({ unit: fc.constantFrom(..."abcXYZ019-_.:/ %?&=#'\"<>\\{}[]"), maxLength: 60 });
const segment = fc.oneof(
	fc.constantFrom("fuzz-a", "..", "%2e%2e", "a%00b", "%ZZ", "🙂", "x".repeat(300), "", "5ba5f0b4-6c0e-4a43-9a7f-0d6f3c1c2b1a"),
	fc.uuid(),
	fc.string({ maxLength: 80 }).map(encodeURIComponent),
	printable,
);
const query = fc.oneof(
	fc.constant(""),
	fc.record({ k: fc.constantFrom("limit", "status", "cursor", "since", "epoch", "x"), v: fc.string({ maxLength: 40 }) }).map(
		({ k, v }) => `?${k}=${encodeURIComponent(v)}`,
	),
);
/** Mostly a real route with the method it takes (so validation, not routing, is what gets exercised), sometimes anything. */
const route = fc.oneof(
	{ weight: 4, arbitrary: fc.tuple(fc.constant("POST"), segment).map(([m, a]) => [m, `/v1/agents/${a}/commands`] as const) },
	{ weight: 1, arbitrary: fc.tuple(fc.constant("GET"), segment, query).map(([m, a, q]) => [m, `/v1/agents/${a}/commands${q}`] as const) },
	{ weight: 3, arbitrary: fc.constant(["POST", "/v1/commands/batch"] as const) },
	{ weight: 1, arbitrary: fc.tuple(fc.constantFrom("", "/output", "/events"), segment).map(([s, id]) => ["GET", `/v1/commands/${id}${s}`] as const) },
	{ weight: 1, arbitrary: segment.map((id) => ["POST", `/v1/commands/${id}/cancel`] as const) },
	{ weight: 1, arbitrary: fc.tuple(fc.constantFrom("/token", "/reconcile", "/revoke"), segment).map(([s, a]) => ["POST", `/v1/agents/${a}${s}`] as const) },
	{ weight: 1, arbitrary: fc.tuple(fc.constantFrom("", "/stream", "/connect"), segment, query).map(([s, a, q]) => ["GET", `/v1/agents/${a}${s}${q}`] as const) },
	{ weight: 1, arbitrary: query.map((q) => ["GET", `/v1/agents${q}`] as const) },
	{
		weight: 2,
		arbitrary: fc.tuple(
			fc.constantFrom("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"),
			fc.oneof(fc.constantFrom("/metrics", "/healthz", "/readyz", "/", "/v2/x", "//v1//agents", "/v1/commands/batch"), printable.map((p) => `/${p}`)),
		),
	},
);
const deep = (n: number) => `${"[".repeat(n)}${"]".repeat(n)}`;
const body = fc.oneof(
	fc.jsonValue().map((v) => JSON.stringify(v)),
	fc.string({ maxLength: 200 }),
	fc
		.record(
			{
				action: fc.oneof(fc.string({ maxLength: 200 }), fc.integer(), fc.constant(null), fc.constantFrom(...HOSTILE_STRINGS)),
				payload: fc.oneof(fc.jsonValue(), fc.constantFrom(...HOSTILE_STRINGS)),
				priority: fc.oneof(fc.integer(), fc.double(), fc.string()),
				idempotencyKey: fc.oneof(fc.string({ maxLength: 200 }), fc.constantFrom(...HOSTILE_STRINGS)),
				ttlSeconds: fc.oneof(fc.integer(), fc.double()),
				maxAttempts: fc.integer(),
				extra: fc.jsonValue(),
			},
			{ requiredKeys: [] },
		)
		.map((v) => JSON.stringify(v)),
	fc
		.array(fc.record({ agentId: segment, action: fc.string({ maxLength: 20 }) }), { maxLength: 5 })
		.map((commands) => JSON.stringify({ commands })),
	fc.constantFrom(
		deep(10_000),
		`{"action":"a","payload":${deep(100)}}`,
		'{"action":"a","payload":"\\u0000"}',
		'{"action":"a","payload":"\\ud800"}',
		'{"action":"a","payload":{"\\udc00":1}}',
		'{"action":"a","payload":1e400}',
		'{"action":"a","payload":123456789012345678901234567890}',
		'{"action":"a","payload":-0}',
		"{",
		"null",
		"[]",
		'"a string"',
		'{"action":"a"}{"action":"b"}',
		'{"__proto__":{"polluted":true},"action":"a"}',
	),
);
const request: fc.Arbitrary<RequestCase> = fc.record({
	route,
	body,
	contentType: fc.constantFrom("application/json", "application/json", "text/plain", "", "application/json; charset=utf-8", "multipart/form-data"),
	auth: fc.oneof(
		{ weight: 6, arbitrary: fc.constant(`Bearer ${API_KEY}`) },
		{ weight: 1, arbitrary: fc.constant(`Bearer ${TEST_READ_KEY}`) },
		{ weight: 1, arbitrary: fc.constant(undefined) },
		{ weight: 1, arbitrary: printable.map((s) => `Bearer ${s}`) },
		{ weight: 1, arbitrary: printable },
	),
});

type RequestCase = { route: readonly [string, string]; body: string; contentType: string; auth: string | undefined };
type Accepted = { id: string; payload: unknown };
type Outcome = { status: number; accepted: Accepted[] };

async function send({ route: [method, p], body: b, contentType, auth }: RequestCase): Promise<Outcome> {
	const headers = new Headers();
	if (auth !== undefined) headers.set("authorization", auth);
	if (contentType) headers.set("content-type", contentType);
	const res = await exports.default.fetch(`${BASE}${p}`, {
		method,
		headers,
		body: method === "GET" || method === "HEAD" ? undefined : b,
	});
	if (res.status >= 500) throw new Error(`${method} ${p} answered ${res.status}: ${await res.text()}`);
	if (method === "HEAD") return { status: res.status, accepted: [] };
	const text = await res.text();
	const isJson = /^application\/json/.test(res.headers.get("content-type") ?? "");
	if (res.status >= 400 && !isJson) throw new Error(`${method} ${p} refused with ${res.status} but not as JSON: ${text.slice(0, 200)}`);
	const parsed: unknown = isJson && text !== "" ? JSON.parse(text) : undefined;
	if (res.status >= 400) {
		const shape = parsed as { error?: { code?: unknown; message?: unknown } };
		if (typeof shape?.error?.code !== "string" || typeof shape.error.message !== "string") {
			throw new Error(`${method} ${p} refused with ${res.status} but not the error shape: ${text.slice(0, 300)}`);
		}
	}
	if (res.status === 201 && method === "POST" && /\/commands(\/batch)?$/.test(new URL(`${BASE}${p}`).pathname)) {
		const b = parsed as Accepted & { items?: { command: Accepted }[] };
		return { status: res.status, accepted: b.items ? b.items.map((i) => i.command) : [b] };
	}
	return { status: res.status, accepted: [] };
}

// ------------------------------------------------------------------ frames

const frame = fc.oneof(
	fc.string({ maxLength: 300 }),
	fc.string({ unit: "binary", maxLength: 100 }),
	fc.jsonValue().map((v) => JSON.stringify(v)),
	fc
		.record(
			{
				type: fc.oneof(fc.constantFrom("hello", "ack", "result", "output", "ping", "auth.refresh", "command", "welcome"), fc.string()),
				id: fc.oneof(fc.uuid(), fc.string({ maxLength: 80 }), fc.integer()),
				status: fc.oneof(fc.constantFrom("completed", "failed", "cancelled", "pending"), fc.string()),
				seq: fc.oneof(fc.integer(), fc.double(), fc.constant(-1)),
				data: fc.oneof(fc.string({ maxLength: 100 }), fc.constantFrom(...HOSTILE_STRINGS)),
				concurrency: fc.oneof(fc.integer(), fc.double(), fc.string()),
				running: fc.oneof(fc.array(fc.string({ maxLength: 40 }), { maxLength: 5 }), fc.string()),
				token: fc.string({ maxLength: 100 }),
				result: fc.jsonValue(),
			},
			{ requiredKeys: ["type"] },
		)
		.map((v) => JSON.stringify(v)),
	fc.constantFrom(
		deep(10_000),
		'{"type":"output","id":"5ba5f0b4-6c0e-4a43-9a7f-0d6f3c1c2b1a","seq":0,"data":"\\u0000"}',
		'{"type":"result","id":"5ba5f0b4-6c0e-4a43-9a7f-0d6f3c1c2b1a","status":"completed","result":"\\ud800"}',
		'{"type":"result","id":"5ba5f0b4-6c0e-4a43-9a7f-0d6f3c1c2b1a","status":"completed","result":1e400}',
		'{"type":"ping","x":1}',
		PING_TEXT,
		"",
	),
	fc.uint8Array({ maxLength: 64 }),
)
	// A valid hello is not hostile: it is applied silently. Everything else is answered.
	.filter((f) => typeof f !== "string" || !isValidHello(f));

function isValidHello(text: string): boolean {
	try {
		const parsed = AgentFrame.safeParse(JSON.parse(text));
		return parsed.success && parsed.data.type === "hello";
	} catch {
		return false;
	}
}

describe("hostile input", () => {
	it(
		`${HTTP_RUNS} generated bad HTTP requests: no 5xx, every refusal in the error shape, accepted commands stored, the canary's commands delivered`,
		async ({ annotate }) => {
			const canaryId = uniqueAgentId("canary");
			const canary = await AgentSocket.connect(canaryId);
			// Like a real agent: ack on receipt (or the ack timeout spends the command's
			// attempts during the run), and ping (the run outlasts the 90 s silence limit).
			canary.ws.addEventListener("message", (e) => {
				const f = JSON.parse(String(e.data)) as { type: string; id?: string };
				if (f.type === "command") canary.send({ type: "ack", id: f.id });
			});
			const heartbeat = setInterval(() => canary.send(PING_TEXT), 20_000);
			const canaryCommands = [await enqueue(canaryId, { action: "before" }, CANARY_KEY)];
			const accepted: Accepted[] = [];
			const statuses = new Map<number, number>();
			let tried = 0;
			await fc.assert(
				fc.asyncProperty(request, async (r) => {
					const outcome = await send(r);
					statuses.set(outcome.status, (statuses.get(outcome.status) ?? 0) + 1);
					accepted.push(...outcome.accepted);
					if (++tried % 1_000 === 0) canaryCommands.push(await enqueue(canaryId, { action: `during_${tried}` }, CANARY_KEY));
				}),
				{ numRuns: HTTP_RUNS },
			);
			canaryCommands.push(await enqueue(canaryId, { action: "after" }, CANARY_KEY));

			const answered = new Set<string>();
			while (answered.size < canaryCommands.length) {
				const f = await canary.next("command", 30_000);
				canary.send({ type: "result", id: f.id, status: "completed", result: f.action });
				answered.add(f.id);
			}
			for (const c of canaryCommands) await waitForStatus(c.id, "completed", 30_000);
			clearInterval(heartbeat);
			// What the fuzzer got accepted is durable and exactly what it sent.
			for (const a of accepted) {
				const res = await api(`/v1/commands/${a.id}`);
				expect(res.status).toBe(200);
				expect((await res.json<{ payload: unknown }>()).payload).toEqual(a.payload);
			}
			canary.close();
			const summary = [...statuses].sort(([a], [b]) => a - b).map(([s, n]) => `${s}:${n}`).join(" ");
			await annotate(
				`tried ${tried} HTTP requests (status:count ${summary}); ${accepted.length} accepted and stored, ${canaryCommands.length} canary commands delivered`,
			);
			expect(tried).toBe(HTTP_RUNS);
		},
		600_000,
	);

	it(
		`${SOCKETS * FRAMES_PER_SOCKET} generated bad frames over ${SOCKETS} agent sockets: each answered with an error frame (or pong), sockets stay open and keep delivering`,
		async ({ annotate }) => {
			let sent = 0;
			let errors = 0;
			let sockets = 0;
			await fc.assert(
				fc.asyncProperty(fc.array(frame, { minLength: FRAMES_PER_SOCKET, maxLength: FRAMES_PER_SOCKET }), async (frames) => {
					const agentId = uniqueAgentId("fuzz-ws");
					const agent = await AgentSocket.connect(agentId, { hello: { concurrency: 5 } });
					for (const f of frames) agent.ws.send(f);
					sent += frames.length;
					sockets++;
					// One answer per frame: an error for every refusal, a pong for every ping.
					await waitFor(() => agent.frames.length >= frames.length, `answers to ${frames.length} frames`, 30_000);
					// and no more than one: a ping sent last, answered last, marks the end.
					agent.send('{"type": "ping"}');
					await waitFor(() => agent.frames.length > frames.length, "the marker's pong", 10_000);
					expect(agent.frames.length).toBe(frames.length + 1);
					const answers = agent.frames.splice(0, frames.length);
					expect(agent.frames.splice(0)).toEqual([{ type: "pong" }]);
					expect(answers.every((a) => ServerFrame.safeParse(a).success)).toBe(true);
					expect(answers.filter((a) => a.type !== "error" && a.type !== "pong")).toEqual([]);
					errors += answers.filter((a) => a.type === "error").length;
					// Still open, and the object still delivers.
					const cmd = await enqueue(agentId, { action: "after_fuzz" }, CANARY_KEY);
					expect((await agent.next("command", 10_000)).id).toBe(cmd.id);
					agent.send({ type: "result", id: cmd.id, status: "completed" });
					await waitForStatus(cmd.id, "completed");
					agent.close();
				}),
				{ numRuns: SOCKETS },
			);
			await annotate(`sent ${sent} frames over ${sockets} sockets; ${errors} error frames, the rest pongs; every socket delivered afterwards`);
			expect(sent).toBe(SOCKETS * FRAMES_PER_SOCKET);
		},
		600_000,
	);

	it("stores hostile strings verbatim, in Postgres and on the wire, and refuses what cannot be stored exactly", async () => {
		const agentId = uniqueAgentId("verbatim");
		const agent = await AgentSocket.connect(agentId, { hello: { concurrency: 50 } });
		const payload = { strings: HOSTILE_STRINGS, nested: { [HOSTILE_STRINGS[0] as string]: HOSTILE_STRINGS[1] }, big: 2 ** 53 - 1, neg: -0.5 };
		const cmd = await enqueue(agentId, { action: "verbatim", payload, idempotencyKey: "verbatim:1" });
		expect((await agent.next("command")).payload).toEqual(payload);
		expect((await (await api(`/v1/commands/${cmd.id}`)).json<{ payload: unknown }>()).payload).toEqual(payload);
		agent.send({ type: "result", id: cmd.id, status: "completed", result: payload });
		expect((await waitForStatus(cmd.id, "completed")).result).toEqual(payload);

		const refused = async (raw: string, why: string) => {
			const res = await exports.default.fetch(`${BASE}/v1/agents/${agentId}/commands`, {
				method: "POST",
				headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
				body: raw,
			});
			expect(res.status, why).toBe(400);
			expect((await res.json<{ error: { code: string } }>()).error.code, why).toMatch(/^(validation_failed|invalid_json)$/);
		};
		await refused('{"action":"a","payload":"\\u0000"}', "NUL");
		await refused('{"action":"a","payload":"\\ud800"}', "lone surrogate");
		await refused(`{"action":"a","payload":${deep(10_000)}}`, "10,000 levels");
		await refused('{"action":"a","payload":1e400}', "beyond double");
		await refused('{"action":"a","payload":12345678901234567890}', "integer beyond 2^53");
		const huge = await api(`/v1/agents/${agentId}/commands`, { method: "POST", json: { action: "a", payload: "x".repeat(1024 * 1024) } });
		expect(huge.status).toBe(413);
		// Nothing of the refused requests was written.
		const list = await (await api(`/v1/agents/${agentId}/commands`)).json<{ items: unknown[] }>();
		expect(list.items).toHaveLength(1);
		// Hostile agent ids never reach a query: refused by their shape.
		for (const id of ["a'; drop table agents;--", "..%2f..", "a b"]) {
			expect((await api(`/v1/agents/${encodeURIComponent(id)}/commands`)).status).toBe(400);
		}
		expect(env.DATABASE_URL).toBeTruthy();
		agent.close();
	});
});
