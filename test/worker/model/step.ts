/**
 * After every step: the object's statuses must be ones the model allows,
 * the model then takes what the object did (where it was free to choose),
 * and every invariant is checked against the object's SQLite.
 */
import { expect } from "vitest";
import type { CommandStatus } from "../../../src/protocol";
import { checkCounts, checkJournal, checkResults, checkStops, type Seen } from "./invariants";
import { allowed, type Model, type ModelCommand, OPEN, STOP_MS, type StepEvent } from "./model";
import { canPump, type Real, type Sent } from "./real";

export interface World {
	r: Real;
	seen: Seen;
}

function statuses(r: Real): Map<string, CommandStatus> {
	const rows = r.core.sql.exec<{ id: string; status: CommandStatus }>("select id, status from commands").toArray();
	return new Map(rows.map((row) => [row.id, row.status]));
}

/** Takes the object's move for one command; `byAgent`: its end is the agent's own result. */
function adopt(m: Model, c: ModelCommand, to: CommandStatus, byAgent: boolean): void {
	const from = c.status;
	c.status = to;
	if (from === to) return;
	if (!OPEN.has(to)) c.endedAt = m.now;
	if (to === "dispatched") c.sent = true;
	if (to === "acknowledged") c.ackGeneration = m.generation;
	if (to === "pending") c.ackGeneration = null;
	// "Whenever the server ends a command it has sent … the agent gets a cancel frame."
	if (OPEN.has(from) && !OPEN.has(to) && !byAgent && c.sent) c.stopUntil = m.now + STOP_MS;
}

export function settle(m: Model, w: World, ev: StepEvent, sent: Sent): void {
	const now = statuses(w.r);
	// Nothing forgotten too soon, nothing brought back, nothing left past its time.
	expect([...now.keys()].sort()).toEqual(m.commands.map((c) => c.id).sort());
	const agentId = ev.kind === "result" ? ev.id : null;
	for (const c of m.commands) {
		const actual = now.get(c.id);
		const may = allowed(m, c, ev, canPump(m));
		expect(may, `${c.id} was ${c.status}; after ${ev.kind} it is ${actual}`).toContain(actual);
		if (actual) adopt(m, c, actual, c.id === agentId && c.agentWord?.status === actual);
	}
	for (const id of sent) if (!m.running.includes(id)) m.running.push(id);
	checkJournal(w.r.core, m, w.seen, w.r.declared);
	checkCounts(w.r.core);
	checkStops(w.r.core, m);
	checkResults(w.r.core, m, w.seen);
}
