//! Deferrals: runs of a job that do not spend its attempt budget.
//!
//! apalis-postgres writes `attempts` = the run's attempt number after every
//! run, whatever the handler returned, and acknowledges results in batches
//! after the handler is done, so nothing the handler writes to that column
//! would stick. Instead, a run that ended because the API asked us to slow
//! down (rate limited) or because the API's circuit breaker was open is
//! counted here, in `job_deferrals`, and the budget a job has spent is
//! `attempt - deferrals` ([`spent`]). The row goes with its job (a foreign
//! key with `ON DELETE CASCADE`), and it is written before the handler
//! returns, so it is in place before apalis records the run.

use std::time::Duration;

use rand::Rng;
use sqlx::PgPool;

/// Why a run was deferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferral {
    /// The API answered 429 or a throttled body: wait what it asked.
    RateLimited,
    /// The API's circuit breaker is open: the API was not called.
    CircuitOpen,
}

impl Deferral {
    pub fn as_str(self) -> &'static str {
        match self {
            Deferral::RateLimited => "rate_limited",
            Deferral::CircuitOpen => "circuit_open",
        }
    }
}

/// Attempts a job has spent by run `attempt`, not counting `deferrals`. A
/// run always counts as at least one.
pub fn spent(attempt: usize, deferrals: usize) -> usize {
    attempt.saturating_sub(deferrals).max(1)
}

/// `wait` plus up to a quarter of it (at least up to `min_jitter`) of
/// random extra, so that jobs sent back at the same instant do not all
/// come back at the same instant.
pub fn with_jitter(wait: Duration, min_jitter: Duration) -> Duration {
    let spread = (wait / 4).max(min_jitter);
    let extra = rand::rng().random_range(0..=spread.as_millis() as u64);
    wait + Duration::from_millis(extra)
}

/// Records that run `attempt` of `job_id` was deferred for `reason` and
/// moves the job's `run_at` to now + `delay`, in one statement. apalis's own
/// `max_attempts` column grows by one with it, so that apalis's check
/// (`attempts < max_attempts`) never counts a deferral either.
pub async fn defer(
    pool: &PgPool,
    job_id: &str,
    attempt: usize,
    reason: Deferral,
    delay: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH counted AS (
             INSERT INTO job_deferrals (job_id, deferrals, last_attempt, last_reason)
             SELECT id, 1, $2, $3 FROM apalis.jobs WHERE id = $1
             ON CONFLICT (job_id) DO UPDATE
                 SET deferrals = CASE WHEN job_deferrals.last_attempt <= EXCLUDED.last_attempt
                                      THEN job_deferrals.deferrals + 1 ELSE 1 END,
                     last_attempt = EXCLUDED.last_attempt,
                     last_reason = EXCLUDED.last_reason,
                     updated_at = now()
             RETURNING job_id
         )
         UPDATE apalis.jobs SET run_at = now() + $4, max_attempts = max_attempts + 1
         WHERE id = $1",
    )
    .bind(job_id)
    .bind(attempt as i32)
    .bind(reason.as_str())
    .bind(delay)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deferred runs of `job_id` up to run `attempt`. A job whose attempt count
/// was reset below its latest deferral (a dead letter retried) starts over.
pub async fn deferrals(pool: &PgPool, job_id: &str, attempt: usize) -> Result<usize, sqlx::Error> {
    let n: Option<i32> = sqlx::query_scalar(
        "SELECT deferrals FROM job_deferrals WHERE job_id = $1 AND last_attempt <= $2",
    )
    .bind(job_id)
    .bind(attempt as i32)
    .fetch_optional(pool)
    .await?;
    Ok(n.unwrap_or(0).max(0) as usize)
}

/// Forgets the deferrals of a job that is dead: if ops retry it, it starts
/// with its whole budget.
pub async fn forget(pool: &PgPool, job_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM job_deferrals WHERE job_id = $1")
        .bind(job_id)
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_runs_are_not_counted_as_spent_attempts() {
        assert_eq!(spent(5, 0), 5);
        assert_eq!(spent(5, 3), 2);
        assert_eq!(spent(5, 4), 1);
        // A run is always at least one attempt, whatever the count says.
        assert_eq!(spent(5, 9), 1);
        assert_eq!(spent(0, 0), 1);
    }

    #[test]
    fn jitter_only_adds_and_stays_within_a_quarter_or_the_minimum() {
        let min = Duration::from_millis(200);
        for _ in 0..500 {
            let wait = Duration::from_secs(4);
            let j = with_jitter(wait, min);
            assert!(j >= wait && j <= wait + Duration::from_secs(1), "{j:?}");
            let short = Duration::from_millis(100);
            let j = with_jitter(short, min);
            assert!(j >= short && j <= short + min, "{j:?}");
        }
    }
}
