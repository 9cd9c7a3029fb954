/**
 * The `switchyard` CLI. Grammar: `switchyard <noun> <verb> [args] [flags]`.
 * Exit codes: 0 ok; 1 the command ended failed/cancelled/expired (--wait,
 * watch); 2 usage error; 3 the API refused (auth, validation, not found,
 * conflict); 4 the server could not be reached or failed (network, 5xx).
 */
import { parseArgs } from "node:util";
import { SwitchyardApiError, SwitchyardClient } from "../sdk/client.ts";
import { commandFields, int, need } from "./args.ts";
import { resolveConfig, UsageError } from "./config.ts";
import { demoAgent } from "./demo-agent.ts";
import { FLEET_AGENT_HELP, FLEET_AGENT_OPTIONS, fleetAgents } from "./fleet-agents.ts";
import { FLEET_COMMAND_HELP, FLEET_COMMAND_OPTIONS, fleetCommand } from "./fleet-commands.ts";
import { doctor } from "./doctor.ts";
import { details, Progress, table } from "./output.ts";

export const EXIT = { OK: 0, COMMAND_FAILED: 1, USAGE: 2, API: 3, UNREACHABLE: 4 } as const;

const HELP = `switchyard: operate a Switchyard control plane

usage: switchyard <noun> <verb> [arguments] [flags]

  command send <agent> <action> [--payload JSON] [--priority 0-9] [--session ID]
                                [--ttl S] [--timeout S] [--idempotency-key K] [--wait]
  command get <id>
  command list <agent> [--status S] [--limit N]
  command cancel <id>
  command watch <id>              follow until it is finished
${FLEET_AGENT_HELP}  agent get <id>
  agent token <id> [--ttl S]
  agent revoke <id>               revoke its tokens and close its socket
  agent run <id> [--concurrency N] [--allow-exec]
                                  run a demo agent (echo, sleep, lines, fail; exec with --allow-exec)
${FLEET_COMMAND_HELP}
  doctor                          check a deployment end to end (exit 1 if a check fails)

flags: --url URL (or SWITCHYARD_URL; default http://127.0.0.1:8787)
       --api-key KEY (or SWITCHYARD_API_KEY; default: API_KEYS in ./.dev.vars)
       --json  machine-readable output

exit codes: 0 ok, 1 command ended failed/cancelled/expired, 2 usage, 3 API refused, 4 unreachable/server error
`;

const OPTIONS = {
	url: { type: "string" },
	"api-key": { type: "string" },
	json: { type: "boolean", default: false },
	help: { type: "boolean", short: "h", default: false },
	payload: { type: "string" },
	priority: { type: "string" },
	session: { type: "string" },
	ttl: { type: "string" },
	timeout: { type: "string" },
	"idempotency-key": { type: "string" },
	wait: { type: "boolean", default: false },
	status: { type: "string" },
	limit: { type: "string" },
	concurrency: { type: "string" },
	"allow-exec": { type: "boolean", default: false },
	...FLEET_AGENT_OPTIONS,
	...FLEET_COMMAND_OPTIONS,
} as const;

type Flags = ReturnType<typeof parse>["values"];

function parse(argv: string[]) {
	return parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
}

const TERMINAL_BAD = new Set(["failed", "cancelled", "expired"]);
let keySource = "";

