-- Retail Pulse schema, SQLite flavour. Keep in step with migrations/postgres/0001_init.sql:
-- the same tables, columns and indexes; only the types and identity syntax differ.
-- Times are Unix epoch milliseconds (INTEGER) so one query path serves both backends.

CREATE TABLE stores (
    store_id   TEXT PRIMARY KEY,
    store_name TEXT NOT NULL,
    area_code  TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- ongoing | completed | failed | cancelled
    status      TEXT NOT NULL,
    total       INTEGER NOT NULL,
    succeeded   INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    -- JSON array of {"store_id", "error"}, written once when the job finishes with failures
    errors      TEXT,
    created_at  INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX jobs_ongoing ON jobs (id) WHERE status = 'ongoing';

-- One row per image: the system of record and, through status and the lease columns, the queue.
CREATE TABLE images (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id           INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    -- position of the image in the job, in submission order
    seq              INTEGER NOT NULL,
    store_id         TEXT NOT NULL,
    url              TEXT NOT NULL,
    visit_time       TEXT NOT NULL,
    visit_at         INTEGER,
    -- pending | running | succeeded | failed
    status           TEXT NOT NULL,
    width            INTEGER,
    height           INTEGER,
    perimeter        INTEGER,
    error            TEXT,
    error_kind       TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    available_at     INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE UNIQUE INDEX images_job_seq ON images (job_id, seq);
CREATE INDEX images_pending ON images (job_id, seq) WHERE status = 'pending';
CREATE INDEX images_leased ON images (lease_owner) WHERE status = 'running';
CREATE INDEX images_lease_expiry ON images (lease_expires_at) WHERE status = 'running';
