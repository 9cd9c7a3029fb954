/** Where the CLI finds the server and its key: flags, then env, then the local .dev.vars. */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parseDevVars } from "../dev/dev-vars.ts";

export const DEFAULT_URL = "http://127.0.0.1:8787";

export interface CliConfig {
	url: string;
	apiKey: string;
	/** Where the key came from, for error messages. */
	keySource: string;
}

export function resolveConfig(flags: { url?: string; "api-key"?: string }, cwd = process.cwd()): CliConfig {
	const devVarsPath = join(cwd, ".dev.vars");
	const devVars = existsSync(devVarsPath) ? parseDevVars(readFileSync(devVarsPath, "utf8")) : new Map<string, string>();
	const fromDevVars = devVars.get("API_KEYS")?.split(",")[0]?.trim();
	const url = flags.url ?? process.env.SWITCHYARD_URL ?? DEFAULT_URL;
	if (flags["api-key"]) return { url, apiKey: flags["api-key"], keySource: "--api-key" };
	if (process.env.SWITCHYARD_API_KEY) return { url, apiKey: process.env.SWITCHYARD_API_KEY, keySource: "SWITCHYARD_API_KEY" };
	if (fromDevVars) return { url, apiKey: fromDevVars, keySource: ".dev.vars" };
	throw new UsageError(
		"no API key: pass --api-key, set SWITCHYARD_API_KEY, or run in a checkout where `npm run dev` wrote .dev.vars",
	);
}

/** Wrong words on the command line: exit code 2. */
export class UsageError extends Error {
	override name = "UsageError";
}
