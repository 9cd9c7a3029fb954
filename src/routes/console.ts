/// <reference path="./console-files.d.ts" />
import { type Context, Hono } from "hono";
import files from "switchyard-console-files";
import type { AppEnv } from "../app-env";

/**
 * The console's page and its bundle, from the worker's own bundle
 * (dist/console/files.js, written by src/dev/build-console.ts), with the
 * headers below.
 *
 * Not from Workers static assets: the console needs the worker to run first
 * for its headers, and `[assets]` puts the asset router in front of every
 * request, the API's included. Under `wrangler dev` that hop halved what the
 * runtime served (/healthz: 2,061 requests/s with it, 4,430 without, on this
 * project's two-core machine), and it was paid by every enqueue and every
 * agent connect for the sake of a 380 KB page.
 *
 * The page holds an API key in sessionStorage, so it must run no script but
 * its own (no inline script, no other origin) and must not be framed
 * (clickjacking a cancel button). xterm.js sets element styles from script,
 * hence `'unsafe-inline'` for styles only.
 */
export const CONSOLE_CSP = [
	"default-src 'none'",
	"script-src 'self'",
	"style-src 'self' 'unsafe-inline'",
	"img-src 'self' data:",
	"font-src 'self'",
	"connect-src 'self'",
	"base-uri 'none'",
	"form-action 'self'",
	"frame-ancestors 'none'",
].join("; ");

const HEADERS = {
	"content-security-policy": CONSOLE_CSP,
	"x-frame-options": "DENY",
	"x-content-type-options": "nosniff",
	"referrer-policy": "no-referrer",
	// The paths are not content-hashed: a browser revalidates, and a matching ETag costs a 304.
	"cache-control": "no-cache",
};

/** Whether an If-None-Match header names `etag` (a list, weak or strong, or `*`). */
function matches(ifNoneMatch: string | undefined, etag: string): boolean {
	if (!ifNoneMatch) return false;
	return ifNoneMatch.split(",").some((tag) => {
		const t = tag.trim();
		return t === "*" || t === etag || t === `W/${etag}`;
	});
}

function serveFile(c: Context<AppEnv>): Response | Promise<Response> {
	const file = files[c.req.path];
	// A missing file gets the API's JSON 404 (src/errors.ts).
	if (!file) return c.notFound();
	const headers = { ...HEADERS, etag: file.etag };
	if (matches(c.req.header("if-none-match"), file.etag)) return new Response(null, { status: 304, headers });
	return new Response(file.body, { headers: { ...headers, "content-type": file.type } });
}

export const consoleRoutes = new Hono<AppEnv>()
	.get("/", serveFile)
	.get("/assets/*", serveFile);
