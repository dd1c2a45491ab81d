-- The worker registry and its per-minute counters (the dashboard's sources), and a small
-- index for the queue depth. Keep in step with migrations/postgres/0006_workers.sql.

-- One row per worker process, written at start and heartbeated every few seconds by its
-- registry task (src/worker/registry.rs); `stopped_at` is set at a graceful shutdown. Rows
-- not seen for an hour are pruned by the live workers.
CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    version      TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    -- images this process may have in flight, and has in flight at its last heartbeat
    slots        INTEGER NOT NULL,
    busy         INTEGER NOT NULL,
    stopped_at   INTEGER
);

-- Images finished (and transient failures retried) per worker and minute, by outcome and
-- error kind. Each worker adds what its own counters gained since its previous heartbeat, so
-- the dashboard's chart and failure list never read the images table, and recording a result
-- pays for no extra index. Pruned after two hours.
CREATE TABLE worker_minutes (
    -- the minute's start, epoch ms
    minute     INTEGER NOT NULL,
    worker_id  TEXT NOT NULL,
    -- succeeded | failed | retried
    outcome    TEXT NOT NULL,
    -- an error kind, or 'none' for succeeded
    error_kind TEXT NOT NULL,
    images     INTEGER NOT NULL,
    PRIMARY KEY (minute, worker_id, outcome, error_kind)
);

-- Images waiting for a retry (pending after an attempt): few at any time, so counting them for
-- the queue depth is cheap, and claims and results, which change `status` anyway, pay nothing
-- new.
CREATE INDEX images_retry_wait ON images (available_at) WHERE status = 'pending' AND attempts > 0;

-- The failed images of a job, in order: the job page's "failed" filter reads one page of
-- them without walking the job's succeeded images. Written only when an image fails.
CREATE INDEX images_failed ON images (job_id, seq) WHERE status = 'failed';
