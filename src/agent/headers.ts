/**
 * What the worker tells an agent's object on a WebSocket upgrade it has
 * already authenticated. Only the worker reaches the object, so these are
 * facts it checked, not claims of the client.
 */

/** The agent the verified token is for; the object refuses an upgrade whose id is not its own name. */
export const AGENT_ID_HEADER = "x-switchyard-agent-id";
/** On an observer upgrade: the validated StreamQuery, as JSON. Its presence marks the socket as an observer. */
export const OBSERVER_RESUME_HEADER = "x-switchyard-observe-resume";
/** On an agent upgrade: the token's `exp`, in ms. */
export const TOKEN_EXPIRES_HEADER = "x-switchyard-token-expires";
/** On an agent upgrade: the token's `ver`, checked against the object's revocations. */
export const TOKEN_VERSION_HEADER = "x-switchyard-token-version";
/** On an observer upgrade: the API key's id (`api:<hash prefix>`), which observers are counted against. */
export const OBSERVER_KEY_HEADER = "x-switchyard-observer-key";
