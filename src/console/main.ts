/**
 * The console: a page over the public /v1 API and the agents' observer
 * streams, nothing private. Hash routes keep it one static page:
 * `#/agents`, `#/agents/<id>`, `#/commands/<id>`, `#/send`.
 */
import "./console.css";
import { forget, type Session, signIn, storedKey, explain } from "./session";
import { onStreamHealth } from "./stream";
import { agentView } from "./views/agent";
import { agentsView } from "./views/agents";
import { commandView } from "./views/command";
import { sendView } from "./views/send-page";
import { signInView } from "./views/signin";
import type { View } from "./views/view";

const main = document.getElementById("main") as HTMLElement;
const scopeEl = document.getElementById("who-scope") as HTMLElement;
const signOut = document.getElementById("sign-out") as HTMLButtonElement;
const serverPill = document.getElementById("health-server") as HTMLElement;
const streamPill = document.getElementById("health-stream") as HTMLElement;

let session: Session | undefined;
let view: View | undefined;

function mount(next: View): void {
	view?.dispose();
	view = next;
	main.replaceChildren(next.el);
	document.title = `${next.title} · Switchyard`;
	next.mounted?.();
}

function route(): void {
	if (!session) return;
	const hash = location.hash.replace(/^#/, "") || "/agents";
	const [, kind, rawId] = hash.split("/");
	const id = rawId ? decodeURIComponent(rawId) : undefined;
	if (kind === "agents" && id) mount(agentView(session, id));
	else if (kind === "commands" && id) mount(commandView(session, id));
	else if (kind === "send") mount(sendView(session));
	else mount(agentsView(session));
	main.focus({ preventScroll: true });
}

function signedIn(s: Session): void {
	session = s;
	document.body.dataset.scope = s.scope;
	scopeEl.textContent = s.scope === "write" ? "operator key" : "read-only key";
	scopeEl.title = s.keyId;
	signOut.hidden = false;
	for (const el of document.querySelectorAll<HTMLElement>("[data-write]")) el.hidden = s.scope !== "write";
	route();
}

function showSignIn(message = ""): void {
	session = undefined;
	delete document.body.dataset.scope;
	scopeEl.textContent = "";
	signOut.hidden = true;
	for (const el of document.querySelectorAll<HTMLElement>("[data-write]")) el.hidden = true;
	mount(signInView(signedIn, message));
}

signOut.addEventListener("click", () => {
	forget();
	showSignIn("Signed out.");
});
window.addEventListener("hashchange", route);

onStreamHealth((state, detail) => {
	const label: Record<string, string> = { idle: "stream idle", connecting: "stream connecting", open: "stream live", reconnecting: "stream reconnecting" };
	streamPill.textContent = `${label[state] ?? state}${detail && state === "reconnecting" ? ` (${detail})` : ""}`;
	streamPill.className = `pill ${state === "open" ? "ok" : state === "reconnecting" ? "warn" : ""}`;
});

async function health(): Promise<void> {
	try {
		const res = await fetch("/healthz");
		// SAFETY: /healthz answers {ok, db} (src/routes/health.ts).
		const body = (await res.json()) as { ok: boolean; db: string };
		serverPill.textContent = body.ok ? "server ok" : `database ${body.db}`;
		serverPill.className = `pill ${body.ok ? "ok" : "bad"}`;
	} catch {
		serverPill.textContent = "server unreachable";
		serverPill.className = "pill bad";
	}
}
void health();
setInterval(() => void health(), 15_000);

const key = storedKey();
if (key) {
	signIn(key).then(signedIn, (err: unknown) => {
		forget();
		showSignIn(explain(err));
	});
} else {
	showSignIn();
}
