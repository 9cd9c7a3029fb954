/**
 * The CLI's fleet-wide command verbs: `fanout send|get|cancel`, `command
 * search`, `command retry`. main.ts hands over any `<noun> <verb>` it does
 * not know; exit codes are main's.
 */
import type { ApiFanout, SwitchyardClient } from "../sdk/client.ts";
import { commandFields } from "./args.ts";
import { UsageError } from "./config.ts";
import { details, Progress, table } from "./output.ts";

/** Flags these verbs add to main's parser. */
export const FLEET_COMMAND_OPTIONS = {
	label: { type: "string", multiple: true },
	agent: { type: "string", multiple: true },
	online: { type: "boolean" },
	action: { type: "string" },
	fanout: { type: "string" },
	since: { type: "string" },
	until: { type: "string" },
	cursor: { type: "string" },
} as const;

export const FLEET_COMMAND_HELP = `  fanout send <action> (--label k=v ... [--online] | --agent ID ...) [--payload JSON]
                                [--priority 0-9] [--ttl S] [--timeout S] [--idempotency-key K] [--wait]
                                  one command per matching agent; --wait shows done/total
  fanout get <id> [--limit N] [--cursor C]
  fanout cancel <id>              cancel what is still open
  command search [--agent ID] [--status S[,S]] [--action A] [--session ID] [--label k=v ...]
                 [--fanout ID] [--since T] [--until T] [--limit N] [--cursor C]
                                  T: ISO time or an age (30m, 2h, 7d)
  command retry <id>              a new command like a failed/cancelled/expired one
`;

interface Flags {
	label?: string[];
	agent?: string[];
	online?: boolean;
	action?: string;
	fanout?: string;
	since?: string;
	until?: string;
	cursor?: string;
	payload?: string;
	priority?: string;
	ttl?: string;
	timeout?: string;
	"idempotency-key"?: string;
	session?: string;
	status?: string;
	limit?: string;
	wait?: boolean;
	json?: boolean;
}

export interface FleetContext {
	client: SwitchyardClient;
	positionals: string[];
	flags: Flags;
	print: (value: unknown, human: () => string) => void;
	exit: { OK: number; COMMAND_FAILED: number };
}

const BAD = ["failed", "cancelled", "expired"];
const ORDER = ["pending", "dispatched", "acknowledged", "completed", "failed", "cancelled", "expired"];

function labels(pairs: string[] | undefined): Record<string, string> {
	const out: Record<string, string> = {};
	for (const p of pairs ?? []) {
		const i = p.indexOf("=");
		if (i <= 0) throw new UsageError(`--label takes key=value, got "${p}"`);
		out[p.slice(0, i)] = p.slice(i + 1);
	}
	return out;
}

/** An ISO time as given, or an age (`90s`, `30m`, `2h`, `7d`) before now. */
export function when(name: string, value: string | undefined, now = Date.now()): string | undefined {
	if (value === undefined) return undefined;
	const age = /^(\d+)([smhd])$/.exec(value);
	if (age) {
		const unit = { s: 1, m: 60, h: 3600, d: 86400 }[age[2] as "s" | "m" | "h" | "d"];
		return new Date(now - Number(age[1]) * unit * 1000).toISOString();
	}
	if (Number.isNaN(Date.parse(value))) throw new UsageError(`--${name} takes an ISO time or an age like 30m, 2h, 7d; got "${value}"`);
	return new Date(value).toISOString();
}

/** `done/total` and each status's count, the line --wait keeps up to date. */
export function progressLine(f: Pick<ApiFanout, "id" | "targetCount" | "counts">): string {
	const counts = f.counts as Record<string, number>;
	const done = ["completed", ...BAD].reduce((n, s) => n + (counts[s] ?? 0), 0);
	const by = ORDER.filter((s) => counts[s]).map((s) => `${s} ${counts[s]}`);
	return `fanout ${f.id}: ${done}/${f.targetCount} done (${by.join(", ")})`;
}

