/** Cancel with a confirmation, then say what the API answered. */
import { SwitchyardApiError } from "switchyard-client";
import { h } from "../dom";
import { explain, type Session } from "../session";

export function cancelButton(session: Session, command: { id: string; action: string }, report: (text: string, ok: boolean) => void): HTMLButtonElement {
	const button = h("button", { type: "button", class: "danger", "aria-label": `Cancel ${command.action} ${command.id}` }, "Cancel");
	button.addEventListener("click", async () => {
		if (!confirm(`Cancel ${command.action} (${command.id})?`)) return;
		button.disabled = true;
		try {
			const res = await session.api.cancel(command.id);
			report(
				res.outcome === "cancelled"
					? "Cancelled at once: the agent had not been sent it."
					: "Stop sent to the agent: it is cancelled when the agent confirms (or after 30 s without an answer).",
				true,
			);
		} catch (err) {
			if (err instanceof SwitchyardApiError && err.code === "already_finished") report("Not cancelled: the command had already finished.", false);
			else report(`Not cancelled: ${explain(err)}`, false);
			button.disabled = false;
		}
	});
	return button;
}
