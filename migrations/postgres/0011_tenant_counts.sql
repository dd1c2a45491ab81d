-- Per-tenant counters, kept in the transactions that change what they count. Keep in step with
-- migrations/sqlite/0011_tenant_counts.sql.
--
-- The quota check reads `unfinished_images` with one conditional UPDATE at the end of the
-- submit's transaction (exact for any number of API processes, the row locked only until
-- commit); the overview and /metrics read the job and image counts without aggregating the
-- jobs table. Every writer updates this table last in its transaction, which is what lets the
-- periodic recount of the unfinished images (of versions that did not keep the counters) run
-- beside them without losing an update.
CREATE TABLE tenant_counts (
    tenant            TEXT PRIMARY KEY,
    unfinished_images BIGINT NOT NULL DEFAULT 0,
    images_succeeded  BIGINT NOT NULL DEFAULT 0,
    images_failed     BIGINT NOT NULL DEFAULT 0,
    jobs_ongoing      BIGINT NOT NULL DEFAULT 0,
    jobs_completed    BIGINT NOT NULL DEFAULT 0,
    jobs_failed       BIGINT NOT NULL DEFAULT 0,
    jobs_cancelled    BIGINT NOT NULL DEFAULT 0
);

INSERT INTO tenant_counts (tenant, unfinished_images, images_succeeded, images_failed,
                           jobs_ongoing, jobs_completed, jobs_failed, jobs_cancelled)
SELECT tenant,
       SUM(CASE WHEN status = 'ongoing' THEN total - succeeded - failed ELSE 0 END),
       SUM(succeeded), SUM(failed),
       SUM(CASE WHEN status = 'ongoing' THEN 1 ELSE 0 END),
       SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END),
       SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END),
       SUM(CASE WHEN status = 'cancelled' THEN 1 ELSE 0 END)
FROM jobs GROUP BY tenant;
