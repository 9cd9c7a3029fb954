/**
 * The invariants, checked after every step by reading the object's SQLite:
 * its journal (every transition Postgres and observers are told of), its
 * command rows, its stops, and its in-memory counts against the rows.
 */
import { expect } from "vitest";
import { cancelsOwed } from "../../../src/agent/buffer";
import type { AgentCore } from "../../../src/agent/core";
import { stopsOwed } from "../../../src/agent/storage";
import type { OutboxEntry, Transition } from "../../../src/db/status-writes";
import type { CommandStatus } from "../../../src/protocol";
import { find, type Model, OPEN, stopOwed } from "./model";

/**
 * Every move docs/protocol.md allows, from an open status. A move out of a
 * finished status is legal only as a late result (see `legalLate`).
 * `sent`: legal only for a command sent before (the transition's attempts > 0),
 * `unsent`: only for one never sent.
 */
const LEGAL: Record<string, Partial<Record<CommandStatus, "any" | "sent" | "unsent">>> = {
	// sent; an ack or hello for one requeued; an agent's result for one requeued;
	// cancel of a queued one; ttl before a first send; undeliverable, timeout, lost
	pending: { dispatched: "any", acknowledged: "sent", completed: "sent", failed: "sent", cancelled: "any", expired: "unsent" },
	// requeued (socket gone, ack deadline); ack; the agent's result; timeout; an unconfirmed cancel
	dispatched: { pending: "sent", acknowledged: "sent", completed: "sent", failed: "sent", cancelled: "sent" },
	// lost or no hello: sent again; the agent's result; timeout, lost; an unconfirmed cancel
	acknowledged: { pending: "sent", completed: "sent", failed: "sent", cancelled: "sent" },
};

/** What the checker has read of the journal so far. */
export interface Seen {
	seq: number;
	status: Map<string, CommandStatus>;
	last: Map<string, Transition>;
}

export function newSeen(): Seen {
	return { seq: 0, status: new Map(), last: new Map() };
}

function journalSince(core: AgentCore, seq: number): { seq: number; entry: OutboxEntry }[] {
	return core.sql
		.exec<{ seq: number; sync: string }>("select seq, sync from events where seq > ? and sync is not null order by seq", seq)
		.toArray()
		.map((r) => ({ seq: r.seq, entry: JSON.parse(r.sync) as OutboxEntry }));
}

function legalLate(t: Transition, before: Transition | undefined): boolean {
	// Postgres applies it only over a system end (errorCode set) of that same status.
	return (
		t.detail?.reason === "reported_late" &&
		(t.to === "completed" || t.to === "failed") &&
		(t.from === "failed" || t.from === "cancelled") &&
		before?.to === t.from &&
		before.errorCode != null
	);
}

function checkTransition(t: Transition, seen: Seen, declared: ReadonlyMap<string, CommandStatus>): void {
	const known = seen.status.get(t.commandId) ?? declared.get(t.commandId);
	expect(t.from, `${t.commandId}: journaled from ${t.from}, but it was ${known}`).toBe(known);
	const rule = LEGAL[t.from ?? ""]?.[t.to];
	if (rule === undefined) {
		expect(legalLate(t, seen.last.get(t.commandId)), `illegal transition ${t.from} → ${t.to} (${JSON.stringify(t.detail)})`).toBe(true);
		return;
	}
	if (rule === "sent") expect(t.attempts, `${t.from} → ${t.to} for a command never sent`).toBeGreaterThan(0);
	if (rule === "unsent") expect(t.attempts, `${t.from} → ${t.to} for a command once sent`).toBe(0);
}

/** "After maxAttempts sends … without an ack, it fails": a send counts one attempt at most, and never past the limit. */
function checkAttempt(t: Transition, seen: Seen, m: Model): void {
	const input = find(m, t.commandId).input;
	const before = seen.last.get(t.commandId)?.attempts ?? input.attempts;
	expect([before, before + 1], `${t.commandId} sent as attempt ${t.attempts} after ${before}`).toContain(t.attempts);
	expect(t.attempts, `${t.commandId} sent past its ${input.maxAttempts} attempts`).toBeLessThanOrEqual(input.maxAttempts);
}

const inFlight = (s: CommandStatus | undefined) => s === "dispatched" || s === "acknowledged";

/**
 * Reads the journal written since the last step: every transition legal and
 * from the status the command was in, and no send that takes the number of
 * commands out with the agent past its window.
 */
export function checkJournal(core: AgentCore, m: Model, seen: Seen, declared: ReadonlyMap<string, CommandStatus>): void {
	let out = [...seen.status.values()].filter(inFlight).length;
	for (const { seq, entry } of journalSince(core, seen.seq)) {
		seen.seq = seq;
		if (entry.kind === "taken") seen.status.set(entry.commandId, declared.get(entry.commandId) ?? "pending");
		if (entry.kind !== "transition") continue;
		checkTransition(entry, seen, declared);
		out += (inFlight(entry.to) ? 1 : 0) - (inFlight(entry.from ?? undefined) ? 1 : 0);
		if (entry.from === "pending" && entry.to === "dispatched") {
			expect(out, `sent ${entry.commandId} with ${out} out and a window of ${m.concurrency}`).toBeLessThanOrEqual(m.concurrency);
			checkAttempt(entry, seen, m);
		}
		seen.status.set(entry.commandId, entry.to);
		seen.last.set(entry.commandId, entry);
	}
}

/** The counts the object keeps in memory are the rows' own. */
export function checkCounts(core: AgentCore): void {
	const rows = core.sql.exec<{ status: string; n: number }>("select status, count(*) as n from commands group by status").toArray();
	const n = (s: string) => rows.find((r) => r.status === s)?.n ?? 0;
	expect({ pending: core.counts.pending, inFlight: core.counts.inFlight }).toEqual({ pending: n("pending"), inFlight: n("dispatched") + n("acknowledged") });
}

/**
 * No command ended by the system while the agent may hold it without a
 * stop owed, and no stop owed for one the agent has answered.
 */
export function checkStops(core: AgentCore, m: Model): void {
	const owed = m.commands.filter((c) => !OPEN.has(c.status) && stopOwed(m, c)).map((c) => c.id);
	expect(stopsOwed(core.sql, m.now).map((s) => s.id).sort()).toEqual([...owed].sort());
	const cancels = new Set(cancelsOwed(core.sql, m.now).map((c) => c.id));
	for (const id of owed) expect(cancels.has(id), `no cancel owed for ${id}`).toBe(true);
}

/** Every result the agent sent for a command it ran is the command's stored end. */
export function checkResults(core: AgentCore, m: Model, seen: Seen): void {
	for (const c of m.commands) {
		if (!c.agentWord) continue;
		const row = core.sql.exec<{ status: string }>("select status from commands where id = ?", c.id).one();
		expect(row.status, `${c.id}: the agent's ${c.agentWord.status} was not kept`).toBe(c.agentWord.status);
		const last = seen.last.get(c.id);
		expect({ to: last?.to, result: last?.result, errorCode: last?.errorCode ?? null }).toEqual({
			to: c.agentWord.status,
			result: c.agentWord.result,
			errorCode: null,
		});
	}
}
