/**
 * Who gets in, with what, and what they may do: API key scopes on every
 * route, agent tokens (rotation, refresh, expiry, revocation), the browser
 * form of a credential and its Origin check, and the limits on frames and
 * enqueue requests.
 */
import { runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { env, exports } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { signAgentToken } from "../../src/auth/agent-token";
import { apiKeyId } from "../../src/auth/api-key";
import { CloseCode, ErrorCode, ServerFrame } from "../../src/protocol";
import { CONNECT_BURST, CONNECT_REFILL_MS } from "../../src/agent/connect-limit";
import type { AgentHub } from "../../src/agent/agent-hub";
import { agentHub } from "../../src/agent/stub";
import {
	TEST_ALLOWED_ORIGIN,
	TEST_PREVIOUS_TOKEN_SECRET,
	TEST_READ_KEY,
} from "../helpers/test-secrets";
import {
	API_KEY,
	AgentSocket,
	BASE,
	api,
	enqueue,
	freezeFrameBucket,
	tokenFor,
	uniqueAgentId,
	type ErrorBody,
	expectError,
	query,
	sql,
	waitFor,
	waitForStatus,
} from "../helpers/worker/harness";

/** Takes the database away from (or gives it back to) the worker and its objects, at the relay. */
async function setDatabase(state: "down" | "up"): Promise<void> {
	await fetch(`${env.TEST_RELAY_CONTROL}/${state}`);
}

function connect(agentId: string, headers: Record<string, string>): Promise<Response> {
	return exports.default.fetch(`${BASE}/v1/agents/${agentId}/connect`, { headers: { upgrade: "websocket", ...headers } });
}

async function mint(agentId: string, ttlSeconds = 3600): Promise<{ token: string; expiresAt: string }> {
	const res = await api(`/v1/agents/${agentId}/token`, { method: "POST", json: { ttlSeconds } });
	expect(res.status).toBe(201);
	return res.json();
}

/** The `kid` a token's header names. */
const kidOf = (token: string): unknown => JSON.parse(atob((token.split(".")[0] ?? "").replace(/-/g, "+").replace(/_/g, "/"))).kid;

const b64url = (s: string) => btoa(s).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");

describe("every operator route refuses a missing, malformed, wrong or out-of-scope credential", () => {
	const id = "5ba5f0b4-6c0e-4a43-9a7f-0d6f3c1c2b1a";
	const routes: { method: string; path: string; write: boolean; json?: unknown; upgrade?: boolean }[] = [
		{ method: "POST", path: "/v1/agents/sec-a/commands", write: true, json: { action: "x" } },
		{ method: "GET", path: "/v1/agents/sec-a/commands", write: false },
		{ method: "POST", path: "/v1/commands/batch", write: true, json: { commands: [{ agentId: "sec-a", action: "x" }] } },
		{ method: "GET", path: `/v1/commands/${id}`, write: false },
		{ method: "POST", path: `/v1/commands/${id}/cancel`, write: true },
		{ method: "GET", path: `/v1/commands/${id}/output`, write: false },
		{ method: "GET", path: `/v1/commands/${id}/events`, write: false },
		{ method: "POST", path: "/v1/agents/sec-a/reconcile", write: true },
		{ method: "POST", path: "/v1/agents/sec-a/token", write: true },
		{ method: "POST", path: "/v1/agents/sec-a/revoke", write: true },
		{ method: "GET", path: "/v1/agents", write: false },
		{ method: "GET", path: "/v1/agents/sec-a", write: false },
		{ method: "GET", path: "/v1/agents/sec-a/stream", write: false, upgrade: true },
		{ method: "GET", path: "/metrics", write: false },
	];
	const send = async (r: (typeof routes)[number], authorization?: string) =>
		exports.default.fetch(`${BASE}${r.path}`, {
			method: r.method,
			headers: {
				...(authorization === undefined ? {} : { authorization }),
				...(r.json === undefined ? {} : { "content-type": "application/json" }),
				...(r.upgrade ? { upgrade: "websocket" } : {}),
			},
			body: r.json === undefined ? undefined : JSON.stringify(r.json),
		});

	it.each(routes)("$method $path", async (r) => {
		const agentToken = await tokenFor("sec-a");
		for (const [authorization, why] of [
			[undefined, "missing"],
			["Bearer", "malformed: no credential"],
			["Basic dGVzdDp0ZXN0", "malformed: another scheme"],
			[`Bearer ${API_KEY} extra`, "malformed: trailing junk"],
			["Bearer not-a-configured-key", "wrong key"],
			[`Bearer ${agentToken}`, "an agent token is not an API key"],
		] as const) {
			const res = await send(r, authorization);
			expect(res.status, why).toBe(401);
			expect((await res.json<ErrorBody>()).error.code, why).toBe(ErrorCode.UNAUTHORIZED);
		}
		const readOnly = await send(r, `Bearer ${TEST_READ_KEY}`);
		if (r.write) {
			await expectError(readOnly, 403, ErrorCode.FORBIDDEN);
		} else {
			expect([200, 101, 404]).toContain(readOnly.status);
			readOnly.webSocket?.accept();
			readOnly.webSocket?.close(1000);
		}
	});

	it("a read-only key watches an agent's stream and reads its commands, and cannot change anything", async () => {
		const agentId = uniqueAgentId("ro");
		const cmd = await enqueue(agentId, { action: "visible" });
		expect((await api(`/v1/commands/${cmd.id}`, { key: TEST_READ_KEY })).status).toBe(200);
		await expectError(await api(`/v1/commands/${cmd.id}/cancel`, { method: "POST", key: TEST_READ_KEY }), 403, "forbidden");
		expect((await api(`/v1/commands/${cmd.id}`)).status).toBe(200);
		expect((await (await api(`/v1/commands/${cmd.id}`)).json<{ status: string }>()).status).toBe("pending");
	});
});

describe("agent tokens", () => {
	it("refuses missing, malformed, expired, wrong-agent, forged and wrong-scope tokens on the agent socket", async () => {
		const agentId = uniqueAgentId();
		const now = Math.floor(Date.now() / 1000);
		const expired = await signAgentToken(agentId, { current: env.AGENT_TOKEN_SECRET }, 60, { now: Date.now() - 3_600_000 });
		const otherAgent = await tokenFor(uniqueAgentId("other"));
		const claims = b64url(JSON.stringify({ sub: agentId, aud: "switchyard-agent", iat: now, exp: now + 600 }));
		const rs256 = `${b64url(JSON.stringify({ alg: "RS256", typ: "JWT" }))}.${claims}.c2ln`;
		const unknownKid = await signAgentToken(agentId, { current: "a-secret-nobody-configured-0123456789" }, 600);
		const cases: [Record<string, string>, string | RegExp][] = [
			[{}, /missing/],
			[{ authorization: "Bearer" }, /missing/],
			[{ authorization: "Token abc" }, /missing/],
			[{ authorization: `Bearer ${expired.token}` }, /expired/],
			[{ authorization: `Bearer ${otherAgent}` }, /another agent/],
			[{ authorization: `Bearer ${rs256}` }, "invalid agent token"],
			[{ authorization: `Bearer ${unknownKid.token}` }, "invalid agent token"],
			[{ authorization: `Bearer ${API_KEY}` }, "invalid agent token"],
			[{ authorization: `Bearer ${"x".repeat(10_000)}` }, "invalid agent token"],
		];
		for (const [headers, message] of cases) {
			const text = (await expectError(await connect(agentId, headers), 401, ErrorCode.UNAUTHORIZED)).error.message;
			expect(text).toMatch(message);
		}
		expect((await agentHub(env, agentId).inspect()).generation).toBe(0);
	});

	it("rotation: tokens signed with the previous secret still work while it is configured, new ones use the current", async () => {
		const agentId = uniqueAgentId();
		const old = await signAgentToken(agentId, { current: TEST_PREVIOUS_TOKEN_SECRET }, 600);
		const agent = await AgentSocket.connect(agentId, { token: old.token });
		agent.close();
		const fresh = await mint(agentId);
		expect(kidOf(fresh.token)).toMatch(/^[0-9a-f]{8}$/);
		expect(kidOf(fresh.token)).not.toBe(kidOf(old.token));
		(await AgentSocket.connect(agentId, { token: fresh.token })).close();
	});

	it("refreshes in band: a new token for the same agent, and the socket outlives the token it opened with", async () => {
		const agentId = uniqueAgentId();
		const short = await signAgentToken(agentId, { current: env.AGENT_TOKEN_SECRET }, 6);
		const agent = await AgentSocket.connect(agentId, { token: short.token });
		// Halfway through its life, as the SDK would (it refreshes at 80%).
		await new Promise((r) => setTimeout(r, 3_100));
		agent.send({ type: "auth.refresh", token: short.token });
		const refreshed = await agent.next("auth.refreshed");
		expect(Date.parse(refreshed.expiresAt)).toBeGreaterThan(Date.parse(short.expiresAt));
		// The new token opens a socket of its own, for this agent only.
		await expectError(await connect(uniqueAgentId("else"), { authorization: `Bearer ${refreshed.token}` }), 401, "unauthorized");
		// A refresh with a token that is not this agent's is refused and changes nothing.
		agent.send({ type: "auth.refresh", token: await tokenFor(uniqueAgentId("else")) });
		expect((await agent.next("error")).code).toBe(ErrorCode.INVALID_TOKEN);
		agent.send({ type: "auth.refresh", token: "garbage" });
		expect((await agent.next("error")).code).toBe(ErrorCode.INVALID_TOKEN);
		// Past the first token's expiry (the new one has seconds left), the alarm finds nothing to close.
		await waitFor(() => Date.now() > Date.parse(short.expiresAt) + 300, "the first token's expiry", 10_000);
		await runDurableObjectAlarm(agentHub(env, agentId));
		const cmd = await enqueue(agentId, { action: "still_here" });
		expect((await agent.next("command")).id).toBe(cmd.id);
		agent.close();
	});

	it("refuses to refresh a session older than 30 days, and moves a previous-secret token to the current secret", async () => {
		const agentId = uniqueAgentId();
		const now = Date.now();
		const ancient = await signAgentToken(agentId, { current: env.AGENT_TOKEN_SECRET }, 600, {
			sessionStart: Math.floor(now / 1000) - 31 * 24 * 3600,
		});
		const agent = await AgentSocket.connect(agentId, { token: ancient.token });
		agent.send({ type: "auth.refresh", token: ancient.token });
		expect((await agent.next("error")).message).toMatch(/30 days/);
		agent.close();

		const old = await signAgentToken(agentId, { current: TEST_PREVIOUS_TOKEN_SECRET }, 600);
		const rotating = await AgentSocket.connect(agentId, { token: old.token });
		rotating.send({ type: "auth.refresh", token: old.token });
		const fresh = await rotating.next("auth.refreshed");
		expect(kidOf(fresh.token)).toBe(kidOf((await mint(agentId)).token));
		expect(kidOf(fresh.token)).not.toBe(kidOf(old.token));
		rotating.close();
	});

	it("closes an expired socket on its own (the expiry is armed on the object's alarm) and takes no frame after expiry", async () => {
		const agentId = uniqueAgentId();
		const short = await signAgentToken(agentId, { current: env.AGENT_TOKEN_SECRET }, 2);
		const agent = await AgentSocket.connect(agentId, { token: short.token });
		await waitFor(() => Date.now() > Date.parse(short.expiresAt) + 50, "expiry", 5_000);
		try {
			// Whichever comes first, this frame or the alarm, the socket closes unanswered.
			agent.send('{"type": "ping"}');
		} catch {
			// already closed by the alarm
		}
		const closed = await Promise.race([agent.closed, new Promise<undefined>((r) => setTimeout(r, 5_000))]);
		expect(closed?.code).toBe(CloseCode.TOKEN_EXPIRED);
		expect(agent.frames.filter((f) => f.type === "pong")).toEqual([]);
	});

	it("closes a socket whose token expired unrefreshed with 4003", async () => {
		const agentId = uniqueAgentId();
		const short = await signAgentToken(agentId, { current: env.AGENT_TOKEN_SECRET }, 2);
		const agent = await AgentSocket.connect(agentId, { token: short.token });
		await new Promise((r) => setTimeout(r, 2_200));
		await waitFor(async () => {
			await runDurableObjectAlarm(agentHub(env, agentId));
			return (await agentHub(env, agentId).inspect()).connected === false;
		}, "expired socket closed");
		expect((await agent.closed).code).toBe(CloseCode.TOKEN_EXPIRED);
	});

	it("revocation closes the open socket with 4004, refuses every earlier token, and a newly minted one works", async () => {
		const agentId = uniqueAgentId();
		const before = await mint(agentId);
		const agent = await AgentSocket.connect(agentId, { token: before.token });
		const res = await api(`/v1/agents/${agentId}/revoke`, { method: "POST" });
		expect(res.status).toBe(200);
		expect(await res.json()).toMatchObject({ agentId, revoked: true, socketClosed: true });
		expect((await agent.closed).code).toBe(CloseCode.TOKEN_REVOKED);
		const refused = (await expectError(await connect(agentId, { authorization: `Bearer ${before.token}` }), 401, "unauthorized")).error.message;
		expect(refused).toMatch(/revoked/);
		// The plain GET an SDK sends to learn why its upgrade failed says so too.
		const probe = await exports.default.fetch(`${BASE}/v1/agents/${agentId}/connect`, { headers: { authorization: `Bearer ${before.token}` } });
		expect((await expectError(probe, 401, "unauthorized")).error.message).toMatch(/revoked/);
		const after = await mint(agentId);
		const back = await AgentSocket.connect(agentId, { token: after.token });
		// An old token cannot be refreshed into a new one either.
		back.send({ type: "auth.refresh", token: before.token });
		expect((await back.next("error")).code).toBe(ErrorCode.INVALID_TOKEN);
		back.close();
	});

	it("revocation is written to Postgres before the object is told", async () => {
		const agentId = uniqueAgentId();
		const before = await mint(agentId);
		expect((await api(`/v1/agents/${agentId}/revoke`, { method: "POST" })).status).toBe(200);
		expect((await api(`/v1/agents/${agentId}/revoke`, { method: "POST" })).status).toBe(200);
		const [row] = await query<{ token_version: number }>(sql`select token_version from agents where id = ${agentId}`);
		expect(row?.token_version).toBe(2);
		expect(await agentHub(env, agentId).tokenVersion()).toBe(2);
		await expectError(await connect(agentId, { authorization: `Bearer ${before.token}` }), 401, "unauthorized");
	});

	it("an object whose storage lost its token version takes Postgres's and still refuses a revoked token", async () => {
		const agentId = uniqueAgentId();
		const before = await mint(agentId);
		expect((await api(`/v1/agents/${agentId}/revoke`, { method: "POST" })).status).toBe(200);
		// The object's storage lost or reset: no version of its own any more.
		await runInDurableObject(agentHub(env, agentId), (instance: AgentHub, state) => {
			state.storage.sql.exec("delete from meta where key = 'token_version'");
			instance.reloadState();
		});
		const refused = await expectError(await connect(agentId, { authorization: `Bearer ${before.token}` }), 401, "unauthorized");
		expect(refused.error.message).toMatch(/revoked/);
		// A token minted now carries the mirrored version, and connects.
		const after = await mint(agentId);
		const back = await AgentSocket.connect(agentId, { token: after.token });
		back.close();
	});

	it("an object that was ahead of Postgres (revoked before the mirror) raises the mirror to its version", async () => {
		const agentId = uniqueAgentId();
		await runInDurableObject(agentHub(env, agentId), (instance: AgentHub, state) => {
			state.storage.sql.exec("insert or replace into meta (key, value) values ('token_version', '5')");
			instance.reloadState();
		});
		const old = await signAgentToken(agentId, { current: env.AGENT_TOKEN_SECRET }, 3600, { version: 5 });
		expect((await api(`/v1/agents/${agentId}/revoke`, { method: "POST" })).status).toBe(200);
		const [row] = await query<{ token_version: number }>(sql`select token_version from agents where id = ${agentId}`);
		expect(row?.token_version).toBe(6);
		await expectError(await connect(agentId, { authorization: `Bearer ${old.token}` }), 401, "unauthorized");
	});

	it("a new object admits no token and mints none while Postgres cannot tell it the mirrored version", async () => {
		const agentId = uniqueAgentId();
		const token = await tokenFor(agentId);
		await setDatabase("down");
		try {
			const res = await connect(agentId, { authorization: `Bearer ${token}` });
			expect((await expectError(res, 503, "db_unavailable")).error.message).toMatch(/retry/);
			// Nor mint one: it would carry a version the object has not read yet.
			const mint = await api(`/v1/agents/${uniqueAgentId()}/token`, { method: "POST", json: {} });
			expect(mint.headers.get("retry-after")).toBe("5");
			await expectError(mint, 503, "agent_unavailable");
		} finally {
			await setDatabase("up");
		}
		const back = await AgentSocket.connect(agentId, { token });
		back.close();
	});
});

describe("browsers", () => {
	const credential = (secret: string) => `switchyard.v1, switchyard.auth.${b64url(secret)}`;

	it("take the credential in Sec-WebSocket-Protocol and are answered with switchyard.v1 only", async () => {
		const agentId = uniqueAgentId();
		const observer = await exports.default.fetch(`${BASE}/v1/agents/${agentId}/stream`, {
			headers: { upgrade: "websocket", "sec-websocket-protocol": credential(TEST_READ_KEY), origin: TEST_ALLOWED_ORIGIN },
		});
		expect(observer.status).toBe(101);
		expect(observer.headers.get("sec-websocket-protocol")).toBe("switchyard.v1");
		observer.webSocket?.accept();
		observer.webSocket?.close(1000);

		const token = await tokenFor(agentId);
		const agent = await connect(agentId, { "sec-websocket-protocol": credential(token), origin: TEST_ALLOWED_ORIGIN });
		expect(agent.status).toBe(101);
		expect(agent.headers.get("sec-websocket-protocol")).toBe("switchyard.v1");
		agent.webSocket?.accept();
		agent.webSocket?.close(1000);

		const wrong = await exports.default.fetch(`${BASE}/v1/agents/${agentId}/stream`, {
			headers: { upgrade: "websocket", "sec-websocket-protocol": credential("nope"), origin: TEST_ALLOWED_ORIGIN },
		});
		await expectError(wrong, 401, "unauthorized");
	});

	it("admit the worker's own origin (the console it serves) without configuring it", async () => {
		const agentId = uniqueAgentId();
		const res = await exports.default.fetch(`${BASE}/v1/agents/${agentId}/stream`, {
			headers: { upgrade: "websocket", "sec-websocket-protocol": credential(TEST_READ_KEY), origin: BASE },
		});
		expect(res.status).toBe(101);
		res.webSocket?.accept();
		res.webSocket?.close(1000);
		// Same host, another scheme or port, is another origin.
		for (const origin of ["https://switchyard.test", "http://switchyard.test:8080", "http://evil.switchyard.test"]) {
			const other = await exports.default.fetch(`${BASE}/v1/agents/${agentId}/stream`, {
				headers: { upgrade: "websocket", "sec-websocket-protocol": credential(TEST_READ_KEY), origin },
			});
			await expectError(other, 403, ErrorCode.ORIGIN_NOT_ALLOWED);
		}
	});

	it("refuse a page from an origin not in ALLOWED_ORIGINS (cross-site WebSocket hijacking)", async () => {
		const agentId = uniqueAgentId();
		for (const path of [`/v1/agents/${agentId}/stream`, `/v1/agents/${agentId}/connect`]) {
			const key = path.endsWith("stream") ? API_KEY : await tokenFor(agentId);
			const res = await exports.default.fetch(`${BASE}${path}`, {
				headers: { upgrade: "websocket", authorization: `Bearer ${key}`, origin: "https://evil.example" },
			});
			await expectError(res, 403, ErrorCode.ORIGIN_NOT_ALLOWED);
		}
		expect((await agentHub(env, agentId).inspect()).generation).toBe(0);
	});
});

describe("audit key ids", () => {
	it("name a key by an HMAC under the deployment's secret, not by a hash anyone can recompute", async () => {
		const key = "test-second-key";
		const { keyId } = await (await api("/v1/whoami", { key })).json<{ keyId: string }>();
		expect(keyId).toBe(await apiKeyId(key, env.AGENT_TOKEN_SECRET));
		const plain = [...new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(key)))]
			.map((b) => b.toString(16).padStart(2, "0"))
			.join("");
		expect(plain.includes(keyId.slice(4, 12))).toBe(false);
		// Another deployment's secret gives another id for the same key.
		expect(await apiKeyId(key, `${env.AGENT_TOKEN_SECRET}-elsewhere`)).not.toBe(keyId);
	});
});

