-- API keys. Only a SHA-256 of each key is stored (keys are 256 random bits, so a fast hash is
-- as good as a password KDF here, and lets every request be checked with one index lookup).
-- A key acts for its tenant; an admin key sees every tenant. Revoked keys stay as rows, so
-- `keys list` keeps their history and names are never reused. The two limits are optional
-- per-tenant overrides of the server's defaults (NULL: the default; 0: unlimited).
-- Keep in step with migrations/postgres/0005_api_keys.sql.
CREATE TABLE api_keys (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    name                  TEXT NOT NULL,
    tenant                TEXT NOT NULL,
    -- 1 for an admin key, else 0
    admin                 INTEGER NOT NULL DEFAULT 0,
    key_hash              TEXT NOT NULL,
    created_at            INTEGER NOT NULL,
    last_used_at          INTEGER,
    revoked_at            INTEGER,
    max_unfinished_images INTEGER,
    submits_per_minute    INTEGER
);
CREATE UNIQUE INDEX api_keys_name ON api_keys (name);
CREATE UNIQUE INDEX api_keys_hash ON api_keys (key_hash);
CREATE INDEX api_keys_tenant ON api_keys (tenant);
