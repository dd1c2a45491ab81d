-- What the worker processes share about each image origin (scheme, host, port): its circuit
-- breaker, opened once for all, and the shares of its download budget each process holds, so
-- the budget holds across every worker. Keep in step with migrations/postgres/0013_origins.sql.
CREATE TABLE origin_breakers (
    origin        TEXT PRIMARY KEY,
    failures      INTEGER NOT NULL DEFAULT 0,
    open_until    INTEGER,
    failed_probes INTEGER NOT NULL DEFAULT 0,
    probe_owner   TEXT,
    probe_until   INTEGER,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE origin_shares (
    origin     TEXT NOT NULL,
    owner      TEXT NOT NULL,
    permits    INTEGER NOT NULL,
    wanted     INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (origin, owner)
);
