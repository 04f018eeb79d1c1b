//! Retention: apalis-postgres never deletes a finished job, so the leading
//! scheduler prunes them.
//!
//! A pass deletes from `apalis.jobs`:
//!
//! - `Done` jobs that finished more than `retention.done_after_secs` ago;
//! - dead jobs (`Killed`, or `Failed` with every attempt spent) whose dead
//!   letter has been reviewed (`dead_letters.state <> 'open'`), once both
//!   the death and the review are that old.
//!
//! A dead job whose dead letter is still open, or that has no dead letter
//! at all, is kept: it is evidence ops have not seen yet. The dead letter
//! itself is never deleted here; it carries its own copy of the payload
//! and the review trail, and its job's failed runs (`job_failures`) stay
//! with it. The failed runs of a pruned job without a dead letter go in the
//! same statement, and `job_deferrals` rows through `ON DELETE CASCADE`.
//!
//! Deletes run in batches of `retention.batch_size` rows, each its own
//! statement and transaction, skipping rows another session has locked,
//! so that a pass over a large backlog never holds many locks for long.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
//! let settings = conveyor_jobs::settings::RetentionSettings::default();
//! let pruned = conveyor_jobs::retention::prune(&pool, &settings).await?;
//! println!("{} done and {} dead jobs pruned", pruned.done, pruned.dead);
//! # Ok(()) }
//! ```

use std::time::Duration;

use prometheus::IntCounterVec;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::settings::RetentionSettings;

/// Jobs deleted by one pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// `Done` jobs.
    pub done: u64,
    /// `Failed` or `Killed` jobs whose dead letter was reviewed.
    pub dead: u64,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.done + self.dead
    }
}

/// One batch: which rows may go is decided here and only here.
const PRUNE_BATCH: &str = "
WITH doomed AS (
    SELECT j.id
    FROM apalis.jobs j
    LEFT JOIN dead_letters d ON d.job_id = j.id
    WHERE (j.status = 'Done' AND j.done_at < now() - $1::interval)
       OR (
           (j.status = 'Killed' OR (j.status = 'Failed' AND j.attempts >= j.max_attempts))
           AND d.state IS NOT NULL AND d.state <> 'open'
           AND j.done_at < now() - $1::interval
           AND d.reviewed_at < now() - $1::interval
       )
    LIMIT $2
    FOR UPDATE OF j SKIP LOCKED
), deleted AS (
    DELETE FROM apalis.jobs
    WHERE id IN (SELECT id FROM doomed)
    RETURNING id, status
), history AS (
    DELETE FROM job_failures f
    USING deleted
    WHERE f.job_id = deleted.id
      AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.job_id = deleted.id)
)
SELECT status = 'Done' FROM deleted";

/// Deletes every job the retention rules let go, batch by batch.
pub async fn prune(pool: &PgPool, settings: &RetentionSettings) -> Result<Pruned, sqlx::Error> {
    let age = Duration::from_secs(settings.done_after_secs);
    let batch = i64::from(settings.batch_size.max(1));
    let mut pruned = Pruned::default();
    loop {
        let done: Vec<bool> = sqlx::query_scalar(PRUNE_BATCH)
            .bind(age)
            .bind(batch)
            .fetch_all(pool)
            .await?;
        let n = done.len() as u64;
        let done_n = done.iter().filter(|d| **d).count() as u64;
        pruned.done += done_n;
        pruned.dead += n - done_n;
        if (n as i64) < batch {
            return Ok(pruned);
        }
        // Let other work at the database between two batches.
        tokio::task::yield_now().await;
    }
}

/// The `conveyor_retention_pruned_jobs_total` counter, registered on
/// `metrics`' registry. A second registration on the same registry is
/// refused; the counter then still counts but only the first one is
/// exported.
fn pruned_counter(metrics: &Metrics) -> IntCounterVec {
    let counter = IntCounterVec::new(
        prometheus::Opts::new(
            "conveyor_retention_pruned_jobs_total",
            "Finished jobs deleted by retention, by kind (done, dead)",
        ),
        &["kind"],
    )
    .expect("valid metric");
    if let Err(error) = metrics.registry.register(Box::new(counter.clone())) {
        tracing::debug!(%error, "retention counter already registered");
    }
    counter
}

/// Prunes every `retention.interval_secs` while `leading` is true, until
/// `stop` turns true. A failed pass is logged and the next one tries again.
pub async fn run(
    pool: PgPool,
    settings: RetentionSettings,
    leading: watch::Receiver<bool>,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let counter = pruned_counter(&metrics);
    let mut ticker = tokio::time::interval(Duration::from_secs(settings.interval_secs.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !*leading.borrow() {
            continue;
        }
        match prune(&pool, &settings).await {
            Ok(pruned) => {
                counter.with_label_values(&["done"]).inc_by(pruned.done);
                counter.with_label_values(&["dead"]).inc_by(pruned.dead);
                if pruned.total() > 0 {
                    tracing::info!(
                        done = pruned.done,
                        dead = pruned.dead,
                        "retention pruned jobs"
                    );
                }
            }
            Err(error) => tracing::warn!(%error, "retention pass failed; will try again"),
        }
    }
}
