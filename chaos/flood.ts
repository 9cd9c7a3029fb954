/**
 * The hostile scenario's HTTP flood, in its own process so the harness's
 * event loop (which times the canary) is not the one saturated: GETs of
 * /healthz and /metrics, alternating, at a fixed rate for a duration.
 *
 * node:http on kept-alive sockets, not fetch: on this machine's two cores
 * undici spent about 1 ms of CPU per request, so the flooder, not the
 * server, set the rate it reached (195/s of the 2,000 asked).
 */
import http from "node:http";
import { serve } from "../bench/lib/rpc.ts";
import { sleep, wallNow } from "../bench/lib/stats.ts";

serve({
	async flood(a: { base: string; apiKey: string; rate: number; durationMs: number; maxInFlight: number }) {
		const got: Record<string, number> = {};
		const tally = (k: string) => {
			got[k] = (got[k] ?? 0) + 1;
		};
		const agent = new http.Agent({ keepAlive: true, maxSockets: a.maxInFlight });
		const get = (path: string) =>
			new Promise<void>((resolve) => {
				const req = http.get(`${a.base}${path}`, { agent, headers: { authorization: `Bearer ${a.apiKey}` } }, (res) => {
					res.resume();
					res.on("end", () => {
						tally(`${path} ${res.statusCode}`);
						resolve();
					});
					res.on("error", () => {
						tally(`${path} network`);
						resolve();
					});
				});
				req.on("error", () => {
					tally(`${path} network`);
					resolve();
				});
			});
		const start = wallNow();
		const inFlight = new Set<Promise<void>>();
		let due = 0;
		let sent = 0;
		let skipped = 0;
		while (wallNow() - start < a.durationMs) {
			const wait = start + (due / a.rate) * 1000 - wallNow();
			if (wait > 1) await sleep(wait);
			due++;
			if (inFlight.size >= a.maxInFlight) {
				// Open loop: a request that cannot be sent on time is counted, not queued.
				skipped++;
				await Promise.race(inFlight);
				continue;
			}
			// Alternated by what is sent, not by what was due: skips would otherwise all land on one path.
			const path = sent++ % 2 === 0 ? "/healthz" : "/metrics";
			const req = get(path).finally(() => inFlight.delete(req));
			inFlight.add(req);
		}
		await Promise.all(inFlight);
		agent.destroy();
		const seconds = (wallNow() - start) / 1000;
		return { tried: due - skipped, skipped, got, achievedPerSecond: Math.round((due - skipped) / seconds) };
	},
});
