/**
 * The console's page comes from the worker's own bundle, with the headers
 * that keep its API key safe; the API beside it is unchanged.
 */
import { describe, expect, it } from "vitest";
import { CONSOLE_CSP } from "../../src/routes/console";
import { api, expectError } from "../helpers/worker/harness";

describe("the console", () => {
	it("is served at / with a CSP that allows no inline script and no framing", async () => {
		const res = await api("/", { key: null });
		expect(res.status).toBe(200);
		expect(res.headers.get("content-type")).toMatch(/^text\/html/);
		const csp = res.headers.get("content-security-policy") ?? "";
		expect(csp).toBe(CONSOLE_CSP);
		expect(csp).toContain("script-src 'self'");
		expect(csp).not.toMatch(/script-src[^;]*unsafe-inline/);
		expect(csp).toContain("frame-ancestors 'none'");
		expect(res.headers.get("x-frame-options")).toBe("DENY");
		expect(res.headers.get("x-content-type-options")).toBe("nosniff");
		const html = await res.text();
		expect(html).toContain('<script type="module" src="/assets/console.js"></script>');
		expect(html).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
	});

	it("serves its bundle with the same headers", async () => {
		const res = await api("/assets/console.js", { key: null });
		expect(res.status).toBe(200);
		expect(res.headers.get("content-type")).toMatch(/javascript/);
		expect(res.headers.get("content-security-policy")).toBe(CONSOLE_CSP);
	});

	it("answers 304 to a browser revalidating what it holds, and the full file after a rebuild", async () => {
		const first = await api("/assets/console.js", { key: null });
		const etag = first.headers.get("etag") ?? "";
		expect(etag).toMatch(/^"[\w-]+"$/);
		expect(first.headers.get("cache-control")).toBe("no-cache");
		const again = await api("/assets/console.js", { key: null, headers: { "if-none-match": `W/${etag}` } });
		expect(again.status).toBe(304);
		expect(await again.text()).toBe("");
		expect(again.headers.get("content-security-policy")).toBe(CONSOLE_CSP);
		const stale = await api("/assets/console.js", { key: null, headers: { "if-none-match": '"an-older-build"' } });
		expect(stale.status).toBe(200);
		expect((await stale.text()).length).toBe((await first.text()).length);
	});

	it("serves the license texts its bundle points to", async () => {
		const js = await (await api("/assets/console.js", { key: null })).text();
		const named = js.match(/see (console\.js\.LEGAL\.txt)/)?.[1];
		expect(named).toBe("console.js.LEGAL.txt");
		const legal = await api(`/assets/${named}`, { key: null });
		expect(legal.status).toBe(200);
		expect(legal.headers.get("content-type")).toMatch(/^text\/plain/);
		expect(await legal.text()).toMatch(/license/i);
	});

	it("leaves API routes to the API: an unknown /v1 path is still a JSON 404", async () => {
		await expectError(await api("/v1/nothing-here"), 404, "not_found");
		await expectError(await api("/assets/missing.js", { key: null }), 404, "not_found");
	});
});
