/**
 * Every agent, in one virtualized list: only the rows in view are in the
 * DOM, so ten thousand agents scroll like ten. The list is read page by page
 * (the API's cursor) and again every few seconds; the agents in view are
 * also watched through their observer streams, so a row flips online or
 * offline the moment its agent connects or drops.
 */
import { ago, h, replace } from "../dom";
import { explain, type Session } from "../session";
import { AgentStream } from "../stream";
import type { View } from "./view";

type Agent = Awaited<ReturnType<Session["api"]["agents"]>>["items"][number];

const ROW_HEIGHT = 40;
const OVERSCAN = 8;
const REFRESH_MS = 5_000;
/** The list stops reading after this many (the filter still finds any by id through the agent page). */
const MAX_AGENTS = 20_000;
/** At most this many rows in view are watched live; one socket each. */
const MAX_WATCHED = 30;
/** Watch what is in view once scrolling has settled this long. */
const WATCH_SETTLE_MS = 400;

const SORTS: Record<string, { label: string; compare: (a: Agent, b: Agent) => number }> = {
	id: { label: "Id", compare: (a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0) },
	online: { label: "Online first", compare: (a, b) => Number(b.online) - Number(a.online) || SORTS.id!.compare(a, b) },
	lastSeen: { label: "Last seen", compare: (a, b) => (b.lastSeenAt ?? "").localeCompare(a.lastSeenAt ?? "") },
	open: { label: "Open commands", compare: (a, b) => open(b) - open(a) || SORTS.id!.compare(a, b) },
};

function open(a: Agent): number {
	return a.commands.pending + a.commands.dispatched + a.commands.acknowledged;
}
function finished(a: Agent): number {
	return a.commands.completed + a.commands.failed + a.commands.cancelled + a.commands.expired;
}

