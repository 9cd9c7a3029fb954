/**
 * A TCP server that speaks just enough of the Postgres wire protocol to
 * script what a server does to a client: start-up with backend key data,
 * simple queries answered, refused or left hanging, and CancelRequests
 * recorded. For the faults a real server will not produce on demand.
 */
import net from "node:net";

export interface ScriptedQuery {
	text: string;
	/** The connection it came on, with the key a CancelRequest names. */
	conn: ScriptedConnection;
}

export interface ScriptedConnection {
	processID: number;
	socket: net.Socket;
	/** Answers the query under way with an empty result. */
	answer(): void;
	/** Answers the query under way with an ErrorResponse. */
	refuse(code: string, message: string): void;
}

export interface CancelRecord {
	processID: number;
	/** True if the client closed its side before the server closed the socket. */
	clientHungUpFirst: boolean;
}

export interface ScriptedPostgres {
	url: string;
	queries: ScriptedQuery[];
	cancels: CancelRecord[];
	/** Connections the server saw end (either side), by process id. */
	closed: number[];
	close(): Promise<void>;
}

export interface Script {
	/** What to do with a query; default: answer it. */
	onQuery?: (q: ScriptedQuery) => void;
	/** What to do with a cancel for a connection; default: nothing (the query runs on). */
	onCancel?: (conn: ScriptedConnection) => void;
	/** How long the server takes to act on a cancel before it closes that socket. */
	cancelCloseMs?: number;
}

function message(type: string, body: Buffer): Buffer {
	const b = Buffer.alloc(5 + body.length);
	b.write(type, 0, "latin1");
	b.writeInt32BE(4 + body.length, 1);
	body.copy(b, 5);
	return b;
}

const cstring = (s: string) => Buffer.from(`${s}\0`, "utf8");
const CANCEL_CODE = 80877102;

export async function scriptedPostgres(script: Script = {}): Promise<ScriptedPostgres> {
	const queries: ScriptedQuery[] = [];
	const cancels: CancelRecord[] = [];
	const closed: number[] = [];
	const byPid = new Map<number, ScriptedConnection>();
	let nextPid = 1000;

	const server = net.createServer((socket) => {
		socket.on("error", () => {});
		let buf = Buffer.alloc(0);
		let conn: ScriptedConnection | undefined;
		socket.on("data", (chunk: Buffer) => {
			buf = Buffer.concat([buf, chunk]);
			if (!conn) {
				if (buf.length < 8) return;
				const len = buf.readInt32BE(0);
				if (buf.length < len) return;
				if (buf.readInt32BE(4) === CANCEL_CODE) {
					const processID = buf.readInt32BE(8);
					const record = { processID, clientHungUpFirst: false };
					cancels.push(record);
					let serverDone = false;
					socket.on("end", () => {
						if (!serverDone) record.clientHungUpFirst = true;
					});
					const target = byPid.get(processID);
					setTimeout(() => {
						if (target) script.onCancel?.(target);
						serverDone = true;
						socket.end();
					}, script.cancelCloseMs ?? 0);
					buf = Buffer.alloc(0);
					return;
				}
				buf = buf.subarray(len);
				const processID = nextPid++;
				const c: ScriptedConnection = {
					processID,
					socket,
					answer: () => {
						socket.write(Buffer.concat([message("C", cstring("SELECT 0")), message("Z", Buffer.from("I"))]));
					},
					refuse: (code, msg) => {
						const fields = Buffer.concat([Buffer.from("S"), cstring("ERROR"), Buffer.from("C"), cstring(code), Buffer.from("M"), cstring(msg), Buffer.from([0])]);
						socket.write(Buffer.concat([message("E", fields), message("Z", Buffer.from("I"))]));
					},
				};
				conn = c;
				byPid.set(processID, c);
				socket.on("close", () => closed.push(processID));
				const key = Buffer.alloc(8);
				key.writeInt32BE(processID, 0);
				key.writeInt32BE(4242, 4);
				socket.write(Buffer.concat([message("R", Buffer.from([0, 0, 0, 0])), message("K", key), message("Z", Buffer.from("I"))]));
			}
			while (buf.length >= 5) {
				const len = buf.readInt32BE(1);
				if (buf.length < 1 + len) return;
				const type = String.fromCharCode(buf[0] ?? 0);
				const body = buf.subarray(5, 1 + len);
				buf = buf.subarray(1 + len);
				if (type === "X") return void socket.end();
				if (type === "Q") {
					const q = { text: body.subarray(0, body.indexOf(0)).toString("utf8"), conn };
					queries.push(q);
					(script.onQuery ?? ((x: ScriptedQuery) => x.conn.answer()))(q);
				}
			}
		});
	});
	await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
	const port = (server.address() as net.AddressInfo).port;
	return {
		url: `postgres://postgres@127.0.0.1:${port}/db`,
		queries,
		cancels,
		closed,
		close: async () => {
			for (const c of byPid.values()) c.socket.destroy();
			await new Promise((r) => server.close(r));
		},
	};
}
