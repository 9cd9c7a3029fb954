import http from "node:http";
import type { AddressInfo } from "node:net";
import type { TestProject } from "vitest/node";
import { loopbackOnly, startRelay } from "../../../src/dev/relay.ts";
import { deadPort, startTestDatabase } from "./test-database.ts";

declare module "vitest" {
	export interface ProvidedContext {
		databaseUrl: string;
		relayProxy: string;
		deadDatabaseUrl: string;
		databaseKind: string;
		relayControl: string;
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

	// Lets a test inside workerd take the database away, bring it back, and count connections.
	const control = http.createServer((req, res) => {
		if (req.url === "/down" || req.url === "/up") {
			relay.setDown(req.url === "/down");
			res.end("ok");
		} else if (req.url === "/opened") {
			res.end(String(relay.opened()));
		} else if (req.url === "/open") {
			res.end(String(relay.connections()));
		} else if (req.url === "/sql-requests") {
			res.end(String(relay.sqlRequests()));
		} else {
			res.statusCode = 404;
			res.end();
		}
	});
	await new Promise<void>((r) => control.listen(0, "127.0.0.1", () => r()));
	project.provide("relayControl", `http://127.0.0.1:${(control.address() as AddressInfo).port}`);

	return async () => {
		control.close();
		await relay.close();
		await db.stop();
	};
}
