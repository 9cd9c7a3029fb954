/**
 * One command: every field, its audit trail, and its output in a terminal
 * (xterm.js, which keeps ANSI colours and renders only the visible rows, so
 * 100,000 lines do not freeze the page).
 *
 * Output of a running command comes from the agent's observer stream,
 * replayed from the start of its retained log (`since=0`) so the chunks
 * before the page opened are there too, each chunk written once by its
 * number; after a drop the stream resumes where it left off. A finished
 * command's output is read from the API as stored.
 */
import { Terminal } from "@xterm/xterm";
import type { ObserverFrame } from "switchyard-protocol";
import { h, replace, time } from "../dom";
import { blockedMeaning, FAILURE, TERMINAL } from "../meaning";
import { explain, type Session } from "../session";
import { LiveStatus, REREAD_AFTER_MS } from "../live-status";
import { AgentStream } from "../stream";
import { cancelButton } from "./cancel";
import type { View } from "./view";

type Command = Awaited<ReturnType<Session["api"]["get"]>>;

function json(value: unknown): HTMLElement {
	return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

export function commandView(session: Session, id: string): View {
	const heading = h("h1", { id: "command-title" }, "Command");
	const statusPill = h("span", { class: "status", "data-testid": "status" }, "…");
	const actions = h("div", { class: "actions" });
	const notice = h("p", { class: "notice", role: "status", "aria-live": "polite" });
	const fields = h("dl", { class: "facts wide" });
	const events = h("tbody");
	const outputState = h("span", { class: "muted", id: "output-state" }, "");
	const termHost = h("div", { class: "terminal", id: "terminal", role: "region", "aria-label": "Output" });
	const crumbs = h("p", { class: "crumbs" }, h("a", { href: "#/agents" }, "Agents"), " / ");

	const term = new Terminal({
		convertEol: true,
		disableStdin: true,
		scrollback: 150_000,
		fontSize: 13,
		fontFamily: "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace",
		theme: { background: "#0d1117", foreground: "#e6edf3" },
		screenReaderMode: false,
	});
	/** Every output chunk written, by number, so a replay never writes one twice. */
	const written = new Set<number>();
	let agentId = "";
	let stream: AgentStream | undefined;
	let storedShown = false;
	let disposed = false;

	function report(text: string, ok: boolean): void {
		notice.textContent = text;
		notice.className = `notice ${ok ? "ok" : "error"}`;
	}

	const live = new LiveStatus();

	function show(fromApi: Command): void {
		const c = live.overlay(fromApi);
		replace(heading, c.action, " ", h("code", { class: "short" }, c.id));
		statusPill.textContent = c.status;
		statusPill.className = `status s-${c.status}`;
		replace(actions, session.scope === "write" && !TERMINAL.has(c.status) ? cancelButton(session, c, report) : null);
		if (crumbs.childNodes.length < 3) crumbs.append(h("a", { href: `#/agents/${encodeURIComponent(c.agentId)}` }, c.agentId), " / ");
		const row = (k: string, v: Node | string) => [h("dt", {}, k), h("dd", {}, v)];
		replace(
			fields,
			...row("Status", h("span", {}, c.status, c.errorCode ? ` (${c.errorCode}: ${FAILURE[c.errorCode] ?? ""})` : "")),
			...(c.blockedReason ? row("Waiting because", h("span", {}, h("code", {}, c.blockedReason), " ", blockedMeaning(c.blockedReason))) : []),
			...row("Agent", h("a", { href: `#/agents/${encodeURIComponent(c.agentId)}` }, c.agentId)),
			...row("Id", h("code", {}, c.id)),
			...row("Priority", String(c.priority)),
			...row("Attempts", `${c.attempts} of ${c.maxAttempts} (ack within ${c.ackTimeoutSeconds} s)`),
			...row("Session", c.sessionId ?? "—"),
			...row("Idempotency key", c.idempotencyKey ?? "—"),
			...row("Timeout", c.timeoutSeconds === null ? "—" : `${c.timeoutSeconds} s`),
			...row("Expires", time(c.expiresAt)),
			...row("Created", time(c.createdAt)),
			...row("Dispatched", time(c.dispatchedAt)),
			...row("Next attempt", time(c.nextAttemptAt)),
			...row("Acknowledged", time(c.acknowledgedAt)),
			...row("Finished", time(c.completedAt)),
			...row("Cancel requested", time(c.cancelRequestedAt)),
			...row("Payload", json(c.payload)),
			...row("Result", c.result === null ? "—" : json(c.result)),
			...(c.error ? row("Error", h("pre", { class: "json error" }, c.error)) : []),
		);
	}

	async function loadEvents(): Promise<void> {
		try {
			const { items } = await session.api.events(id);
			replace(
				events,
				...items.map((e) =>
					h(
						"tr",
						{},
						h("td", {}, time(e.at)),
						h("td", {}, `${e.from ?? "—"} → `, h("span", { class: `status s-${e.to}` }, e.to)),
						h("td", {}, e.actor ?? "—"),
						h("td", {}, e.detail === null ? "" : h("code", { class: "detail" }, JSON.stringify(e.detail))),
					),
				),
			);
		} catch (err) {
			replace(events, h("tr", {}, h("td", { colspan: 4, class: "error" }, explain(err))));
		}
	}

	async function showStoredOutput(): Promise<void> {
		const out = await session.api.output(id);
		if (disposed) return;
		term.reset();
		written.clear();
		storedShown = true;
		term.write(out.output ?? "");
		outputState.textContent = out.output ? `stored output${out.truncated ? " (truncated at 1 MiB)" : ""}` : "no output";
	}

	let rereads: ReturnType<typeof setTimeout>[] = [];
	let last: Command | undefined;
	function onFrame(f: ObserverFrame): void {
		if (f.type === "reset") {
			term.reset();
			written.clear();
		} else if (f.type === "gap") {
			// The start of the output was pruned from the live log: show what Postgres kept.
			void showStoredOutput();
		} else if (f.type === "output" && f.id === id && !storedShown && !written.has(f.chunk)) {
			written.add(f.chunk);
			term.write(f.data);
			outputState.textContent = "live";
		} else if (f.type === "status" && f.id === id) {
			live.see(f);
			if (last) show(last);
			for (const t of rereads) clearTimeout(t);
			rereads = REREAD_AFTER_MS.map((ms) => setTimeout(() => void refresh(), ms));
		}
	}

	async function refresh(): Promise<void> {
		try {
			const c = await session.api.get(id);
			last = c;
			show(c);
			void loadEvents();
		} catch (err) {
			report(explain(err), false);
		}
	}

	async function start(): Promise<void> {
		try {
			const c = await session.api.get(id);
			if (disposed) return;
			agentId = c.agentId;
			last = c;
			show(c);
			void loadEvents();
			if (TERMINAL.has(c.status)) {
				await showStoredOutput();
			} else {
				outputState.textContent = "waiting for output…";
				stream = new AgentStream({ agentId, apiKey: session.key, since: 0, onFrame });
			}
		} catch (err) {
			replace(heading, "Command not found");
			report(explain(err), false);
		}
	}

	const el = h(
		"section",
		{ "aria-labelledby": "command-title" },
		crumbs,
		h("div", { class: "title-row" }, heading, statusPill, actions),
		notice,
		h("h2", {}, "Output ", outputState),
		termHost,
		h("div", { class: "columns" }, h("div", {}, h("h2", {}, "Fields"), fields), h("div", {}, h("h2", {}, "Events"), h("div", { class: "table-wrap" }, h("table", { class: "events", "aria-label": "Events" }, h("thead", {}, h("tr", {}, ...["At", "Transition", "Actor", "Detail"].map((t) => h("th", { scope: "col" }, t)))), events)))),
	);

	return {
		el,
		title: `Command ${id.slice(0, 8)}`,
		mounted() {
			term.open(termHost);
			void start();
		},
		dispose() {
			disposed = true;
			for (const t of rereads) clearTimeout(t);
			stream?.close();
			term.dispose();
		},
	};
}

