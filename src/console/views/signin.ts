/** The sign-in form: one field, and a message that says why a key was refused. */
import { h } from "../dom";
import { explain, type Session, signIn } from "../session";
import type { View } from "./view";

export function signInView(onSignedIn: (s: Session) => void, message = ""): View {
	const input = h("input", { id: "api-key", name: "apiKey", type: "password", required: true, autocomplete: "off", spellcheck: "false", "aria-describedby": "api-key-help" });
	const error = h("p", { class: "error", role: "alert", id: "sign-in-error" }, message);
	const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
	const form = h(
		"form",
		{ class: "sign-in", "aria-labelledby": "sign-in-title" },
		h("h1", { id: "sign-in-title" }, "Sign in"),
		h("label", { for: "api-key" }, "API key"),
		input,
		h(
			"p",
			{ id: "api-key-help", class: "muted" },
			"An operator key (API_KEYS) may send and cancel commands; a read-only key (READ_API_KEYS) may watch. `npm run dev` prints one. The key is kept in this tab only (sessionStorage) and is forgotten when the tab closes.",
		),
		submit,
		error,
	);
	form.addEventListener("submit", async (e) => {
		e.preventDefault();
		const key = input.value.trim();
		if (!key) return;
		submit.disabled = true;
		error.textContent = "";
		try {
			onSignedIn(await signIn(key));
		} catch (err) {
			error.textContent = explain(err);
			input.focus();
			input.select();
		} finally {
			submit.disabled = false;
		}
	});
	return { el: form, title: "Sign in", mounted: () => input.focus(), dispose() {} };
}
