/** The harness's own calls to the API: bursts of commands beside the enqueuer's steady load. */
import { makePayload } from "../bench/lib/payload.ts";
import type { Stack } from "../bench/lib/stack.ts";

/** One `POST /v1/commands/batch` for `agents` (one command each); the ids created, and the status. */
export async function batch(stack: Stack, action: string, agents: string[]): Promise<{ status: number | "network"; ids: string[]; refused: number }> {
	try {
		const res = await fetch(`${stack.base}/v1/commands/batch`, {
			method: "POST",
			headers: { "content-type": "application/json", authorization: `Bearer ${stack.apiKey}` },
			body: JSON.stringify({ commands: agents.map((agentId, i) => ({ agentId, action, payload: makePayload(i) })) }),
		});
		const text = await res.text();
		if (res.status !== 201) return { status: res.status, ids: [], refused: agents.length };
		const items = (JSON.parse(text) as { items: { created: boolean; command?: { id: string } }[] }).items;
		const ids = items.flatMap((x) => (x.command ? [x.command.id] : []));
		return { status: res.status, ids, refused: items.length - ids.length };
	} catch {
		return { status: "network", ids: [], refused: agents.length };
	}
}
