-- What the worker processes share about each image origin (scheme, host, port): its circuit
-- breaker, opened once for all, and the shares of its download budget each process holds, so
-- the budget holds across every worker. Keep in step with migrations/sqlite/0013_origins.sql.
CREATE TABLE origin_breakers (
    origin        TEXT PRIMARY KEY,
    failures      BIGINT NOT NULL DEFAULT 0,
    open_until    BIGINT,
    failed_probes BIGINT NOT NULL DEFAULT 0,
    probe_owner   TEXT,
    probe_until   BIGINT,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE origin_shares (
    origin     TEXT NOT NULL,
    owner      TEXT NOT NULL,
    permits    BIGINT NOT NULL,
    wanted     BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (origin, owner)
);
