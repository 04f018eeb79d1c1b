-- Two of apalis-postgres's indexes on apalis.jobs repeat others: `lidx` (its
-- first migrations' LIdx) indexes lock_by as idx_apalis_jobs_lock_by does,
-- and `unique_job_id` indexes id as the primary key does. A job's row is
-- inserted once and updated as it is fetched, run and finished; those updates
-- change indexed columns (lock_by, status, done_at), so each writes a new
-- entry into every index. The two copies cost writes and WAL on every step of
-- every job and serve no query.
--
-- job_deferrals' foreign key was bound to unique_job_id when it was made; it
-- is made again, on the primary key, before that index goes.
ALTER TABLE job_deferrals DROP CONSTRAINT IF EXISTS job_deferrals_job_id_fkey;
DROP INDEX IF EXISTS apalis.unique_job_id;
ALTER TABLE job_deferrals
    ADD CONSTRAINT job_deferrals_job_id_fkey
    FOREIGN KEY (job_id) REFERENCES apalis.jobs (id) ON DELETE CASCADE;
DROP INDEX IF EXISTS apalis.lidx;