export async function main(argv: string[], io = { out: (s: string) => void process.stdout.write(`${s}\n`) }): Promise<number> {
	let flags: Flags;
	let positionals: string[];
	try {
		({ values: flags, positionals } = parse(argv));
	} catch (err) {
		process.stderr.write(`switchyard: ${(err as Error).message}\n${HELP}`);
		return EXIT.USAGE;
	}
	if (flags.help || positionals.length === 0) {
		io.out(HELP);
		return flags.help ? EXIT.OK : EXIT.USAGE;
	}
	if (positionals[0] === "doctor") return doctor(flags, io);
	const print = (value: unknown, human: () => string) => io.out(flags.json ? JSON.stringify(value, null, 2) : human());
	try {
		const config = resolveConfig(flags);
		keySource = config.keySource;
		const client = new SwitchyardClient({ baseUrl: config.url, apiKey: config.apiKey });
		const [noun, verb] = positionals;
		const follow = async (id: string) => {
			const progress = new Progress();
			const final = await client
				.wait(id, {
					timeoutMs: 24 * 3600_000,
					onUpdate: (c) => progress.update(`${c.id} ${c.status}${c.blockedReason ? ` (${c.blockedReason})` : ""}`),
				})
				.finally(() => progress.done());
			print(final, () => details(final));
			return TERMINAL_BAD.has(final.status) ? EXIT.COMMAND_FAILED : EXIT.OK;
		};

		const fleet = await fleetAgents({ client, positionals, flags, print });
		if (fleet !== undefined) return fleet;
		switch (`${noun} ${verb}`) {
			case "command send": {
				const agentId = need(positionals, 2, "<agent>");
				const action = need(positionals, 3, "<action>");
				const cmd = await client.enqueue(agentId, commandFields(action, flags));
				if (flags.wait) return follow(cmd.id);
				print(cmd, () => `${cmd.id} ${cmd.status}${cmd.blockedReason ? ` (${cmd.blockedReason})` : ""}`);
				return EXIT.OK;
			}
			case "command get": {
				const cmd = await client.get(need(positionals, 2, "<id>"));
				print(cmd, () => details(cmd));
				return EXIT.OK;
			}
			case "command list": {
				const agentId = need(positionals, 2, "<agent>");
				const page = await client.list(agentId, {
					...(flags.status ? { status: flags.status as never } : {}),
					...(flags.limit ? { limit: flags.limit } : {}),
				});
				print(page, () =>
					table(page.items, ["id", "action", "status", "priority", "attempts", "blockedReason", "createdAt"]),
				);
				return EXIT.OK;
			}
			case "command cancel": {
				const res = await client.cancel(need(positionals, 2, "<id>"));
				print(res, () =>
					res.outcome === "cancelled"
						? `${res.command.id} cancelled (it had not been sent and never will be)`
						: `${res.command.id} cancel requested: the agent was asked to stop`,
				);
				return EXIT.OK;
			}
			case "command watch":
				return follow(need(positionals, 2, "<id>"));
			case "agent get": {
				const agent = await client.agent(need(positionals, 2, "<id>"));
				print(agent, () => details(agent));
				return EXIT.OK;
			}
			case "agent token": {
				const token = await client.token(need(positionals, 2, "<id>"), int("ttl", flags.ttl));
				print(token, () => token.token);
				return EXIT.OK;
			}
			case "agent revoke": {
				const revoked = await client.revoke(need(positionals, 2, "<id>"));
				print(revoked, () => `revoked the tokens of ${revoked.agentId}${revoked.socketClosed ? "; its socket was closed" : ""}`);
				return EXIT.OK;
			}
			case "agent run": {
				const agentId = need(positionals, 2, "<id>");
				const concurrency = int("concurrency", flags.concurrency) ?? 4;
				if (concurrency < 1 || concurrency > 1000) throw new UsageError("--concurrency must be 1-1000");
				let stopRequested = false;
				const agent = demoAgent({
					client,
					url: config.url,
					agentId,
					concurrency,
					allowExec: flags["allow-exec"],
					log: (line) => process.stderr.write(`[agent ${agentId}] ${line}\n`),
				});
				// Stopped by Ctrl-C: 0. Stopped by the server (refused, replaced): 3, with why.
				const stopped = new Promise<number>((resolve) => {
					agent.on("stopped", (e) => {
						if (stopRequested) return resolve(EXIT.OK);
						process.stderr.write(
							`switchyard: the agent stopped: ${e.reason}${/401/.test(e.reason) ? ` (check the API key from ${config.keySource})` : ""}\n`,
						);
						resolve(EXIT.API);
					});
				});
				const stop = () => {
					stopRequested = true;
					void agent.stop({ graceMs: 10_000 });
				};
				process.once("SIGINT", stop);
				process.once("SIGTERM", stop);
				agent.start();
				return stopped;
			}
			default:
				if (positionals.length >= 2) {
					const code = await fleetCommand({ client, positionals, flags, print, exit: EXIT });
					if (code !== undefined) return code;
				}
				throw new UsageError(`unknown command "${positionals.slice(0, 2).join(" ")}"; see 'switchyard --help'`);
		}
	} catch (err) {
		return report(err);
	}
}

function report(err: unknown): number {
	if (err instanceof UsageError) {
		process.stderr.write(`switchyard: ${err.message}\n`);
		return EXIT.USAGE;
	}
	if (err instanceof SwitchyardApiError) {
		const hint =
			err.status === 401
				? ` (the key came from ${keySource}; check --api-key, SWITCHYARD_API_KEY or .dev.vars)`
				: err.status === 404
					? " (check the id)"
					: "";
		process.stderr.write(`switchyard: ${err.code}: ${err.message}${hint}\n`);
		return err.status >= 500 ? EXIT.UNREACHABLE : EXIT.API;
	}
	const cause = (err as { cause?: { code?: string } }).cause?.code;
	const network = err instanceof TypeError && /fetch failed|network/i.test(err.message);
	if (!network && !cause) {
		process.stderr.write(`switchyard: ${(err as Error).message ?? String(err)}\n`);
		return err instanceof SyntaxError ? EXIT.UNREACHABLE : EXIT.USAGE;
	}
	process.stderr.write(
		`switchyard: cannot reach the server: ${(err as Error).message}${cause ? ` (${cause})` : ""}; is it running? (npm run dev, or --url)\n`,
	);
	return EXIT.UNREACHABLE;
}
