-- Webhook secrets sealed at rest. Keep in step with migrations/sqlite/0016_sealed_secrets.sql.
--
-- Expand only: a version before this one keeps running beside the new one during a rolling
-- upgrade. The new version writes the sealed columns (base64 of nonce || ciphertext || tag,
-- ChaCha20-Poly1305, the tenant and the slot bound in as associated data) and the id of the key
-- that sealed them, and erases the clear ones; it seals rows it finds in clear (at start, and
-- when it reads one an older version wrote). An older version reading a sealed row finds
-- `secret` NULL and fails that read (a delivery it claimed is retried, by a newer worker in the
-- end); nothing it does loses an event. A later migration may drop the clear columns once no
-- older version runs.
ALTER TABLE webhook_secrets ALTER COLUMN secret DROP NOT NULL;
ALTER TABLE webhook_secrets ADD COLUMN secret_sealed TEXT;
ALTER TABLE webhook_secrets ADD COLUMN previous_sealed TEXT;
ALTER TABLE webhook_secrets ADD COLUMN key_id TEXT;
