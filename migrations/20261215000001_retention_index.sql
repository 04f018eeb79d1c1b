-- Retention (jobs/src/retention.rs) looks for finished jobs by age; without
-- this index every pruning batch would scan the whole jobs table.
CREATE INDEX IF NOT EXISTS conveyor_jobs_finished_idx
    ON apalis.jobs (done_at)
    WHERE status IN ('Done', 'Failed', 'Killed');
