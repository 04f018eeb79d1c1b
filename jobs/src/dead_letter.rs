//! Dead letters: jobs that failed for good, kept with their raw payload, the
//! reason and every attempt's error until ops review them.
//!
//! The CLI (`conveyor dlq ...`) and the ops HTTP API both call the functions
//! here, so that a retry or a discard means the same thing from either:
//!
//! * [`retry`] puts the job back on its queue from its own step, with a fresh
//!   attempt budget, and marks the dead letter `retried`; should the job die
//!   again, the same dead letter opens again with the new failures;
//! * [`discard`] closes the dead letter with a reason and leaves the job dead;
//! * every retry and discard writes an audit row with who and why.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};

use crate::error::ErrorClass;
use crate::queue::{Queue, Wake};

/// Records one failed run of a job: its class and message, the worker that
/// ran it (the job's current lock holder) and the time.
pub async fn record_failure(
    pool: &PgPool,
    job_id: &str,
    queue: Queue,
    run: usize,
    class: ErrorClass,
    message: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO job_failures (job_id, queue, run, error_class, error, worker)
         SELECT $1, $2, $3, $4, $5,
                COALESCE((SELECT lock_by FROM apalis.jobs WHERE id = $1), '')",
    )
    .bind(job_id)
    .bind(queue.name())
    .bind(run as i32)
    .bind(class.as_str())
    .bind(message)
    .execute(pool)
    .await?;
    Ok(())
}

/// The order and package a job's payload names, when it names them.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobRefs {
    pub order_id: Option<i64>,
    pub package_id: Option<i64>,
}

/// Records the job `job_id` (its payload read straight from the queue, byte
/// for byte) as dead, with its order (named by the payload, or the order
/// of the package it names) and that order's channel. A job that dies again after a retry opens its dead
/// letter again, with the new reason.
pub async fn record(
    pool: &PgPool,
    job_id: &str,
    queue: Queue,
    class: ErrorClass,
    reason: &str,
    attempts: usize,
    refs: JobRefs,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dead_letters
             (job_id, queue, job_key, payload, error_class, error, attempts, worker, order_id, channel)
         SELECT j.id, $2, j.idempotency_key, j.job, $3, $4, $5, COALESCE(j.lock_by, ''), o.id, c.code
         FROM apalis.jobs j
         LEFT JOIN orders o ON o.id = COALESCE($6, (SELECT order_id FROM packages WHERE id = $7))
         LEFT JOIN channels c ON c.id = o.channel_id
         WHERE j.id = $1
         ON CONFLICT (job_id) DO UPDATE
             SET error_class = EXCLUDED.error_class, error = EXCLUDED.error,
                 attempts = EXCLUDED.attempts, worker = EXCLUDED.worker,
                 state = 'open', reviewed_at = NULL,
                 deaths = dead_letters.deaths + 1, last_dead_at = now()",
    )
    .bind(job_id)
    .bind(queue.name())
    .bind(class.as_str())
    .bind(reason)
    .bind(attempts as i32)
    .bind(refs.order_id)
    .bind(refs.package_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Which dead letters to list or retry. Empty fields match everything; by
/// default only open (unreviewed) ones.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct Filter {
    pub queue: Option<String>,
    pub channel: Option<String>,
    pub error_class: Option<String>,
    /// Dead since this time (the latest death).
    pub since: Option<DateTime<Utc>>,
    /// `open` (default), `retried`, `discarded` or `all`.
    pub state: Option<String>,
}

impl Filter {
    /// Refuses values that can match nothing, so that a typo is an error
    /// rather than an empty list (or a retry of nothing).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(q) = &self.queue {
            q.parse::<Queue>()?;
        }
        if let Some(c) = &self.error_class {
            const CLASSES: [&str; 5] = [
                "retryable",
                "rate_limited",
                "permanent",
                "unknown_outcome",
                "circuit_open",
            ];
            if !CLASSES.contains(&c.as_str()) {
                return Err(format!(
                    "unknown error class {c:?}; classes are {}",
                    CLASSES.join(", ")
                ));
            }
        }
        if let Some(s) = &self.state
            && !["open", "retried", "discarded", "all"].contains(&s.as_str())
        {
            return Err(format!(
                "unknown state {s:?}; states are open, retried, discarded, all"
            ));
        }
        Ok(())
    }

    fn push_where(&self, q: &mut QueryBuilder<Postgres>) {
        match self.state.as_deref() {
            Some("all") => q.push(" WHERE TRUE"),
            Some(state) => q
                .push(" WHERE d.state = ")
                .push_bind(state.to_string())
                .push("::dead_letter_state"),
            None => q.push(" WHERE d.state = 'open'"),
        };
        if let Some(queue) = &self.queue {
            q.push(" AND d.queue = ").push_bind(queue.clone());
        }
        if let Some(channel) = &self.channel {
            q.push(" AND d.channel = ").push_bind(channel.clone());
        }
        if let Some(class) = &self.error_class {
            q.push(" AND d.error_class = ").push_bind(class.clone());
        }
        if let Some(since) = self.since {
            q.push(" AND d.last_dead_at >= ").push_bind(since);
        }
    }
}

