//! In-call retries for idempotent external reads.
//!
//! A read that hits a short rate-limit wait or a transient failure is tried
//! again a few times within the same job run (with `backon`), waiting what
//! the API asked for, before the error goes to the job's durable backoff.
//! Calls that are not safe to repeat (buying postage, pushing a
//! fulfillment) never go through here.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::error::{ApiError, ErrorClass};

/// Longest wait worth holding a worker slot for; longer waits go back to
/// the queue as a scheduled retry.
pub const MAX_IN_CALL_WAIT: Duration = Duration::from_secs(10);

fn worth_waiting(err: &ApiError) -> bool {
    match err.class {
        ErrorClass::Retryable => true,
        ErrorClass::RateLimited { retry_after } => {
            retry_after.is_none_or(|d| d <= MAX_IN_CALL_WAIT)
        }
        // An open breaker is not worth a worker slot: the job goes back to
        // the queue until the breaker may close.
        ErrorClass::Permanent | ErrorClass::UnknownOutcome | ErrorClass::CircuitOpen { .. } => {
            false
        }
    }
}

/// Runs `call`, retrying it up to 4 more times while the error is worth
/// waiting for.
pub async fn read<T, F, Fut>(call: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    call.retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(MAX_IN_CALL_WAIT)
            .with_max_times(4)
            .with_jitter(),
    )
    .sleep(tokio::time::sleep)
    .when(worth_waiting)
    .adjust(|err, backoff| match err.class {
        ErrorClass::RateLimited { retry_after: Some(wait) } => Some(wait),
        _ => backoff,
    })
    .notify(|err, wait| tracing::debug!(error = %err, wait_ms = wait.as_millis() as u64, "retrying in call"))
    .await
}
