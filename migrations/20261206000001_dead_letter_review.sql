-- Every failed run of every job, kept so that a dead letter shows its whole
-- history: each attempt's error class and message, the worker that ran it and
-- when. Rows are written by the one place that settles a job's result.
CREATE TABLE job_failures (
    id          BIGSERIAL PRIMARY KEY,
    job_id      TEXT NOT NULL,
    queue       TEXT NOT NULL,
    -- apalis's run number for this job (1 for the first run).
    run         INTEGER NOT NULL,
    error_class TEXT NOT NULL,
    error       TEXT NOT NULL,
    worker      TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX job_failures_job_idx ON job_failures (job_id, at);
CREATE INDEX job_failures_at_idx ON job_failures (at);

-- Review of dead letters: who retried or discarded one, and why; the channel
-- an order's job belongs to, for filtering; how many times the job died.
ALTER TABLE dead_letters
    ADD COLUMN channel       TEXT,
    ADD COLUMN reviewed_by   TEXT,
    ADD COLUMN review_reason TEXT,
    ADD COLUMN deaths        INTEGER NOT NULL DEFAULT 1,
    ADD COLUMN last_dead_at  TIMESTAMPTZ NOT NULL DEFAULT now();

UPDATE dead_letters d SET channel = c.code
FROM orders o JOIN channels c ON c.id = o.channel_id
WHERE o.id = d.order_id;

CREATE INDEX dead_letters_state_idx ON dead_letters (state, last_dead_at);
