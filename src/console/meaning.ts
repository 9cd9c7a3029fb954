/** Plain-language meanings of the API's machine codes (README: HTTP API; docs/operations.md). */
import type { BlockedReason, CommandStatus } from "switchyard-protocol";

export const BLOCKED: Record<BlockedReason, string> = {
	agent_offline: "The agent is not connected. It is sent as soon as the agent connects.",
	concurrency_full: "The agent is running as many commands as its concurrency allows. It is sent when one finishes.",
	awaiting_ack: "Sent to the agent; waiting for it to acknowledge. Sent again if no ack comes in time.",
	running: "The agent acknowledged it and is running it.",
	cancel_requested: "Cancel requested: waiting for the agent to confirm it stopped (cancelled anyway after 30 s).",
	agent_paused: "The agent is paused by an operator. It is sent once the agent is resumed.",
	action_unsupported: "The agent declared the actions it handles, and not this one. It is sent when an agent that declares it connects, or expires by its ttl.",
};

export const FAILURE: Record<string, string> = {
	undeliverable: "Sent maxAttempts times and never acknowledged.",
	lost: "Acknowledged, then the agent reconnected without it, with no attempts left.",
	timeout: "Not finished within timeoutSeconds of its first dispatch.",
	expired: "Not dispatched within ttlSeconds.",
	cancel_unconfirmed: "Cancel requested; the agent did not confirm in time.",
};

// protocol.ts's TERMINAL_STATUSES, written again on purpose: importing a value
// from the protocol module pulls zod into the page and more than doubles the
// bundle (375 KB → 834 KB, measured). The type checks each member is a status.
export const TERMINAL: ReadonlySet<string> = new Set<CommandStatus>(["completed", "failed", "cancelled", "expired"]);

export function blockedMeaning(reason: string | null): string {
	return reason && reason in BLOCKED ? BLOCKED[reason as BlockedReason] : "";
}
