/**
 * A TCP proxy that can misbehave, between the relay and PgBouncer: the
 * runtime's only way to Postgres, so a fault here is a fault of the link
 * between the worker (and its objects) and the database. The chaos suite
 * also puts one between the agents and the runtime (`postgres: false`: the
 * bytes are not read as Postgres messages, so no unclear commits there). The kernel has no
 * netem (NOTES.md); this does in user space what the chaos suite needs:
 * - blackhole: bytes stop moving both ways, nothing is closed (a silent
 *   link); they are held and delivered on heal, as TCP retransmits them;
 * - slow: every chunk waits `delayMs` before it is passed on, in order;
 * - reset: every open connection is destroyed at once;
 * - unclear commits: on a share of transactions that commit, the server's
 *   reply is dropped and the connection cut right after Postgres committed,
 *   so the client cannot tell whether its write landed.
 */
import net from "node:net";

export interface FaultProxy {
	port: number;
	setBlackhole(on: boolean): void;
	setDelay(ms: number): void;
	/** Destroys every open connection; returns how many. */
	reset(): number;
	/** Share (0..1) of committed transactions whose reply is dropped. */
	setUnclearCommits(share: number): void;
	/** Replies dropped after a commit since the proxy started. */
	unclear(): number;
	connections(): number;
	close(): Promise<void>;
}

/** A statement that changes rows: writes here are data-modifying CTEs whose tag is SELECT, so the text tells. */
const WRITE = /\b(insert|update|delete)\b/i;

/**
 * Splits one direction of the Postgres protocol into messages: a type byte
 * and an int32 length that counts itself; the client's first messages
 * (SSLRequest, startup, cancel) have no type byte. `onMessage` gets the
 * type, the offset in the chunk where the message began (-1 if in an
 * earlier chunk) and, for types in `keep`, the body; it returns true to stop.
 */
class Messages {
	private header = Buffer.alloc(0);
	private type = 0;
	private left = 0;
	private body: Buffer[] = [];
	private began = -1;
	constructor(
		private untyped: number,
		private keep: Set<number>,
		private onMessage: (type: number, began: number, body: Buffer) => boolean,
	) {}

	/** Returns the offset of the message that stopped it, or -1. */
	feed(chunk: Buffer): number {
		let i = 0;
		this.began = this.left > 0 || this.header.length > 0 ? -1 : 0;
		while (i < chunk.length) {
			if (this.left === 0) {
				const size = this.untyped > 0 ? 4 : 5;
				if (this.header.length === 0) this.began = i;
				const take = chunk.subarray(i, i + size - this.header.length);
				this.header = Buffer.concat([this.header, take]);
				i += take.length;
				if (this.header.length < size) continue;
				this.type = this.untyped > 0 ? 0 : (this.header[0] ?? 0);
				const len = this.header.readInt32BE(size - 4);
				this.header = Buffer.alloc(0);
				this.left = len - 4;
				this.body = [];
				if (this.left === 0 && this.end()) return Math.max(0, this.began);
				continue;
			}
			const take = chunk.subarray(i, i + this.left);
			if (this.type === 0 || this.keep.has(this.type)) this.body.push(take);
			i += take.length;
			this.left -= take.length;
			if (this.left === 0 && this.end()) return Math.max(0, this.began);
		}
		return -1;
	}

	private end(): boolean {
		const body = Buffer.concat(this.body);
		if (this.type === 0) {
			// SSLRequest or GSSENCRequest: one more untyped message (the startup) follows.
			const code = body.length >= 4 ? body.readInt32BE(0) : 0;
			if (code !== 80877103 && code !== 80877104) this.untyped = 0;
			return false;
		}
		return this.onMessage(this.type, this.began, body);
	}
}

/**
 * Follows one connection's conversation to find where a transaction ended
 * with a commit: a `ReadyForQuery` with status `I` (idle) closing a cycle
 * that committed a block (`COMMIT`), or that ran a write outside one (an
 * implicit transaction commits before Postgres says it is ready), with no
 * error. Postgres flushes that reply only once the commit is done.
 */
class Conversation {
	/** Per cycle the client sent (a Query, or messages up to a Sync): whether it wrote. */
	private cycles: boolean[] = [];
	private parsedWrite = false;
	private committedTag = false;
	private failed = false;
	/** Where the current cycle's reply began in the current server chunk (-1: in an earlier one; -2: not yet). */
	private replyStart = -2;
	readonly client: Messages;
	readonly server: Messages;
	constructor(cut: () => boolean) {
		const Q = 0x51;
		const P = 0x50;
		const S = 0x53;
		this.client = new Messages(1, new Set([Q, P]), (type, _at, body) => {
			if (type === Q) this.cycles.push(WRITE.test(body.toString("utf8")));
			else if (type === P) this.parsedWrite ||= WRITE.test(body.toString("utf8"));
			else if (type === S) {
				this.cycles.push(this.parsedWrite);
				this.parsedWrite = false;
			}
			return false;
		});
		const C = 0x43;
		const Z = 0x5a;
		const E = 0x45;
		this.server = new Messages(0, new Set([C, Z]), (type, at, body) => {
			if (this.replyStart === -2) this.replyStart = at;
			if (type === C && body.toString("latin1").startsWith("COMMIT")) this.committedTag = true;
			else if (type === E) this.failed = true;
			else if (type === Z) {
				const wrote = this.cycles.shift() ?? false;
				const committed = body.toString("latin1") === "I" && !this.failed && (this.committedTag || wrote);
				this.committedTag = false;
				this.failed = false;
				const start = this.replyStart;
				this.replyStart = -2;
				if (committed && cut()) {
					this.stopAt = Math.max(0, start);
					return true;
				}
			}
			return false;
		});
	}
	stopAt = -1;

