/**
 * Fleet verbs meeting each other and delivery (issue 17): an emergency stop
 * by label in the middle of a fan-out, and a fan-out to a paused fleet.
 */
import { describe, expect, it } from "vitest";
import { AgentSocket, api, uniqueAgentId, waitFor, waitForStatus } from "../helpers/worker/harness";

type Fanout = { id: string; counts: Record<string, number>; done: boolean; commands?: { agentId: string; commandId: string }[] };

async function label(agentId: string, labels: Record<string, string>): Promise<void> {
	const res = await api(`/v1/agents/${agentId}`, { method: "PATCH", json: { labels } });
	expect(res.status).toBe(200);
}

async function fanout(json: unknown): Promise<Required<Fanout>> {
	const res = await api("/v1/fanouts", { method: "POST", json });
	expect(res.status, await res.clone().text()).toBe(201);
	return res.json();
}

async function command(id: string): Promise<{ status: string; blockedReason: string | null }> {
	return (await api(`/v1/commands/${id}`)).json();
}

describe("fleet verbs and delivery", () => {
	it("an emergency stop by label during a fan-out ends every target's command and pauses the fleet", async () => {
		const run = crypto.randomUUID().slice(0, 8);
		const online = uniqueAgentId("stop-online");
		const offline = uniqueAgentId("stop-offline");
		const bystander = uniqueAgentId("stop-bystander");
		for (const id of [online, offline]) await label(id, { rollout: run });
		await label(bystander, { rollout: `${run}-other` });
		const sOnline = await AgentSocket.connect(online);
		const sBystander = await AgentSocket.connect(bystander);

		const out = await fanout({ selector: { labels: { rollout: run } }, action: "migrate" });
		const byAgent = Object.fromEntries(out.commands.map((t) => [t.agentId, t.commandId]));
		const running = await sOnline.next("command");
		sOnline.send({ type: "ack", id: running.id });
		await waitForStatus(running.id, "acknowledged");
		// The offline agent's object holds its command, queued.
		await waitFor(async () => (await command(byAgent[offline] ?? "")).blockedReason === "agent_offline", "the offline target queued");

		const res = await api("/v1/agents/stop", { method: "POST", json: { selector: { labels: { rollout: run } }, pause: true } });
		expect(res.status).toBe(200);
		expect(await res.json()).toMatchObject({ matched: 2, reached: 2, unreached: [], cancelled: 1, cancelRequested: 1, paused: true });
		expect(await sOnline.next("cancel")).toMatchObject({ id: running.id });
		sOnline.send({ type: "result", id: running.id, status: "cancelled" });
		await waitForStatus(running.id, "cancelled");
		await waitForStatus(byAgent[offline] ?? "", "cancelled");
		await waitFor(async () => ((await (await api(`/v1/fanouts/${out.id}`)).json()) as Fanout).done, "the fan-out done");
		expect(((await (await api(`/v1/fanouts/${out.id}`)).json()) as Fanout).counts).toEqual({ cancelled: 2 });

		// Paused: a second fan-out to the same fleet waits, saying why; the other label's agent is untouched.
		const again = await fanout({ selector: { labels: { rollout: run } }, action: "migrate" });
		const waiting = again.commands.find((t) => t.agentId === online)?.commandId ?? "";
		await waitFor(async () => (await command(waiting)).blockedReason === "agent_paused", "the command waiting as agent_paused");
		await expect(sOnline.next("command", 300)).rejects.toThrow(/no command frame/);
		const other = await fanout({ selector: { labels: { rollout: `${run}-other` } }, action: "migrate" });
		expect((await sBystander.next("command")).id).toBe(other.commands[0]?.commandId);

		// The offline agent connects while paused: it is sent nothing, not even the cancelled one.
		const sOffline = await AgentSocket.connect(offline);
		await expect(sOffline.next("command", 300)).rejects.toThrow(/no command frame/);
		// Resumed, each gets the second fan-out's command.
		for (const id of [online, offline]) expect((await api(`/v1/agents/${id}/resume`, { method: "POST" })).status).toBe(200);
		expect((await sOnline.next("command")).id).toBe(waiting);
		expect((await sOffline.next("command")).id).toBe(again.commands.find((t) => t.agentId === offline)?.commandId);
		for (const s of [sOnline, sOffline, sBystander]) s.close();
	});
});
