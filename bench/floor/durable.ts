/**
 * The durable floor: the least any implementation of Switchyard's design
 * can do, run in the same runtime. The worker commits the command's row
 * before it forwards the command (one statement through Neon's HTTP query
 * path, as Switchyard's worker does); the agent's object keeps the command
 * in its SQLite buffer before it sends it, and on the result marks it
 * there and in Postgres (one statement on a kept WebSocket pool, as
 * Switchyard's objects do). No journal, no validation, no state machine,
 * no redelivery: what this costs over the bare floor is what the design
 * costs before any of Switchyard's own work.
 */
import { neon, neonConfig, Pool } from "@neondatabase/serverless";

export interface DurableEnv {
	/** Set, the floor is durable; unset, it is the bare floor. */
	DATABASE_URL?: string;
	/** The local relay (`host:port/v1`), which serves Neon's WebSocket and HTTP protocols. */
	NEON_WS_PROXY?: string;
}

export const TABLE = "floor_commands";

export const CREATE_TABLE = `create table if not exists ${TABLE} (
	id uuid primary key,
	agent_id text not null,
	action text not null,
	payload jsonb not null,
	status text not null default 'pending',
	created_at timestamptz not null default now(),
	completed_at timestamptz
);
create index if not exists ${TABLE}_action on ${TABLE} (action, status);`;

export interface Row {
	id: string;
	agentId: string;
	action: string;
	payload: unknown;
}

export interface Pushed {
	id: string;
	frame: string;
}

/**
 * The local relay's settings for both of the driver's paths, as
 * src/db/client.ts (configureDriver) and src/db/http.ts (configureFetch)
 * set them for Switchyard; written again here so the floor runs none of
 * Switchyard's modules.
 */
function useRelay(proxy: string | undefined): void {
	if (!proxy) return;
	neonConfig.fetchEndpoint = () => `http://${proxy.split("/")[0]}/sql`;
	neonConfig.wsProxy = (host, port) => `${proxy}?address=${host}:${port}`;
	neonConfig.useSecureWebSocket = false;
	neonConfig.pipelineTLS = false;
	neonConfig.pipelineConnect = false;
}

/** The worker's part: one INSERT for every row (a batch is one statement), committed before the caller forwards. */
export async function insertCommands(url: string, proxy: string | undefined, rows: Row[]): Promise<void> {
	useRelay(proxy);
	const params: unknown[] = [];
	const values = rows.map((r) => {
		params.push(r.id, r.agentId, r.action, JSON.stringify(r.payload));
		const n = params.length;
		return `($${n - 3}, $${n - 2}, $${n - 1}, $${n})`;
	});
	await neon(url).query(`insert into ${TABLE} (id, agent_id, action, payload) values ${values.join(", ")}`, params);
}

/**
 * The object's part: its buffer at its smallest (a row per command, its
 * status set by the result) and one UPDATE of Postgres per result on one
 * kept connection.
 */
export class ObjectDurability {
	private pool: Pool | undefined;

	constructor(
		private readonly sql: SqlStorage,
		private readonly url: string,
		private readonly proxy: string | undefined,
	) {
		sql.exec("create table if not exists buffer (id text primary key, frame text not null, status text not null default 'dispatched')");
	}

	/** Kept before the send: workerd holds the frames until this commits. */
	take(commands: Pushed[]): void {
		for (const c of commands) this.sql.exec("insert into buffer (id, frame) values (?, ?) on conflict (id) do nothing", c.id, c.frame);
	}

	async finish(id: string, status: string): Promise<void> {
		this.sql.exec("update buffer set status = ? where id = ?", status, id);
		if (!this.pool) {
			useRelay(this.proxy);
			this.pool = new Pool({ connectionString: this.url, max: 1, idleTimeoutMillis: 10_000 });
		}
		await this.pool.query(`update ${TABLE} set status = $2, completed_at = now() where id = $1`, [id, status]);
	}
}
