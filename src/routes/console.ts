import { type Context, Hono } from "hono";
import type { AppEnv } from "../app-env";

/**
 * The console's page and its bundle, from Workers static assets
 * (`[assets]` in wrangler.toml, built by src/dev/build-console.ts). Served
 * through the worker so every response carries the headers below, in
 * `wrangler dev`, in tests and in production alike.
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

async function serveAsset(c: Context<AppEnv>): Promise<Response> {
	const asset = await c.env.ASSETS.fetch(c.req.raw);
	// A missing file gets the API's JSON 404 (src/errors.ts), not the asset server's.
	if (asset.status === 404) return c.notFound();
	const res = new Response(asset.body, asset);
	res.headers.set("content-security-policy", CONSOLE_CSP);
	res.headers.set("x-frame-options", "DENY");
	res.headers.set("x-content-type-options", "nosniff");
	res.headers.set("referrer-policy", "no-referrer");
	// Not content-hashed: revalidate (the asset server answers 304 on a matching ETag).
	res.headers.set("cache-control", "no-cache");
	return res;
}

export const consoleRoutes = new Hono<AppEnv>()
	.get("/", serveAsset)
	.get("/assets/*", serveAsset);
