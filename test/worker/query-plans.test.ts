/**
 * The periodic queries must not scan the history. /metrics counted the whole
 * commands table and both agents columns on every scrape, and retention had
 * no index for "finished before the cutoff", so both grew with the 30 days of
 * finished commands kept. With sequential scans turned off, the planner shows
 * which index serves each part: it must be one bounded by the open work (or
 * the due rows), never a full table or full index walk.
 */
import { sql, type SQL } from "drizzle-orm";
import { describe, expect, it } from "vitest";
import { filterWhere } from "../../src/db/agents";
import { QUEUE_POSITION } from "../../src/db/commands";
import { snapshotQuery } from "../../src/db/metrics";
import { RETENTION_BATCH, retentionBatchQuery } from "../../src/retention";
import { db } from "../helpers/worker/harness";

interface PlanNode {
	"Node Type": string;
	"Relation Name"?: string;
	"Index Name"?: string;
	"Index Cond"?: string;
	Plans?: PlanNode[];
}

interface Scan {
	relation: string;
	node: string;
	index?: string;
	cond?: string;
}

/** Every scan of `relations` in the plan of `q`, planned as if the tables were big (no sequential scans). */
async function scans(q: SQL, relations: string[]): Promise<Scan[]> {
	const plan = await db((d) =>
		d.transaction(async (tx) => {
			await tx.execute(sql`set local enable_seqscan = off`);
			const res = await tx.execute(sql`explain (format json) ${q}`);
			// SAFETY: EXPLAIN (FORMAT JSON) answers one row whose one column is [{ Plan: ... }].
			const row = res.rows[0] as Record<string, unknown>;
			return (Object.values(row)[0] as { Plan: PlanNode }[])[0]?.Plan;
		}),
	);
	const found: Scan[] = [];
	const walk = (n: PlanNode | undefined) => {
		if (!n) return;
		const relation = n["Relation Name"];
		if (relation && relations.includes(relation) && !["Bitmap Heap Scan", "ModifyTable"].includes(n["Node Type"])) {
			found.push({ relation, node: n["Node Type"], index: n["Index Name"], cond: n["Index Cond"] });
		}
		if (n["Node Type"] === "Bitmap Index Scan" && n["Index Name"]) {
			const index = n["Index Name"];
			const relation = relations.find((r) => index.startsWith(r));
			if (relation) found.push({ relation, node: n["Node Type"], index, cond: n["Index Cond"] });
		}
		for (const child of n.Plans ?? []) walk(child);
	};
	walk(plan);
	return found;
}

describe("query plans", () => {
	it("/metrics reads agents and commands only through indexes bounded by the open work", async () => {
		const found = await scans(snapshotQuery(), ["agents", "agent_commands"]);
		const open = ["agents_connected_idx", "agents_outbox_idx", "agent_commands_open_status_idx", "agent_commands_open_idx"];
		expect(found.length, JSON.stringify(found)).toBeGreaterThanOrEqual(4);
		for (const s of found) {
			expect(s.node, JSON.stringify(s)).not.toBe("Seq Scan");
			expect(open, JSON.stringify(s)).toContain(s.index);
		}
		expect(found.map((s) => s.relation).sort()).toEqual(expect.arrayContaining(["agent_commands", "agents"]));
	});

	it("a retention batch finds due rows through the finished index and deletes them by key", async () => {
		const found = await scans(retentionBatchQuery(30, RETENTION_BATCH), ["agent_commands"]);
		expect(found.length, JSON.stringify(found)).toBeGreaterThanOrEqual(2);
		for (const s of found) expect(s.node, JSON.stringify(s)).not.toBe("Seq Scan");
		const finding = found.find((s) => s.index === "agent_commands_finished_idx");
		expect(finding?.cond, JSON.stringify(found)).toMatch(/completed_at/);
		// The delete itself: one primary-key lookup per doomed id, not a walk of the table.
		const deleting = found.filter((s) => s !== finding);
		for (const s of deleting) expect(s, JSON.stringify(found)).toMatchObject({ index: "agent_commands_pkey", cond: expect.stringMatching(/id/) });
	});

	it("the cascade from a deleted command to its events is served by an index on command_id", async () => {
		const found = await scans(sql`delete from command_events where command_id = ${crypto.randomUUID()}`, ["command_events"]);
		expect(found).toEqual([expect.objectContaining({ index: "command_events_command_idx", cond: expect.stringMatching(/command_id/) })]);
	});

	it("a label selector is a containment test the labels GIN index serves", async () => {
		// Whether the planner takes it over the id order depends on how selective the labels are;
		// what matters is that it can (labels->>'env' = 'prod', say, could not).
		const where = filterWhere({ labels: { env: "prod", region: "eu" } });
		const found = await scans(sql`select count(*) from agents where ${where}`, ["agents"]);
		expect(found, JSON.stringify(found)).toEqual([expect.objectContaining({ index: "agents_labels_idx", cond: expect.stringMatching(/labels @>/) })]);
	});

	it("a pending command's queue position counts two ranges of the open index", async () => {
		const found = await scans(
			sql`select ${sql.raw(QUEUE_POSITION)} from agent_commands c where c.id = ${crypto.randomUUID()}`,
			["agent_commands"],
		);
		const counting = found.filter((s) => s.index !== "agent_commands_pkey");
		expect(counting, JSON.stringify(found)).toHaveLength(2);
		for (const s of counting) expect(s, JSON.stringify(found)).toMatchObject({ index: "agent_commands_open_idx", cond: expect.stringMatching(/agent_id/) });
	});
});
