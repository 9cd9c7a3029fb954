/**
 * The worker's answer to a statement Postgres gave up on because of other
 * transactions (isConflict: serialization failure, deadlock, lock timeout).
 * Postgres rolled it back, so sending the same request again is safe: on
 * Neon's HTTP path one request is one statement or one `transaction()`,
 * never half of one. A few quick tries usually outlast the conflict; past
 * them, or past the statement deadline, the refusal goes to the caller,
 * which answers 503 with Retry-After (errors.ts).
 */
import { isConflictState } from "./client";

export interface RetryPolicy {
	/** Requests in all, the first included. */
	attempts: number;
	/** The first wait's ceiling; each next one doubles, up to `capMs`. */
	baseMs: number;
	capMs: number;
}

/** Three retries within about half a second: far inside any statement timeout (100 ms is the least). */
export const CONFLICT_RETRY: RetryPolicy = { attempts: 4, baseMs: 25, capMs: 250 };

type Fetch = (url: string, init: RequestInit) => Promise<Response>;

export interface RetryDeps {
	fetch?: Fetch;
	now?: () => number;
	sleep?: (ms: number) => Promise<void>;
	/** 0 to 1: full jitter, so requests that met one conflict do not meet again in step. */
	random?: () => number;
	policy?: RetryPolicy;
}

/** The SQLSTATE of a refusal that is a conflict, read from the response Neon's endpoint gives it. */
async function conflictIn(res: Response): Promise<string | undefined> {
	// A statement Postgres refused is a 400 with its fields, `code` the SQLSTATE.
	if (res.status !== 400) return undefined;
	const body: unknown = await res.clone().json().catch(() => undefined);
	const code = (body as { code?: unknown } | undefined)?.code;
	return typeof code === "string" && isConflictState(code) ? code : undefined;
}

/**
 * A fetch for the Neon driver that sends a request again while Postgres
 * answers it with a conflict. `deadlines` holds each call's statement
 * deadline under its abort signal (http.ts): no wait runs past it.
 */
export function conflictRetryingFetch(deadlines: WeakMap<AbortSignal, number>, deps: RetryDeps = {}): Fetch {
	const { policy = CONFLICT_RETRY, now = Date.now, random = Math.random } = deps;
	const send = deps.fetch ?? ((url, init) => fetch(url, init));
	const sleep = deps.sleep ?? ((ms) => new Promise<void>((r) => setTimeout(r, ms)));
	return async (url, init) => {
		const deadlineAt = (init.signal && deadlines.get(init.signal)) ?? now();
		for (let attempt = 1; ; attempt++) {
			const res = await send(url, init);
			if (attempt >= policy.attempts || !(await conflictIn(res))) return res;
			const wait = random() * Math.min(policy.capMs, policy.baseMs * 2 ** (attempt - 1));
			if (now() + wait >= deadlineAt) return res;
			await sleep(wait);
		}
	};
}
