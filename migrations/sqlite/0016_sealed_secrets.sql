-- Webhook secrets sealed at rest. Keep in step with migrations/postgres/0016_sealed_secrets.sql.
--
-- Expand only: a version before this one may run beside the new one on the same file. The new
-- version writes the sealed columns (base64 of nonce || ciphertext || tag, ChaCha20-Poly1305,
-- the tenant and the slot bound in as associated data) and the id of the key that sealed them,
-- and erases the clear ones; it seals rows it finds in clear (at start, and when it reads one
-- an older version wrote).
--
-- SQLite cannot drop a NOT NULL constraint, so the table is rebuilt with `secret` nullable
-- (same columns, same data). Writing '' instead of NULL would keep the table but be worse: an
-- older version would read '' as a secret, fail to sign with it, and fail the delivery for
-- good; reading NULL it fails the read instead, and the delivery is retried. The table is
-- small (one row per tenant) and nothing references it.
CREATE TABLE webhook_secrets_sealed (
    tenant              TEXT PRIMARY KEY,
    secret              TEXT,
    previous_secret     TEXT,
    previous_expires_at INTEGER,
    created_at          INTEGER NOT NULL,
    rotated_at          INTEGER,
    secret_sealed       TEXT,
    previous_sealed     TEXT,
    key_id              TEXT
);
INSERT INTO webhook_secrets_sealed (tenant, secret, previous_secret, previous_expires_at, created_at, rotated_at)
    SELECT tenant, secret, previous_secret, previous_expires_at, created_at, rotated_at FROM webhook_secrets;
DROP TABLE webhook_secrets;
ALTER TABLE webhook_secrets_sealed RENAME TO webhook_secrets;
