/**
 * Reads from Postgres the payloads of commands a catch-up buffered without
 * them, when the window reaches them (./window.ts stops there and asks),
 * then fills the window again. One read serves a whole fill: the next
 * pending commands without a payload, as many as the window has room for,
 * up to the window's byte bound.
 *
 * While Postgres is down the read fails and is retried on the alarm with
 * backoff (./background-job.ts); the commands stay pending, are never sent
 * without their payloads, and lose no attempt.
 */
import { readPayloads } from "../db/commands";
import { FailureCode } from "../protocol";
import { log } from "../log";
import type { AgentCore } from "./core";
import { fail, getCommand, UNREAD_PAYLOAD } from "./storage";
import { unreadPending } from "./window";

type PayloadHost = Pick<AgentCore, "name" | "db" | "sql" | "counts" | "limits" | "concurrency" | "declaredActions" | "atomically" | "pump" | "changed">;

export class PayloadReader {
	constructor(private readonly host: PayloadHost) {}

	async run(): Promise<void> {
		const host = this.host;
		const room = Math.max(1, host.concurrency() - host.counts.inFlight);
		const ids = unreadPending(host.sql, room, host.declaredActions());
		if (ids.length === 0) return;
		const read = await host.db.run((db) => readPayloads(db, ids, host.limits.windowBytes));
		const now = Date.now();
		const sent = host.atomically((tx) => {
			for (const { id, payload } of read) {
				host.sql.exec("update commands set payload = ? where id = ? and payload = ?", JSON.stringify(payload), id, UNREAD_PAYLOAD);
			}
			// The first is always read if its row exists; a row gone from Postgres
			// can never be sent, and left unread it would stop the window for good.
			const first = ids[0];
			const gone = first !== undefined && read[0]?.id !== first ? getCommand(host.sql, first) : undefined;
			if (gone?.status === "pending") fail(tx, gone, now, FailureCode.UNDELIVERABLE, "its row is gone from Postgres");
			return host.pump(tx).length;
		});
		log("debug", "agent.payloads_read", { agentId: host.name, wanted: ids.length, read: read.length, sent });
		await host.changed();
	}
}
