/**
 * Where the CPU goes, for a diagnosis rather than a figure: on the real local
 * stack (Postgres behind PgBouncer), samples workerd's CPU profile over the
 * inspector while it (a) connects `--agents` agents, or (b) with
 * `--flood SECONDS`, takes single enqueues with `--concurrency` in flight
 * for that long once they are connected. Prints each process's CPU seconds
 * and the top functions by inclusive and by self time.
 *
 *   npx tsx bench/tools/profile.ts --agents 400 --parallel 20
 *   npx tsx bench/tools/profile.ts --agents 100 --flood 10 --concurrency 8 --save /tmp/flood.cpuprofile
 *   npx tsx bench/tools/profile.ts --agents 3000 --parallel 25 --fleets 2 --reconnect --window 30   # figure 4's fleet
 */
import { copyFileSync, existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import WebSocket from "ws";
import { spawnChild } from "../lib/rpc.ts";
import { startSwitchyard } from "../lib/stack.ts";

// The profile is taken over wrangler's DevTools session, which the stack
// otherwise leaves off; with it on, every console.log also becomes an
// inspector event, a cost the figures of `npm run bench` do not carry.
process.env.SWITCHYARD_DEVTOOLS ??= "1";

const arg = (name: string, dflt: number) => {
	const i = process.argv.indexOf(`--${name}`);
	return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const agents = arg("agents", 500);
const parallel = arg("parallel", 20);
const inspectorPort = arg("inspector", 9229);
const floodSeconds = arg("flood", 0);
const concurrency = arg("concurrency", 8);
/** Like figure 4's fleet: agents reconnect after any close, split over this many processes. */
const reconnect = process.argv.includes("--reconnect");
const fleetCount = arg("fleets", 1);
/** With a connect: also print a profile of every this many seconds (rounded to 10 s). */
const windowSeconds = arg("window", 0);
/** `--save FILE`: also write the whole profile there (a .cpuprofile). */
const saveTo = process.argv.includes("--save") ? process.argv[process.argv.indexOf("--save") + 1] : undefined;

function cpuSeconds(pid: number): number {
	try {
		const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
		return (Number(f[11]) + Number(f[12])) / 100;
	} catch {
		return 0;
	}
}
function comm(pid: number): string {
	try {
		return `${readFileSync(`/proc/${pid}/comm`, "utf8").trim()}:${pid}`;
	} catch {
		return `?:${pid}`;
	}
}
const allPids = () => readdirSync("/proc").filter((d) => /^\d+$/.test(d)).map(Number);

async function cdp(url: string) {
	const ws = new WebSocket(url, { perMessageDeflate: false });
	await new Promise((r, j) => ws.once("open", r).once("error", j));
	let id = 0;
	const waiting = new Map<number, (v: unknown) => void>();
	ws.on("message", (d) => {
		const m = JSON.parse(d.toString()) as { id?: number; result?: unknown };
		if (m.id && waiting.has(m.id)) {
			waiting.get(m.id)?.(m.result);
			waiting.delete(m.id);
		}
	});
	return {
		send: (method: string, params: unknown = {}) =>
			new Promise<unknown>((r) => {
				const n = ++id;
				waiting.set(n, r);
				ws.send(JSON.stringify({ id: n, method, params }));
			}),
		close: () => ws.close(),
	};
}

interface Node {
	id: number;
	callFrame: { functionName: string; url: string; lineNumber: number };
	children?: number[];
}

type Profile = { nodes: Node[]; samples: number[]; timeDeltas: number[] };

function report(profile: Profile, rows: { inclusive: number; self: number; files: number }): void {
	const self = new Map<number, number>();
	for (let i = 0; i < profile.samples.length; i++) {
		const s = profile.samples[i] ?? 0;
		self.set(s, (self.get(s) ?? 0) + (profile.timeDeltas[i] ?? 0));
	}
	const total = [...self.values()].reduce((a, b) => a + b, 0);
	const byFn = new Map<string, number>();
	const byUrl = new Map<string, number>();
	for (const n of profile.nodes) {
		const t = self.get(n.id) ?? 0;
		const key = `${n.callFrame.functionName || "(anon)"} ${n.callFrame.url.split("/").slice(-2).join("/")}:${n.callFrame.lineNumber}`;
		byFn.set(key, (byFn.get(key) ?? 0) + t);
		const u = n.callFrame.url.split("/").slice(-2).join("/") || n.callFrame.functionName;
		byUrl.set(u, (byUrl.get(u) ?? 0) + t);
	}
	console.log(`profile: ${(total / 1e6).toFixed(1)} s sampled`);
	// Inclusive time: each sample counts once for every distinct function on its stack.
	const byId = new Map(profile.nodes.map((n) => [n.id, n]));
	const incl = new Map<string, number>();
	const walk = (id: number, onPath: Set<string>) => {
		const n = byId.get(id);
		if (!n) return;
		const path = n.callFrame.functionName ? new Set(onPath).add(n.callFrame.functionName) : onPath;
		const t = self.get(id) ?? 0;
		for (const name of path) incl.set(name, (incl.get(name) ?? 0) + t);
		for (const c of n.children ?? []) walk(c, path);
	};
	walk(profile.nodes[0]?.id ?? 1, new Set());
	const top = (title: string, times: Map<string, number>, n: number) => {
		if (n <= 0) return;
		console.log(title);
		for (const [k, v] of [...times].sort((a, b) => b[1] - a[1]).slice(0, n)) console.log(`  ${((v / total) * 100).toFixed(1).padStart(5)}%  ${k}`);
	};
	top("inclusive (a function's own time and its callees'):", incl, rows.inclusive);
	top("self time:", byFn, rows.self);
	top("by file:", byUrl, rows.files);
}

const stack = await startSwitchyard("real");
try {
	const targets = (await (await fetch(`http://127.0.0.1:${inspectorPort}/json`)).json()) as { webSocketDebuggerUrl: string; title: string }[];
	console.log("inspector targets:", targets.map((t) => t.title).join(", "));
	const target = targets.find((t) => t.title.includes("switchyard")) ?? targets[0];
	const session = target ? await cdp(target.webSocketDebuggerUrl) : undefined;
	await session?.send("Profiler.enable");
	await session?.send("Profiler.setSamplingInterval", { interval: 500 });

	const fleets = Array.from({ length: fleetCount }, () => spawnChild("load/agents.ts"));
	const ids = Array.from({ length: agents }, (_, i) => `prof-${i}`);
	const connectArgs = { wsBase: stack.wsBase, ids, secret: stack.secret, deflate: false, parallel, reconnect, concurrency: 1000, connectTimeoutMs: 120_000 };
	const connectAll = async () => {
		const rs = await Promise.all(
			fleets.map((f, i) => f.call<{ live: number; errors: string[] }>("connect", { ...connectArgs, ids: ids.filter((_, j) => j % fleetCount === i) })),
		);
		return { live: rs.reduce((s, r) => s + r.live, 0), errors: rs.flatMap((r) => r.errors) };
	};
	if (floodSeconds > 0) await connectAll();
	const pids = allPids();
	const before = new Map(pids.map((p) => [p, cpuSeconds(p)]));
	await session?.send("Profiler.start");
	const t0 = performance.now();
	if (floodSeconds > 0) {
		const enqueuer = spawnChild("load/enqueue.ts");
		const sent = await enqueuer.call<{ ok: number; errors: number }>("flood", {
			transport: { kind: "http", base: stack.base, apiKey: stack.apiKey, action: "profile.flood" },
			agents: ids,
			durationMs: floodSeconds * 1000,
			concurrency,
		});
		console.log(`enqueued ${sent.ok} (${sent.errors} errors) in ${floodSeconds} s: ${(sent.ok / floodSeconds).toFixed(1)}/s`);
		enqueuer.stop();
	} else {
		// Connects per 10 s, to see a slowdown as the fleet grows.
		let lastCount = 0;
		let ticks = 0;
		const ticker = setInterval(async () => {
			const counts = await Promise.all(fleets.map((f) => f.call<{ connected: number }>("drain")));
			const now = counts.reduce((s, c) => s + c.connected, 0);
			console.log(`  ${((performance.now() - t0) / 1000).toFixed(0).padStart(4)} s: ${now} connected (+${now - lastCount})`);
			lastCount = now;
			// --window: a profile of each window on its own, to see what changes as the fleet grows.
			if (windowSeconds > 0 && ++ticks % Math.max(1, Math.round(windowSeconds / 10)) === 0 && session) {
				const { profile } = (await session.send("Profiler.stop")) as { profile: Profile };
				await session.send("Profiler.start");
				console.log(`--- window ending at ${now} connected`);
				report(profile, { inclusive: 25, self: 15, files: 0 });
			}
		}, 10_000);
		const r = await connectAll().finally(() => clearInterval(ticker));
		console.log(`connected ${r.live}/${agents}: ${((r.live / (performance.now() - t0)) * 1000).toFixed(1)}/s; errors: ${r.errors.slice(0, 3).join("; ")}`);
	}
	const ms = performance.now() - t0;
	const { profile } = ((await session?.send("Profiler.stop")) ?? { profile: undefined }) as { profile?: Profile };
	const after = allPids();
	console.log(`CPU seconds per process over ${(ms / 1000).toFixed(1)} s:`);
	const cpu = after
		.map((p) => ({ p, d: cpuSeconds(p) - (before.get(p) ?? 0) }))
		.filter((x) => x.d > 0.2)
		.sort((a, b) => b.d - a.d);
	for (const x of cpu) console.log(`  cpu ${x.d.toFixed(1).padStart(6)} s  ${comm(x.p)}`);
	if (profile) report(profile, { inclusive: 45, self: 40, files: 15 });
	// For a closer look (a call tree in Chrome's devtools, or a script).
	if (profile && saveTo) {
		writeFileSync(saveTo, JSON.stringify(profile));
		// The bundle the profile's line numbers point into; wrangler deletes it on exit.
		const bundles = existsSync(".wrangler/tmp") ? readdirSync(".wrangler/tmp").map((d) => `.wrangler/tmp/${d}/index.js`) : [];
		const bundle = bundles.find((f) => existsSync(f));
		if (bundle) copyFileSync(bundle, `${saveTo}.js`);
	}
	session?.close();
	for (const f of fleets) f.stop();
} finally {
	await stack.stop();
}
