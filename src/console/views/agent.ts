/**
 * One agent: its state, and its commands newest first. Statuses move in
 * place as the agent's observer stream reports them (each reported change
 * reads that one command again for its blockedReason and timings); older
 * commands page in with the API's cursor.
 */
import type { ObserverFrame } from "switchyard-protocol";
import { ago, duration, h, replace, time } from "../dom";
import { blockedMeaning, TERMINAL } from "../meaning";
import { explain, type Session } from "../session";
import { LiveStatus, REREAD_AFTER_MS } from "../live-status";
import { AgentStream } from "../stream";
import { agentControls } from "./agent-controls";
import { cancelButton } from "./cancel";
import { sendForm } from "./send-form";
import type { View } from "./view";

type Command = Awaited<ReturnType<Session["api"]["get"]>>;

const PAGE = 50;
/** How often the newest page is read for commands that made no frame yet. */
const NEWEST_EVERY_MS = 5_000;

function timings(c: Command): string {
	const parts: string[] = [];
	const t = (iso: string | null) => (iso ? Date.parse(iso) : undefined);
	const created = t(c.createdAt) ?? 0;
	const dispatched = t(c.dispatchedAt);
	const acked = t(c.acknowledgedAt);
	const done = t(c.completedAt);
	if (dispatched !== undefined) parts.push(`sent +${duration(dispatched - created)}`);
	if (acked !== undefined) parts.push(`acked +${duration(acked - created)}`);
	if (done !== undefined) parts.push(`done +${duration(done - created)}`);
	return parts.join(", ");
}

/** `k=v` chips; the operator's labels are marked, and win over the agent's own on a clash. */
function labelList(own: Record<string, string>, operator: Record<string, string>): Node | string {
	const keys = [...new Set([...Object.keys(own), ...Object.keys(operator)])].sort();
	if (keys.length === 0) return "none";
	const list = h("span", { class: "labels" });
	for (const k of keys) {
		const set = k in operator;
		list.append(h("code", { class: "pill", title: set ? "set by an operator" : "said by the agent" }, `${k}=${set ? operator[k] : own[k]}`, set ? " ✎" : ""), " ");
	}
	return list;
}

