//! The job table's indexes after every migration, against a real Postgres:
//! each index a job's writes must keep up to date serves a purpose.

mod common;

use conveyor_jobs::queue::{NewJob, Queue, enqueue};
use sqlx::PgPool;

async fn fresh() -> PgPool {
    common::fresh_pool("schema", 2).await
}

#[tokio::test]
async fn no_two_indexes_on_the_job_table_index_the_same_thing() {
    let pool = fresh().await;
    let indexes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_index WHERE indrelid = 'apalis.jobs'::regclass",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(indexes >= 3, "the job table's indexes were read: {indexes}");
    // Same columns, same expressions, same predicate: the same index.
    let repeated: Vec<Vec<String>> = sqlx::query_scalar(
        "SELECT array_agg(indexrelid::regclass::text ORDER BY indexrelid::regclass::text)
         FROM pg_index WHERE indrelid = 'apalis.jobs'::regclass
         GROUP BY indkey::text, coalesce(pg_get_expr(indexprs, indrelid), ''),
                  coalesce(pg_get_expr(indpred, indrelid), '')
         HAVING count(*) > 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        repeated.is_empty(),
        "indexes repeating each other: {repeated:?}"
    );
    pool.close().await;
}

#[tokio::test]
async fn a_jobs_deferrals_still_go_with_it() {
    let pool = fresh().await;
    let mut conn = pool.acquire().await.unwrap();
    let wake = enqueue(
        &mut conn,
        &[NewJob::new(
            Queue::Rate,
            "package:1",
            &serde_json::json!({ "package_id": 1 }),
        )],
    )
    .await
    .unwrap();
    assert_eq!(wake.inserted(), 1);
    let job_id: String = sqlx::query_scalar("SELECT id FROM apalis.jobs")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO job_deferrals (job_id, deferrals, last_attempt, last_reason)
         VALUES ($1, 1, 1, 'rate limited')",
    )
    .bind(&job_id)
    .execute(&mut *conn)
    .await
    .unwrap();
    // A deferral for a job that does not exist is refused.
    let orphan = sqlx::query(
        "INSERT INTO job_deferrals (job_id, deferrals, last_attempt, last_reason)
         VALUES ('no-such-job', 1, 1, 'rate limited')",
    )
    .execute(&mut *conn)
    .await;
    assert!(orphan.is_err(), "a deferral needs its job");

    sqlx::query("DELETE FROM apalis.jobs WHERE id = $1")
        .bind(&job_id)
        .execute(&mut *conn)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM job_deferrals")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "the deferral went with its job");
    drop(conn);
    pool.close().await;
}
