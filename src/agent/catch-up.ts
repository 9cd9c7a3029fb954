/**
 * The catch-up: reads Postgres for open commands this object has not seen
 * (a forward that failed, a row inserted by hand, a reset object) and
 * buffers them. Run on every connect and by the alarm in the background,
 * and directly by `reconcile` and by a cancel for a command the object does
 * not know yet.
 */
import { listOpenCommands } from "../db/commands";
import { log } from "../log";
import { applyHello } from "./answers";
import { addCommand, deadlineOf } from "./buffer";
import type { AgentCore } from "./core";
import { toBufferInput } from "./stub";

type CatchUpHost = Pick<AgentCore, "name" | "db" | "state" | "atomically" | "generation" | "checkHeartbeat" | "pump" | "changed" | "wakeBy">;

export class CatchUp {
	/** Reads under way; finished rows are not pruned meanwhile (a read that began earlier could bring them back). */
	private reads = 0;

	constructor(private readonly host: CatchUpHost) {}

	get reading(): boolean {
		return this.reads > 0;
	}

	/** `pump: false` buffers what it finds without sending anything (a cancel must act first). */
	async run(opts: { pump?: boolean } = {}): Promise<{ added: number }> {
		const host = this.host;
		this.reads++;
		try {
			const open = await host.db.run((db) => listOpenCommands(db, host.name));
			const now = Date.now();
			if (opts.pump !== false) await host.checkHeartbeat(now);
			const generation = host.generation();
			const added = host.atomically((tx) => {
				let n = 0;
				for (const r of open) {
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
				if (n > 0 && opts.pump !== false) host.pump(tx);
				return n;
			});
			if (added > 0) {
				log("info", "agent.caught_up", { agentId: host.name, added });
				await host.changed();
			}
			return { added };
		} finally {
			this.reads--;
		}
	}
}