export function agentView(session: Session, agentId: string): View {
	const rows = new Map<string, HTMLTableRowElement>();
	let cursor: string | null = null;
	const live = new LiveStatus();

	const info = h("dl", { class: "facts" });
	const presence = h("span", { class: "pill" }, "…");
	const pausedPill = h("span", { class: "pill warn", hidden: true, "data-testid": "paused" }, "paused");
	const notice = h("p", { class: "notice", role: "status", "aria-live": "polite" });
	const tbody = h("tbody");
	const older = h("button", { type: "button", hidden: true }, "Load older commands");
	const empty = h("p", { class: "muted", hidden: true }, "No commands yet.");

	function report(text: string, ok: boolean): void {
		notice.textContent = text;
		notice.className = `notice ${ok ? "ok" : "error"}`;
	}

	function commandRow(c: Command): HTMLTableRowElement {
		const reason = c.blockedReason;
		return h(
			"tr",
			{ "data-command": c.id, "data-status": c.status },
			h("td", {}, time(c.createdAt)),
			h("td", {}, h("a", { href: `#/commands/${c.id}` }, h("span", { class: "action" }, c.action), " ", h("code", { class: "short" }, c.id.slice(0, 8)))),
			h("td", {}, h("span", { class: `status s-${c.status}`, "data-testid": "status" }, c.status), c.errorCode ? h("span", { class: "code" }, ` ${c.errorCode}`) : null),
			h("td", { class: "num" }, c.priority),
			h("td", { class: "num" }, `${c.attempts}/${c.maxAttempts}`),
			h("td", {}, reason ? h("span", { title: blockedMeaning(reason) }, h("code", {}, reason), h("small", { class: "meaning" }, blockedMeaning(reason))) : ""),
			h("td", { class: "muted" }, timings(c)),
			h("td", {}, session.scope === "write" && !TERMINAL.has(c.status) ? cancelButton(session, c, report) : null),
		);
	}

	function upsert(fromApi: Command, atTop: boolean): void {
		const c = live.overlay(fromApi);
		const next = commandRow(c);
		const old = rows.get(c.id);
		if (old) old.replaceWith(next);
		else if (atTop) tbody.prepend(next);
		else tbody.append(next);
		rows.set(c.id, next);
		empty.hidden = rows.size > 0;
	}

	/** Pending re-reads per command: a burst of transitions shares them. */
	const rereads = new Map<string, ReturnType<typeof setTimeout>[]>();
	function refetch(id: string): void {
		for (const t of rereads.get(id) ?? []) clearTimeout(t);
		rereads.set(
			id,
			REREAD_AFTER_MS.map((ms) =>
				setTimeout(async () => {
					try {
						upsert(await session.api.get(id), true);
					} catch {
						// a command deleted by retention, or a passing network error: the next read tries again
					}
				}, ms),
			),
		);
	}

	/** Shows a status frame at once on a row the page has. */
	function applyFrame(f: Extract<ObserverFrame, { type: "status" }>): void {
		live.see(f);
		const row = rows.get(f.id);
		const status = row?.querySelector<HTMLElement>("[data-testid=status]");
		if (!row || !status) return;
		row.dataset.status = f.to;
		status.textContent = f.to;
		status.className = `status s-${f.to}`;
		if (TERMINAL.has(f.to)) row.querySelector("button.danger")?.remove();
	}

	async function loadAgent(): Promise<void> {
		try {
			const a = await session.api.agent(agentId);
			presence.textContent = a.online ? "online" : "offline";
			presence.className = `pill ${a.online ? "ok" : "off"}`;
			pausedPill.hidden = !a.paused;
			controls?.show(a.paused);
			const counts = Object.entries(a.commands)
				.filter(([, n]) => n > 0)
				.map(([s, n]) => `${n} ${s}`)
				.join(", ");
			replace(
				info,
				h("dt", {}, "Connected since"), h("dd", {}, a.connectedSince ? time(a.connectedSince) : "—"),
				h("dt", {}, "Last seen"), h("dd", {}, time(a.lastSeenAt)),
				h("dt", {}, "Running / concurrency"), h("dd", {}, a.concurrency === null ? "— (offline)" : `${a.running ?? 0} / ${a.concurrency}`),
				h("dt", {}, "Commands"), h("dd", {}, counts || "none"),
				h("dt", {}, "Dispatch"), h("dd", {}, a.paused && a.pausedAt ? h("span", {}, "paused ", time(a.pausedAt)) : "on"),
				h("dt", {}, "Version / platform"), h("dd", {}, `${a.version ?? "—"} / ${a.platform ?? "—"}`),
				h("dt", {}, "Labels"), h("dd", { "data-testid": "labels" }, labelList(a.agentLabels, a.operatorLabels)),
				h("dt", {}, "Actions"), h("dd", {}, a.actions ? a.actions.join(", ") || "none" : "any"),
			);
		} catch (err) {
			presence.textContent = "unknown";
			replace(info, h("dd", { class: "error" }, `This agent has not connected or been sent a command yet (${explain(err)})`));
		}
	}

	async function loadPage(): Promise<void> {
		try {
			const page = await session.api.list(agentId, { limit: String(PAGE), ...(cursor ? { cursor } : {}) });
			for (const c of page.items) if (!rows.has(c.id)) upsert(c, false);
			cursor = page.nextCursor;
			older.hidden = cursor === null;
			empty.hidden = rows.size > 0;
		} catch (err) {
			report(`Could not read the commands: ${explain(err)}`, false);
		}
	}
	older.addEventListener("click", () => void loadPage());

	const controls =
		session.scope === "write"
			? agentControls(session, agentId, report, () => {
					void loadAgent();
					rereadOpen();
				})
			: undefined;

	let agentTimer: ReturnType<typeof setTimeout> | undefined;
	const stream = new AgentStream({
		agentId,
		apiKey: session.key,
		onFrame(f: ObserverFrame) {
			if (f.type === "status") {
				applyFrame(f);
				refetch(f.id);
			}
			if (f.type === "presence" || f.type === "status") {
				// Presence and counts: one read of the agent per burst of events.
				clearTimeout(agentTimer);
				agentTimer = setTimeout(() => void loadAgent(), 200);
			}
			if (f.type === "reset" || f.type === "gap") void reloadAll();
		},
	});

	/**
	 * Reads the newest page for what the stream cannot tell: a command that
	 * waits (the agent paused, offline or busy) makes no frame until it is
	 * sent, so rows the page lacks are added; and with `open`, the open rows
	 * are read again, because the stream starts at the live end and a change
	 * made just before it opened reaches Postgres a moment later.
	 */
	async function readNewest(open: boolean): Promise<void> {
		try {
			const page = await session.api.list(agentId, { limit: String(PAGE) });
			for (const c of [...page.items].reverse()) {
				const row = rows.get(c.id);
				if (!row) upsert(c, true);
				else if (open && !TERMINAL.has(row.dataset.status ?? "")) upsert(c, false);
			}
		} catch {
			// the next read, or the next frame, tries again
		}
	}
	const settleTimers: ReturnType<typeof setTimeout>[] = [];
	function rereadOpen(): void {
		for (const ms of REREAD_AFTER_MS) settleTimers.push(setTimeout(() => void readNewest(true), ms));
	}

	async function reloadAll(): Promise<void> {
		rows.clear();
		tbody.replaceChildren();
		cursor = null;
		await Promise.all([loadAgent(), loadPage()]);
		rereadOpen();
	}
	void reloadAll();
	const newest = setInterval(() => void readNewest(false), NEWEST_EVERY_MS);
	// Relative times ("12 s ago") age while the page is open.
	const clock = setInterval(() => {
		for (const t of document.querySelectorAll<HTMLTimeElement>("main time[datetime]")) t.textContent = ago(t.dateTime);
	}, 5_000);

	const el = h(
		"section",
		{ "aria-labelledby": "agent-title" },
		h("p", { class: "crumbs" }, h("a", { href: "#/agents" }, "Agents"), " / "),
		h("h1", { id: "agent-title" }, agentId, " ", presence, " ", pausedPill),
		info,
		controls?.el,
		session.scope === "write"
			? h("details", { class: "send", open: true }, h("summary", {}, "Send a command to this agent"), sendForm(session, { agentId, onSent: (c) => upsert(c, true) }))
			: null,
		notice,
		h("h2", {}, "Commands"),
		h(
			"div",
			{ class: "table-wrap" },
			h(
				"table",
				{ class: "commands", "aria-label": `Commands of ${agentId}, newest first` },
				h("thead", {}, h("tr", {}, ...["Created", "Command", "Status", "Priority", "Attempts", "Waiting because", "Timings", ""].map((t) => h("th", { scope: "col" }, t)))),
				tbody,
			),
		),
		empty,
		older,
	);

	return {
		el,
		title: agentId,
		dispose() {
			stream.close();
			for (const ts of rereads.values()) for (const t of ts) clearTimeout(t);
			for (const t of settleTimers) clearTimeout(t);
			clearInterval(clock);
			clearInterval(newest);
			clearTimeout(agentTimer);
		},
	};
}