/** Runs the verb, or answers undefined when `<noun> <verb>` is not one of these. */
export async function fleetCommand(ctx: FleetContext): Promise<number | undefined> {
	const { client, positionals, flags, print, exit } = ctx;
	const [noun, verb, arg] = positionals;
	const need = (what: string) => {
		if (!arg) throw new UsageError(`missing ${what}; see 'switchyard --help'`);
		return arg;
	};
	switch (`${noun} ${verb}`) {
		case "fanout send": {
			const action = need("<action>");
			const byLabel = labels(flags.label);
			const agentIds = flags.agent ?? [];
			if ((Object.keys(byLabel).length > 0) === (agentIds.length > 0)) {
				throw new UsageError("fanout send needs --label k=v (one or more) or --agent ID (one or more), not both");
			}
			const created = await client.fanout({
				...(agentIds.length > 0
					? { agentIds }
					: { selector: { labels: byLabel, ...(flags.online === undefined ? {} : { online: flags.online }) } }),
				...commandFields(action, flags),
			});
			if (!flags.wait) {
				print(created, () => `fanout ${created.id}: ${created.targetCount} command(s) enqueued; see 'switchyard fanout get ${created.id}'`);
				return exit.OK;
			}
			const final = await follow(client, created.id);
			print(final, () => `${progressLine(final)}${final.done ? "" : " (stopped waiting)"}`);
			const counts = final.counts as Record<string, number>;
			return BAD.some((s) => counts[s]) ? exit.COMMAND_FAILED : exit.OK;
		}
		case "fanout get": {
			const f = await client.getFanout(need("<id>"), {
				...(flags.limit ? { limit: flags.limit } : {}),
				...(flags.cursor ? { cursor: flags.cursor } : {}),
			});
			print(f, () => {
				const { targets, ...head } = f;
				const more = targets.nextCursor ? `\n(more: --cursor ${targets.nextCursor})` : "";
				return `${details({ ...head, progress: progressLine(f) })}\n\n${table(targets.items, ["agentId", "commandId", "status", "blockedReason", "errorCode"])}${more}`;
			});
			return exit.OK;
		}
		case "fanout cancel": {
			const r = await client.cancelFanout(need("<id>"));
			print(r, () =>
				`fanout ${r.id}: ${r.cancelled} cancelled, ${r.cancelRequested} asked to stop` +
				(r.unreached.length ? `, ${r.unreached.length} not reached (run it again)` : ""),
			);
			return exit.OK;
		}
		case "command search": {
			const page = await client.searchCommands({
				...(flags.agent?.[0] ? { agentId: flags.agent[0] } : {}),
				...(flags.status ? { status: flags.status.split(",") as never } : {}),
				...(flags.action ? { action: flags.action } : {}),
				...(flags.session ? { sessionId: flags.session } : {}),
				...(flags.label?.length ? { label: flags.label } : {}),
				...(flags.fanout ? { fanoutId: flags.fanout } : {}),
				...(flags.since ? { createdAfter: when("since", flags.since) } : {}),
				...(flags.until ? { createdBefore: when("until", flags.until) } : {}),
				...(flags.limit ? { limit: flags.limit } : {}),
				...(flags.cursor ? { cursor: flags.cursor } : {}),
			});
			print(page, () => {
				const more = page.nextCursor ? `\n(more: --cursor ${page.nextCursor})` : "";
				return table(page.items, ["id", "agentId", "action", "status", "blockedReason", "createdAt"]) + more;
			});
			return exit.OK;
		}
		case "command retry": {
			const id = need("<id>");
			const cmd = await client.retry(id);
			print(cmd, () => `${cmd.id} ${cmd.status}${cmd.blockedReason ? ` (${cmd.blockedReason})` : ""}: retries ${id}`);
			return exit.OK;
		}
		default:
			return undefined;
	}
}

/** Polls the fan-out until every target is finished, keeping one progress line current. */
async function follow(client: SwitchyardClient, id: string): Promise<ApiFanout> {
	const progress = new Progress();
	try {
		for (;;) {
			const f = await client.getFanout(id, { limit: "1" });
			progress.update(progressLine(f));
			if (f.done) return f;
			await new Promise((r) => setTimeout(r, 500));
		}
	} finally {
		progress.done();
	}
}
