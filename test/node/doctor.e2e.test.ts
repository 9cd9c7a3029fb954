/**
 * `switchyard doctor` against the real local stack, run as a user runs it
 * (the CLI as a subprocess): a deployment that works, and the ways one
 * does not (a wrong key, a read-only key, a wrong URL, Postgres down), each
 * with the line and the fix a user would see.
 */
import { type AddressInfo, connect, createServer, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type EmbeddedPostgres, startEmbeddedPostgres } from "../../src/dev/embedded-postgres.ts";
import { withNodePool } from "../../src/dev/migrate.ts";
import { READY_PROBE_MS } from "../../src/routes/health.ts";
import { SwitchyardClient } from "../../src/sdk/client.ts";
import { type LocalStack, startLocalStack } from "../helpers/node/local-stack.ts";
import { runCli } from "../helpers/node/cli.ts";
import { freePort } from "../helpers/node/processes.ts";

const READ_KEY = `sk_read_doctor_${"r".repeat(32)}`;

function doctor(stack: LocalStack, args: string[] = []) {
	return runCli(stack, ["doctor", ...args]);
}

/** The line doctor printed for a step. */
function line(stdout: string, step: string): string {
	return stdout.split("\n").find((l) => new RegExp(`^[✓✗-] ${step}\\s`).test(l)) ?? `(no line for ${step} in:\n${stdout})`;
}

