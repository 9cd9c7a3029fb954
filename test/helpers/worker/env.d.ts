declare namespace Cloudflare {
	interface Env {
		/** A Postgres URL where nothing listens, set by the test config. */
		TEST_DEAD_DATABASE_URL: string;
	}
}
