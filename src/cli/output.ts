/** How the CLI prints: tables for people, JSON for scripts, progress on stderr. */

export function table(rows: Record<string, unknown>[], columns: string[]): string {
	if (rows.length === 0) return "(none)";
	const cells = rows.map((r) => columns.map((c) => cell(r[c])));
	const widths = columns.map((c, i) => Math.max(c.length, ...cells.map((row) => row[i]?.length ?? 0)));
	const line = (values: string[]) => values.map((v, i) => v.padEnd(widths[i] ?? 0)).join("  ").trimEnd();
	return [line(columns.map((c) => c.toUpperCase())), ...cells.map(line)].join("\n");
}

export function details(record: Record<string, unknown>): string {
	const width = Math.max(...Object.keys(record).map((k) => k.length));
	return Object.entries(record)
		.map(([k, v]) => `${k.padEnd(width)}  ${typeof v === "object" && v !== null ? JSON.stringify(v) : cell(v)}`)
		.join("\n");
}

function cell(v: unknown): string {
	if (v === null || v === undefined) return "-";
	if (typeof v === "object") return JSON.stringify(v);
	return String(v);
}

/** A spinner with the latest status on a terminal; one line per change otherwise. */
export class Progress {
	private frame = 0;
	private timer: ReturnType<typeof setInterval> | undefined;
	private text = "";
	private readonly tty = Boolean(process.stderr.isTTY);

	update(text: string): void {
		if (text === this.text) return;
		this.text = text;
		if (!this.tty) {
			process.stderr.write(`${text}\n`);
			return;
		}
		this.timer ??= setInterval(() => this.draw(), 100);
		this.draw();
	}

	done(): void {
		clearInterval(this.timer);
		if (this.tty) process.stderr.write("\r\x1b[2K");
	}

	private draw(): void {
		const spin = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"[this.frame++ % 10];
		process.stderr.write(`\r\x1b[2K${spin} ${this.text}`);
	}
}
