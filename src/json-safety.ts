/**
 * What Postgres' jsonb and text cannot hold, and what no payload needs:
 * NUL characters, unpaired UTF-16 surrogates, absurd nesting, and integers
 * too large to survive a JSON parser unrounded. Checked at
 * every boundary before zod (whose recursion a 10,000-level value could
 * overflow) and before anything is written, so one bad value can never
 * wedge a batch behind it.
 */
export const MAX_JSON_DEPTH = 64;

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

export function stringProblem(s: string): string | undefined {
	if (s.includes("\u0000")) return "contains a NUL character (\\u0000)";
	if (LONE_SURROGATE.test(s)) return "contains an unpaired UTF-16 surrogate";
	return undefined;
}

/** Returns a description of the first problem in `value`, or undefined. Iterative: no recursion. */
export function jsonProblem(value: unknown): string | undefined {
	const stack: { v: unknown; depth: number; path: string }[] = [{ v: value, depth: 0, path: "$" }];
	while (stack.length > 0) {
		const { v, depth, path } = stack.pop() as { v: unknown; depth: number; path: string };
		if (typeof v === "string") {
			const p = stringProblem(v);
			if (p) return `${path} ${p}`;
		} else if (typeof v === "number") {
			if (!Number.isFinite(v)) return `${path} is not a finite number`;
			// Parsing already rounded it: storing it would silently change the caller's value.
			if (Number.isInteger(v) && !Number.isSafeInteger(v)) {
				return `${path} is an integer beyond ±2^53-1, which JSON parsers round; send it as a string`;
			}
		} else if (v !== null && typeof v === "object") {
			if (depth >= MAX_JSON_DEPTH) return `${path} is nested deeper than ${MAX_JSON_DEPTH} levels`;
			if (Array.isArray(v)) {
				for (let i = 0; i < v.length; i++) stack.push({ v: v[i], depth: depth + 1, path: `${path}[${i}]` });
			} else {
				for (const [k, child] of Object.entries(v)) {
					const p = stringProblem(k);
					if (p) return `${path} has a key that ${p}`;
					stack.push({ v: child, depth: depth + 1, path: `${path}.${k.slice(0, 40)}` });
				}
			}
		}
	}
	return undefined;
}
