/**
 * The signed-in key. It lives in sessionStorage only: gone when the tab
 * closes, never in a URL, a cookie or localStorage, never sent anywhere but
 * this origin's API (the CSP allows no other).
 */
import { SwitchyardApiError, SwitchyardClient } from "switchyard-client";

const STORAGE_KEY = "switchyard.apiKey";

export type Scope = "read" | "write";

export interface Session {
	key: string;
	scope: Scope;
	keyId: string;
	api: SwitchyardClient;
}

export function storedKey(): string | null {
	return sessionStorage.getItem(STORAGE_KEY);
}

export function forget(): void {
	sessionStorage.removeItem(STORAGE_KEY);
}

/** Asks the server who the key is; stores it only if the server accepts it. */
export async function signIn(key: string): Promise<Session> {
	const api = new SwitchyardClient({ baseUrl: location.origin, apiKey: key });
	const me = await api.whoami();
	sessionStorage.setItem(STORAGE_KEY, key);
	return { key, scope: me.scope, keyId: me.keyId, api };
}

/** What to tell a person whose sign-in or action failed. */
export function explain(err: unknown): string {
	if (err instanceof SwitchyardApiError) {
		if (err.status === 401) return "That API key was refused (401 unauthorized). Check it for a typo: it must be one of the server's API_KEYS or READ_API_KEYS.";
		if (err.status === 403 && err.code === "forbidden") return "This API key is read-only: it cannot change anything.";
		if (err.status === 429) return "Rate limited (429): too many requests with this key. Try again in a few seconds.";
		if (err.status >= 500) return `The server failed (${err.status} ${err.code}): ${err.message}`;
		return `${err.message} (${err.status} ${err.code})`;
	}
	if (err instanceof TypeError) return "Could not reach the server. Is it running? (network error)";
	return err instanceof Error ? err.message : String(err);
}
