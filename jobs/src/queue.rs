//! The queues and how work is put on them: the seven steps of the
//! pipeline, and `cancel` for orders cancelled on the channel after import.
//!
//! Each pipeline step has its own apalis-postgres queue with a stable name
//! (`"purchase"`), never a Rust type path, so rows already queued survive a
//! rename. Every job carries an idempotency key; enqueueing a key that is
//! already queued is a no-op (`ON CONFLICT DO NOTHING`) instead of failing
//! the whole batch, which is what apalis's own batch push would do. Jobs are
//! enqueued on the caller's connection so that the next step is committed in
//! the same transaction as the state change that makes it due.
//!
//! Workers are woken after that commit, not inside it: [`enqueue`] returns a
//! [`Wake`] that the caller sends once its transaction has committed. A
//! `NOTIFY` inside the transaction (apalis's per-row insert trigger, which
//! Conveyor drops) takes Postgres's database-wide notify lock at commit and
//! holds it through the commit's WAL flush, so every enqueuing commit of the
//! fleet would wait for the one before it. Sent in a statement of its own,
//! which changes no data, the notification's commit does not wait for a WAL
//! flush, and holds that lock for microseconds. A wake that is never
//! sent (a crash between commit and wake) costs latency only: workers also
//! poll every `worker.poll_interval_ms`.
//!
//! ```no_run
//! # async fn f(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
//! use conveyor_jobs::queue::{enqueue, NewJob, Queue};
//! let mut tx = pool.begin().await?;
//! let job = NewJob::new(Queue::Reserve, "order:42:v1", &serde_json::json!({"order_id": 42, "version": 1}));
//! let wake = enqueue(&mut tx, &[job]).await?;
//! tx.commit().await?;
//! wake.send(pool).await;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Queue {
    Import,
    Reserve,
    Split,
    Rate,
    Render,
    Purchase,
    Commit,
    Cancel,
}

impl Queue {
    pub const ALL: [Queue; 8] = [
        Queue::Import,
        Queue::Reserve,
        Queue::Split,
        Queue::Rate,
        Queue::Render,
        Queue::Purchase,
        Queue::Commit,
        Queue::Cancel,
    ];

    /// The seven queues an order goes through, in that order: `ALL` but
    /// its last, `cancel`.
    pub const PIPELINE: [Queue; 7] = *Queue::ALL.first_chunk::<7>().unwrap();

    /// The queue's name in `apalis.jobs.job_type`.
    pub fn name(self) -> &'static str {
        match self {
            Queue::Import => "import",
            Queue::Reserve => "reserve",
            Queue::Split => "split",
            Queue::Rate => "rate",
            Queue::Render => "render",
            Queue::Purchase => "purchase",
            Queue::Commit => "commit",
            Queue::Cancel => "cancel",
        }
    }
}

impl fmt::Display for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Queue {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Queue::ALL
            .into_iter()
            .find(|q| q.name() == s)
            .ok_or_else(|| format!("unknown queue {s:?}; queues are import, reserve, split, rate, render, purchase, commit, cancel"))
    }
}

/// A job to put on a queue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub queue: Queue,
    pub key: String,
    pub payload: Vec<u8>,
    pub run_at: Option<DateTime<Utc>>,
    pub priority: i32,
    pub max_attempts: i32,
}

/// Attempts a job gets unless configured otherwise.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 12;

