/**
 * Typed HTTP client for the Switchyard API. Its request and response types
 * come from the worker's own routes (`hono/client` over `AppType`), so the
 * client cannot drift from the server.
 */
import { hc } from "hono/client";
import type { AppType } from "../app";
import type { Agent as AgentInfo, Command } from "../protocol";

export interface ClientOptions {
	/** e.g. https://switchyard.example.workers.dev or http://127.0.0.1:8787 */
	baseUrl: string;
	apiKey: string;
	fetch?: typeof fetch;
}

/** The raw typed client: `rpc.v1.agents[":agentId"].commands.$post({ param, json })`. */
export function createRpc(opts: ClientOptions) {
	return hc<AppType>(opts.baseUrl.replace(/\/+$/, ""), {
		headers: { authorization: `Bearer ${opts.apiKey}` },
		...(opts.fetch ? { fetch: opts.fetch } : {}),
	});
}

/** An API error with the server's stable code (see README: HTTP API). */
export class SwitchyardApiError extends Error {
	override name = "SwitchyardApiError";
	constructor(
		readonly status: number,
		readonly code: string,
		message: string,
	) {
		super(message);
	}
}

/** The success body, typed by the route; an error body becomes a SwitchyardApiError. */
async function unwrap<R extends { ok: boolean; status: number; json(): Promise<unknown> }>(
	res: R,
): Promise<Awaited<ReturnType<R["json"]>>> {
	// SAFETY: R's json() is typed by the route for its success statuses; this is that call.
	if (res.ok) return (await res.json()) as Awaited<ReturnType<R["json"]>>;
	// SAFETY: every non-2xx answer of the API has this shape (src/errors.ts).
	const body = (await res.json().catch(() => ({}))) as { error?: { code?: string; message?: string } };
	throw new SwitchyardApiError(res.status, body.error?.code ?? "http_error", body.error?.message ?? `HTTP ${res.status}`);
}

type Rpc = ReturnType<typeof createRpc>;

/** Which agents `listAgents` answers with. */
export interface AgentFilter {
	labels?: Record<string, string>;
	online?: boolean;
	prefix?: string;
	limit?: number;
	cursor?: string;
}
export type EnqueueInput = Parameters<Rpc["v1"]["agents"][":agentId"]["commands"]["$post"]>[0]["json"];
export type BatchInput = Parameters<Rpc["v1"]["commands"]["batch"]["$post"]>[0]["json"];
/** A command as this client returns it (from the route types). */
export type ApiCommand = Awaited<ReturnType<SwitchyardClient["get"]>>;
export type ListInput = NonNullable<Parameters<Rpc["v1"]["agents"][":agentId"]["commands"]["$get"]>[0]["query"]>;
/** A fan-out: `selector` or `agentIds`, plus the fields a single enqueue takes. */
export type FanoutInput = Parameters<Rpc["v1"]["fanouts"]["$post"]>[0]["json"];
/** Filters of GET /v1/commands; `status` and `label` (`"k=v"`) may be arrays. */
export type SearchInput = NonNullable<Parameters<Rpc["v1"]["commands"]["$get"]>[0]["query"]>;
/** A fan-out's progress as this client returns it. */
export type ApiFanout = Awaited<ReturnType<SwitchyardClient["getFanout"]>>;

/** Convenience methods over the typed client, with errors as `SwitchyardApiError`. */
export class SwitchyardClient {
	readonly rpc: Rpc;

	constructor(opts: ClientOptions) {
		this.rpc = createRpc(opts);
	}

	// Return types are inferred from the routes, not restated.

	enqueue(agentId: string, command: EnqueueInput) {
		return this.rpc.v1.agents[":agentId"].commands.$post({ param: { agentId }, json: command }).then(unwrap);
	}

	batch(commands: BatchInput["commands"]) {
		return this.rpc.v1.commands.batch.$post({ json: { commands } }).then(unwrap);
	}

	get(id: string) {
		return this.rpc.v1.commands[":id"].$get({ param: { id } }).then(unwrap);
	}

	list(agentId: string, query: ListInput = {}) {
		return this.rpc.v1.agents[":agentId"].commands.$get({ param: { agentId }, query }).then(unwrap);
	}

	/** The command's audit trail: every transition with `at`, `actor` and `detail`. */
	events(id: string) {
		return this.rpc.v1.commands[":id"].events.$get({ param: { id } }).then(unwrap);
	}

	/** The output the agent streamed for the command, as stored (the first 1 MiB). */
	output(id: string) {
		return this.rpc.v1.commands[":id"].output.$get({ param: { id } }).then(unwrap);
	}

	/** The presented key's id and scope (`read` or `write`); a wrong key is a 401. */
	whoami() {
		return this.rpc.v1.whoami.$get().then(unwrap);
	}

	cancel(id: string) {
		return this.rpc.v1.commands[":id"].cancel.$post({ param: { id } }).then(unwrap);
	}

	agents(query: { limit?: string; cursor?: string } = {}) {
		return this.rpc.v1.agents.$get({ query }).then(unwrap);
	}

