-- A tenant's jobs, newest first, whatever their state (see migrations/postgres/0015_jobs_by_tenant.sql,
-- which builds it CONCURRENTLY).
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant, id);
