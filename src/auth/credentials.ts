/**
 * Where a credential may come from, and which browsers may present one.
 *
 * Browsers cannot set headers on a WebSocket, so a socket may carry its
 * credential in `Sec-WebSocket-Protocol` instead, as
 * `switchyard.v1, switchyard.auth.<base64url(credential)>`. Never in the URL:
 * URLs end up in logs. The server answers with `switchyard.v1` only, never
 * echoing the credential.
 *
 * A browser page on any site can open a WebSocket to any host; the `Origin`
 * header is the only thing that tells a cross-site page apart. Requests that
 * carry an Origin must come from the worker's own origin (the console it
 * serves) or from ALLOWED_ORIGINS (none by default); agents and tools, which
 * send none, are not affected.
 */
import { ApiError } from "../errors";
import { ErrorCode } from "../protocol";
import { decodeBase64urlText } from "./base64url";

export const SUBPROTOCOL = "switchyard.v1";
const AUTH_PREFIX = "switchyard.auth.";

function offeredProtocols(request: Request): string[] {
	return (request.headers.get("sec-websocket-protocol") ?? "")
		.split(",")
		.map((p) => p.trim())
		.filter(Boolean);
}

/** The bearer credential of a request: the Authorization header, or on a WebSocket upgrade the auth subprotocol. */
export function presentedCredential(request: Request): string | undefined {
	const m = /^Bearer[ ]+([^\s]+)\s*$/i.exec(request.headers.get("authorization") ?? "");
	if (m?.[1]) return m[1];
	if (request.headers.get("upgrade")?.toLowerCase() !== "websocket") return undefined;
	const offered = offeredProtocols(request).find((p) => p.startsWith(AUTH_PREFIX));
	return offered ? decodeBase64urlText(offered.slice(AUTH_PREFIX.length)) : undefined;
}

/** The subprotocol to answer with, if the client offered ours (a browser fails the socket otherwise). */
export function acceptedSubprotocol(headers: Headers): string | undefined {
	const offered = (headers.get("sec-websocket-protocol") ?? "").split(",").map((p) => p.trim());
	return offered.includes(SUBPROTOCOL) ? SUBPROTOCOL : undefined;
}

/** The offered subprotocols without the credential, for forwarding to the agent's object. */
export function protocolsWithoutCredential(value: string): string {
	return value
		.split(",")
		.map((p) => p.trim())
		.filter((p) => p && !p.startsWith(AUTH_PREFIX))
		.join(", ");
}

/**
 * Refuses a browser request from a site other than this worker's own origin
 * and those in ALLOWED_ORIGINS (cross-site WebSocket hijacking). A browser
 * sets Origin itself, so a page elsewhere cannot claim ours.
 */
export function checkOrigin(request: Request, env: Pick<Env, "ALLOWED_ORIGINS">): void {
	const origin = request.headers.get("origin");
	if (origin === null) return;
	if (origin === new URL(request.url).origin) return;
	const allowed = (env.ALLOWED_ORIGINS ?? "")
		.split(",")
		.map((o) => o.trim().replace(/\/+$/, ""))
		.filter(Boolean);
	if (!allowed.includes(origin)) {
		throw new ApiError(403, ErrorCode.ORIGIN_NOT_ALLOWED, `origin ${origin.slice(0, 200)} is not in ALLOWED_ORIGINS`);
	}
}
