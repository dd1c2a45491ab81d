-- The claim path: a claim takes, per job, the lowest pending positions that are due. The
-- pending index carries available_at, so a retry that is not yet due is passed over inside the
-- index instead of by visiting its row.
DROP INDEX images_pending;
CREATE INDEX images_pending ON images (job_id, seq) INCLUDE (available_at) WHERE status = 'pending';
-- Listing jobs of one status stays a keyset read however many jobs there are.
CREATE INDEX jobs_by_status ON jobs (status, id);
