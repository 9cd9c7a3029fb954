declare namespace Cloudflare {
	interface Env {
		/** A Postgres URL where nothing listens, set by the test config. */
		TEST_DEAD_DATABASE_URL: string;
		/** http://127.0.0.1:port of the relay's /down and /up switch and its /opened and /open counts. */
		TEST_RELAY_CONTROL: string;
	}
}