export function agentsView(session: Session): View {
	let all: Agent[] = [];
	let shown: Agent[] = [];
	let filter = "";
	let sort = "id";
	let disposed = false;
	let timer: ReturnType<typeof setTimeout> | undefined;

	const summary = h("p", { class: "summary", role: "status" }, "Loading agents…");
	const error = h("p", { class: "error", role: "alert", hidden: true });
	const filterInput = h("input", { type: "search", id: "agent-filter", placeholder: "e.g. build-", autocomplete: "off" });
	const sortSelect = h("select", { id: "agent-sort" }, ...Object.entries(SORTS).map(([k, s]) => h("option", { value: k }, s.label)));
	const spacer = h("div", { class: "vspacer" });
	const body = h("div", { class: "vrows", role: "rowgroup" });
	const viewport = h("div", { class: "viewport", tabindex: "0", "aria-label": "Agents" }, spacer, body);
	const header = h(
		"div",
		{ class: "row agent-row head", role: "row" },
		...["Agent", "Status", "Connected since", "Last seen", "Running / concurrency", "Open", "Finished"].map((t) => h("span", { role: "columnheader" }, t)),
	);
	const table = h("div", { class: "agents-table", role: "table", "aria-label": "Agents", "aria-rowcount": "0" }, header, viewport);

	const el = h(
		"section",
		{ "aria-labelledby": "agents-title" },
		h("h1", { id: "agents-title" }, "Agents"),
		h(
			"div",
			{ class: "toolbar" },
			h("label", { for: "agent-filter" }, "Filter by id"),
			filterInput,
			h("label", { for: "agent-sort" }, "Sort"),
			sortSelect,
			summary,
		),
		error,
		table,
	);

	function apply(): void {
		const f = filter.trim().toLowerCase();
		shown = (f ? all.filter((a) => a.id.toLowerCase().includes(f)) : all.slice()).map(withPresence).sort(SORTS[sort]?.compare);
		spacer.style.height = `${shown.length * ROW_HEIGHT}px`;
		table.setAttribute("aria-rowcount", String(shown.length + 1));
		const online = all.filter((a) => withPresence(a).online).length;
		summary.textContent = `${all.length} agent${all.length === 1 ? "" : "s"}, ${online} online${f ? `; ${shown.length} match` : ""}`;
		render();
	}

	function row(a: Agent, index: number): HTMLElement {
		const load = a.concurrency === null ? "—" : `${a.running ?? 0} / ${a.concurrency}`;
		const r = h(
			"a",
			{
				class: "row agent-row",
				role: "row",
				href: `#/agents/${encodeURIComponent(a.id)}`,
				"aria-rowindex": index + 2,
				"data-agent": a.id,
				// Watched live through its stream (the rest of the list is read every 5 s).
				"data-watched": observing.has(a.id),
			},
			h("span", { role: "cell", class: "id" }, a.id),
			h("span", { role: "cell" }, h("span", { class: `pill ${a.online ? "ok" : "off"}` }, a.online ? "online" : "offline")),
			h("span", { role: "cell", title: a.connectedSince ?? "" }, a.connectedSince ? ago(a.connectedSince) : "—"),
			h("span", { role: "cell", title: a.lastSeenAt ?? "" }, ago(a.lastSeenAt)),
			h("span", { role: "cell" }, load),
			h("span", { role: "cell" }, open(a)),
			h("span", { role: "cell" }, finished(a)),
		);
		r.style.transform = `translateY(${index * ROW_HEIGHT}px)`;
		return r;
	}

	/** Observer streams of the agents in view, by id, and those whose stream has started. */
	const watched = new Map<string, AgentStream>();
	const observing = new Set<string>();
	let watchTimer: ReturnType<typeof setTimeout> | undefined;

	function watchVisible(): void {
		const top = Math.floor(viewport.scrollTop / ROW_HEIGHT);
		const inView = new Set(shown.slice(top, top + Math.min(MAX_WATCHED, Math.ceil(viewport.clientHeight / ROW_HEIGHT) + 1)).map((a) => a.id));
		for (const [id, stream] of watched) {
			if (!inView.has(id)) {
				stream.close();
				watched.delete(id);
				observing.delete(id);
			}
		}
		for (const id of inView) {
			if (watched.has(id)) continue;
			watched.set(
				id,
				new AgentStream({
					agentId: id,
					apiKey: session.key,
					onFrame: (f) => {
						if (f.type === "observing") {
							// The stream starts at the live end: whatever happened between the list's
							// read and now is in the API, so read the row once more.
							observing.add(id);
							void reread(id);
							return;
						}
						if (f.type !== "presence") return;
						presence.set(id, { online: f.state !== "disconnected", at: f.at, seen: Date.now() });
						apply();
						// The rest of the row (load, counts) from the API once it has caught up.
						for (const ms of [1_200, 4_000]) setTimeout(() => void reread(id), ms);
					},
				}),
			);
		}
	}

	/**
	 * Presence as the stream told it. The stream is ahead of the API (the
	 * object writes presence to Postgres a moment later), so for a while a
	 * read of the list must not flip the row back.
	 */
	const presence = new Map<string, { online: boolean; at: string; seen: number }>();
	const PRESENCE_TRUST_MS = 10_000;
	function withPresence(a: Agent): Agent {
		const p = presence.get(a.id);
		if (!p || Date.now() - p.seen > PRESENCE_TRUST_MS || p.online === a.online) return a;
		return p.online
			? { ...a, online: true, connectedSince: a.connectedSince ?? p.at, lastSeenAt: p.at }
			: { ...a, online: false, connectedSince: null, concurrency: null, running: null, lastSeenAt: p.at };
	}

	/** One agent's row again from the API (presence changed: online, connected since, load). */
	async function reread(id: string): Promise<void> {
		try {
			const fresh = await session.api.agent(id);
			const i = all.findIndex((a) => a.id === id);
			if (i >= 0 && !disposed) {
				all[i] = fresh;
				apply();
			}
		} catch {
			// the next full read brings it
		}
	}

	function render(): void {
		clearTimeout(watchTimer);
		watchTimer = setTimeout(watchVisible, WATCH_SETTLE_MS);
		const first = Math.max(0, Math.floor(viewport.scrollTop / ROW_HEIGHT) - OVERSCAN);
		const count = Math.ceil(viewport.clientHeight / ROW_HEIGHT) + OVERSCAN * 2;
		const rows: HTMLElement[] = [];
		for (let i = first; i < Math.min(shown.length, first + count); i++) {
			const a = shown[i];
			if (a) rows.push(row(a, i));
		}
		// Keep focus on the row the keyboard is on across a refresh.
		const focused = (document.activeElement as HTMLElement | null)?.dataset?.agent;
		replace(body, ...rows);
		if (focused) body.querySelector<HTMLElement>(`[data-agent="${CSS.escape(focused)}"]`)?.focus();
	}

	let frame = 0;
	viewport.addEventListener("scroll", () => {
		cancelAnimationFrame(frame);
		frame = requestAnimationFrame(render);
	});
	// Arrow keys move between rows, scrolling the list as they go.
	viewport.addEventListener("keydown", (e) => {
		if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
		const current = (document.activeElement as HTMLElement | null)?.dataset?.agent;
		let i = current ? shown.findIndex((a) => a.id === current) : -1;
		i = Math.max(0, Math.min(shown.length - 1, i + (e.key === "ArrowDown" ? 1 : -1)));
		e.preventDefault();
		const top = i * ROW_HEIGHT;
		if (top < viewport.scrollTop) viewport.scrollTop = top;
		else if (top + ROW_HEIGHT > viewport.scrollTop + viewport.clientHeight) viewport.scrollTop = top + ROW_HEIGHT - viewport.clientHeight;
		render();
		const id = shown[i]?.id;
		if (id) body.querySelector<HTMLElement>(`[data-agent="${CSS.escape(id)}"]`)?.focus();
	});
	filterInput.addEventListener("input", () => {
		filter = filterInput.value;
		viewport.scrollTop = 0;
		apply();
	});
	sortSelect.addEventListener("change", () => {
		sort = sortSelect.value;
		apply();
	});

	async function load(): Promise<void> {
		try {
			const next: Agent[] = [];
			let cursor: string | undefined;
			do {
				const page = await session.api.agents({ limit: "200", ...(cursor ? { cursor } : {}) });
				next.push(...page.items);
				cursor = page.nextCursor ?? undefined;
			} while (cursor && next.length < MAX_AGENTS && !disposed);
			if (disposed) return;
			all = next;
			error.hidden = true;
			apply();
		} catch (err) {
			error.textContent = `Could not read the agents: ${explain(err)}`;
			error.hidden = false;
		}
		if (!disposed) timer = setTimeout(() => void load(), REFRESH_MS);
	}
	void load();

	return {
		el,
		title: "Agents",
		dispose() {
			disposed = true;
			clearTimeout(timer);
			clearTimeout(watchTimer);
			for (const stream of watched.values()) stream.close();
			watched.clear();
			observing.clear();
		},
	};
}
