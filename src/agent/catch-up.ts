/**
 * The catch-up: reads Postgres for open commands this object has not seen
 * (a forward that failed, a row inserted by hand, a reset object) and
 * buffers them, without their payloads (the window reads those from
 * Postgres when it sends them, ./payloads.ts). Run on every connect and by the alarm in the background,
 * and directly by `reconcile` and by a cancel for a command the object does
 * not know yet.
 */
import { listOpenCommands, type OpenCommand, type OpenKey } from "../db/commands";
import { log } from "../log";
import { applyHello } from "./answers";
import { addCommand, deadlineOf } from "./buffer";
import type { AgentCore } from "./core";
import { toBufferInput } from "./stub";

type CatchUpHost = Pick<AgentCore, "name" | "db" | "state" | "limits" | "atomically" | "generation" | "checkHeartbeat" | "pump" | "changed" | "wakeBy">;

/**
 * Rows a catch-up reads at once. Each page is a statement of its own: a
 * backlog of any length costs the object one page of rows in memory, and
 * Postgres one index range scan per page.
 */
export const CATCH_UP_PAGE_ROWS = 500;

export class CatchUp {
	/** Reads under way; finished rows are not pruned meanwhile (a read that began earlier could bring them back). */
	private reads = 0;

	constructor(private readonly host: CatchUpHost) {}

	get reading(): boolean {
		return this.reads > 0;
	}

	/**
	 * Reads page after page until a short one, each buffered (and sent, as
	 * the window allows) before the next is read. `pump: false` buffers what
	 * it finds without sending anything (a cancel must act first).
	 */
	async run(opts: { pump?: boolean } = {}): Promise<{ added: number }> {
		const host = this.host;
		const limit = host.limits.catchUpPageRows;
		this.reads++;
		try {
			let added = 0;
			let after: OpenKey | null = null;
			for (let first = true; ; first = false) {
				const page: OpenCommand[] = await host.db.run((db) => listOpenCommands(db, host.name, { after, limit }));
				if (first && opts.pump !== false) await host.checkHeartbeat(Date.now());
				added += this.take(page, opts.pump !== false);
				const last = page.at(-1);
				if (!last || page.length < limit) break;
				after = { priority: last.priority, seq: last.seq };
			}
			if (added > 0) {
				log("info", "agent.caught_up", { agentId: host.name, added });
				await host.changed();
			}
			return { added };
		} finally {
			this.reads--;
		}
	}

	/** Buffers one page; returns how many commands were new. */
	private take(page: OpenCommand[], pump: boolean): number {
		const host = this.host;
		const now = Date.now();
		const generation = host.generation();
		return host.atomically((tx) => {
			let n = 0;
			for (const r of page) {
				const input = toBufferInput(r);
				if (addCommand(tx, input, now) === null) continue;
				n++;
				const at = deadlineOf(input);
				if (at !== null) host.wakeBy(at);
			}
			// Rows recovered as acknowledged after this connection's hello are
			// judged against that hello's running list, as if they had been here.
			if (n > 0 && host.state.get("hello_generation") === generation) {
				applyHello(tx, new Set(host.state.get("hello_running") ?? []), now, generation);
			}
			if (n > 0 && pump) host.pump(tx);
			return n;
		});
	}
}
