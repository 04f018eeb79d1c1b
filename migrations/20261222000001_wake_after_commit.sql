-- Workers are woken after an enqueuing transaction commits, by
-- conveyor_jobs::queue::Wake, not by apalis-postgres's per-row insert
-- trigger. A NOTIFY inside a transaction takes the database-wide notify lock
-- at commit and keeps it through the commit's WAL flush, so with the trigger
-- every job that enqueues the next step waited for every other one's commit.
DROP TRIGGER IF EXISTS notify_workers ON apalis.jobs;
