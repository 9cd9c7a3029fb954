/**
 * The console's page comes from static assets through the worker, with the
 * headers that keep its API key safe; the API beside it is unchanged.
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

	it("leaves API routes to the API: an unknown /v1 path is still a JSON 404", async () => {
		await expectError(await api("/v1/nothing-here"), 404, "not_found");
		await expectError(await api("/assets/missing.js", { key: null }), 404, "not_found");
	});
});