	/** Offset in `chunk` from which the reply is to be dropped, or -1. */
	fromServer(chunk: Buffer): number {
		// A reply that began in an earlier chunk was forwarded: drop from this chunk's start.
		if (this.replyStart >= 0) this.replyStart = -1;
		this.stopAt = -1;
		return this.server.feed(chunk) >= 0 ? this.stopAt : -1;
	}
}

export async function startFaultProxy(target: { host: string; port: number }, opts: { postgres?: boolean } = {}): Promise<FaultProxy> {
	const postgres = opts.postgres ?? true;
	let blackhole = false;
	let delayMs = 0;
	let unclearShare = 0;
	let unclearCount = 0;
	const open = new Set<{ client: net.Socket; upstream: net.Socket; flush(): void }>();

	const server = net.createServer((client) => {
		const upstream = net.connect(target.port, target.host);
		client.setNoDelay(true);
		upstream.setNoDelay(true);
		const talk = new Conversation(() => unclearShare > 0 && Math.random() < unclearShare);
		let dead = false;
		const kill = () => {
			if (dead) return;
			dead = true;
			open.delete(pair);
			client.destroy();
			upstream.destroy();
		};
		/** Chunks held (blackhole) or waiting their delay, per direction, in order. */
		const queues = { up: [] as { at: number; data: Buffer }[], down: [] as { at: number; data: Buffer }[] };
		let timer: NodeJS.Timeout | undefined;
		const pump = () => {
			timer = undefined;
			if (dead || blackhole) return;
			const now = Date.now();
			for (const [dir, to] of [["up", upstream], ["down", client]] as const) {
				const q = queues[dir];
				while (q.length && (q[0]?.at ?? 0) <= now) {
					const c = q.shift();
					if (c) to.write(c.data);
				}
			}
			const next = Math.min(queues.up[0]?.at ?? Infinity, queues.down[0]?.at ?? Infinity);
			if (next !== Infinity) timer = setTimeout(pump, Math.max(1, next - now));
		};
		const pair = { client, upstream, flush: pump };
		open.add(pair);
		const push = (dir: "up" | "down", data: Buffer) => {
			if (!blackhole && delayMs === 0 && queues[dir].length === 0) {
				(dir === "up" ? upstream : client).write(data);
				return;
			}
			queues[dir].push({ at: Date.now() + delayMs, data });
			if (!timer && !blackhole) timer = setTimeout(pump, delayMs);
		};
		client.on("data", (d: Buffer) => {
			if (postgres) talk.client.feed(d);
			push("up", d);
		});
		upstream.on("data", (d: Buffer) => {
			if (!postgres) return push("down", d);
			// Always read, so the parser is in step with the stream when the fault starts.
			const at = talk.fromServer(d);
			if (at < 0) return push("down", d);
			unclearCount++;
			if (at > 0) push("down", d.subarray(0, at));
			// What was queued before the commit's reply still goes; then the cut.
			const last = queues.down.at(-1);
			if (last) setTimeout(kill, Math.max(0, last.at - Date.now()) + 5);
			else setImmediate(kill);
			upstream.pause();
			upstream.removeAllListeners("data");
		});
		for (const s of [client, upstream]) {
			s.on("error", kill);
			s.on("close", kill);
		}
	});
	await new Promise<void>((resolve, reject) => server.once("error", reject).listen(0, "127.0.0.1", () => resolve()));
	const port = (server.address() as net.AddressInfo).port;
	return {
		port,
		setBlackhole: (on) => {
			blackhole = on;
			if (!on) for (const p of open) p.flush();
		},
		setDelay: (ms) => {
			delayMs = ms;
		},
		reset: () => {
			const n = open.size;
			for (const p of [...open]) {
				p.client.resetAndDestroy();
				p.upstream.resetAndDestroy();
			}
			open.clear();
			return n;
		},
		setUnclearCommits: (share) => {
			unclearShare = share;
		},
		unclear: () => unclearCount,
		connections: () => open.size,
		close: async () => {
			for (const p of [...open]) {
				p.client.destroy();
				p.upstream.destroy();
			}
			open.clear();
			await new Promise<void>((r) => server.close(() => r()));
		},
	};
}
