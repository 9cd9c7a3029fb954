/**
 * `switchyard doctor [--url URL]`: checks a deployment end to end the way a
 * user would after `wrangler deploy`: the worker answers, Postgres answers,
 * the key is accepted, a token is minted for a temporary agent, that agent
 * connects with the SDK, a command goes round, and the agent is cleaned up.
 * One line per step; a failed step says what failed and how to fix it, and
 * the steps that needed it are shown as skipped.
 */
import { randomBytes } from "node:crypto";
import { Agent } from "../sdk/agent.ts";
import { type ApiCommand, SwitchyardApiError, SwitchyardClient } from "../sdk/client.ts";
import { type CliConfig, DEFAULT_URL, resolveConfig, UsageError } from "./config.ts";

export type StepName = "reachable" | "database" | "api key" | "migrations" | "agent token" | "agent connects" | "command round trip" | "cleanup";

export interface StepResult {
	step: StepName;
	status: "ok" | "failed" | "skipped";
	ms: number;
	detail: string;
	/** How to fix a failed step. */
	fix?: string;
}

/** A step's failure: what went wrong, and what the user should do about it. */
class StepFailed extends Error {
	constructor(
		message: string,
		readonly fix: string,
	) {
		super(message);
	}
}

/** One HTTP call may take this long before the step fails (a host that never answers). */
const REQUEST_TIMEOUT_MS = 10_000;
/** The temporary agent must be connected (welcome received) within this. */
const CONNECT_TIMEOUT_MS = 15_000;
/** The command must be completed and read back within this. */
const ROUND_TRIP_TIMEOUT_MS = 20_000;
const ACTION = "doctor.echo";

const TAIL = "`npx wrangler tail` shows the worker's own log line for it";
const FIX_DATABASE =
	"the worker cannot reach Postgres: check the DATABASE_URL secret (`npx wrangler secret put DATABASE_URL`, Neon's pooled `-pooler` connection string, or your Hyperdrive binding's origin) and that the database is running; " +
	`${TAIL} (health.db_unreachable)`;
const FIX_MIGRATIONS =
	"the tables are missing or older than this worker: apply the migrations with `DATABASE_URL='postgres://…' npm run db:migrate`, using the same database as the DATABASE_URL secret; " +
	`${TAIL} (the SQL error)`;

export interface DoctorIo {
	out(line: string): void;
}

/** Runs every step and returns the exit code: 0 when all passed, 1 otherwise. */
export async function doctor(flags: { url?: string; "api-key"?: string; json?: boolean }, io: DoctorIo): Promise<number> {
	const steps = await runDoctor(flags, (r) => {
		if (!flags.json) io.out(formatStep(r));
	});
	const ok = steps.every((s) => s.status === "ok");
	if (flags.json) io.out(JSON.stringify({ ok, steps }, null, 2));
	else io.out(ok ? "all checks passed" : "some checks failed: see the lines marked ✗ above");
	return ok ? 0 : 1;
}

export function formatStep(r: StepResult): string {
	const mark = r.status === "ok" ? "✓" : r.status === "failed" ? "✗" : "-";
	const time = r.status === "skipped" ? "" : ` (${r.ms} ms)`;
	const line = `${mark} ${r.step.padEnd(18)} ${r.detail}${time}`;
	return r.fix ? `${line}\n    fix: ${r.fix}` : line;
}

