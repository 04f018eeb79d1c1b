-- Runs of a job that ended without spending its attempt budget: the API
-- asked us to slow down (rate limited) or its circuit breaker was open, so
-- the job was rescheduled without being tried. apalis counts every run in
-- apalis.jobs.attempts; the budget a job has spent is that count minus its
-- deferrals. The row goes with its job.
CREATE TABLE job_deferrals (
    job_id       TEXT PRIMARY KEY REFERENCES apalis.jobs (id) ON DELETE CASCADE,
    deferrals    INTEGER NOT NULL CHECK (deferrals > 0),
    -- The run (apalis's attempt number) of the latest deferral; a job whose
    -- attempt count went back below it was reset, and its deferrals are void.
    last_attempt INTEGER NOT NULL,
    last_reason  TEXT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
