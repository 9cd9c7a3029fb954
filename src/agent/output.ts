/**
 * A command's output where it first lands. Agents resend after a reconnect
 * and retry what was refused for rate, so a chunk is kept only when its
 * `seq` is past the last one kept: a resend appends nothing, to Postgres or
 * to observers. And it is kept only while the command's output is within
 * what Postgres keeps (OUTPUT_CAP_CHARS, counted in UTF-16 units as the
 * flush counts it): past that, nothing more is journaled, so a runaway
 * command costs neither the object's storage nor its flushes. The chunk
 * that crosses the cap is kept whole (Postgres cuts it there); the first
 * one dropped after it tells Postgres the output was cut.
 */
import { OUTPUT_CAP_CHARS } from "../protocol";
import { acceptsOutput } from "./answers";
import type { FrameOutcome } from "./answers";

/** `keep`: journal it. `cut`: drop it and tell Postgres. `repeat`, `past_cap`: drop it quietly. */
export type OutputOutcome = Exclude<FrameOutcome, "applied"> | "keep" | "cut" | "repeat" | "past_cap";

export function admitOutput(sql: SqlStorage, id: string, seq: number): OutputOutcome {
	const { outcome, row } = acceptsOutput(sql, id);
	if (outcome !== "applied" || !row) return outcome === "applied" ? "unknown" : outcome;
	if (row.output_seq !== null && seq <= row.output_seq) return "repeat";
	if (row.output_chars <= OUTPUT_CAP_CHARS) return "keep";
	return row.output_cut ? "past_cap" : "cut";
}

/** Records what became of chunk `seq` (`keep` or `cut`), in the transaction that journals it. */
export function recordOutput(sql: SqlStorage, id: string, seq: number, outcome: "keep" | "cut", units: number): void {
	if (outcome === "keep") sql.exec("update commands set output_seq = ?, output_chars = output_chars + ? where id = ?", seq, units, id);
	else sql.exec("update commands set output_seq = ?, output_cut = 1 where id = ?", seq, id);
}
