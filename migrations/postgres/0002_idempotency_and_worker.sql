-- Idempotent submits: a client-chosen key per job, with the hash of the body it came with.
ALTER TABLE jobs ADD COLUMN idempotency_key TEXT;
ALTER TABLE jobs ADD COLUMN request_hash TEXT;
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (idempotency_key);

-- Which worker recorded an image's result (operations: who did what).
ALTER TABLE images ADD COLUMN processed_by TEXT;
