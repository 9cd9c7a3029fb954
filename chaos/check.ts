/**
 * The check against Postgres: every command the API accepted must end in a
 * finished status that matches what the agents did, and the audit must show
 * no completion the agents did not report. The agents' own record (which
 * commands they received, which they answered) is the ground truth: the
 * fleet answers every command it receives with the SDK's `completed`.
 */
import type pg from "pg";

const OPEN = new Set(["pending", "dispatched", "acknowledged"]);

/** What the fleet answers every command with (lib/sdk-answer.ts, the SDK's own). */
export const AGENT_RESULT = JSON.stringify({ ok: true });

export interface AgentsDid {
	received: Set<string>;
	reported: Set<string>;
	/** Commands the server sent a `cancel` (a stop) for. */
	stops?: Set<string>;
}

/** What every command writes as output when the fleets are told to (bench/load/agents.ts `outputFor`). */
export const expectedOutput = (id: string) => `out:${id}\nend\n`;

export interface Verdict {
	/**
	 * Accepted commands missing, and any command (accepted, or written for an
	 * enqueue that got no answer) still open or ended otherwise than the agent did.
	 */
	lost: string[];
	/** Completions (row or audit) the agents never reported, or a result they did not send. */
	invented: string[];
	/** Accepted commands the system ended without the agent ever receiving them (not a loss: its word is true). */
	unrun: string[];
	completed: number;
	/** Rows written for enqueues that got no answer (the runtime died mid-request): checked alike, not counted as accepted. */
	unanswered: number;
	redeliveries: number;
	/** Commands the agents received that the system ended (not `completed`) with no stop (`cancel`) sent to the agent. Must be 0. */
	endedWithoutStop: number;
	/** Bytes of output stored beyond what the agent wrote once (a chunk kept twice). Must be 0. */
	duplicatedOutputBytes: number;
	/** Completed commands whose stored output is neither what the agent wrote nor empty. */
	outputMismatch: number;
	/** Completed commands with no output stored (output is best effort: shown, not a loss). */
	outputMissing: number;
	/** A few bad commands with their rows and events, for the report. */
	samples: Record<string, unknown>[];
}

interface Row {
	id: string;
	status: string;
	result: unknown;
	error_code: string | null;
	attempts: number;
	output: string | null;
}
interface Event {
	command_id: string;
	to_status: string;
	actor: string | null;
	reason: string | null;
	at: Date;
}

export async function verify(db: pg.Pool, action: string, accepted: string[], did: AgentsDid, withOutput = false): Promise<Verdict> {
	const rows = (await db.query<Row>("select id, status, result, error_code, attempts, output from agent_commands where action = $1", [action])).rows;
	const events = (
		await db.query<Event>(
			`select e.command_id, e.to_status, e.actor, e.detail->>'reason' as reason, e.at
			 from command_events e join agent_commands c on c.id = e.command_id where c.action = $1 order by e.id`,
			[action],
		)
	).rows;
	const byId = new Map(rows.map((r) => [r.id, r]));
	const acceptedSet = new Set(accepted);
	const v: Verdict = { lost: [], invented: [], unrun: [], completed: 0, unanswered: 0, redeliveries: 0, endedWithoutStop: 0, duplicatedOutputBytes: 0, outputMismatch: 0, outputMissing: 0, samples: [] };
	for (const e of events) {
		if (e.reason === "redelivery") v.redeliveries++;
		// A completion in the audit by an agent that never sent one.
		if (e.actor?.startsWith("agent:") && e.to_status === "completed" && !did.reported.has(e.command_id)) v.invented.push(e.command_id);
	}
	for (const id of accepted) {
		const row = byId.get(id);
		if (!row || OPEN.has(row.status)) v.lost.push(id);
		else judge(row, did, v);
	}
	for (const row of rows) {
		if (acceptedSet.has(row.id)) continue;
		v.unanswered++;
		if (OPEN.has(row.status)) v.lost.push(row.id);
		else judge(row, did, v);
	}
	for (const row of rows) {
		if (row.status !== "completed" && !OPEN.has(row.status) && did.received.has(row.id) && !did.stops?.has(row.id)) v.endedWithoutStop++;
		if (!withOutput || row.status !== "completed") continue;
		const want = expectedOutput(row.id);
		const got = row.output ?? "";
		if (got === want) continue;
		if (got === "") v.outputMissing++;
		else if (got.length > want.length && got.replaceAll(`out:${row.id}\n`, "").replaceAll("end\n", "") === "") v.duplicatedOutputBytes += got.length - want.length;
		else v.outputMismatch++;
	}
	v.invented = [...new Set(v.invented)];
	const bad = [...v.lost, ...v.invented].slice(0, 5);
	v.samples = bad.map((id) => ({ id, row: byId.get(id) ?? null, received: did.received.has(id), reported: did.reported.has(id), events: events.filter((e) => e.command_id === id) }));
	return v;
}

/** A finished row against what the agents did with it. */
function judge(row: Row, did: AgentsDid, v: Verdict): void {
	if (row.status === "completed") {
		v.completed++;
		if (!did.reported.has(row.id) || JSON.stringify(row.result) !== AGENT_RESULT) v.invented.push(row.id);
	} else if (did.received.has(row.id)) {
		// The agent ran it (and answers every command with `completed`): a system end is a lost outcome.
		v.lost.push(row.id);
	} else {
		v.unrun.push(row.id);
	}
}

/** Open rows of `action`, and how many of `accepted` exist: the settle poll. */
export async function openCount(db: pg.Pool, action: string): Promise<{ open: number; total: number }> {
	const { rows } = await db.query<{ open: string; total: string }>(
		`select count(*) filter (where status in ('pending','dispatched','acknowledged')) as open, count(*) as total
		 from agent_commands where action = $1`,
		[action],
	);
	return { open: Number(rows[0]?.open ?? 0), total: Number(rows[0]?.total ?? 0) };
}

/**
 * Seconds from `healedAt` (wall ms) until the last command created before it
 * finished: how long the fault's backlog took to clear, the load aside.
 * 0 when it had cleared by then.
 */
export async function backlogClearedAfter(db: pg.Pool, action: string, healedAt: number): Promise<number> {
	const { rows } = await db.query<{ t: number | null }>(
		`select extract(epoch from max(completed_at)) * 1000 as t from agent_commands
		 where action = $1 and created_at <= to_timestamp($2::float8 / 1000)`,
		[action, healedAt],
	);
	const t = rows[0]?.t;
	return t == null ? 0 : Math.max(0, Math.round((Number(t) - healedAt) / 100) / 10);
}
