/**
 * Test harness inside workerd: real HTTP through the worker's fetch, real
 * WebSocket upgrades to the agent objects, real Postgres through the driver.
 */
import { createExecutionContext, runDurableObjectAlarm, runInDurableObject, waitOnExecutionContext } from "cloudflare:test";
import { env, exports } from "cloudflare:workers";
import { expect } from "vitest";
import { sql, type SQL } from "drizzle-orm";
import type { AgentHub } from "../../../src/agent/agent-hub";
import { FrameRateLimiter } from "../../../src/agent/frame-limits";
import { signAgentToken } from "../../../src/auth/agent-token";
import { type Db, withDb } from "../../../src/db/client";
import { type ServerFrame, ServerFrame as ServerFrameSchema } from "../../../src/protocol";
import { ConnectRefused, type SocketLike } from "../../../src/sdk/transport";
import worker from "../../../src/index";

export const BASE = "http://switchyard.test";
export const API_KEY = "test-operator-key";

export function uniqueAgentId(label = "agent"): string {
	return `${label}-${crypto.randomUUID().slice(0, 8)}`;
}

export function api(path: string, init: RequestInit & { json?: unknown; key?: string | null } = {}): Promise<Response> {
	const headers = new Headers(init.headers);
	if (init.key !== null) headers.set("authorization", `Bearer ${init.key ?? API_KEY}`);
	let body = init.body;
	if (init.json !== undefined) {
		headers.set("content-type", "application/json");
		body = JSON.stringify(init.json);
	}
	return exports.default.fetch(`${BASE}${path}`, { ...init, headers, body });
}

/**
 * POSTs `json` with the operator key through the worker's real fetch handler
 * with some bindings changed (a low limit, a failing object namespace), and
 * waits for the work it left running after its answer.
 */
export async function postWithEnv(path: string, json: unknown, changed: Partial<Env>): Promise<Response> {
	const ctx = createExecutionContext();
	const res = await worker.fetch(
		new Request(`${BASE}${path}`, {
			method: "POST",
			headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
			body: JSON.stringify(json),
		}),
		{ ...env, ...changed },
		ctx,
	);
	await waitOnExecutionContext(ctx);
	return res;
}

export async function enqueue(
	agentId: string,
	body: Record<string, unknown>,
	key = API_KEY,
): Promise<{ id: string; status: string; [k: string]: unknown }> {
	const res = await api(`/v1/agents/${agentId}/commands`, { method: "POST", json: body, key });
	if (res.status !== 201) throw new Error(`enqueue: ${res.status} ${await res.text()}`);
	return res.json();
}

export function db<T>(fn: (db: Db) => Promise<T>): Promise<T> {
	return withDb(env, fn);
}

export async function query<T = Record<string, unknown>>(q: SQL): Promise<T[]> {
	return db(async (d) => (await d.execute(q)).rows as T[]);
}

export { sql };

/**
 * Runs `statement` in a transaction on a connection of its own (taking a
 * lock, say), then `fn`, and ends the transaction once `fn` has settled.
 */
export async function withDbHeld<T>(statement: SQL, fn: () => Promise<T>): Promise<T> {
	let release = () => {};
	const released = new Promise<void>((r) => {
		release = r;
	});
	let held = () => {};
	const holding = new Promise<void>((r) => {
		held = r;
	});
	const holder = db((d) =>
		d.transaction(async (tx) => {
			await tx.execute(statement);
			held();
			await released;
		}),
	);
	await Promise.race([holding, holder]);
	try {
		return await fn();
	} finally {
		release();
		await holder;
	}
}

export async function tokenFor(agentId: string, ttlSeconds = 3600): Promise<string> {
	return (await signAgentToken(agentId, { current: env.AGENT_TOKEN_SECRET }, ttlSeconds)).token;
}

