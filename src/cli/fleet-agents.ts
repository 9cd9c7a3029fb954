/**
 * The CLI's fleet verbs on agents: list by label, label, pause, resume,
 * stop one agent, and stop every agent a selector matches. main.ts hands
 * over any `<noun> <verb>` this module knows; exit codes are main.ts's.
 */
import { createInterface } from "node:readline/promises";
import type { SwitchyardClient } from "../sdk/client.ts";
import { need } from "./args.ts";
import { UsageError } from "./config.ts";
import { table } from "./output.ts";

export const FLEET_AGENT_OPTIONS = {
	label: { type: "string", multiple: true },
	online: { type: "boolean" },
	offline: { type: "boolean" },
	prefix: { type: "string" },
	pause: { type: "boolean", default: false },
	yes: { type: "boolean", short: "y", default: false },
	all: { type: "boolean", default: false },
} as const;

export const FLEET_AGENT_HELP = `  agent list [--label k=v]... [--online | --offline] [--prefix P] [--limit N]
  agent label <id> k=v [k2=]...   set the operator's labels; "k=" (no value) removes k
  agent pause <id>                stop sending it commands; what it runs keeps running
  agent resume <id>               send what waited
  agent stop <id> [--pause]       cancel every open command of the agent
  fleet stop --label k=v... [--online] [--pause] [--yes]
                                  cancel every open command of every matching agent
                                  (--all instead of --label: every agent); asks first
                                  unless --yes, and refuses without it when not on a terminal
`;

interface FleetFlags {
	label?: string[];
	online?: boolean;
	offline?: boolean;
	prefix?: string;
	pause?: boolean;
	yes?: boolean;
	all?: boolean;
	limit?: string;
}

export interface FleetContext {
	client: SwitchyardClient;
	positionals: string[];
	flags: FleetFlags;
	print: (value: unknown, human: () => string) => void;
	/** Asks a yes/no question on the terminal; the default reads stdin. */
	confirm?: (question: string) => Promise<boolean>;
	/** Whether a person may be asked; the default is whether stdin is a terminal. */
	interactive?: boolean;
}

/** Runs the command if it is one of these; undefined if not (main.ts goes on). */
export async function fleetAgents(ctx: FleetContext): Promise<number | undefined> {
	const { client, positionals, flags, print } = ctx;
	const [noun, verb] = positionals;
	switch (`${noun} ${verb}`) {
		case "agent list": {
			const page = await client.listAgents({
				labels: flags.label ? pairs(flags.label, "--label") : undefined,
				online: online(flags),
				prefix: flags.prefix,
				limit: flags.limit === undefined ? undefined : Number(flags.limit),
			});
			print(page, () => {
				const rows = page.items.map((a) => ({ ...a, labels: labelText(a.labels), paused: a.paused ? "yes" : "" }));
				const more = page.nextCursor ? `\n(more: --prefix or --label to narrow, or the API's cursor ${page.nextCursor})` : "";
				return table(rows, ["id", "online", "paused", "version", "platform", "labels", "concurrency", "lastSeenAt"]) + more;
			});
			return 0;
		}
		case "agent label": {
			const agentId = need(positionals, 2, "<id>");
			const changes = positionals.slice(3);
			if (changes.length === 0) throw new UsageError("give at least one label: k=v to set, k= to remove");
			const labels = Object.fromEntries(Object.entries(pairs(changes, "label")).map(([k, v]) => [k, v === "" ? null : v]));
			const agent = await client.labelAgent(agentId, labels);
			print(agent, () => `${agent.id} labels: ${labelText(agent.labels) || "(none)"} (operator's: ${labelText(agent.operatorLabels) || "none"})`);
			return 0;
		}
		case "agent pause": {
			const res = await client.pause(need(positionals, 2, "<id>"));
			print(res, () => `${res.agentId} paused since ${res.pausedAt}: nothing new is sent to it; what it runs keeps running`);
			return 0;
		}
		case "agent resume": {
			const res = await client.resume(need(positionals, 2, "<id>"));
			print(res, () => `${res.agentId} resumed: what waited is being sent`);
			return 0;
		}
		case "agent stop": {
			const res = await client.stop(need(positionals, 2, "<id>"), { pause: flags.pause });
			print(res, () => `${res.agentId}: ${counts(res)}${res.paused ? "; paused" : ""}`);
			return 0;
		}
		case "fleet stop": {
			const selector = fleetSelector(flags);
			if (!flags.yes) {
				if (!(ctx.interactive ?? process.stdin.isTTY)) throw new UsageError("fleet stop cancels the work of many agents: add --yes to confirm (stdin is not a terminal)");
				const what = selector.all ? "EVERY agent" : `every agent with ${labelText(selector.labels ?? {})}${selector.online ? " (online)" : ""}`;
				const ask = ctx.confirm ?? confirmOnTerminal;
				if (!(await ask(`Cancel every open command of ${what}${flags.pause ? " and pause them" : ""}? [y/N] `))) {
					process.stderr.write("switchyard: nothing stopped\n");
					return 0;
				}
			}
			const res = await client.stopFleet(selector, { pause: flags.pause });
			print(res, () => {
				const lines = [`matched ${res.matched}, reached ${res.reached}: ${counts(res)}${res.paused ? "; paused" : ""}`];
				for (const u of res.unreached) lines.push(`unreached ${u.agentId}: ${u.error}`);
				return lines.join("\n");
			});
			// Some agents were not reached: the stop is not done, and a script must notice.
			return res.reached < res.matched ? 4 : 0;
		}
		default:
			return undefined;
	}
}

/** `k=v` arguments as an object; a key twice is a mistake worth naming. */
function pairs(items: string[], what: string): Record<string, string> {
	const out: Record<string, string> = {};
	for (const item of items) {
		const i = item.indexOf("=");
		if (i <= 0) throw new UsageError(`${what} takes key=value, got "${item}"`);
		const key = item.slice(0, i);
		if (Object.hasOwn(out, key)) throw new UsageError(`${what}: "${key}" given twice`);
		out[key] = item.slice(i + 1);
	}
	return out;
}

function online(flags: FleetFlags): boolean | undefined {
	if (flags.online && flags.offline) throw new UsageError("--online and --offline exclude each other");
	return flags.online ? true : flags.offline ? false : undefined;
}

function fleetSelector(flags: FleetFlags): { labels?: Record<string, string>; online?: boolean; all?: true } {
	const labels = flags.label ? pairs(flags.label, "--label") : undefined;
	if (!labels && !flags.all) throw new UsageError("fleet stop needs --label k=v (or --all to stop every agent)");
	if (labels && flags.all) throw new UsageError("give --label or --all, not both");
	const on = online(flags);
	return { ...(labels ? { labels } : { all: true as const }), ...(on === undefined ? {} : { online: on }) };
}

function labelText(labels: Record<string, string>): string {
	return Object.entries(labels)
		.map(([k, v]) => `${k}=${v}`)
		.join(",");
}

function counts(r: { cancelled: number; cancelRequested: number }): string {
	return `${r.cancelled} queued cancelled, ${r.cancelRequested} running asked to stop`;
}

async function confirmOnTerminal(question: string): Promise<boolean> {
	const rl = createInterface({ input: process.stdin, output: process.stderr });
	try {
		return /^y(es)?$/i.test((await rl.question(question)).trim());
	} finally {
		rl.close();
	}
}
