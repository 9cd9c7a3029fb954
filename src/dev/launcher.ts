/**
 * `npm run dev`: the whole product on this machine with nothing installed
 * beyond npm packages. Embedded Postgres (or DATABASE_URL), the relay that
 * stands in for Neon's WebSocket and HTTP endpoints in front of a plain
 * Postgres, migrations, the console's build (dist/console, served as static
 * assets), then `wrangler dev`.
 * Ctrl-C or SIGTERM stops everything it started, workerd included.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { buildConsole } from "./build-console.ts";
import { ensureDevVars } from "./dev-vars.ts";
import { type EmbeddedPostgres, startEmbeddedPostgres } from "./embedded-postgres.ts";
import { runMigrations } from "./migrate.ts";
import { loopbackOnly, type Relay, startRelay } from "./relay.ts";
import { devtoolsOn, wranglerEnv } from "./wrangler-env.ts";

const root = process.cwd();
const port = Number(process.env.PORT ?? 8787);
const stateDir = resolve(root, process.env.SWITCHYARD_STATE_DIR ?? ".switchyard");
const STOP_GRACE_MS = 5_000;

let wrangler: ChildProcess | undefined;
let relay: Relay | undefined;
let embedded: EmbeddedPostgres | undefined;
let stopping = false;

function say(line: string): void {
	process.stdout.write(`[switchyard] ${line}\n`);
}

async function main(): Promise<void> {
	if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`PORT must be 1-65535, got ${process.env.PORT}`);
	mkdirSync(stateDir, { recursive: true });
	const secrets = ensureDevVars(join(root, ".dev.vars"));
	if (secrets.generated.length) say(`wrote ${secrets.generated.join(" and ")} to .dev.vars`);

	let databaseUrl = process.env.DATABASE_URL;
	if (databaseUrl) {
		say(`database: DATABASE_URL (${new URL(databaseUrl).host})`);
	} else {
		embedded = await startEmbeddedPostgres({ dataDir: join(stateDir, "pgdata") });
		databaseUrl = embedded.url;
		say(`database: embedded Postgres (PGlite) on 127.0.0.1:${embedded.port}, data in ${join(stateDir, "pgdata")}`);
	}

	const db = new URL(databaseUrl);
	let proxy = "";
	if (loopbackOnly(db.hostname)) {
		const target = { host: db.hostname, port: Number(db.port || 5432) };
		relay = await startRelay({ allow: (h, p) => h === target.host && p === target.port });
		proxy = relay.proxy;
	}

	await runMigrations(databaseUrl);
	say("migrations applied");
	await buildConsole({ quiet: true });
	say("console built into dist/console");

	const wranglerBin = join(dirname(createRequire(import.meta.url).resolve("wrangler/package.json")), "bin", "wrangler.js");
	const args = [
		wranglerBin,
		"dev",
		"--ip",
		"127.0.0.1",
		"--port",
		String(port),
		"--persist-to",
		join(stateDir, "wrangler"),
		"--show-interactive-dev-session=false",
		"--var",
		`DATABASE_URL:${databaseUrl}`,
		"--var",
		`NEON_WS_PROXY:${proxy}`,
		...extraVars(),
	];
	const env = wranglerEnv(process.env);
	say(
		env.X_LOCAL_OBSERVABILITY === "true"
			? "wrangler local observability: on (SWITCHYARD_LOCAL_OBSERVABILITY=1)"
			: "wrangler local observability: off (SWITCHYARD_LOCAL_OBSERVABILITY=1 turns it on)",
	);
	say(devtoolsOn(env) ? "wrangler DevTools session: on" : "wrangler DevTools session: off (SWITCHYARD_DEVTOOLS=1 turns it on)");
	// Its own process group, so stopping it reaches workerd too.
	wrangler = spawn(process.execPath, args, { cwd: root, env, stdio: ["ignore", "pipe", "pipe"], detached: true });
	wrangler.stdout?.on("data", (d: Buffer) => process.stdout.write(d));
	wrangler.stderr?.on("data", (d: Buffer) => process.stderr.write(d));
	wrangler.on("exit", (code, signal) => {
		if (!stopping) {
			say(`wrangler dev exited (${signal ?? code}); stopping`);
			void shutdown(code ?? 1);
		}
	});

	const base = `http://127.0.0.1:${port}`;
	await waitForReady(base);
	say(`ready at ${base}`);
	say(`console: ${base}/ (sign in with the API key below)`);
	say(`agent socket: ws://127.0.0.1:${port}/v1/agents/<agentId>/connect`);
	say(`API key: ${secrets.apiKey}`);
	say("enqueue a command:");
	process.stdout.write(
		`  curl -s -X POST ${base}/v1/agents/demo/commands -H "Authorization: Bearer ${secrets.apiKey}" -H "Content-Type: application/json" -d '{"action":"echo","payload":{"text":"hello"}}'\n`,
	);
	say("mint an agent token:");
	process.stdout.write(
		`  curl -s -X POST ${base}/v1/agents/demo/token -H "Authorization: Bearer ${secrets.apiKey}"\n`,
	);
	say("Ctrl-C stops everything.");
}

/**
 * `SWITCHYARD_VAR_<NAME>=value` in the environment becomes `--var NAME:value`,
 * so a harness (the benchmark, a test) can tune a worker var without editing
 * wrangler.toml.
 */
function extraVars(): string[] {
	const prefix = "SWITCHYARD_VAR_";
	return Object.entries(process.env).flatMap(([key, value]) =>
		key.startsWith(prefix) && key.length > prefix.length && value !== undefined
			? ["--var", `${key.slice(prefix.length)}:${value}`]
			: [],
	);
}

/** Until the worker answers and reaches Postgres (`/readyz`; `/healthz` says only that it runs). */
async function waitForReady(base: string): Promise<void> {
	const deadline = Date.now() + 90_000;
	while (Date.now() < deadline) {
		if (stopping) return;
		try {
			const res = await fetch(`${base}/readyz`);
			if (res.ok) return;
		} catch {
			// not listening yet
		}
		await new Promise((r) => setTimeout(r, 250));
	}
	throw new Error(`wrangler dev did not become ready at ${base}/readyz within 90 s`);
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
	if (child.pid === undefined) return;
	try {
		process.kill(-child.pid, signal);
	} catch {
		// group already gone
	}
}

async function shutdown(code: number): Promise<void> {
	if (stopping) return;
	stopping = true;
	if (wrangler && wrangler.exitCode === null && wrangler.signalCode === null) {
		const exited = new Promise<void>((r) => wrangler?.once("exit", () => r()));
		killGroup(wrangler, "SIGTERM");
		const timer = setTimeout(() => wrangler && killGroup(wrangler, "SIGKILL"), STOP_GRACE_MS);
		await exited;
		clearTimeout(timer);
	}
	// wrangler can exit before its workerd child does; the group kill catches stragglers.
	if (wrangler) killGroup(wrangler, "SIGKILL");
	await relay?.close().catch(() => {});
	await embedded?.stop().catch(() => {});
	say("stopped");
	process.exit(code);
}

process.on("SIGINT", () => void shutdown(0));
process.on("SIGTERM", () => void shutdown(0));
process.on("exit", () => {
	if (wrangler) killGroup(wrangler, "SIGKILL");
});

main().catch((err: unknown) => {
	process.stderr.write(`[switchyard] failed to start: ${err instanceof Error ? err.message : String(err)}\n`);
	void shutdown(1);
});