impl NewJob {
    pub fn new(queue: Queue, key: impl Into<String>, payload: &impl Serialize) -> NewJob {
        NewJob {
            queue,
            key: key.into(),
            // Serializing our own payload structs cannot fail.
            payload: serde_json::to_vec(payload).unwrap_or_default(),
            run_at: None,
            priority: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    pub fn priority(mut self, priority: i32) -> NewJob {
        self.priority = priority;
        self
    }

    pub fn run_at(mut self, at: DateTime<Utc>) -> NewJob {
        self.run_at = Some(at);
        self
    }
}

/// The channel apalis-postgres's listeners wait on.
const INSERT_CHANNEL: &str = "apalis::job::insert";

/// Workers to wake once the transaction that enqueued their jobs has
/// committed: one notification per queue that got a job due now.
#[must_use = "send the wake after the transaction commits, or workers find the jobs only on their next poll"]
#[derive(Debug, Default)]
pub struct Wake {
    inserted: u64,
    /// A job id per queue woken; apalis's listener wants one, any will do.
    due: BTreeMap<Queue, String>,
}

impl Wake {
    /// Wakes `queue`'s workers for a job put back on it (a replayed dead
    /// letter), not inserted by [`enqueue`].
    pub fn job(queue: Queue, id: impl Into<String>) -> Wake {
        Wake {
            inserted: 0,
            due: BTreeMap::from([(queue, id.into())]),
        }
    }

    /// How many jobs the enqueue inserted (keys already queued are not).
    pub fn inserted(&self) -> u64 {
        self.inserted
    }

    /// This wake and `other` together.
    pub fn and(mut self, other: Wake) -> Wake {
        self.inserted += other.inserted;
        for (queue, id) in other.due {
            self.due.entry(queue).or_insert(id);
        }
        self
    }

    /// Notifies the woken queues' workers, outside any transaction. A failure
    /// is logged, not returned: the jobs are committed and the workers' poll
    /// finds them.
    pub async fn send(self, pool: &PgPool) {
        if self.due.is_empty() {
            return;
        }
        let (queues, ids): (Vec<&str>, Vec<&str>) = self
            .due
            .iter()
            .map(|(queue, id)| (queue.name(), id.as_str()))
            .unzip();
        let sent = sqlx::query(
            "SELECT pg_notify($1, json_build_object('job_type', q, 'id', id)::text)
             FROM unnest($2::text[], $3::text[]) AS t(q, id)",
        )
        .bind(INSERT_CHANNEL)
        .bind(&queues)
        .bind(&ids)
        .execute(pool)
        .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, ?queues, "waking workers failed; they find the jobs on their next poll");
        }
    }
}

/// Inserts the jobs in one statement; keys already present on their queue
/// are skipped. Returns the [`Wake`] to send once the caller's transaction
/// has committed.
pub async fn enqueue(conn: &mut PgConnection, jobs: &[NewJob]) -> Result<Wake, sqlx::Error> {
    if jobs.is_empty() {
        return Ok(Wake::default());
    }
    let ids: Vec<String> = jobs
        .iter()
        .map(|_| ulid::Ulid::generate().to_string())
        .collect();
    let queues: Vec<&str> = jobs.iter().map(|j| j.queue.name()).collect();
    let payloads: Vec<&[u8]> = jobs.iter().map(|j| j.payload.as_slice()).collect();
    let keys: Vec<&str> = jobs.iter().map(|j| j.key.as_str()).collect();
    let run_ats: Vec<Option<DateTime<Utc>>> = jobs.iter().map(|j| j.run_at).collect();
    let priorities: Vec<i32> = jobs.iter().map(|j| j.priority).collect();
    let attempts: Vec<i32> = jobs.iter().map(|j| j.max_attempts).collect();
    // One row back per queue, however many jobs: how many went in, and one
    // id among those due now (a job delayed to a later run_at is found by
    // the poll when its time comes).
    let inserted: Vec<(String, i64, Option<String>)> = sqlx::query_as(
        "WITH inserted AS (
             INSERT INTO apalis.jobs
                 (id, job_type, job, status, attempts, max_attempts, run_at, priority, idempotency_key)
             SELECT id, job_type, job, 'Pending', 0, max_attempts, COALESCE(run_at, now()), priority, key
             FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int[], $5::timestamptz[], $6::int[], $7::text[])
                  AS t(id, job_type, job, max_attempts, run_at, priority, key)
             ON CONFLICT (job_type, idempotency_key) DO NOTHING
             RETURNING job_type, id, run_at <= now() AS due
         )
         SELECT job_type, count(*), min(id) FILTER (WHERE due) FROM inserted GROUP BY job_type",
    )
    .bind(&ids)
    .bind(&queues)
    .bind(&payloads)
    .bind(&attempts)
    .bind(&run_ats)
    .bind(&priorities)
    .bind(&keys)
    .fetch_all(conn)
    .await?;
    let mut wake = Wake::default();
    for (queue, count, due) in inserted {
        wake.inserted += count as u64;
        if let (Some(id), Ok(queue)) = (due, queue.parse::<Queue>()) {
            wake.due.insert(queue, id);
        }
    }
    Ok(wake)
}
