//! Retention: old finished jobs leave `apalis.jobs`; young ones, retrying
//! ones and dead ones whose dead letter is still open stay.
//!
//! The jobs are fixtures inserted with the states and ages under test,
//! rather than jobs run and then waited on for a week.

use std::time::Duration;

use conveyor_jobs::metrics::Metrics;
use conveyor_jobs::retention::{self, Pruned};
use conveyor_jobs::settings::RetentionSettings;
use sqlx::PgPool;

use conveyor_tests::{AppOptions, spawn_app};

const DAY: u64 = 24 * 3600;

/// Inserts a `rate` job `id` in `status` that finished `age_secs` ago.
async fn job(pool: &PgPool, id: &str, status: &str, attempts: i32, age_secs: u64) {
    sqlx::query(
        "INSERT INTO apalis.jobs
             (id, job_type, job, status, attempts, max_attempts, run_at, done_at, idempotency_key)
         VALUES ($1, 'rate', convert_to('{\"package_id\": 1}', 'UTF8'), $2, $3, 3,
                 now() - $4::interval, now() - $4::interval, $1)",
    )
    .bind(id)
    .bind(status)
    .bind(attempts)
    .bind(Duration::from_secs(age_secs))
    .execute(pool)
    .await
    .unwrap();
}

/// Records `job_id` as dead letter; `reviewed_secs_ago: Some(..)` marks it
/// discarded that long ago, `None` leaves it open.
async fn dead_letter(pool: &PgPool, job_id: &str, reviewed_secs_ago: Option<u64>) {
    sqlx::query(
        "INSERT INTO dead_letters
             (job_id, queue, payload, error_class, error, attempts, worker, state, reviewed_at)
         VALUES ($1, 'rate', '\\x7b7d'::bytea, 'permanent', 'no service', 3, 'w',
                 CASE WHEN $2::interval IS NULL THEN 'open' ELSE 'discarded' END::dead_letter_state,
                 now() - $2::interval)",
    )
    .bind(job_id)
    .bind(reviewed_secs_ago.map(Duration::from_secs))
    .execute(pool)
    .await
    .unwrap();
}

async fn remaining(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT id FROM apalis.jobs WHERE job_type = 'rate' ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The fixture: what must go and what must stay after a week's retention.
async fn fixtures(pool: &PgPool) -> (Vec<String>, Vec<String>) {
    let mut gone = Vec::new();
    for i in 0..5 {
        let id = format!("done-old-{i}");
        job(pool, &id, "Done", 1, 8 * DAY).await;
        gone.push(id);
    }
    // A deferral row goes with its job.
    sqlx::query(
        "INSERT INTO job_deferrals (job_id, deferrals, last_attempt, last_reason)
         VALUES ('done-old-0', 1, 1, 'rate_limited')",
    )
    .execute(pool)
    .await
    .unwrap();
    // Failed runs go with a job that has no dead letter, and stay with one
    // that has (the dead letter shows them).
    sqlx::query(
        "INSERT INTO job_failures (job_id, queue, run, error_class, error, worker)
         VALUES ('done-old-1', 'rate', 1, 'retryable', 'HTTP 503', 'w'),
                ('killed-reviewed', 'rate', 1, 'permanent', 'no service', 'w')",
    )
    .execute(pool)
    .await
    .unwrap();
    job(pool, "killed-reviewed", "Killed", 1, 30 * DAY).await;
    dead_letter(pool, "killed-reviewed", Some(8 * DAY)).await;
    gone.push("killed-reviewed".into());

    job(pool, "done-young", "Done", 1, 3600).await;
    job(pool, "killed-open", "Killed", 1, 30 * DAY).await;
    dead_letter(pool, "killed-open", None).await;
    job(pool, "failed-open", "Failed", 3, 30 * DAY).await;
    dead_letter(pool, "failed-open", None).await;
    // Reviewed an hour ago: kept for the retention period after the review.
    job(pool, "failed-reviewed-young", "Failed", 3, 30 * DAY).await;
    dead_letter(pool, "failed-reviewed-young", Some(3600)).await;
    // Attempts left: waiting for its retry, not finished.
    job(pool, "failed-retrying", "Failed", 1, 30 * DAY).await;
    // Dead with no dead letter: nobody has seen it, so it stays.
    job(pool, "killed-unrecorded", "Killed", 1, 30 * DAY).await;
    let mut kept: Vec<String> = [
        "done-young",
        "failed-open",
        "failed-retrying",
        "failed-reviewed-young",
        "killed-open",
        "killed-unrecorded",
    ]
    .map(String::from)
    .to_vec();
    kept.sort();
    gone.sort();
    (gone, kept)
}

#[tokio::test]
async fn old_done_jobs_and_reviewed_dead_jobs_are_pruned_while_open_dead_letters_keep_theirs() {
    let app = spawn_app(AppOptions::default()).await;
    let (_, kept) = fixtures(&app.pool).await;
    let settings = RetentionSettings {
        done_after_secs: 7 * DAY,
        interval_secs: 1,
        // Smaller than the number of doomed rows: the pass takes several batches.
        batch_size: 2,
    };

    let pruned = retention::prune(&app.pool, &settings).await.unwrap();
    assert_eq!(pruned, Pruned { done: 5, dead: 1 });
    assert_eq!(remaining(&app.pool).await, kept);
    assert_eq!(app.count("SELECT count(*) FROM job_deferrals").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM job_failures WHERE job_id = 'done-old-1'")
            .await,
        0
    );
    assert_eq!(
        app.count("SELECT count(*) FROM job_failures WHERE job_id = 'killed-reviewed'")
            .await,
        1
    );
    // Dead letters are the review trail: none is deleted.
    assert_eq!(app.count("SELECT count(*) FROM dead_letters").await, 4);
    // A second pass finds nothing more.
    let again = retention::prune(&app.pool, &settings).await.unwrap();
    assert_eq!(again, Pruned::default());

    app.shutdown().await;
}

#[tokio::test]
async fn the_leading_scheduler_prunes_on_its_interval_and_counts_what_it_pruned() {
    let app = spawn_app(AppOptions {
        configure: |settings| {
            settings.retention.done_after_secs = 7 * DAY;
            settings.retention.interval_secs = 1;
        },
        ..AppOptions::default()
    })
    .await;
    let (gone, kept) = fixtures(&app.pool).await;
    assert_eq!(remaining(&app.pool).await.len(), gone.len() + kept.len());

    let metrics = Metrics::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let scheduler = tokio::spawn(conveyor_jobs::scheduler::run_with_metrics(
        app.pool.clone(),
        app.settings.clone(),
        metrics.clone(),
        async move {
            let _ = stopped.await;
        },
    ));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while remaining(&app.pool).await != kept {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not pruned in 30 s: {:?} remain",
            remaining(&app.pool).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let exported = metrics.render(&app.pool).await;
    assert!(
        exported.contains("conveyor_retention_pruned_jobs_total{kind=\"done\"} 5"),
        "{exported}"
    );
    assert!(
        exported.contains("conveyor_retention_pruned_jobs_total{kind=\"dead\"} 1"),
        "{exported}"
    );

    let _ = stop.send(());
    scheduler.await.unwrap().unwrap();
    app.shutdown().await;
}