describe("limits", () => {
	it("refuses an agent that connects too often with 429 and Retry-After, then serves it again", async () => {
		const agentId = uniqueAgentId();
		const token = (await signAgentToken(agentId, { current: env.AGENT_TOKEN_SECRET }, 3600)).token;
		let refused: Response | undefined;
		let accepted = 0;
		// A crash-looping agent; the bucket refills one every few seconds, so a slow loop may get a few more.
		for (let i = 0; i < CONNECT_BURST + 10 && !refused; i++) {
			const res = await exports.default.fetch(`${BASE}/v1/agents/${agentId}/connect`, {
				headers: { upgrade: "websocket", authorization: `Bearer ${token}` },
			});
			if (res.status === 101) {
				res.webSocket?.accept();
				res.webSocket?.close();
				accepted++;
				continue;
			}
			refused = res;
		}
		expect(accepted).toBeGreaterThanOrEqual(CONNECT_BURST);
		if (!refused) throw new Error("never refused");
		const retryAfter = Number(refused.headers.get("retry-after"));
		expect(retryAfter).toBeGreaterThan(0);
		expect(retryAfter).toBeLessThanOrEqual(Math.ceil(CONNECT_REFILL_MS / 1000));
		await expectError(refused, 429, ErrorCode.RATE_LIMITED);
		// Once the bucket has a connect again, the agent is served as usual.
		await new Promise((r) => setTimeout(r, retryAfter * 1000));
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "after_flapping" });
		expect((await agent.next("command")).id).toBe(cmd.id);
		agent.close();
	});

	it("closes a socket that sends a frame over 1 MiB with 1009, before parsing it", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		agent.send(`{"type":"ping","pad":"${"x".repeat(1024 * 1024)}"}`);
		expect((await agent.closed).code).toBe(CloseCode.MESSAGE_TOO_BIG);
		// The agent comes back and is served as usual.
		const again = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "after_big_frame" });
		expect((await again.next("command")).id).toBe(cmd.id);
		again.close();
	});

	it("answers frames over the rate with rate_limited errors, still takes acks and results, and closes a sender that ignores them with 4005", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "limited" });
		await agent.next("command");
		// The bucket refills while the object works through a burst, and on a loaded
		// runtime (every test file's objects share its one thread) a burst can take
		// seconds, so no number of frames empties it for sure. This object alone
		// gets 10 frames/s (bursts of 20, closed past 100 refusals in 10 s) on a
		// bucket whose clock stands still: the real limiter and the real code
		// path, without the race.
		await freezeFrameBucket(agentId, 10);
		const isLimited = (f: ServerFrame): f is Extract<ServerFrame, { type: "error" }> =>
			f.type === "error" && f.code === ErrorCode.RATE_LIMITED;
		// Empty the bucket with frames that cost the object almost nothing; then an
		// ack and a result between two outputs, all over budget.
		for (let i = 0; i < 30; i++) agent.send('{"type":"not_a_frame"}');
		agent.send({ type: "output", id: cmd.id, seq: 0, data: "." });
		agent.send({ type: "ack", id: cmd.id });
		agent.send({ type: "result", id: cmd.id, status: "completed" });
		agent.send({ type: "output", id: cmd.id, seq: 1, data: "." });
		await waitFor(() => agent.frames.filter(isLimited).length >= 2, "two rate_limited errors");
		expect(agent.frames.filter(isLimited).map((f) => f.id)).toEqual([cmd.id, cmd.id]);
		// Over budget, the result was still taken: the command is not run twice.
		await waitForStatus(cmd.id, "completed");
		expect(agent.frames.filter((f) => f.type === "error" && f.id === cmd.id && !isLimited(f))).toEqual([]);
		// A sender that keeps going regardless is closed.
		for (let i = 0; i < 300; i++) agent.send('{"type":"not_a_frame"}');
		expect((await agent.closed).code).toBe(CloseCode.RATE_LIMITED);
		// and may come back (4005 is not terminal).
		(await AgentSocket.connect(agentId)).close();
	});

	it("takes an ack over the budget only once: a sender repeating acks for a command it holds is closed with 4005", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "ack_flood" });
		await agent.next("command");
		await freezeFrameBucket(agentId, 10, { empty: true });
		// The first ack changes the command, so it is taken over budget and not held against the sender.
		agent.send({ type: "ack", id: cmd.id });
		await waitForStatus(cmd.id, "acknowledged");
		const isLimited = (f: ServerFrame) => f.type === "error" && f.code === ErrorCode.RATE_LIMITED;
		expect(agent.frames.filter(isLimited)).toEqual([]);
		// The same ack again changes nothing: refused, and a sender that keeps on is closed.
		for (let i = 0; i < 300; i++) agent.send({ type: "ack", id: cmd.id });
		expect((await agent.closed).code).toBe(CloseCode.RATE_LIMITED);
		expect(agent.frames.filter(isLimited).length).toBeGreaterThan(0);
	});

	it("counts characters as well as frames: a few huge frames are refused where many small ones would be", async () => {
		const agentId = uniqueAgentId();
		const agent = await AgentSocket.connect(agentId);
		const cmd = await enqueue(agentId, { action: "huge_output" });
		await agent.next("command");
		// 10 frames/s: bursts of 20 frames and of 1 MiB of characters (the largest frame always fits).
		await freezeFrameBucket(agentId, 10);
		const chunk = "h".repeat(60 * 1024);
		for (let seq = 0; seq < 20; seq++) agent.send({ type: "output", id: cmd.id, seq, data: chunk });
		// 17 frames of just over 60 KiB fit in 1 MiB; the 18th does not, though frame tokens remain.
		const limited = await waitFor(() => {
			const errors = agent.frames.filter((f) => f.type === "error" && f.code === ErrorCode.RATE_LIMITED);
			return errors.length >= 3 ? errors : undefined;
		}, "rate_limited errors for the frames past the character budget");
		expect(limited.map((f) => (f as { id?: string }).id)).toEqual([cmd.id, cmd.id, cmd.id]);
		agent.close();
	});

	it("answers enqueues over the per-key rate with 429, Retry-After and the error shape; other keys are not affected", async () => {
		const agentId = uniqueAgentId("limited");
		const key = "test-ratelimited-key";
		// The worker's own limiter, used up for this key the way 1,000 requests in 10 s would.
		// Its windows are fixed: if one rolls over between using it up and asking, use it up again.
		const keyId = await apiKeyId(key, env.AGENT_TOKEN_SECRET);
		let single: Response | undefined;
		for (let attempt = 0; attempt < 3 && single?.status !== 429; attempt++) {
			for (let i = 0; i < 3_000; i++) if (!(await env.ENQUEUE_LIMITER.limit({ key: keyId })).success) break;
			single = await api(`/v1/agents/${agentId}/commands`, { method: "POST", key, json: { action: "x", idempotencyKey: "limited" } });
		}
		if (!single) throw new Error("unreachable");
		expect(single.headers.get("retry-after")).toBe("10");
		await expectError(single, 429, ErrorCode.RATE_LIMITED);
		const batch = await api("/v1/commands/batch", { method: "POST", key, json: { commands: [{ agentId, action: "x" }] } });
		await expectError(batch, 429, ErrorCode.RATE_LIMITED);
		// Nothing was written for the refused requests (a rolled-over window may have let one idempotent row in).
		expect((await (await api(`/v1/agents/${agentId}/commands`)).json<{ items: unknown[] }>()).items.length).toBeLessThanOrEqual(1);
		// A malformed request is refused for what it is.
		await expectError(await api(`/v1/agents/${agentId}/commands`, { method: "POST", key, json: {} }), 400, "validation_failed");
		// Another key is not affected.
		expect((await api(`/v1/agents/${agentId}/commands`, { method: "POST", json: { action: "x" } })).status).toBe(201);
	});
});

describe("errors", () => {
	it("never carry a stack, SQL or a driver's words to the client", async () => {
		const { Hono } = await import("hono");
		const { onError } = await import("../../src/errors");
		const app = new Hono().get("/boom", () => {
			throw new Error('relation "agent_commands" violates constraint: select * from secrets where key = $1');
		});
		app.onError(onError);
		const res = await app.request("/boom");
		expect(res.status).toBe(500);
		const text = await res.text();
		expect(JSON.parse(text)).toEqual({ error: { code: "internal", message: "internal error" } });
		expect(text).not.toMatch(/select|relation|at |\.ts/);
	});
});
