import { validator } from "hono/validator";
import { z } from "zod";
import { ApiError } from "./errors";
import { ErrorCode } from "./protocol";

function fail(where: string, error: z.ZodError): never {
	throw new ApiError(
		400,
		ErrorCode.VALIDATION_FAILED,
		`invalid ${where}: ${z.prettifyError(error).replace(/\n+/g, "; ")}`,
		error.issues.map(({ code, path, message }) => ({ code, path, message })),
	);
}

/** Hono validators backed by zod, so handlers and the typed client both see the parsed types. */
export const jsonBody = <T extends z.ZodType>(schema: T) =>
	validator("json", (value, c): z.output<T> => {
		// Hono reads a non-JSON body as {}, which would surface as a confusing "action: required".
		if (!/^application\/([\w.-]+\+)?json\b/i.test(c.req.header("content-type") ?? "")) {
			throw new ApiError(
				415,
				ErrorCode.UNSUPPORTED_MEDIA_TYPE,
				"send the body as JSON with Content-Type: application/json",
			);
		}
		const r = schema.safeParse(value);
		return r.success ? r.data : fail("request body", r.error);
	});

/** For bodies that may be absent: an empty body validates as `{}`. */
export const optionalJsonBody = <T extends z.ZodType>(schema: T) =>
	validator("json", (value): z.output<T> => {
		const r = schema.safeParse(value ?? {});
		return r.success ? r.data : fail("request body", r.error);
	});

export const query = <T extends z.ZodType>(schema: T) =>
	validator("query", (value): z.output<T> => {
		const r = schema.safeParse(value);
		return r.success ? r.data : fail("query", r.error);
	});

export const params = <T extends z.ZodType>(schema: T) =>
	validator("param", (value): z.output<T> => {
		const r = schema.safeParse(value);
		return r.success ? r.data : fail("path", r.error);
	});
