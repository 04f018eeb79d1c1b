//! Dead letters: jobs that failed for good, kept with their raw payload and
//! the reason until ops review them.

use sqlx::PgPool;

use crate::error::ErrorClass;
use crate::queue::Queue;

/// Records the job `job_id` (its payload read straight from the queue, byte
/// for byte) as dead. Recording the same job twice keeps the first record
/// and refreshes the reason.
pub async fn record(
    pool: &PgPool,
    job_id: &str,
    queue: Queue,
    class: ErrorClass,
    reason: &str,
    attempts: usize,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dead_letters (job_id, queue, job_key, payload, error_class, error, attempts, worker, order_id)
         SELECT j.id, $2, j.idempotency_key, j.job, $3, $4, $5, COALESCE(j.lock_by, ''),
                CASE WHEN convert_from(j.job, 'UTF8') ~ '^\\s*\\{' THEN
                     (convert_from(j.job, 'UTF8')::jsonb ->> 'order_id')::bigint END
         FROM apalis.jobs j WHERE j.id = $1
         ON CONFLICT (job_id) DO UPDATE
             SET error_class = EXCLUDED.error_class, error = EXCLUDED.error, attempts = EXCLUDED.attempts",
    )
    .bind(job_id)
    .bind(queue.name())
    .bind(class.as_str())
    .bind(reason)
    .bind(attempts as i32)
    .execute(pool)
    .await?;
    Ok(())
}
