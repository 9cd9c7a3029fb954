/**
 * .dev.vars holds the local secrets wrangler dev reads. The launcher fills in
 * the ones that are missing with random values and leaves the rest alone.
 */
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";

export function parseDevVars(text: string): Map<string, string> {
	const vars = new Map<string, string>();
	for (const line of text.split(/\r?\n/)) {
		const m = /^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$/.exec(line);
		if (!m?.[1] || line.trimStart().startsWith("#")) continue;
		vars.set(m[1], (m[2] ?? "").replace(/^"(.*)"$/, "$1"));
	}
	return vars;
}

export interface DevSecrets {
	apiKey: string;
	generated: string[];
}

export function ensureDevVars(path: string): DevSecrets {
	const text = existsSync(path) ? readFileSync(path, "utf8") : "";
	const vars = parseDevVars(text);
	const additions: string[] = [];
	if (!vars.get("API_KEYS")?.trim()) {
		const key = `sk_dev_${randomBytes(24).toString("hex")}`;
		vars.set("API_KEYS", key);
		additions.push(`API_KEYS=${key}`);
	}
	if ((vars.get("AGENT_TOKEN_SECRET") ?? "").length < 32) {
		const secret = randomBytes(32).toString("hex");
		vars.set("AGENT_TOKEN_SECRET", secret);
		additions.push(`AGENT_TOKEN_SECRET=${secret}`);
	}
	if (additions.length > 0) {
		const kept = text
			.split(/\r?\n/)
			.filter((l) => !/^\s*(API_KEYS|AGENT_TOKEN_SECRET)\s*=/.test(l))
			.join("\n")
			.trimEnd();
		const keptVars = [...vars].filter(([k]) => k === "API_KEYS" || k === "AGENT_TOKEN_SECRET");
		const body = [kept, ...keptVars.map(([k, v]) => `${k}=${v}`)].filter(Boolean).join("\n");
		writeFileSync(path, `${body}\n`, { mode: 0o600 });
	}
	const apiKey = (vars.get("API_KEYS") ?? "").split(",")[0]?.trim() ?? "";
	return { apiKey, generated: additions.map((a) => a.split("=")[0] ?? "") };
}
