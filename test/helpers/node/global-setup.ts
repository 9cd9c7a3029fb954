import type { TestProject } from "vitest/node";
import { loopbackOnly, startRelay } from "../../../src/dev/relay.ts";
import { deadPort, startTestDatabase } from "./test-database.ts";

declare module "vitest" {
	export interface ProvidedContext {
		databaseUrl: string;
		relayProxy: string;
		deadDatabaseUrl: string;
		databaseKind: string;
	}
}

export default async function setup(project: TestProject) {
	const db = await startTestDatabase();
	const relay = await startRelay({ allow: (host) => loopbackOnly(host) });
	console.log(`[switchyard tests] database: ${db.kind} (${new URL(db.url).host}), relay on ${relay.port}`);
	project.provide("databaseUrl", db.url);
	project.provide("relayProxy", relay.proxy);
	project.provide("databaseKind", db.kind);
	project.provide("deadDatabaseUrl", `postgres://postgres@127.0.0.1:${await deadPort()}/postgres`);
	return async () => {
		await relay.close();
		await db.stop();
	};
}
