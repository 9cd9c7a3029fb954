import { defineConfig } from "vitest/config";

/**
 * The console in a real browser: Debian's Chromium driven by playwright-core
 * against the real local stack (`npm run dev` on a free port, embedded
 * Postgres, a demo agent). Separate from `npm test` because it needs the
 * browser installed (`.ci/run` installs it); run with `npm run test:browser`.
 */
export default defineConfig({
	test: {
		include: ["test/browser/**/*.test.ts"],
		environment: "node",
		fileParallelism: false,
		testTimeout: 60_000,
		hookTimeout: 180_000,
	},
});
