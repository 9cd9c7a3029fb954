import type { Context, ErrorHandler, NotFoundHandler } from "hono";
import { HTTPException } from "hono/http-exception";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { DbConflictError, DbSchemaBehindError, DbUnavailableError } from "./db/client";
import { errorFields, log } from "./log";
import { type ErrorBody, ErrorCode } from "./protocol";

/** An error the client caused or should know about, with a stable machine code. */
export class ApiError extends Error {
	constructor(
		readonly status: ContentfulStatusCode,
		readonly code: ErrorCode,
		message: string,
		readonly issues?: unknown[],
		/** Sent with the error response (e.g. Retry-After on a 429). */
		readonly headers: Record<string, string> = {},
	) {
		super(message);
		this.name = "ApiError";
	}
}

function body(code: string, message: string, issues?: unknown[]): ErrorBody {
	return { error: { code, message, ...(issues ? { issues } : {}) } };
}

const HTTP_EXCEPTION_CODES: Partial<Record<number, ErrorCode>> = {
	400: ErrorCode.BAD_REQUEST,
	401: ErrorCode.UNAUTHORIZED,
	404: ErrorCode.NOT_FOUND,
	405: ErrorCode.METHOD_NOT_ALLOWED,
	413: ErrorCode.PAYLOAD_TOO_LARGE,
};

/** The one place an error becomes a response. Nothing internal (stack, SQL, driver text) leaves here. */
export const onError: ErrorHandler = (err, c) => {
	if (err instanceof ApiError) return c.json(body(err.code, err.message, err.issues), err.status, err.headers);
	if (err instanceof DbSchemaBehindError) {
		// Unlike an outage this does not pass by itself: an operator must migrate.
		log("error", "http.db_schema_behind", { path: c.req.path, sqlState: err.sqlState });
		c.header("Retry-After", "30");
		return c.json(body(ErrorCode.DB_NOT_MIGRATED, "the database is missing a migration this version needs; an operator must run npm run db:migrate"), 503);
	}
	if (err instanceof DbUnavailableError) {
		log("warn", "http.db_unavailable", { path: c.req.path, ...errorFields(err) });
		c.header("Retry-After", "5");
		return c.json(body(ErrorCode.DB_UNAVAILABLE, "the database is unavailable; retry shortly"), 503);
	}
	if (err instanceof DbConflictError) {
		// Already retried (db/retry.ts): the contention outlasted a few tries, so the client waits a little.
		log("warn", "http.db_conflict", { path: c.req.path, sqlState: err.sqlState });
		c.header("Retry-After", "1");
		return c.json(body(ErrorCode.DB_CONFLICT, "the database gave up on this request because of concurrent ones; retry shortly"), 503);
	}
	if (err instanceof HTTPException && err.status < 500) {
		const code = HTTP_EXCEPTION_CODES[err.status] ?? ErrorCode.BAD_REQUEST;
		const message = /JSON/i.test(err.message) ? "request body is not valid JSON" : err.message;
		return c.json(
			body(/JSON/i.test(err.message) ? ErrorCode.INVALID_JSON : code, message),
			err.status as ContentfulStatusCode,
		);
	}
	log("error", "http.unhandled", { method: c.req.method, path: c.req.path, ...errorFields(err) });
	return c.json(body(ErrorCode.INTERNAL, "internal error"), 500);
};

export const notFound: NotFoundHandler = (c: Context) =>
	c.json(body(ErrorCode.NOT_FOUND, `no route for ${c.req.method} ${c.req.path}`), 404);
