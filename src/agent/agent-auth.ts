/**
 * The agent object's side of agent tokens: which token versions it still
 * admits (revocation), when the open socket's token runs out, and in-band
 * refresh. The object is the one place every connect and every frame of an
 * agent passes through, so it is where a revocation takes effect at once.
 */
import { signAgentToken, tokenSecrets, verifyAgentToken } from "../auth/agent-token";
import { ErrorCode, type ServerFrame } from "../protocol";
import type { State } from "./state";

/**
 * However often a token is refreshed, the chain ends this long after the
 * token that started it was minted: a stolen token cannot be kept alive
 * forever by refreshing it (the longest a minted token lives, 30 days).
 */
export const MAX_SESSION_SECONDS = 30 * 24 * 60 * 60;

export class AgentAuth {
	constructor(
		private readonly state: State,
		private readonly env: Env,
	) {}

	/** Tokens minted now carry this version; revoking raises it past every earlier token. */
	version(): number {
		return this.state.get("token_version") ?? 0;
	}

	admits(tokenVersion: number): boolean {
		return tokenVersion >= this.version();
	}

	/**
	 * Whether this object must take the version Postgres mirrors before it
	 * may judge a token: its storage has none (a new object, or storage that
	 * was lost or reset). Once taken, it is kept, so this is once per object.
	 */
	needsMirror(): boolean {
		return this.state.get("token_version") === undefined;
	}

	/** Takes Postgres's version, never lowering its own (the two are raised together by each revocation). */
	adopt(mirrored: number): void {
		this.state.set("token_version", Math.max(this.version(), mirrored));
	}

	/**
	 * Every token minted so far stops working, on connect and on refresh.
	 * `atLeast` is the version Postgres was just raised to: the object may
	 * have lost the versions before it.
	 */
	revoke(atLeast = 0): number {
		const next = Math.max(this.version() + 1, atLeast);
		this.state.set("token_version", next);
		this.state.clearTimer("token_expiry");
		return next;
	}

	/** The socket just opened lives until its token expires, unless refreshed. */
	startSession(expiresAt: number): void {
		this.state.setTimer("token_expiry", expiresAt);
	}

	endSession(): void {
		this.state.clearTimer("token_expiry");
	}

	expiresAt(): number | undefined {
		return this.state.timer("token_expiry");
	}

	expired(now: number): boolean {
		return (this.expiresAt() ?? Number.POSITIVE_INFINITY) <= now;
	}

	/**
	 * Trades the socket's still-valid token for a new one with the same
	 * lifetime, and moves the socket's deadline to the new expiry. A refused
	 * refresh changes nothing: the socket still closes when its token runs out.
	 */
	async refresh(agentId: string, token: string, now: number): Promise<ServerFrame> {
		const secrets = tokenSecrets(this.env);
		const check = await verifyAgentToken(token, secrets, agentId, now);
		if (!check.ok || !this.admits(check.claims.ver)) {
			const reason = check.ok ? "agent token was revoked" : check.reason;
			return { type: "error", code: ErrorCode.INVALID_TOKEN, message: `refresh refused: ${reason}` };
		}
		const sessionStart = check.claims.ses ?? check.claims.iat;
		const left = sessionStart + MAX_SESSION_SECONDS - Math.floor(now / 1000);
		if (left <= 0) {
			return { type: "error", code: ErrorCode.INVALID_TOKEN, message: "refresh refused: the session is 30 days old; mint a new token" };
		}
		const lifetime = Math.min(check.claims.exp - check.claims.iat, left);
		const fresh = await signAgentToken(agentId, secrets, lifetime, { version: this.version(), now, sessionStart });
		// A revocation may have landed while signing: it wins.
		if (!this.admits(check.claims.ver)) {
			return { type: "error", code: ErrorCode.INVALID_TOKEN, message: "refresh refused: agent token was revoked" };
		}
		this.startSession(Date.parse(fresh.expiresAt));
		return { type: "auth.refreshed", token: fresh.token, expiresAt: fresh.expiresAt };
	}
}
