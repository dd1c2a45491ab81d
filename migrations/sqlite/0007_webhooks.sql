-- Webhooks and retention. Keep in step with migrations/postgres/0007_webhooks.sql.
--
-- A job may name a URL to be told when it finishes. The delivery row is written in the same
-- transaction that finishes the job (one per job at most: the unique index), and is then worked
-- like the images: claimed under a lease, retried with backoff, recorded once.
ALTER TABLE jobs ADD COLUMN webhook_url TEXT;

-- Retention finds finished jobs by their finish time without reading the ongoing ones.
CREATE INDEX jobs_finished_at ON jobs (finished_at) WHERE status <> 'ongoing';

-- One signing secret per tenant (`whsec_` + base64 of random bytes), made on first use. After a
-- rotation the previous secret still signs, beside the new one, until previous_expires_at.
CREATE TABLE webhook_secrets (
    tenant              TEXT PRIMARY KEY,
    secret              TEXT NOT NULL,
    previous_secret     TEXT,
    previous_expires_at INTEGER,
    created_at          INTEGER NOT NULL,
    rotated_at          INTEGER
);

CREATE TABLE webhook_deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id           INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    tenant           TEXT NOT NULL,
    url              TEXT NOT NULL,
    -- the Standard Webhooks message id (`webhook-id`): the same on every attempt
    message_id       TEXT NOT NULL,
    -- pending | running | delivered | failed
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    available_at     INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    delivered_at     INTEGER,
    updated_at       INTEGER NOT NULL
);
CREATE UNIQUE INDEX webhook_deliveries_job ON webhook_deliveries (job_id);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (available_at, id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_lease_expiry ON webhook_deliveries (lease_expires_at, id) WHERE status = 'running';
