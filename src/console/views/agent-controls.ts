/**
 * An operator's levers on one agent: pause and resume dispatch, and stop
 * (cancel everything open). Each asks first where it cannot be undone and
 * says what the API answered; the page's next read shows the new state.
 */
import { h } from "../dom";
import { explain, type Session } from "../session";

export interface AgentControls {
	el: HTMLElement;
	/** The agent's record says it is (or is not) paused now. */
	show(paused: boolean): void;
}

export function agentControls(
	session: Session,
	agentId: string,
	report: (text: string, ok: boolean) => void,
	changed: () => void,
): AgentControls {
	let paused = false;
	const toggle = h("button", { type: "button" }, "Pause dispatch");
	const stop = h("button", { type: "button", class: "danger" }, "Stop all commands…");

	async function act(button: HTMLButtonElement, run: () => Promise<string>): Promise<void> {
		button.disabled = true;
		try {
			report(await run(), true);
		} catch (err) {
			report(`Not done: ${explain(err)}`, false);
		} finally {
			button.disabled = false;
			changed();
		}
	}

	toggle.addEventListener("click", () =>
		void act(toggle, async () => {
			if (paused) {
				await session.api.resume(agentId);
				paused = false;
				return "Resumed: commands that waited are sent now.";
			}
			await session.api.pause(agentId);
			paused = true;
			return "Paused: nothing new is sent to the agent; what it runs keeps running.";
		}).then(() => show(paused)),
	);
	stop.addEventListener("click", () => {
		if (!confirm(`Cancel every open command of ${agentId}? Queued ones end cancelled; running ones are sent a stop.`)) return;
		void act(stop, async () => {
			const r = await session.api.stop(agentId);
			return `Stopped: ${r.cancelled} cancelled before they were sent, ${r.cancelRequested} sent a stop.`;
		});
	});

	function show(now: boolean): void {
		paused = now;
		toggle.textContent = now ? "Resume dispatch" : "Pause dispatch";
	}

	const el = h("div", { class: "actions", role: "group", "aria-label": "Agent controls" }, toggle, stop);
	return { el, show };
}