/** Polls until `check` returns a value other than undefined/false, or fails after `timeoutMs`. */
export async function waitFor<T>(
	check: () => Promise<T | undefined | false> | T | undefined | false,
	what: string,
	timeoutMs = 10_000,
): Promise<T> {
	const deadline = Date.now() + timeoutMs;
	let last: unknown;
	while (Date.now() < deadline) {
		try {
			const v = await check();
			if (v !== undefined && v !== false) return v;
		} catch (err) {
			last = err;
		}
		await new Promise((r) => setTimeout(r, 25));
	}
	throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ""}`);
}

/**
 * Connects and waits until the object has finished its connect-time read of
 * Postgres, so a row a test inserts afterwards is one the object has not seen.
 */
export async function connectSettled(agentId: string): Promise<AgentSocket> {
	const socket = await AgentSocket.connect(agentId);
	const { agentHub } = await import("../../../src/agent/stub");
	await waitFor(async () => {
		const seen = await agentHub(env, agentId).inspect();
		return seen.connected && !seen.timers.includes("catch_up");
	}, "the connect-time catch-up");
	return socket;
}

/**
 * Waits, without touching Postgres, until the agent's object has nothing
 * left to read or write (and, if given, is or is not connected).
 */
export async function objectSettled(agentId: string, opts: { connected?: boolean } = {}): Promise<void> {
	const { agentHub } = await import("../../../src/agent/stub");
	await waitFor(async () => {
		const seen = await agentHub(env, agentId).inspect();
		const settled = seen.outbox === 0 && !seen.timers.includes("catch_up") && !seen.timers.includes("flush");
		return settled && (opts.connected === undefined || seen.connected === opts.connected);
	}, "the object's reads and flushes");
}

/** Milliseconds until the agent's object's alarm fires; far below zero when none is set. */
export async function msUntilAlarm(agentId: string): Promise<number> {
	const { agentHub } = await import("../../../src/agent/stub");
	return runInDurableObject(agentHub(env, agentId), async (_instance, state) => ((await state.storage.getAlarm()) ?? 0) - Date.now());
}

/**
 * Ends the current connection's hello grace period now (the agent has sent
 * no hello) and runs the object's alarm until `acted` says it was acted on.
 */
export async function endHelloGrace(agentId: string, acted: () => boolean): Promise<void> {
	const { agentHub } = await import("../../../src/agent/stub");
	const stub = agentHub(env, agentId);
	await runInDurableObject(stub, (instance: AgentHub, state) => {
		state.storage.sql.exec("update meta set value = ? where key = 'timer:hello'", String(Date.now() - 1));
		instance.reloadState();
	});
	await waitFor(async () => {
		await runDurableObjectAlarm(stub);
		return acted();
	}, "the hello grace period to end");
}

type FrameOf<T extends ServerFrame["type"]> = Extract<ServerFrame, { type: T }>;

const liveSockets = new Set<AgentSocket>();

/**
 * Closes every socket a test file left open and waits until each object has
 * seen the close. Left open, they would close when the file's isolate goes
 * away, and the objects' close handlers would log while vitest tears the
 * file down (an unhandled EnvironmentTeardownError fails a green run).
 */
export async function closeLiveSockets(): Promise<void> {
	const { agentHub } = await import("../../../src/agent/stub");
	await Promise.all(
		[...liveSockets].map(async (socket) => {
			socket.close();
			await Promise.race([socket.closed, new Promise((r) => setTimeout(r, 5_000))]);
			await waitFor(async () => !(await agentHub(env, socket.agentId).inspect()).connected, `${socket.agentId} to see its close`, 5_000).catch(
				() => undefined, // a test that tore the object down itself has nothing left to wait for
			);
		}),
	);
	liveSockets.clear();
}

/** An agent's end of a real WebSocket to the worker. Frames are validated against the protocol. */
export class AgentSocket {
	readonly frames: ServerFrame[] = [];
	readonly closed: Promise<{ code: number; reason: string }>;
	private wake: (() => void) | null = null;

	private constructor(
		readonly agentId: string,
		readonly ws: WebSocket,
	) {
		liveSockets.add(this);
		this.closed = new Promise((resolve) => {
			ws.addEventListener("close", (e) => {
				liveSockets.delete(this);
				resolve({ code: e.code, reason: e.reason });
				this.wake?.();
			});
		});
		ws.addEventListener("message", (e) => {
			const frame = ServerFrameSchema.parse(JSON.parse(String(e.data)));
			this.frames.push(frame);
			this.wake?.();
		});
	}

	/**
	 * Connects as `agentId` and, like a real agent, announces its window with
	 * `hello` (concurrency 100 unless given; `hello: false` sends none).
	 */
	static async connect(
		agentId: string,
		opts: { token?: string; hello?: false | ({ concurrency: number; running?: string[] } & Record<string, unknown>) } = {},
	): Promise<AgentSocket> {
		const token = opts.token ?? (await tokenFor(agentId));
		const res = await exports.default.fetch(`${BASE}/v1/agents/${agentId}/connect`, {
			headers: { upgrade: "websocket", authorization: `Bearer ${token}` },
		});
		if (res.status !== 101 || !res.webSocket) {
			throw new Error(`connect ${agentId}: ${res.status} ${await res.text()}`);
		}
		res.webSocket.accept();
		const socket = new AgentSocket(agentId, res.webSocket);
		await socket.next("welcome");
		const hello = opts.hello ?? { concurrency: 100 };
		if (hello) socket.send({ ...hello, type: "hello", running: hello.running ?? [] });
		return socket;
	}

	/** Takes the oldest unread frame of `type`, waiting for it if needed. */
	async next<T extends ServerFrame["type"]>(type: T, timeoutMs = 5_000): Promise<FrameOf<T>> {
		const deadline = Date.now() + timeoutMs;
		for (;;) {
			const i = this.frames.findIndex((f) => f.type === type);
			if (i >= 0) return this.frames.splice(i, 1)[0] as FrameOf<T>;
			const left = deadline - Date.now();
			if (left <= 0) {
				throw new Error(`${this.agentId}: no ${type} frame within ${timeoutMs} ms (have: ${JSON.stringify(this.frames)})`);
			}
			await new Promise<void>((resolve) => {
				const t = setTimeout(resolve, left);
				this.wake = () => {
					clearTimeout(t);
					resolve();
				};
			});
			this.wake = null;
		}
	}

	/** Takes `n` command frames in arrival order. */
	async commands(n: number, timeoutMs = 5_000): Promise<FrameOf<"command">[]> {
		const out: FrameOf<"command">[] = [];
		while (out.length < n) out.push(await this.next("command", timeoutMs));
		return out;
	}

	send(frame: unknown): void {
		this.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
	}

	close(): void {
		try {
			this.ws.close(1000, "test done");
		} catch {
			// already closed
		}
	}
}

/** The SDK's Workers connector, pointed at this worker instead of the network. */
export async function connectHere(url: string, token: string): Promise<SocketLike> {
	const res = await exports.default.fetch(url.replace(/^ws/, "http"), {
		headers: { upgrade: "websocket", authorization: `Bearer ${token}` },
	});
	if (!res.webSocket) throw new ConnectRefused(res.status, (await res.json<{ error: { message: string } }>()).error.message);
	res.webSocket.accept();
	return res.webSocket;
}

/**
 * Gives the agent's current socket a frame bucket of `rate` frames a second
 * (bursts of twice that) whose clock stands still, so refill cannot race the
 * test; `empty` takes every token first. The object's env says the same rate,
 * or its next frame would replace the bucket.
 */
export async function freezeFrameBucket(agentId: string, rate: number, opts: { empty?: boolean } = {}): Promise<void> {
	const { agentHub } = await import("../../../src/agent/stub");
	const { generation } = await agentHub(env, agentId).inspect();
	await runInDurableObject(agentHub(env, agentId), (instance: AgentHub) => {
		// SAFETY: a test reaching into the object: its env is read on every frame, never cached.
		const hub = instance as unknown as { env: Env; limiter: { generation: number; bucket: FrameRateLimiter } };
		hub.env = { ...hub.env, AGENT_FRAME_RATE_LIMIT: String(rate) };
		const now = Date.now();
		const bucket = new FrameRateLimiter(rate, now);
		const take = bucket.take.bind(bucket);
		bucket.take = (_now: number, size?: number) => take(now, size);
		while (opts.empty && bucket.take(now) === "ok") {}
		hub.limiter = { generation, bucket };
	});
}

/** A refusal in the API's error shape. */
export type ErrorBody = { error: { code: string; message: string; issues?: unknown[] } };

/**
 * Asserts a refusal a user would see: the status, JSON in the documented
 * error shape with the code and a message, and no socket. Returns the body.
 */
export async function expectError(res: Response, status: number, code: string): Promise<ErrorBody> {
	expect(res.status, `${res.url} ${await res.clone().text()}`).toBe(status);
	expect(res.webSocket ?? null).toBeNull();
	expect(res.headers.get("content-type")).toMatch(/application\/json/);
	const body = await res.json<ErrorBody>();
	expect(body.error.code).toBe(code);
	expect(body.error.message.length).toBeGreaterThan(0);
	return body;
}

/** A command's audit trail in Postgres, oldest first. */
export function commandEvents(id: string) {
	return query<{ from_status: string | null; to_status: string; detail: Record<string, unknown> | null }>(
		sql`select from_status, to_status, detail from command_events where command_id = ${id} order by id`,
	);
}

/** The command as the API returns it. */
export async function apiCommand(id: string): Promise<Record<string, unknown> & { status: string }> {
	const res = await api(`/v1/commands/${id}`);
	if (res.status !== 200) throw new Error(`GET command ${id}: ${res.status}`);
	return res.json();
}

/** Waits until the API shows the command in `status`, and returns it. */
export function waitForStatus(id: string, status: string, timeoutMs = 10_000) {
	return waitFor(async () => {
		const c = await apiCommand(id);
		return c.status === status ? c : undefined;
	}, `command ${id} to be ${status}`, timeoutMs);
}