describe("against a working stack", () => {
	let stack: LocalStack;
	beforeAll(async () => {
		stack = await startLocalStack({ SWITCHYARD_VAR_READ_API_KEYS: READ_KEY });
	});
	afterAll(async () => {
		await stack?.stop();
	});

	it("passes every step, one line each, and leaves the temporary agent revoked and offline", async () => {
		const run = await doctor(stack);
		expect(run.code, run.stdout + run.stderr).toBe(0);
		for (const step of ["reachable", "database", "api key", "migrations", "agent token", "agent connects", "command round trip", "cleanup"]) {
			expect(line(run.stdout, step)).toMatch(new RegExp(`^✓ ${step}\\s+.* \\(\\d+ ms\\)$`));
		}
		expect(line(run.stdout, "api key")).toContain("a write key");
		expect(line(run.stdout, "command round trip")).toMatch(/pending → .*completed, result read back/);
		expect(line(run.stdout, "cleanup")).toMatch(/revoked doctor-[0-9a-f]{8}'s tokens; left behind: its agent record .* the command it ran/);
		expect(run.stdout).toContain("all checks passed");

		const agentId = /doctor-[0-9a-f]{8}/.exec(run.stdout)?.[0] ?? "";
		const client = new SwitchyardClient({ baseUrl: stack.base, apiKey: stack.apiKey });
		const agent = await client.agent(agentId);
		expect(agent).toMatchObject({ online: false, commands: { completed: 1 } });
	});

	it("--json prints every step for a script", async () => {
		const run = await doctor(stack, ["--json"]);
		expect(run.code).toBe(0);
		const body = JSON.parse(run.stdout) as { ok: boolean; steps: { step: string; status: string }[] };
		expect(body.ok).toBe(true);
		expect(body.steps.map((s) => s.status)).toEqual(Array(8).fill("ok"));
	});

	it("a wrong key: the key step fails naming API_KEYS, the steps after it are skipped, exit 1", async () => {
		const run = await doctor(stack, ["--api-key", "wrong-key"]);
		expect(run.code).toBe(1);
		expect(line(run.stdout, "reachable")).toMatch(/^✓/);
		expect(line(run.stdout, "database")).toMatch(/^✓/);
		expect(run.stdout).toMatch(/✗ api key\s+the key from --api-key was refused \(401 unauthorized\) \(\d+ ms\)\n {4}fix: use a key listed in the worker's API_KEYS secret/);
		expect(line(run.stdout, "migrations")).toBe("- migrations         skipped: needs api key");
		expect(line(run.stdout, "agent token")).toBe("- agent token        skipped: needs api key, migrations");
		expect(line(run.stdout, "command round trip")).toMatch(/^- command round trip\s+skipped: needs agent connects$/);
		expect(line(run.stdout, "cleanup")).toMatch(/^- cleanup\s+skipped/);
		expect(run.stdout).toContain("some checks failed");
	});

	it("a read-only key: accepted, but doctor says it needs a write key", async () => {
		const run = await doctor(stack, ["--api-key", READ_KEY]);
		expect(run.code).toBe(1);
		expect(run.stdout).toMatch(/✗ api key\s+the key from --api-key is read-only .*\n {4}fix: .*pass a key from API_KEYS/);
	});

	it("a URL nothing answers: the first step fails saying so, every other step is skipped", async () => {
		const run = await doctor(stack, ["--url", `http://127.0.0.1:${await freePort()}`]);
		expect(run.code).toBe(1);
		expect(run.stdout).toMatch(/✗ reachable\s+cannot reach http:\/\/127\.0\.0\.1:\d+: fetch failed \(ECONNREFUSED\) \(\d+ ms\)\n {4}fix: check the URL \(--url or SWITCHYARD_URL/);
		expect(run.stdout.split("\n").filter((l) => l.startsWith("- "))).toHaveLength(7);
	});
});

describe("against a stack whose Postgres breaks", () => {
	let stack: LocalStack;
	let pg: EmbeddedPostgres;
	let link: { port: number; close(): Promise<void> };
	beforeAll(async () => {
		// Postgres behind a link this test can cut: the stack starts (and migrates) through it,
		// then loses it. Its own in-memory database, so no other suite's is touched.
		pg = await startEmbeddedPostgres({});
		const target = new URL(pg.url);
		link = await tcpLink(Number(target.port));
		target.port = String(link.port);
		stack = await startLocalStack({ DATABASE_URL: target.toString() });
	});
	afterAll(async () => {
		await stack?.stop();
		await link?.close();
		await pg?.stop();
	});

	it("a table the worker reads is missing: the migrations step names db:migrate", async () => {
		await withNodePool(pg.url, (pool) => pool.query("alter table agents rename to agents_gone"));
		try {
			const run = await doctor(stack);
			expect(run.code).toBe(1);
			expect(line(run.stdout, "database")).toMatch(/^✓/);
			expect(run.stdout).toMatch(/✗ migrations\s+GET \/v1\/agents answered 503 db_not_migrated \(\d+ ms\)\n {4}fix: the tables are missing or older than this worker: apply the migrations with `DATABASE_URL='postgres:\/\/…' npm run db:migrate`/);
			expect(line(run.stdout, "agent token")).toMatch(/^- agent token\s+skipped: needs migrations$/);
		} finally {
			await withNodePool(pg.url, (pool) => pool.query("alter table agents_gone rename to agents"));
		}
	});

	it("the database step fails naming the DATABASE_URL secret; the steps that need Postgres are skipped", async () => {
		await link.close();
		// /readyz reuses a probe for up to READY_PROBE_MS: wait until the last good one is stale.
		await new Promise((r) => setTimeout(r, READY_PROBE_MS + 500));
		const run = await doctor(stack);
		expect(run.code).toBe(1);
		expect(line(run.stdout, "reachable")).toMatch(/^✓/);
		expect(run.stdout).toMatch(/✗ database\s+GET \/readyz answered 503: Postgres did not answer the worker \(\d+ ms\)\n {4}fix: the worker cannot reach Postgres: check the DATABASE_URL secret/);
		expect(line(run.stdout, "api key")).toMatch(/^✓/);
		expect(line(run.stdout, "migrations")).toMatch(/^- migrations\s+skipped: needs database$/);
		expect(line(run.stdout, "agent token")).toMatch(/^- agent token\s+skipped: needs migrations$/);
	});
});

/** A TCP link to 127.0.0.1:`to`; `close()` cuts every connection through it and refuses new ones. */
async function tcpLink(to: number): Promise<{ port: number; close(): Promise<void> }> {
	const sockets = new Set<Socket>();
	const server = createServer((inbound) => {
		const outbound = connect(to, "127.0.0.1");
		for (const s of [inbound, outbound]) {
			sockets.add(s);
			s.on("close", () => sockets.delete(s));
			s.on("error", () => {});
		}
		inbound.pipe(outbound).pipe(inbound);
	});
	await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
	let closed: Promise<void> | undefined;
	return {
		port: (server.address() as AddressInfo).port,
		close: () => {
			closed ??= new Promise<void>((r) => {
				server.close(() => r());
				for (const s of sockets) s.destroy();
			});
			return closed;
		},
	};
}
