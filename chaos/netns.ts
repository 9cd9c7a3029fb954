/**
 * A network the harness can cut: a namespace joined to the host by a veth
 * pair, a TCP forwarder on the host's end that leads to wrangler dev (which
 * listens on 127.0.0.1 only, unreachable from inside a namespace), and
 * nftables rules inside the namespace that drop every packet to and from the
 * host. Drops, not rejects: neither side sees a reset or a FIN, as in a real
 * partition. The kernel here has no netem (NOTES.md), and needs none.
 */
import { execFileSync } from "node:child_process";
import net from "node:net";
import type { FaultProxy } from "../bench/lib/fault-proxy.ts";

export interface Partitionable {
	/** ws:// base the agents inside the namespace dial. */
	wsBase: string;
	/** Runs a child inside the namespace (rpc.ts spawnChild's wrapper). */
	wrapper: string[];
	cut(): void;
	heal(): void;
	close(): Promise<void>;
	/** The fault-injecting proxy the agents dial through, when the scenario put one there. */
	link?: FaultProxy;
}

function run(cmd: string, args: string[]): void {
	execFileSync(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
}

/** Why a partition cannot be made here (not root, no `ip` or `nft`), or undefined when it can. */
export function partitionUnavailable(): string | undefined {
	if (process.getuid?.() !== 0) return "network namespaces need root";
	for (const [tool, flag] of [["ip", "-V"], ["nft", "--version"]] as const) {
		try {
			execFileSync(tool, [flag], { stdio: "ignore" });
		} catch {
			return `\`${tool}\` is not installed (Debian: ${tool === "nft" ? "nftables" : "iproute2"})`;
		}
	}
	return undefined;
}

/** Sets up the namespace and the forwarder to `target` (host:port of wrangler dev). */
export async function partitionable(target: { host: string; port: number }): Promise<Partitionable> {
	const tag = `syc${process.pid % 100_000}`;
	const octet = process.pid % 250;
	const [hostIp, nsIp] = [`10.231.${octet}.1`, `10.231.${octet}.2`];
	const inNs = (cmd: string, ...args: string[]) => run("ip", ["netns", "exec", tag, cmd, ...args]);
	const teardown = () => {
		try {
			run("ip", ["netns", "del", tag]);
		} catch {
			// not there
		}
		try {
			run("ip", ["link", "del", `${tag}h`]);
		} catch {
			// went with the namespace
		}
	};
	teardown();
	// A harness stopped by a signal exits through process.exit: leave no namespace behind.
	process.once("exit", teardown);
	run("ip", ["netns", "add", tag]);
	run("ip", ["link", "add", `${tag}h`, "type", "veth", "peer", "name", `${tag}n`]);
	run("ip", ["link", "set", `${tag}n`, "netns", tag]);
	run("ip", ["addr", "add", `${hostIp}/30`, "dev", `${tag}h`]);
	run("ip", ["link", "set", `${tag}h`, "up"]);
	inNs("ip", "addr", "add", `${nsIp}/30`, "dev", `${tag}n`);
	inNs("ip", "link", "set", `${tag}n`, "up");
	inNs("ip", "link", "set", "lo", "up");
	const server = await forwarder(hostIp, target);
	const port = (server.address() as net.AddressInfo).port;
	return {
		wsBase: `ws://${hostIp}:${port}`,
		wrapper: ["ip", "netns", "exec", tag],
		cut: () => {
			inNs("nft", "add", "table", "inet", "chaos");
			inNs("nft", "add chain inet chaos out { type filter hook output priority 0; policy accept; }");
			inNs("nft", "add chain inet chaos in { type filter hook input priority 0; policy accept; }");
			inNs("nft", "add", "rule", "inet", "chaos", "out", "ip", "daddr", hostIp, "drop");
			inNs("nft", "add", "rule", "inet", "chaos", "in", "ip", "saddr", hostIp, "drop");
		},
		heal: () => inNs("nft", "delete", "table", "inet", "chaos"),
		close: async () => {
			await new Promise<void>((r) => server.close(() => r()));
			process.off("exit", teardown);
			teardown();
		},
	};
}

/** Pipes every connection on `host`:0 to `target`; destroys both ends when either closes. */
async function forwarder(host: string, target: { host: string; port: number }): Promise<net.Server> {
	const open = new Set<net.Socket>();
	const server = net.createServer((client) => {
		const upstream = net.connect(target.port, target.host);
		for (const s of [client, upstream]) {
			open.add(s);
			s.on("error", () => {});
			s.on("close", () => {
				open.delete(s);
				client.destroy();
				upstream.destroy();
			});
		}
		client.pipe(upstream);
		upstream.pipe(client);
	});
	const close = server.close.bind(server);
	server.close = (cb) => {
		for (const s of open) s.destroy();
		return close(cb);
	};
	await new Promise<void>((resolve, reject) => server.once("error", reject).listen(0, host, () => resolve()));
	return server;
}
