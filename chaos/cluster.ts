/**
 * The suite's own PostgreSQL cluster (Debian's `pg_createcluster`, 15/chaos
 * on port 5433): scenarios stop it, kill it and skew its clock, which must
 * never happen to the machine's shared cluster on 5432, where others run
 * their tests. When `faketime` is installed the cluster runs under
 * libfaketime with an offset read from a file, so the clock scenario can
 * skew and jump the database's clock without a restart; the offset is +0
 * otherwise, and only the wall clock is faked (not the monotonic one).
 */
import { execFileSync } from "node:child_process";
import { chmodSync, existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";

export const CLUSTER = { version: "15", name: "chaos", port: 5433 };
const FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const OFFSET_FILE = "/tmp/switchyard-chaos-faketime";
const ENV_FILE = `/etc/postgresql/${CLUSTER.version}/${CLUSTER.name}/environment`;
const LOCK_FILE = "/tmp/switchyard-chaos.lock";

function alive(pid: number): boolean {
	try {
		process.kill(pid, 0);
		return true;
	} catch {
		return false;
	}
}

/**
 * Holds the cluster for this run; throws while another live run holds it.
 * Two runs at once share the one cluster, and the first to finish stops it
 * under the other (which then reports losses that are the harness's own).
 */
export function lockCluster(): () => void {
	const holder = existsSync(LOCK_FILE) ? Number(readFileSync(LOCK_FILE, "utf8")) : 0;
	if (holder && holder !== process.pid && alive(holder)) {
		throw new Error(`another chaos run (pid ${holder}) holds the cluster on port ${CLUSTER.port}: wait for it, or stop it`);
	}
	writeFileSync(LOCK_FILE, String(process.pid));
	return () => {
		if (existsSync(LOCK_FILE) && Number(readFileSync(LOCK_FILE, "utf8")) === process.pid) rmSync(LOCK_FILE);
	};
}

const ctl = (...args: string[]) =>
	execFileSync("pg_ctlcluster", ["--skip-systemctl-redirect", CLUSTER.version, CLUSTER.name, ...args], { stdio: ["ignore", "pipe", "pipe"] });

export function faketimeAvailable(): boolean {
	return existsSync(FAKETIME_LIB);
}

function online(): boolean {
	const out = execFileSync("pg_lsclusters", ["--no-header"], { encoding: "utf8" });
	return out.split("\n").some((l) => {
		const [v, name, , status] = l.trim().split(/\s+/);
		return v === CLUSTER.version && name === CLUSTER.name && status === "online";
	});
}

/** Why the suite cannot have its own cluster here, or undefined. */
export function clusterUnavailable(): string | undefined {
	if (process.getuid?.() !== 0) return "pg_createcluster and pg_ctlcluster need root";
	try {
		if (!existsSync("/usr/bin/pg_createcluster")) throw new Error("missing");
	} catch {
		return "postgresql-common (pg_createcluster) is not installed";
	}
	return undefined;
}

/** Creates the cluster when missing, (re)starts it under libfaketime when it can; returns its port. */
export function startCluster(log: (m: string) => void): number {
	if (!existsSync(`/etc/postgresql/${CLUSTER.version}/${CLUSTER.name}`)) {
		log(`creating PostgreSQL cluster ${CLUSTER.version}/${CLUSTER.name} on port ${CLUSTER.port}`);
		execFileSync("pg_createcluster", [CLUSTER.version, CLUSTER.name, "--port", String(CLUSTER.port), "--", "--auth=trust"], { stdio: "ignore" });
	}
	if (faketimeAvailable()) {
		setClockOffset(0);
		const env = [
			"# written by chaos/cluster.ts: the database clock the clock scenario moves",
			`LD_PRELOAD = '${FAKETIME_LIB}'`,
			`FAKETIME_TIMESTAMP_FILE = '${OFFSET_FILE}'`,
			"FAKETIME_CACHE_DURATION = 1",
			"FAKETIME_DONT_FAKE_MONOTONIC = 1",
			"",
		].join("\n");
		const before = existsSync(ENV_FILE) ? readFileSync(ENV_FILE, "utf8") : "";
		if (before !== env) {
			writeFileSync(ENV_FILE, env);
			if (online()) ctl("stop", "-m", "fast");
		}
	}
	if (!online()) ctl("start");
	return CLUSTER.port;
}

/** The database clock's offset from the real one, in seconds (libfaketime re-reads it within a second). */
export function setClockOffset(seconds: number): void {
	writeFileSync(OFFSET_FILE, `${seconds >= 0 ? "+" : ""}${seconds}\n`);
	chmodSync(OFFSET_FILE, 0o644);
}

/** Stops the cluster at once (`-m immediate`: no checkpoint, as a crash); `start` brings it back. */
export function stopCluster(mode: "immediate" | "fast" = "fast"): void {
	if (online()) ctl("stop", "-m", mode);
}

export function startClusterAgain(): void {
	if (!online()) ctl("start");
}