/// One dead letter, as listed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    pub job_id: String,
    pub queue: String,
    pub job_key: Option<String>,
    pub channel: Option<String>,
    pub order_id: Option<i64>,
    pub error_class: String,
    pub error: String,
    pub attempts: i32,
    pub deaths: i32,
    pub worker: String,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub last_dead_at: DateTime<Utc>,
    pub reviewed_at: Option<DateTime<Utc>>,
    pub reviewed_by: Option<String>,
    pub review_reason: Option<String>,
}

/// One failed run of a dead job.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Failure {
    pub run: i32,
    pub error_class: String,
    pub error: String,
    pub worker: String,
    pub at: DateTime<Utc>,
}

/// A dead letter with its payload and its history.
#[derive(Debug, Clone, Serialize)]
pub struct Detail {
    #[serde(flatten)]
    pub letter: DeadLetter,
    /// The payload as text when it is UTF-8 (it normally is JSON).
    pub payload: Option<String>,
    /// The payload's bytes in hex when they are not UTF-8.
    pub payload_hex: Option<String>,
    /// Every failed run of the job, oldest first.
    pub failures: Vec<Failure>,
}

const COLUMNS: &str =
    "d.id, d.job_id, d.queue, d.job_key, d.channel, d.order_id, d.error_class, d.error,
     d.attempts, d.deaths, d.worker, d.state::text AS state, d.created_at, d.last_dead_at,
     d.reviewed_at, d.reviewed_by, d.review_reason";

/// Dead letters matching `filter`, the most recent deaths first.
pub async fn list(
    pool: &PgPool,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let mut q = QueryBuilder::new(format!("SELECT {COLUMNS} FROM dead_letters d"));
    filter.push_where(&mut q);
    q.push(" ORDER BY d.last_dead_at DESC, d.id DESC LIMIT ")
        .push_bind(limit.max(0));
    q.build_query_as().fetch_all(pool).await
}

/// One dead letter with its payload and every failed run of its job.
pub async fn show(pool: &PgPool, id: i64) -> Result<Option<Detail>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        letter: DeadLetter,
        payload: Vec<u8>,
    }
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, d.payload FROM dead_letters d WHERE d.id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(Row { letter, payload }) = row else {
        return Ok(None);
    };
    let failures: Vec<Failure> = sqlx::query_as(
        "SELECT run, error_class, error, worker, at FROM job_failures
         WHERE job_id = $1 ORDER BY at, id",
    )
    .bind(&letter.job_id)
    .fetch_all(pool)
    .await?;
    let (payload, payload_hex) = match String::from_utf8(payload) {
        Ok(text) => (Some(text), None),
        Err(e) => (None, Some(hex(e.as_bytes()))),
    };
    Ok(Some(Detail {
        letter,
        payload,
        payload_hex,
        failures,
    }))
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// What a review changed, and what it could not.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Outcome {
    /// Dead letters retried or discarded.
    pub done: Vec<i64>,
    /// Dead letters left as they were, with why (not found, already reviewed).
    pub skipped: Vec<(i64, String)>,
}

/// What a retry needs of a dead letter.
#[derive(sqlx::FromRow)]
struct Stored {
    job_id: String,
    queue: String,
    job_key: Option<String>,
    payload: Vec<u8>,
    state: String,
}

/// Puts the dead letters' jobs back on their queues, to run again from their
/// own step with a fresh attempt budget, and marks the dead letters
/// `retried`; each with an audit row naming `actor` and `reason`.
pub async fn retry(
    pool: &PgPool,
    ids: &[i64],
    actor: &str,
    reason: &str,
) -> Result<Outcome, sqlx::Error> {
    let mut outcome = Outcome::default();
    for &id in ids {
        settled(pool, id).await?;
        outcome.add(id, review(pool, id, Review::Retry, actor, reason).await?);
    }
    Ok(outcome)
}

/// What a review does with one dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Review {
    Retry,
    Discard,
}

impl Outcome {
    fn add(&mut self, id: i64, result: Result<(), String>) {
        match result {
            Ok(()) => self.done.push(id),
            Err(why) => self.skipped.push((id, why)),
        }
    }
}

