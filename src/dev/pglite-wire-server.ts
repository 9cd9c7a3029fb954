/**
 * Serves one PGlite database on the Postgres wire protocol to many clients.
 *
 * PGlite is a single session, so clients take turns. The unit of a turn
 * matters: the extended protocol spreads one query over Parse/Bind/Execute/
 * Sync messages that share the session's unnamed statement and portal, so a
 * turn lasts until Sync (or a simple Query) and, while a transaction is open,
 * until it ends. Interleaving at message level (pglite-socket's multiplexer)
 * let concurrent connections clobber each other's statements.
 */
import net from "node:net";
import type { PGlite } from "@electric-sql/pglite";

const SSL_REQUEST = 80877103;
const GSS_REQUEST = 80877104;
const CANCEL_REQUEST = 80877102;
const TERMINATE = 0x58; // 'X'
const SYNC = 0x53; // 'S'
const QUERY = 0x51; // 'Q'

/** A lock one connection may hold across several messages. */
class SessionLock {
	private owner: number | null = null;
	private readonly waiters: { id: number; grant: () => void }[] = [];

	async acquire(id: number): Promise<void> {
		if (this.owner === id) return;
		if (this.owner === null) {
			this.owner = id;
			return;
		}
		await new Promise<void>((grant) => this.waiters.push({ id, grant }));
	}

	holds(id: number): boolean {
		return this.owner === id;
	}

	release(id: number): void {
		if (this.owner !== id) return;
		const next = this.waiters.shift();
		this.owner = next ? next.id : null;
		next?.grant();
	}
}

type Packet =
	| { kind: "negotiate" } // SSL/GSS request: we answer "N" (no encryption on loopback)
	| { kind: "cancel" }
	| { kind: "startup"; bytes: Buffer }
	| { kind: "message"; type: number; bytes: Buffer };

/** Splits a byte stream into packets: untyped until the startup packet, typed after. */
class Framer {
	private buf = Buffer.alloc(0);
	private typed = false;

	push(chunk: Buffer): Packet[] {
		this.buf = Buffer.concat([this.buf, chunk]);
		const out: Packet[] = [];
		for (;;) {
			if (this.typed) {
				if (this.buf.length < 5) break;
				const len = 1 + this.buf.readInt32BE(1);
				if (this.buf.length < len) break;
				const bytes = Buffer.from(this.buf.subarray(0, len));
				this.buf = this.buf.subarray(len);
				out.push({ kind: "message", type: bytes[0] ?? 0, bytes });
			} else {
				if (this.buf.length < 8) break;
				const len = this.buf.readInt32BE(0);
				if (this.buf.length < len) break;
				const code = this.buf.readInt32BE(4);
				const bytes = Buffer.from(this.buf.subarray(0, len));
				this.buf = this.buf.subarray(len);
				if (code === SSL_REQUEST || code === GSS_REQUEST) out.push({ kind: "negotiate" });
				else if (code === CANCEL_REQUEST) out.push({ kind: "cancel" });
				else {
					this.typed = true;
					out.push({ kind: "startup", bytes });
				}
			}
		}
		return out;
	}
}

export interface WireServer {
	port: number;
	close(): Promise<void>;
	/** Runs `fn` on the session between clients' turns: no client's transaction is open meanwhile. */
	exclusive<T>(fn: () => Promise<T>): Promise<T>;
}

/** The session lock's id for work of the server's own (exclusive); clients count up from 1. */
const SERVER_TURN = 0;

export async function serveWire(db: PGlite, opts: { host: string; port: number }): Promise<WireServer> {
	const lock = new SessionLock();
	const sockets = new Set<net.Socket>();
	let nextId = 1;

	const server = net.createServer((socket) => {
		const id = nextId++;
		sockets.add(socket);
		socket.setNoDelay(true);
		const framer = new Framer();
		let closed = false;
		let queue = Promise.resolve();

		// A client that vanishes mid-transaction must not leave it open for the next one.
		const endTurn = async () => {
			if (!lock.holds(id)) return;
			if (db.isInTransaction()) await db.exec("rollback").catch(() => {});
			lock.release(id);
		};

		const handle = async (p: Packet) => {
			if (p.kind === "negotiate") {
				socket.write("N");
				return;
			}
			if (p.kind === "cancel") {
				socket.end();
				return;
			}
			if (p.kind === "message" && p.type === TERMINATE) {
				await endTurn();
				socket.end();
				return;
			}
			await lock.acquire(id);
			if (closed) return endTurn();
			const out = await db.execProtocolRaw(new Uint8Array(p.bytes.buffer, p.bytes.byteOffset, p.bytes.byteLength));
			if (!closed && out.length > 0) socket.write(out);
			const turnOver = p.kind === "startup" || p.type === SYNC || p.type === QUERY;
			if (turnOver && !db.isInTransaction()) lock.release(id);
		};

		socket.on("data", (chunk) => {
			for (const p of framer.push(chunk)) {
				queue = queue
					.then(() => handle(p))
					.catch(() => {
						socket.destroy();
						return endTurn();
					});
			}
		});
		const gone = () => {
			if (closed) return;
			closed = true;
			sockets.delete(socket);
			queue = queue.then(endTurn);
		};
		socket.on("close", gone);
		socket.on("error", gone);
	});

	await new Promise<void>((resolve, reject) => {
		server.once("error", reject);
		server.listen(opts.port, opts.host, () => resolve());
	});
	return {
		port: (server.address() as net.AddressInfo).port,
		exclusive: async (fn) => {
			await lock.acquire(SERVER_TURN);
			try {
				return await fn();
			} finally {
				lock.release(SERVER_TURN);
			}
		},
		close: () =>
			new Promise<void>((resolve) => {
				for (const s of sockets) s.destroy();
				server.close(() => resolve());
			}),
	};
}
