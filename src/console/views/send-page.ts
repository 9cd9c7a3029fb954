/** The send form on its own page: after sending, follow the command. */
import { h } from "../dom";
import type { Session } from "../session";
import { sendForm } from "./send-form";
import type { View } from "./view";

export function sendView(session: Session): View {
	const el = h(
		"section",
		{ "aria-labelledby": "send-title" },
		h("h1", { id: "send-title" }, "Send a command"),
		session.scope === "write"
			? sendForm(session, { onSent: (c) => (location.hash = `#/commands/${c.id}`) })
			: h("p", { class: "error", role: "alert" }, "This API key is read-only: it cannot send commands."),
	);
	return { el, title: "Send a command", dispose() {} };
}
