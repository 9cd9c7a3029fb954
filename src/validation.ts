import type { Env, MiddlewareHandler } from "hono";
import { validator } from "hono/validator";
import { z } from "zod";
import { ApiError } from "./errors";
import { jsonProblem } from "./json-safety";
import { ErrorCode } from "./protocol";

/** Refuses what Postgres cannot store before zod walks it (see json-safety.ts). */
function checkJson(value: unknown): void {
	const problem = jsonProblem(value);
	if (problem) throw new ApiError(400, ErrorCode.VALIDATION_FAILED, `invalid request body: ${problem}`);
}

function fail(where: string, error: z.ZodError): never {
	throw new ApiError(
		400,
		ErrorCode.VALIDATION_FAILED,
		`invalid ${where}: ${z.prettifyError(error).replace(/\n+/g, "; ")}`,
		error.issues.map(({ code, path, message }) => ({ code, path, message })),
	);
}

/**
 * Hono validators backed by zod. Handlers see zod's output type; the typed
 * client (`hono/client`) sees zod's input type, so callers may leave out
 * fields that have defaults.
 */
type Validated<Target extends "json" | "query" | "param", T extends z.ZodType> = MiddlewareHandler<
	Env,
	string,
	{ in: { [K in Target]: z.input<T> }; out: { [K in Target]: z.output<T> } }
>;

export const jsonBody = <T extends z.ZodType>(schema: T): Validated<"json", T> =>
	// SAFETY: the same middleware, with its input type widened from zod's output to zod's input.
	validator("json", (value, c): z.output<T> => {
		// Hono reads a non-JSON body as {}, which would surface as a confusing "action: required".
		if (!/^application\/([\w.-]+\+)?json\b/i.test(c.req.header("content-type") ?? "")) {
			throw new ApiError(
				415,
				ErrorCode.UNSUPPORTED_MEDIA_TYPE,
				"send the body as JSON with Content-Type: application/json",
			);
		}
		checkJson(value);
		const r = schema.safeParse(value);
		return r.success ? r.data : fail("request body", r.error);
	}) as unknown as Validated<"json", T>;

/**
 * For bodies that may be absent: no body at all (whatever the Content-Type
 * says) validates as `{}`, so `curl -X POST` with or without a JSON header works.
 */
export const optionalJsonBody = <T extends z.ZodType>(
	schema: T,
): MiddlewareHandler<Env, string, { in: { json?: z.input<T> }; out: { json: z.output<T> } }> =>
	async (c, next) => {
		const text = await c.req.text();
		let value: unknown = {};
		if (text.trim() !== "") {
			try {
				value = JSON.parse(text);
			} catch {
				throw new ApiError(400, ErrorCode.INVALID_JSON, "request body is not valid JSON");
			}
		}
		checkJson(value);
		const r = schema.safeParse(value);
		if (!r.success) fail("request body", r.error);
		c.req.addValidatedData("json", r.data as object);
		await next();
	};

export const query = <T extends z.ZodType>(schema: T): Validated<"query", T> =>
	// SAFETY: as for jsonBody.
	validator("query", (value): z.output<T> => {
		const r = schema.safeParse(value);
		return r.success ? r.data : fail("query", r.error);
	}) as unknown as Validated<"query", T>;

export const params = <T extends z.ZodType>(schema: T): Validated<"param", T> =>
	// SAFETY: as for jsonBody.
	validator("param", (value): z.output<T> => {
		const r = schema.safeParse(value);
		return r.success ? r.data : fail("path", r.error);
	}) as unknown as Validated<"param", T>;
