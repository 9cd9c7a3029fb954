/** base64url (RFC 4648 §5, no padding), as JWTs and the browser credential subprotocol use it. */
export function encodeBase64url(bytes: Uint8Array): string {
	let s = "";
	for (const b of bytes) s += String.fromCharCode(b);
	return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The bytes, or undefined for anything that is not base64url. */
export function decodeBase64url(s: string): Uint8Array | undefined {
	if (!/^[A-Za-z0-9_-]*$/.test(s)) return undefined;
	try {
		const bin = atob(s.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (s.length % 4)) % 4));
		return Uint8Array.from(bin, (c) => c.charCodeAt(0));
	} catch {
		return undefined;
	}
}

/** Decoded as UTF-8 text, or undefined if it is not base64url of valid UTF-8. */
export function decodeBase64urlText(s: string): string | undefined {
	const bytes = decodeBase64url(s);
	if (!bytes) return undefined;
	try {
		return new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(bytes);
	} catch {
		return undefined;
	}
}
