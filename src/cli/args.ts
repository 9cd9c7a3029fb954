/** Reading the CLI's arguments, shared by main.ts and the fleet verbs. */
import type { EnqueueInput } from "../sdk/client.ts";
import { UsageError } from "./config.ts";

export function int(name: string, value: string | undefined): number | undefined {
	if (value === undefined) return undefined;
	const n = Number(value);
	if (!Number.isInteger(n)) throw new UsageError(`--${name} must be a whole number, got "${value}"`);
	return n;
}

export function need(positionals: string[], index: number, what: string): string {
	const v = positionals[index];
	if (!v) throw new UsageError(`missing ${what}; see 'switchyard --help'`);
	return v;
}

/** The flags a new command takes, however it is sent (one agent, or a fan-out). */
export interface CommandFlags {
	payload?: string;
	priority?: string;
	session?: string;
	ttl?: string;
	timeout?: string;
	"idempotency-key"?: string;
}

/** A command's fields from its flags: the payload checked as JSON, the numbers as whole numbers. */
export function commandFields(action: string, flags: CommandFlags) {
	let payload: unknown = {};
	if (flags.payload !== undefined) {
		try {
			payload = JSON.parse(flags.payload);
		} catch {
			throw new UsageError(`--payload is not valid JSON: ${flags.payload}`);
		}
	}
	return {
		action,
		// SAFETY: JSON.parse only produces JSON values.
		payload: payload as never,
		priority: int("priority", flags.priority),
		sessionId: flags.session,
		ttlSeconds: int("ttl", flags.ttl),
		timeoutSeconds: int("timeout", flags.timeout),
		idempotencyKey: flags["idempotency-key"],
	} satisfies EnqueueInput;
}