/// Reviews one open dead letter in one transaction: the row locked, the job
/// put back on its queue (a retry), the new state, the audit row. `Err` says
/// why it was left as it was.
async fn review(
    pool: &PgPool,
    id: i64,
    review: Review,
    actor: &str,
    reason: &str,
) -> Result<Result<(), String>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row: Option<Stored> = sqlx::query_as(
        "SELECT job_id, queue, job_key, payload, state::text AS state FROM dead_letters
         WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(stored) = row else {
        return Ok(Err("no such dead letter".into()));
    };
    if stored.state != "open" {
        return Ok(Err(format!("already reviewed ({})", stored.state)));
    }
    let (state, action) = match review {
        Review::Retry => {
            if let Err(why) = requeue(&mut tx, &stored).await? {
                return Ok(Err(why));
            }
            ("retried", "dead_letter.retry")
        }
        Review::Discard => ("discarded", "dead_letter.discard"),
    };
    sqlx::query(
        "UPDATE dead_letters
         SET state = $4::dead_letter_state, reviewed_at = now(), reviewed_by = $2, review_reason = $3
         WHERE id = $1",
    )
    .bind(id)
    .bind(actor)
    .bind(reason)
    .bind(state)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO audit_log (actor, action, entity, entity_id, detail)
         VALUES ($1, $2, 'dead_letter', $3, jsonb_build_object('job_id', $4::text, 'queue', $5::text, 'reason', $6::text))",
    )
    .bind(actor)
    .bind(action)
    .bind(id.to_string())
    .bind(&stored.job_id)
    .bind(&stored.queue)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if let (Review::Retry, Ok(queue)) = (review, stored.queue.parse::<Queue>()) {
        Wake::job(queue, stored.job_id).send(pool).await;
    }
    Ok(Ok(()))
}

/// Puts a dead letter's job back on its queue with a fresh attempt budget.
async fn requeue(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    stored: &Stored,
) -> Result<Result<(), String>, sqlx::Error> {
    // The job row is normally still there, dead (retention keeps the jobs
    // of open dead letters): reset it in place, keeping its id and key, so
    // that the history stays on one job.
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM apalis.jobs WHERE id = $1 FOR UPDATE")
            .bind(&stored.job_id)
            .fetch_optional(&mut **tx)
            .await?;
    if let Some(status) = status {
        // The worker that killed the job records the run's end a moment
        // after the dead letter; until then the job is not free to reset.
        if !matches!(status.as_str(), "Killed" | "Failed" | "Done") {
            return Ok(Err(format!(
                "its job is still {status}; try again in a moment"
            )));
        }
        sqlx::query(
            "UPDATE apalis.jobs
             SET status = 'Pending', attempts = 0, run_at = now(), lock_at = NULL,
                 lock_by = NULL, done_at = NULL, last_result = NULL
             WHERE id = $1",
        )
        .bind(&stored.job_id)
        .execute(&mut **tx)
        .await?;
    } else {
        // The job row is gone: queue the stored payload again under the
        // same id and key.
        sqlx::query(
            "INSERT INTO apalis.jobs
                 (id, job_type, job, status, attempts, max_attempts, run_at, priority, idempotency_key)
             VALUES ($1, $2, $3, 'Pending', 0, $4, now(), 0, $5)
             ON CONFLICT DO NOTHING",
        )
        .bind(&stored.job_id)
        .bind(&stored.queue)
        .bind(&stored.payload)
        .bind(crate::queue::DEFAULT_MAX_ATTEMPTS)
        .bind(&stored.job_key)
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query("DELETE FROM job_deferrals WHERE job_id = $1")
        .bind(&stored.job_id)
        .execute(&mut **tx)
        .await?;
    Ok(Ok(()))
}

/// Waits (at most two seconds) until the worker that killed the dead
/// letter's job has recorded the end of that run: the dead letter is written
/// first, and the job is not free to reset until then.
async fn settled(pool: &PgPool, id: i64) -> Result<(), sqlx::Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let running: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM dead_letters d JOIN apalis.jobs j ON j.id = d.job_id
                            WHERE d.id = $1 AND j.status IN ('Running', 'Queued'))",
        )
        .bind(id)
        .fetch_one(pool)
        .await?;
        if !running || std::time::Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Retries every open dead letter matching `filter`.
pub async fn retry_matching(
    pool: &PgPool,
    filter: &Filter,
    actor: &str,
    reason: &str,
) -> Result<Outcome, sqlx::Error> {
    let filter = Filter {
        state: Some("open".into()),
        ..filter.clone()
    };
    let ids: Vec<i64> = list(pool, &filter, i64::MAX)
        .await?
        .into_iter()
        .map(|d| d.id)
        .collect();
    retry(pool, &ids, actor, reason).await
}

/// Closes the dead letters without running their jobs again. A reason is
/// required: it is what the next person to look will read.
pub async fn discard(
    pool: &PgPool,
    ids: &[i64],
    actor: &str,
    reason: &str,
) -> Result<Outcome, DiscardError> {
    if reason.trim().is_empty() {
        return Err(DiscardError::NoReason);
    }
    let mut outcome = Outcome::default();
    for &id in ids {
        outcome.add(id, review(pool, id, Review::Discard, actor, reason).await?);
    }
    Ok(outcome)
}

#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    #[error("a discard needs a reason")]
    NoReason,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}
