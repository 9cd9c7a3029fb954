/**
 * The agent's token over a connection's life: which one to connect with,
 * and when to trade it for a new one over the open socket (`auth.refresh`),
 * so a long-lived connection never drops just because its token aged.
 */
export type TokenSource = string | (() => string | Promise<string>);

/** Refresh when this share of the token's remaining life has passed. */
const REFRESH_AT = 0.8;
const MIN_DELAY_MS = 1_000;

export class TokenKeeper {
	private refreshed: { token: string; expiresAt: number } | undefined;
	private inUse = "";
	private timer: ReturnType<typeof setTimeout> | undefined;

	constructor(
		private readonly source: TokenSource,
		private readonly now: () => number = Date.now,
	) {}

	/** The token for a new connection: a refreshed one while it has life left, else the source's. */
	async forConnect(): Promise<string> {
		const r = this.refreshed;
		this.inUse =
			r && r.expiresAt - this.now() > MIN_DELAY_MS * 10
				? r.token
				: typeof this.source === "function"
					? await this.source()
					: this.source;
		return this.inUse;
	}

	/** Arms the refresh for a token expiring at `expiresAt` (ISO); `send` gets the token to trade in. */
	schedule(expiresAt: string | undefined, send: (token: string) => void): void {
		this.cancel();
		const at = expiresAt ? Date.parse(expiresAt) : Number.NaN;
		if (!Number.isFinite(at)) return;
		const delay = Math.max(MIN_DELAY_MS, (at - this.now()) * REFRESH_AT);
		this.timer = setTimeout(() => send(this.inUse), delay);
	}

	/** The server's answer to a refresh: connect and refresh with this token from now on. */
	accept(token: string, expiresAt: string, send: (token: string) => void): void {
		this.refreshed = { token, expiresAt: Date.parse(expiresAt) };
		this.inUse = token;
		this.schedule(expiresAt, send);
	}

	cancel(): void {
		if (this.timer !== undefined) clearTimeout(this.timer);
		this.timer = undefined;
	}
}
