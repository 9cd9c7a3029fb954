/**
 * The local stand-in for Neon's endpoints, so `@neondatabase/serverless`
 * reaches a plain Postgres exactly as it reaches Neon in production, by both
 * of its paths, on one port:
 * - WebSocket-to-TCP (the `Pool`/`Client` path, which the agent objects use):
 *   one TCP connection per WebSocket, bytes piped both ways;
 * - `POST /sql`, Neon's SQL-over-HTTP protocol (`neon()`, which the worker
 *   uses), served by sql-over-http.ts.
 *
 * It only ever dials the targets `allow` accepts, so it cannot be used as an
 * open proxy even by something else on this machine.
 */
import http from "node:http";
import net from "node:net";
import type { AddressInfo } from "node:net";
import { WebSocketServer, type WebSocket } from "ws";
import { type SqlOverHttpLimits, sqlOverHttp } from "./sql-over-http.ts";

export interface Relay {
	port: number;
	/** Value for NEON_WS_PROXY (the worker derives the `/sql` endpoint from it). */
	proxy: string;
	/** Open WebSocket connections, for tests and diagnostics. */
	connections(): number;
	/** WebSocket connections accepted since the relay started. */
	opened(): number;
	/** HTTP requests (`/sql`) served since the relay started. */
	sqlRequests(): number;
	/**
	 * Simulates a database outage (tests): while down, every open connection is
	 * dropped and new ones are refused.
	 */
	setDown(down: boolean): void;
	close(): Promise<void>;
}

export interface RelayOptions {
	port?: number;
	host?: string;
	allow: (host: string, port: number) => boolean;
	/** Bounds of the `/sql` path; its defaults suit the dev server. */
	sqlLimits?: Partial<SqlOverHttpLimits>;
}

export function loopbackOnly(host: string): boolean {
	return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

export async function startRelay(opts: RelayOptions): Promise<Relay> {
	const host = opts.host ?? "127.0.0.1";
	const sql = sqlOverHttp({ allow: opts.allow, isDown: () => down, limits: opts.sqlLimits });
	const server = http.createServer((req, res) => sql.handle(req, res));
	server.keepAliveTimeout = 60_000;
	const wss = new WebSocketServer({ server, perMessageDeflate: false });
	const open = new Set<{ ws: WebSocket; tcp: net.Socket }>();
	let down = false;
	let opened = 0;
	const dropAll = () => {
		for (const p of open) {
			p.tcp.destroy();
			p.ws.terminate();
		}
		open.clear();
	};

	wss.on("connection", (ws, req) => {
		if (down) {
			ws.terminate();
			return;
		}
		const target = parseTarget(req.url ?? "");
		if (!target || !opts.allow(target.host, target.port)) {
			ws.close(1008, "target not allowed");
			return;
		}
		opened++;
		const tcp = net.connect({ host: target.host, port: target.port });
		tcp.setNoDelay(true);
		const pair = { ws, tcp };
		open.add(pair);
		const teardown = () => {
			open.delete(pair);
			tcp.destroy();
			if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.close();
		};
		ws.on("message", (data: Buffer | ArrayBuffer | Buffer[]) => {
			const chunk = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);
			tcp.write(chunk);
		});
		tcp.on("data", (chunk) => ws.send(chunk, { binary: true }));
		ws.on("close", teardown);
		ws.on("error", teardown);
		tcp.on("close", teardown);
		tcp.on("error", teardown);
	});

	await new Promise<void>((resolve, reject) => {
		server.once("error", reject);
		server.listen(opts.port ?? 0, host, () => resolve());
	});
	const port = (server.address() as AddressInfo).port;
	return {
		port,
		proxy: `${host}:${port}/v1`,
		connections: () => open.size,
		opened: () => opened,
		sqlRequests: () => sql.requests(),
		setDown: (value) => {
			down = value;
			if (down) {
				dropAll();
				void sql.dropConnections();
			}
		},
		close: async () => {
			dropAll();
			await sql.close();
			await new Promise<void>((resolve) => wss.close(() => resolve()));
			server.closeAllConnections();
			await new Promise<void>((resolve) => server.close(() => resolve()));
		},
	};
}

function parseTarget(url: string): { host: string; port: number } | undefined {
	const address = new URL(url, "http://relay").searchParams.get("address");
	const m = address ? /^(.+):(\d{1,5})$/.exec(address) : null;
	if (!m?.[1] || !m[2]) return undefined;
	const port = Number(m[2]);
	return port > 0 && port < 65536 ? { host: m[1].replace(/^\[|\]$/g, ""), port } : undefined;
}
