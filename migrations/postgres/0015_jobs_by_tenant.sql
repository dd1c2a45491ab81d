-- rp:no-transaction
-- A tenant's jobs, newest first, whatever their state: the dashboard's and the API's job list
-- of one tenant read this index instead of walking every tenant's jobs by id (a small tenant
-- beside a big one read the whole table). Keep in step with migrations/sqlite/0015_jobs_by_tenant.sql.
--
-- Built CONCURRENTLY, outside a transaction: writes to `jobs` go on while it builds. A build
-- cut short leaves an invalid index behind; the DROP before the CREATE removes it when the
-- migration runs again. Expand only: binaries that know version 14 run beside it.
DROP INDEX CONCURRENTLY IF EXISTS jobs_by_tenant;
CREATE INDEX CONCURRENTLY jobs_by_tenant ON jobs (tenant, id);
