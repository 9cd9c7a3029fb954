/**
 * Enqueue a command (operator keys only). The payload is checked as JSON
 * while it is typed, and the form refuses to send until it parses; the
 * server's own validation errors are shown as it gave them.
 */
import { SwitchyardApiError } from "switchyard-client";
import { h } from "../dom";
import { explain, type Session } from "../session";

type Created = Awaited<ReturnType<Session["api"]["enqueue"]>>;

// Browsers compile `pattern` with the `v` flag, where `/` and `-` in a class need escaping.
const ID_PATTERN = "[A-Za-z0-9][A-Za-z0-9._:\\-]{0,127}";
const ACTION_PATTERN = "[A-Za-z0-9][A-Za-z0-9._:\\/\\-]{0,127}";

let formCount = 0;

export function sendForm(session: Session, opts: { agentId?: string; onSent: (c: Created, created: boolean) => void }): HTMLFormElement {
	const n = ++formCount;
	const id = (name: string) => `send-${n}-${name}`;
	const field = (label: string, input: HTMLElement, hint?: string) =>
		h("div", { class: "field" }, h("label", { for: input.id }, label), input, hint ? h("small", { id: `${input.id}-hint` }, hint) : null);

	const agent = h("input", { id: id("agent"), name: "agent", required: true, pattern: ID_PATTERN, value: opts.agentId ?? "", autocomplete: "off" });
	const action = h("input", { id: id("action"), name: "action", required: true, pattern: ACTION_PATTERN, placeholder: "echo", autocomplete: "off" });
	const payload = h("textarea", { id: id("payload"), name: "payload", rows: 4, spellcheck: "false", "aria-describedby": `${id("payload")}-hint` }, "{}");
	const priority = h("input", { id: id("priority"), name: "priority", type: "number", min: 0, max: 9, step: 1, value: 5 });
	const ttl = h("input", { id: id("ttl"), name: "ttl", type: "number", min: 1, step: 1, placeholder: "none" });
	const timeout = h("input", { id: id("timeout"), name: "timeout", type: "number", min: 1, step: 1, placeholder: "none" });
	const idem = h("input", { id: id("idem"), name: "idempotencyKey", pattern: "[A-Za-z0-9._:\\-]{1,128}", placeholder: "none", autocomplete: "off" });
	const submit = h("button", { type: "submit", class: "primary" }, "Send");
	const message = h("p", { class: "form-message", role: "status", "aria-live": "polite" });

	const payloadHint = "Any JSON value.";
	function checkPayload(): unknown {
		try {
			const value: unknown = JSON.parse(payload.value.trim() === "" ? "{}" : payload.value);
			payload.setCustomValidity("");
			payload.removeAttribute("aria-invalid");
			hint.textContent = payloadHint;
			hint.classList.remove("error");
			return value;
		} catch (err) {
			const why = `Not valid JSON: ${err instanceof Error ? err.message : String(err)}`;
			payload.setCustomValidity(why);
			payload.setAttribute("aria-invalid", "true");
			hint.textContent = why;
			hint.classList.add("error");
			return undefined;
		}
	}

	const payloadField = field("Payload (JSON)", payload, payloadHint);
	const hint = payloadField.querySelector("small") as HTMLElement;
	payload.addEventListener("input", () => {
		checkPayload();
		submit.disabled = payload.getAttribute("aria-invalid") === "true";
	});

	const form = h(
		"form",
		{ class: "send-form", "aria-label": "Send a command", novalidate: true },
		h(
			"div",
			{ class: "grid" },
			opts.agentId ? null : field("Agent", agent),
			field("Action", action),
			field("Priority (0-9)", priority),
			field("TTL (seconds)", ttl),
			field("Timeout (seconds)", timeout),
			field("Idempotency key", idem),
		),
		payloadField,
		h("div", { class: "actions" }, submit, message),
	);

	form.addEventListener("submit", async (e) => {
		e.preventDefault();
		const value = checkPayload();
		if (value === undefined || !form.reportValidity()) return;
		const num = (i: HTMLInputElement) => (i.value === "" ? undefined : Number(i.value));
		const body = {
			action: action.value,
			payload: value as never,
			priority: num(priority) ?? 5,
			...(num(ttl) !== undefined ? { ttlSeconds: num(ttl) } : {}),
			...(num(timeout) !== undefined ? { timeoutSeconds: num(timeout) } : {}),
			...(idem.value ? { idempotencyKey: idem.value } : {}),
		};
		submit.disabled = true;
		message.className = "form-message";
		message.textContent = "Sending…";
		try {
			const target = opts.agentId ?? agent.value;
			const res = await session.api.rpc.v1.agents[":agentId"].commands.$post({ param: { agentId: target }, json: body });
			if (!res.ok) {
				// SAFETY: every non-2xx answer of the API has this shape (src/errors.ts).
				const err = (await res.json().catch(() => ({}))) as { error?: { code?: string; message?: string; issues?: { path?: unknown[]; message?: string }[] } };
				const issues = err.error?.issues?.map((i) => `${(i.path ?? []).join(".") || "body"}: ${i.message}`).join("; ");
				throw new SwitchyardApiError(res.status, err.error?.code ?? "http_error", issues || err.error?.message || `HTTP ${res.status}`);
			}
			const cmd = await res.json();
			const created = res.status === 201;
			message.textContent = created ? `Sent: ${cmd.action} ${cmd.id}` : `Already sent with this idempotency key: ${cmd.id}`;
			message.classList.add("ok");
			opts.onSent(cmd, created);
		} catch (err) {
			message.textContent = explain(err);
			message.classList.add("error");
		} finally {
			submit.disabled = false;
		}
	});
	return form;
}
