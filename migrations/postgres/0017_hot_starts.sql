-- rp:no-transaction
-- Fewer index entries per image on the queue's hot path. Keep in step with
-- migrations/sqlite/0017_hot_starts.sql.
--
-- * The retry count's index tests `claims` instead of `attempts`: a start (which counts the
--   attempt) then changes no indexed column and can be a HOT update, which adds no index
--   entry at all. A pending image has claims > 0 exactly when one of its claims counted an
--   attempt (every claim that does not is refunded), so the count is the same but for an
--   image started and then deferred (its claim was refunded: it waits for its host, not to
--   be retried).
-- * `images_leased` (running images by owner) goes: only a worker's shutdown hand-back read
--   it, and it finds its few running rows through `images_lease_expiry` as well; every claim
--   wrote an entry to it.
-- * fillfactor 80 leaves room on each page for the new versions of HOT updates (starts, lease
--   renewals); it applies to pages written from now on, nothing is rewritten.
--
-- Built CONCURRENTLY, outside a transaction: claims and outcomes go on while it builds; a
-- build cut short leaves an invalid index, which the first DROP removes when this runs again.
-- Expand only: binaries that know version 14 run beside it (their retry count, on the admin
-- overview, then reads `images_pending` instead of an index of its own: slower, still right).
DROP INDEX CONCURRENTLY IF EXISTS images_retry_claimed;
CREATE INDEX CONCURRENTLY images_retry_claimed ON images (available_at) WHERE status = 'pending' AND claims > 0;
DROP INDEX CONCURRENTLY IF EXISTS images_retry_wait;
DROP INDEX CONCURRENTLY IF EXISTS images_leased;
ALTER TABLE images SET (fillfactor = 80);
