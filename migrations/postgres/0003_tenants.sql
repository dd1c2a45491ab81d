-- Tenants: every job belongs to the tenant of the API key that submitted it ('default' when
-- it came without one). Idempotency keys are scoped to the tenant, and the scheduler walks
-- the ongoing jobs of each tenant through jobs_ongoing_by_tenant.
ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
DROP INDEX jobs_idempotency_key;
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (tenant, idempotency_key);
CREATE INDEX jobs_ongoing_by_tenant ON jobs (tenant, id) WHERE status = 'ongoing';
