-- Token buckets shared by every API process: the per-tenant submit rate and the dashboard's
-- sign-in throttle per client address. Keep in step with migrations/postgres/0012_rate_buckets.sql.
--
-- A bucket of `capacity` tokens refills at capacity per minute on the database's clock; taking
-- a token is one conditional upsert, so the configured rate holds for the service as a whole
-- however many processes answer. Rows untouched for an hour are full and are swept.
CREATE TABLE rate_buckets (
    key        TEXT PRIMARY KEY,
    tokens     REAL NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX rate_buckets_updated ON rate_buckets (updated_at);