	/**
	 * Agents matching every label given (operator's labels win over the
	 * agent's), `online` if given, and an id prefix; by id, `cursor` from the
	 * previous page's `nextCursor`.
	 */
	listAgents(filter: AgentFilter = {}) {
		const { labels, online, prefix, limit, cursor } = filter;
		return this.rpc.v1.agents
			.$get({
				query: {
					...(labels ? { label: Object.entries(labels).map(([k, v]) => `${k}=${v}`) } : {}),
					...(online === undefined ? {} : { online: online ? "true" : "false" }),
					...(prefix ? { prefix } : {}),
					...(limit === undefined ? {} : { limit: String(limit) }),
					...(cursor ? { cursor } : {}),
				},
			})
			.then(unwrap);
	}

	/** Sets the operator's labels on the agent; `null` removes one. Answers the agent's record. */
	labelAgent(agentId: string, labels: Record<string, string | null>) {
		return this.rpc.v1.agents[":agentId"].$patch({ param: { agentId }, json: { labels } }).then(unwrap);
	}

	/** Stops dispatching to the agent (what it runs keeps running) until `resume`. */
	pause(agentId: string) {
		return this.rpc.v1.agents[":agentId"].pause.$post({ param: { agentId } }).then(unwrap);
	}

	/** Lifts a pause; what waited is sent at once. */
	resume(agentId: string) {
		return this.rpc.v1.agents[":agentId"].resume.$post({ param: { agentId } }).then(unwrap);
	}

	/** Cancels every open command of the agent; `pause` also pauses it. Answers the counts. */
	stop(agentId: string, opts: { pause?: boolean } = {}) {
		return this.rpc.v1.agents[":agentId"].stop
			.$post({ param: { agentId }, query: opts.pause ? { pause: "true" } : {} })
			.then(unwrap);
	}

	/**
	 * The fleet's emergency stop: every agent the selector matches.
	 * `{ all: true }` targets every agent; without labels it is refused.
	 */
	stopFleet(selector: { labels?: Record<string, string>; online?: boolean; all?: true }, opts: { pause?: boolean } = {}) {
		return this.rpc.v1.agents.stop.$post({ json: { selector, pause: opts.pause ?? false } }).then(unwrap);
	}

	agent(agentId: string) {
		return this.rpc.v1.agents[":agentId"].$get({ param: { agentId } }).then(unwrap);
	}

	token(agentId: string, ttlSeconds?: number) {
		return this.rpc.v1.agents[":agentId"].token
			.$post({ param: { agentId }, json: ttlSeconds === undefined ? {} : { ttlSeconds } })
			.then(unwrap);
	}

	/** Revokes every token minted for the agent so far and closes its socket; mint a new token to let it back. */
	revoke(agentId: string) {
		return this.rpc.v1.agents[":agentId"].revoke.$post({ param: { agentId } }).then(unwrap);
	}

	reconcile(agentId: string) {
		return this.rpc.v1.agents[":agentId"].reconcile.$post({ param: { agentId } }).then(unwrap);
	}

	/**
	 * One command per target agent (at most 5,000): by `selector` (labels,
	 * and `online`) or by `agentIds`. Answers the fan-out's id, its target
	 * count and the command ids.
	 */
	fanout(input: FanoutInput) {
		return this.rpc.v1.fanouts.$post({ json: input }).then(unwrap);
	}

	/** A fan-out's counts by status, whether it is done, and a page of its targets. */
	getFanout(id: string, query: { limit?: string; cursor?: string } = {}) {
		return this.rpc.v1.fanouts[":id"].$get({ param: { id }, query }).then(unwrap);
	}

	/** Cancels the fan-out's open commands: queued ones end cancelled, running ones are asked to stop. */
	cancelFanout(id: string) {
		return this.rpc.v1.fanouts[":id"].cancel.$post({ param: { id } }).then(unwrap);
	}

	/** Commands across agents, newest first; every filter given must match. */
	searchCommands(query: SearchInput = {}) {
		return this.rpc.v1.commands.$get({ query }).then(unwrap);
	}

	/** A new command like a failed, cancelled or expired one (`retryOf` names it); 409 for others. */
	retry(id: string) {
		return this.rpc.v1.commands[":id"].retry.$post({ param: { id } }).then(unwrap);
	}

	/** Polls until the command is finished; `onUpdate` sees each status it passes through. */
	async wait(
		id: string,
		opts: { timeoutMs?: number; intervalMs?: number; onUpdate?: (c: ApiCommand) => void } = {},
	): Promise<ApiCommand> {
		const deadline = Date.now() + (opts.timeoutMs ?? 10 * 60_000);
		let last = "";
		for (;;) {
			const c = await this.get(id);
			if (c.status !== last) {
				last = c.status;
				opts.onUpdate?.(c);
			}
			if (["completed", "failed", "cancelled", "expired"].includes(c.status)) return c;
			if (Date.now() > deadline) throw new SwitchyardApiError(0, "wait_timeout", `command ${id} is still ${c.status}`);
			await new Promise((r) => setTimeout(r, opts.intervalMs ?? 250));
		}
	}
}
