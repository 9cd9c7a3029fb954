/**
 * What an `error` frame naming a command means for that command's finished
 * result, which the agent keeps to answer a redelivery. The frame does not
 * say which frame it refuses, and after a result only trailing output may
 * still be in flight, so a refusal is read by its code alone.
 */
import { ErrorCode } from "../protocol";

/**
 * - `forget`: the server does not hold the command as sent to this agent
 *   (never sent, or long finished): no result will be taken, and a later
 *   delivery is a new dispatch, to run afresh.
 * - `resend`: the server failed handling the frame: if it was the result,
 *   it was not applied. Results are idempotent, so send it again.
 * - `keep`: anything else, rate_limited above all, which drops output, or
 *   a result only when the server no longer needs it. The server has the
 *   result, or it will send the command again and the kept result answers
 *   it; forgetting would run it twice.
 */
export type AfterRefusal = "forget" | "resend" | "keep";

export function afterRefusal(code: string): AfterRefusal {
	switch (code) {
		case ErrorCode.UNKNOWN_COMMAND:
		case ErrorCode.NOT_DISPATCHED:
			return "forget";
		case ErrorCode.INTERNAL:
			return "resend";
		default:
			return "keep";
	}
}
