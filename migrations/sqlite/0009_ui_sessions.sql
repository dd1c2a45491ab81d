-- Dashboard sessions: a browser that signed in with an API key holds a random session id in a
-- cookie; only its SHA-256 is stored here (like keys: 256 random bits, so a fast hash suffices).
-- A session acts for its key: the lookup joins api_keys and requires the key to be live, so
-- revoking a key ends its sessions at once. A session ends when idle for the configured time
-- (last_seen_at, written at most once a minute) or at expires_at, whichever comes first.
-- Keep in step with migrations/postgres/0009_ui_sessions.sql.
CREATE TABLE ui_sessions (
    id_hash      TEXT PRIMARY KEY,
    key_id       INTEGER NOT NULL REFERENCES api_keys (id),
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX ui_sessions_key ON ui_sessions (key_id);
CREATE INDEX ui_sessions_last_seen ON ui_sessions (last_seen_at);
