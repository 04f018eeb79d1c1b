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
//! ```no_run
//! # async fn f(tx: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
//! use conveyor_jobs::queue::{enqueue, NewJob, Queue};
//! let job = NewJob::new(Queue::Reserve, "order:42:v1", &serde_json::json!({"order_id": 42, "version": 1}));
//! enqueue(tx, &[job]).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

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

    /// The seven queues an order goes through, in that order (`ALL` less
    /// `cancel`).
    pub const PIPELINE: [Queue; 7] = [
        Queue::Import,
        Queue::Reserve,
        Queue::Split,
        Queue::Rate,
        Queue::Render,
        Queue::Purchase,
        Queue::Commit,
    ];

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

/// Inserts the jobs in one statement; keys already present on their queue
/// are skipped. Returns how many were inserted.
pub async fn enqueue(conn: &mut PgConnection, jobs: &[NewJob]) -> Result<u64, sqlx::Error> {
    if jobs.is_empty() {
        return Ok(0);
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
    let result = sqlx::query(
        "INSERT INTO apalis.jobs
             (id, job_type, job, status, attempts, max_attempts, run_at, priority, idempotency_key)
         SELECT id, job_type, job, 'Pending', 0, max_attempts, COALESCE(run_at, now()), priority, key
         FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int[], $5::timestamptz[], $6::int[], $7::text[])
              AS t(id, job_type, job, max_attempts, run_at, priority, key)
         ON CONFLICT (job_type, idempotency_key) DO NOTHING",
    )
    .bind(&ids)
    .bind(&queues)
    .bind(&payloads)
    .bind(&attempts)
    .bind(&run_ats)
    .bind(&priorities)
    .bind(&keys)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}
