/**
 * The hostile scenario's HTTP flood, in its own process so the harness's
 * event loop (which times the canary) is not the one saturated: GETs of
 * /healthz and /metrics, alternating, at a fixed rate for a duration.
 */
import { serve } from "../bench/lib/rpc.ts";
import { sleep, wallNow } from "../bench/lib/stats.ts";

serve({
	async flood(a: { base: string; apiKey: string; rate: number; durationMs: number; maxInFlight: number }) {
		const got: Record<string, number> = {};
		const start = wallNow();
		const inFlight = new Set<Promise<void>>();
		let sent = 0;
		let skipped = 0;
		while (wallNow() - start < a.durationMs) {
			const due = start + (sent / a.rate) * 1000;
			const wait = due - wallNow();
			if (wait > 1) await sleep(wait);
			if (inFlight.size >= a.maxInFlight) {
				// Open loop: a request that cannot be sent on time is counted, not queued.
				skipped++;
				sent++;
				await Promise.race(inFlight);
				continue;
			}
			const path = sent % 2 === 0 ? "/healthz" : "/metrics";
			const req = fetch(`${a.base}${path}`, { headers: { authorization: `Bearer ${a.apiKey}` } })
				.then(async (r) => {
					await r.arrayBuffer();
					const k = `${path} ${r.status}`;
					got[k] = (got[k] ?? 0) + 1;
				})
				.catch(() => {
					got[`${path} network`] = (got[`${path} network`] ?? 0) + 1;
				})
				.finally(() => inFlight.delete(req));
			inFlight.add(req);
			sent++;
		}
		await Promise.all(inFlight);
		const seconds = (wallNow() - start) / 1000;
		return { tried: sent - skipped, skipped, got, achievedPerSecond: Math.round((sent - skipped) / seconds) };
	},
});
