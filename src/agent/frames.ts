/**
 * What the agent's frames do, one small function per frame type. The
 * object has already checked the socket (current, token not expired) and
 * the frame budget; a frame reaches here parsed against the protocol.
 */
import type { AgentInfo } from "../db/status-writes";
import { log } from "../log";
import {
	type AckFrame,
	type AgentFrame,
	type AuthRefreshFrame,
	ErrorCode,
	type ErrorFrame,
	type HelloFrame,
	type OutputFrame,
	type ResultFrame,
} from "../protocol";
import * as answers from "./answers";
import type { AgentCore } from "./core";
import { admitOutput, recordOutput } from "./output";

type FrameHost = Pick<
	AgentCore,
	"name" | "sql" | "state" | "journal" | "auth" | "alarm" | "atomically" | "send" | "pump" | "changed" | "rememberHeard"
>;

export interface FrameContext {
	host: FrameHost;
	ws: WebSocket;
	generation: number;
	now: number;
}

export async function handleFrame(c: FrameContext, frame: AgentFrame): Promise<void> {
	switch (frame.type) {
		case "ping":
			return ping(c);
		case "hello":
			return hello(c, frame);
		case "ack":
			return ack(c, frame);
		case "result":
			return result(c, frame);
		case "output":
			return output(c, frame);
		case "auth.refresh":
			return refresh(c, frame);
	}
}

/** A ping that is not the exact text the edge answers; its time is kept through hibernation. */
async function ping({ host, ws }: FrameContext): Promise<void> {
	host.send(ws, { type: "pong" });
	host.atomically(() => host.rememberHeard());
}

async function hello({ host, generation, now }: FrameContext, frame: HelloFrame): Promise<void> {
	const { changed, sent } = host.atomically((tx) => {
		host.state.set("concurrency", frame.concurrency);
		rememberDescription(host, frame);
		// Kept for a catch-up that finishes after the hello (see catch-up.ts).
		host.state.set("hello_generation", generation);
		host.state.set("hello_running", frame.running);
		host.state.clearTimer("hello");
		const changed = answers.applyHello(tx, new Set(frame.running), now, generation);
		return { changed, sent: host.pump(tx).length };
	});
	host.alarm.markStale();
	log("info", "agent.hello", { agentId: host.name, generation, concurrency: frame.concurrency, running: frame.running.length, changed, sent });
	await host.changed();
}

/**
 * What the hello says of the agent: its actions gate the window from now on
 * (an empty list is none declared), and the rest goes to Postgres with the
 * presence write the connect makes anyway.
 */
function rememberDescription(host: FrameHost, frame: HelloFrame): void {
	const actions = frame.actions && frame.actions.length > 0 ? [...new Set(frame.actions)] : null;
	if (actions) host.state.set("actions", actions);
	else host.state.delete("actions");
	const info: AgentInfo = {
		version: frame.version ?? null,
		platform: frame.platform ?? null,
		concurrency: frame.concurrency,
		actions,
		labels: frame.labels ?? {},
	};
	const text = JSON.stringify(info);
	if (text !== host.state.get("agent_info")) {
		host.state.set("agent_info", text);
		host.state.set("agent_info_dirty", true);
		host.state.set("presence_dirty", true);
	}
}

async function ack({ host, ws, generation, now }: FrameContext, frame: AckFrame): Promise<void> {
	// An ack frees the window's bytes (window.ts), if not a slot: the fill may go on.
	const outcome = host.atomically((tx) => {
		const outcome = answers.acknowledge(tx, frame.id, now, generation);
		if (outcome === "applied") host.pump(tx);
		return outcome;
	});
	if (refuse(host, ws, outcome, frame.id)) return;
	host.alarm.markStale("answered");
	await host.changed();
}

async function result({ host, ws, now }: FrameContext, frame: ResultFrame): Promise<void> {
	const outcome = host.atomically((tx) => {
		const outcome = answers.finish(tx, frame.id, frame, now);
		if (outcome === "applied") host.pump(tx);
		return outcome;
	});
	if (refuse(host, ws, outcome, frame.id)) return;
	host.alarm.markStale("answered");
	await host.changed();
}

/** Logged for observers and journaled for Postgres with the command. */
async function output({ host, ws, now }: FrameContext, frame: OutputFrame): Promise<void> {
	const outcome = admitOutput(host.sql, frame.id, frame.seq);
	if (outcome === "repeat" || outcome === "past_cap") return;
	if (outcome !== "keep" && outcome !== "cut") return void refuse(host, ws, outcome, frame.id);
	host.atomically(() => {
		recordOutput(host.sql, frame.id, frame.seq, outcome, frame.data.length);
		if (outcome === "keep") host.journal.output(frame.id, frame.seq, frame.data, now);
		else host.journal.outputCut(frame.id, now);
	});
	await host.changed();
}

async function refresh({ host, ws, generation, now }: FrameContext, frame: AuthRefreshFrame): Promise<void> {
	const answer = await host.auth.refresh(host.name, frame.token, now);
	// The new expiry (set by refresh) is written, and the alarm follows it.
	host.atomically(() => undefined);
	host.alarm.markStale();
	host.send(ws, answer);
	log(answer.type === "error" ? "warn" : "info", "agent.token_refresh", {
		agentId: host.name,
		generation,
		outcome: answer.type === "error" ? "refused" : "refreshed",
	});
	const expiresAt = host.auth.expiresAt();
	if (expiresAt !== undefined) await host.alarm.require(expiresAt);
}

/** Answers a frame that changed nothing with the error it deserves; says whether it did not apply. */
function refuse(host: FrameHost, ws: WebSocket, outcome: answers.FrameOutcome, id: string): boolean {
	const error = refusalFor(outcome, id);
	if (error) host.send(ws, error);
	return outcome !== "applied";
}

function refusalFor(outcome: answers.FrameOutcome, id: string): ErrorFrame | undefined {
	switch (outcome) {
		case "unknown":
			return { type: "error", code: ErrorCode.UNKNOWN_COMMAND, message: "no such command for this agent", id };
		case "not_dispatched":
			return { type: "error", code: ErrorCode.NOT_DISPATCHED, message: "command has not been dispatched to this agent", id };
		default:
			// "duplicate" is a resend after a reconnect: at-least-once delivery makes it normal.
			return undefined;
	}
}
