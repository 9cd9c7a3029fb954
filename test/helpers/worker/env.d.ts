declare namespace Cloudflare {
	interface Env {
		/** A Postgres URL where nothing listens, set by the test config. */
		TEST_DEAD_DATABASE_URL: string;
		/** http://127.0.0.1:port of the relay's /down and /up switch, its /opened and /open WebSocket counts and its /sql-requests count. */
		TEST_RELAY_CONTROL: string;
		/** `embedded` (PGlite, one session: no lock waits between connections) or `postgres` (a real server). */
		TEST_DATABASE_KIND: string;
		/** SWITCHYARD_MODEL_RUNS and SWITCHYARD_MODEL_SEED for the model-based test; "" when unset. */
		TEST_MODEL_RUNS: string;
		TEST_MODEL_SEED: string;
	}
}
