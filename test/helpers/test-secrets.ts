/** Credentials the worker tests run with: bound in vitest.config.ts, used by the tests. */
export const TEST_API_KEYS = "test-operator-key,test-second-key,test-ratelimited-key,test-observer-key,test-observer-key-2";
export const TEST_READ_KEY = "test-read-only-key";
export const TEST_TOKEN_SECRET = "test-agent-token-secret-0123456789abcdef";
/** The secret being rotated out: its tokens still verify. */
export const TEST_PREVIOUS_TOKEN_SECRET = "test-previous-token-secret-0123456789abcd";
export const TEST_ALLOWED_ORIGIN = "https://dash.switchyard.test";