export async function runDoctor(flags: { url?: string; "api-key"?: string }, report: (r: StepResult) => void): Promise<StepResult[]> {
	const results: StepResult[] = [];
	const passed = new Set<StepName>();
	let config: CliConfig | undefined;
	let keyProblem: UsageError | undefined;
	try {
		config = resolveConfig(flags);
	} catch (err) {
		if (!(err instanceof UsageError)) throw err;
		keyProblem = err;
	}
	const base = (flags.url ?? config?.url ?? process.env.SWITCHYARD_URL ?? DEFAULT_URL).replace(/\/+$/, "");
	const timedFetch: typeof fetch = (input, init) => fetch(input, { ...init, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
	const client = config ? new SwitchyardClient({ baseUrl: base, apiKey: config.apiKey, fetch: timedFetch }) : undefined;
	const agentId = `doctor-${randomBytes(4).toString("hex")}`;
	let token: string | undefined;
	let agent: Agent | undefined;
	let ran = false;

	const step = async (name: StepName, needs: StepName[], fn: () => Promise<string>): Promise<void> => {
		const missing = needs.filter((n) => !passed.has(n));
		let r: StepResult;
		if (missing.length > 0) {
			r = { step: name, status: "skipped", ms: 0, detail: `skipped: needs ${missing.join(", ")}` };
		} else {
			const started = performance.now();
			try {
				const detail = await fn();
				passed.add(name);
				r = { step: name, status: "ok", ms: Math.round(performance.now() - started), detail };
			} catch (err) {
				const ms = Math.round(performance.now() - started);
				r =
					err instanceof StepFailed
						? { step: name, status: "failed", ms, detail: err.message, fix: err.fix }
						: { step: name, status: "failed", ms, detail: describe(err), fix: unexpectedFix(err, base) };
			}
		}
		results.push(r);
		report(r);
	};

	await step("reachable", [], async () => {
		const res = await timedFetch(`${base}/healthz`).catch((err: unknown) => {
			throw new StepFailed(`cannot reach ${base}: ${describe(err)}`, unexpectedFix(err, base));
		});
		const body = (await res.json().catch(() => null)) as { ok?: unknown } | null;
		if (res.status !== 200 || body?.ok !== true) {
			throw new StepFailed(
				`GET ${base}/healthz answered HTTP ${res.status}, not Switchyard's {"ok":true}`,
				"the URL reaches something that is not the Switchyard worker: check the host (the one `wrangler deploy` printed) and that its route (workers.dev, or `routes` in wrangler.toml) serves the worker",
			);
		}
		return `${base} answers (GET /healthz)`;
	});

	await step("database", ["reachable"], async () => {
		const res = await timedFetch(`${base}/readyz`);
		const body = (await res.json().catch(() => null)) as { db?: unknown } | null;
		if (res.status === 503) throw new StepFailed("GET /readyz answered 503: Postgres did not answer the worker", FIX_DATABASE);
		if (res.status !== 200 || body?.db !== "ok") throw new StepFailed(`GET /readyz answered HTTP ${res.status}`, FIX_DATABASE);
		return "Postgres answered (GET /readyz)";
	});

	await step("api key", ["reachable"], async () => {
		if (!client || !config) {
			throw new StepFailed(keyProblem?.message ?? "no API key", "pass --api-key or set SWITCHYARD_API_KEY to a key from the worker's API_KEYS secret");
		}
		const who = await client.whoami().catch((err: unknown) => {
			if (err instanceof SwitchyardApiError && err.status === 401) {
				throw new StepFailed(
					`the key from ${config?.keySource} was refused (401 unauthorized)`,
					"use a key listed in the worker's API_KEYS secret (`npx wrangler secret put API_KEYS`, comma-separated); pass it with --api-key or SWITCHYARD_API_KEY",
				);
			}
			throw err;
		});
		if (who.scope !== "write") {
			throw new StepFailed(
				`the key from ${config.keySource} is read-only (${who.keyId}, from READ_API_KEYS)`,
				"doctor mints a token and sends a command: pass a key from API_KEYS with --api-key or SWITCHYARD_API_KEY",
			);
		}
		return `accepted: a write key (${who.keyId}, from ${config.keySource})`;
	});

	await step("migrations", ["database", "api key"], async () => {
		await client?.agents({ limit: "1" }).catch((err: unknown) => {
			if (err instanceof SwitchyardApiError && err.code === "db_unavailable") throw new StepFailed("GET /v1/agents answered 503 db_unavailable", FIX_DATABASE);
			if (err instanceof SwitchyardApiError && err.code === "db_not_migrated") throw new StepFailed("GET /v1/agents answered 503 db_not_migrated", FIX_MIGRATIONS);
			if (err instanceof SwitchyardApiError && err.status >= 500) {
				throw new StepFailed(`GET /v1/agents failed: HTTP ${err.status} ${err.code}`, FIX_MIGRATIONS);
			}
			throw err;
		});
		return "the agents table answers (GET /v1/agents)";
	});

	// A new agent's object reads its token version from the agents table before minting (revocations outlive it).
	await step("agent token", ["api key", "migrations"], async () => {
		const minted = await client?.token(agentId, 600).catch((err: unknown) => {
			if (err instanceof SwitchyardApiError && err.status >= 500) {
				throw new StepFailed(
					`POST /v1/agents/${agentId}/token failed: HTTP ${err.status} ${err.code}: ${err.message}`,
					err.code === "agent_unavailable"
						? `the agent's Durable Object could not read its token version from Postgres: ${FIX_DATABASE}`
						: "check that AGENT_TOKEN_SECRET is set with at least 32 characters (`npx wrangler secret put AGENT_TOKEN_SECRET`, e.g. `openssl rand -hex 32`) and that wrangler.toml binds the AgentHub Durable Object as AGENT_HUB; " +
								`${TAIL}`,
				);
			}
			throw err;
		});
		token = minted?.token;
		return `minted for the temporary agent ${agentId}`;
	});

	await step("agent connects", ["agent token"], async () => {
		const a = new Agent({ url: base, agentId, token: token ?? "", backoff: { initialMs: 250, maxMs: 1_000 } });
		agent = a;
		a.handle(ACTION, (payload) => {
			ran = true;
			return payload;
		});
		let lastError = "";
		a.on("error", (e) => {
			lastError = e.error.message;
		});
		a.on("closed", (e) => {
			lastError ||= `socket closed (${e.code}${e.reason ? ` ${e.reason}` : ""})`;
		});
		a.start();
		const timeout = new Promise<"timeout">((r) => setTimeout(() => r("timeout"), CONNECT_TIMEOUT_MS).unref());
		const outcome = await Promise.race([a.whenOpen().then(() => "open" as const, (err: Error) => err), timeout]);
		if (outcome === "open") return `${agentId} connected over WebSocket with the SDK`;
		const reason = outcome === "timeout" ? `no welcome within ${CONNECT_TIMEOUT_MS / 1000} s${lastError ? ` (last: ${lastError})` : ""}` : outcome.message;
		throw new StepFailed(`the temporary agent could not connect: ${reason}`, connectFix(reason, base, agentId));
	});

	await step("command round trip", ["agent connects"], async () => {
		const nonce = randomBytes(8).toString("hex");
		const sent = await client?.enqueue(agentId, { action: ACTION, payload: { nonce }, ttlSeconds: 60, timeoutSeconds: 30 }).catch((err: unknown) => {
			if (err instanceof SwitchyardApiError && err.code === "db_unavailable") throw new StepFailed("the enqueue answered 503 db_unavailable", FIX_DATABASE);
			if (err instanceof SwitchyardApiError && err.status >= 500) throw new StepFailed(`the enqueue failed: HTTP ${err.status} ${err.code}`, FIX_MIGRATIONS);
			throw err;
		});
		if (!client || !sent) throw new Error("unreachable: no client");
		const seen: string[] = [sent.status];
		let last: ApiCommand = sent;
		const deadline = Date.now() + ROUND_TRIP_TIMEOUT_MS;
		while (!["completed", "failed", "cancelled", "expired"].includes(last.status) && Date.now() < deadline) {
			await new Promise((r) => setTimeout(r, 150));
			last = await client.get(sent.id);
			if (seen.at(-1) !== last.status) seen.push(last.status);
		}
		const path = seen.join(" → ");
		if (last.status === "completed") {
			const echoed = (last.result as { nonce?: unknown } | null)?.nonce;
			if (echoed !== nonce) {
				throw new StepFailed(`${path}, but the result read back was ${JSON.stringify(last.result)}`, "the stored result is not what the agent sent: report this as a bug");
			}
			return `${path}, result read back (command ${sent.id})`;
		}
		const why = last.blockedReason ? ` (blockedReason: ${last.blockedReason})` : "";
		if (last.status === "pending" && !ran) {
			throw new StepFailed(
				`${path}: still pending after ${ROUND_TRIP_TIMEOUT_MS / 1000} s${why}; the agent never received it`,
				"the worker wrote the command but the agent's Durable Object did not send it: check `[[durable_objects.bindings]]` (AGENT_HUB → AgentHub) and the `[[migrations]]` entry (`new_sqlite_classes = [\"AgentHub\"]`) in wrangler.toml, then redeploy; " +
					`${TAIL} (command.forward_failed)`,
			);
		}
		if (ran && !["failed", "cancelled", "expired"].includes(last.status)) {
			throw new StepFailed(
				`${path}: the agent ran it and reported its result, but the API still shows ${last.status}`,
				"the agent's Durable Object cannot write back to Postgres (it connects over Neon's WebSocket, unlike the HTTP API): check the DATABASE_URL secret points at Neon's pooled host; " +
					`${TAIL} (outbox.flush_failed)`,
			);
		}
		throw new StepFailed(
			`${path}${why}${last.error ? `: ${last.error}` : ""}`,
			`see \`switchyard command get ${sent.id}\` and its events (GET /v1/commands/${sent.id}/events) for why`,
		);
	});

	await step("cleanup", ["agent token"], async () => {
		await agent?.stop({ graceMs: 1_000 });
		await client?.revoke(agentId).catch((err: unknown) => {
			throw new StepFailed(
				`could not revoke ${agentId}'s tokens: ${describe(err)}`,
				`revoke them later with \`switchyard agent revoke ${agentId}\` (the token expires in 10 minutes anyway)`,
			);
		});
		return `revoked ${agentId}'s tokens; left behind: its agent record (offline, in \`agent list\`) and the command it ran, kept RETENTION_DAYS (default 30) like any other`;
	});

	// A step that failed before cleanup ran (or skipped it) must not leave the SDK reconnecting.
	await agent?.stop({ graceMs: 0 });
	return results;
}

function describe(err: unknown): string {
	if (err instanceof SwitchyardApiError) return `HTTP ${err.status} ${err.code}: ${err.message}`;
	const e = err as { name?: string; message?: string; cause?: { code?: string; message?: string } };
	if (e.name === "TimeoutError") return `no answer within ${REQUEST_TIMEOUT_MS / 1000} s`;
	const cause = e.cause?.code ?? e.cause?.message;
	return `${e.message ?? String(err)}${cause ? ` (${cause})` : ""}`;
}

function unexpectedFix(err: unknown, base: string): string {
	if (err instanceof SwitchyardApiError) {
		return err.status === 401
			? "the key was refused: use a key from the worker's API_KEYS secret"
			: `the worker answered an error; ${TAIL}`;
	}
	const code = (err as { cause?: { code?: string } }).cause?.code ?? "";
	if (code === "ENOTFOUND" || code === "EAI_AGAIN") return `no such host: check the URL (--url or SWITCHYARD_URL; \`wrangler deploy\` prints it, e.g. https://switchyard.<subdomain>.workers.dev)`;
	if (/^https:/.test(base) && /CERT|SSL|TLS/.test(code)) return "the TLS handshake failed: check the host name matches the worker's route or custom domain";
	return `check the URL (--url or SWITCHYARD_URL; \`wrangler deploy\` prints it, e.g. https://switchyard.<subdomain>.workers.dev) and that the worker is deployed (\`npx wrangler deployments list\`); locally, that \`npm run dev\` is running`;
}

function connectFix(reason: string, base: string, agentId: string): string {
	const url = `${base.replace(/^http/, "ws")}/v1/agents/${agentId}/connect`;
	if (/HTTP 401/.test(reason)) {
		return "the worker refused the token it had just minted: AGENT_TOKEN_SECRET (or AGENT_TOKEN_SECRET_PREVIOUS) changed between the two calls, or several deployments answer this URL with different secrets";
	}
	if (/HTTP 503/.test(reason)) return `the agent's Durable Object could not read its token version from Postgres: ${FIX_DATABASE}`;
	// Node 20 has no WebSocket client: the deployment is not at fault.
	if (/no WebSocket on this platform/.test(reason)) {
		return `this Node (${process.version}) has no WebSocket client; the CLI needs Node 22 or newer: run \`npx switchyard doctor\` in the checkout (it brings Node 22) or upgrade Node`;
	}
	return (
		`the WebSocket upgrade to ${url} did not complete: check that nothing in front of the worker (a proxy, a custom domain's settings, a route that does not cover /v1/agents/*/connect) drops WebSocket upgrades, ` +
		"and that wrangler.toml binds AGENT_HUB with its `[[migrations]]` entry; " +
		`${TAIL} (agent.connected when it gets through)`
	);
}
