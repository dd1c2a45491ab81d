-- Leases that expired while the image was running, apart from those that expired before it
-- started. Keep in step with migrations/postgres/0014_crashes.sql.
--
-- `expiries` counts every lease of the image that expired; its next worker records its start
-- before running it (the start of an image that brought its worker down may never have been
-- recorded). `crashes` counts only the expiries of a lease whose start was recorded: the image
-- was running when its worker died or hung, so it may be what killed it, and it runs alone.
-- A dead worker's many unstarted images therefore run side by side again, each with its
-- start recorded first, instead of one at a time.
ALTER TABLE images ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;
