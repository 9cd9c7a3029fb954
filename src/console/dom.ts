/** A few lines instead of a framework: build elements, replace children. */
type Child = Node | string | number | null | undefined | false;
type Props = Record<string, string | number | boolean | null | undefined | EventListener>;

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, props: Props = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
	const el = document.createElement(tag);
	for (const [k, v] of Object.entries(props)) {
		if (v === null || v === undefined || v === false) continue;
		if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
		else if (v === true) el.setAttribute(k, "");
		else el.setAttribute(k, String(v));
	}
	append(el, children);
	return el;
}

export function append(el: Element, children: Child[]): void {
	for (const c of children) {
		if (c === null || c === undefined || c === false) continue;
		el.append(c instanceof Node ? c : String(c));
	}
}

export function replace(el: Element, ...children: Child[]): void {
	el.replaceChildren();
	append(el, children);
}

/** "12 s ago", "3 min ago"; the exact time goes in a title. */
export function ago(iso: string | null, now = Date.now()): string {
	if (!iso) return "—";
	const s = Math.round((now - Date.parse(iso)) / 1000);
	if (s < 0) return `in ${duration(-s * 1000)}`;
	if (s < 5) return "just now";
	return `${duration(s * 1000)} ago`;
}

export function duration(ms: number): string {
	const s = ms / 1000;
	if (s < 1) return `${Math.round(ms)} ms`;
	if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
	if (s < 3600) return `${Math.round(s / 60)} min`;
	if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
	return `${(s / 86400).toFixed(1)} d`;
}

export function time(iso: string | null): HTMLElement {
	if (!iso) return h("span", { class: "muted" }, "—");
	return h("time", { datetime: iso, title: new Date(iso).toLocaleString() }, ago(iso));
}
