-- Fewer index entries per image on the queue's hot path (see
-- migrations/postgres/0017_hot_starts.sql, which says why; SQLite has no HOT updates, but a
-- start no longer touches an index here either, and a claim writes one index entry fewer).
CREATE INDEX IF NOT EXISTS images_retry_claimed ON images (available_at) WHERE status = 'pending' AND claims > 0;
DROP INDEX IF EXISTS images_retry_wait;
DROP INDEX IF EXISTS images_leased;
