//! Waking workers against a real Postgres: an enqueue notifies no one until
//! its transaction has committed and its wake is sent, and the wake is what
//! apalis-postgres's listener reads as "a job on this queue".

mod common;

use std::time::Duration;

use apalis_postgres::InsertEvent;
use conveyor_jobs::queue::{NewJob, Queue, Wake, enqueue};
use sqlx::PgPool;
use sqlx::postgres::PgListener;

const CHANNEL: &str = "apalis::job::insert";

async fn fresh() -> PgPool {
    common::fresh_pool("wake", 4).await
}

/// The next notification on the insert channel, read as apalis reads it.
async fn next_event(listener: &mut PgListener) -> InsertEvent {
    let notification = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification within 10 s")
        .expect("the listener is connected");
    serde_json::from_str(notification.payload())
        .unwrap_or_else(|e| panic!("{:?} is not an insert event: {e}", notification.payload()))
}

/// A notification sent on its own: everything committed before it that
/// notified has been delivered by the time it arrives.
async fn sentinel(pool: &PgPool, queue: &str) -> String {
    let id = ulid::Ulid::generate().to_string();
    sqlx::query(
        "SELECT pg_notify($1, json_build_object('job_type', $2::text, 'id', $3::text)::text)",
    )
    .bind(CHANNEL)
    .bind(queue)
    .bind(&id)
    .execute(pool)
    .await
    .unwrap();
    id
}

/// A listener on the insert channel, subscribed before this returns.
async fn listening(pool: &PgPool) -> PgListener {
    let mut listener = PgListener::connect_with(pool).await.unwrap();
    listener.listen(CHANNEL).await.unwrap();
    listener
}

/// The next `n` events, by queue name.
async fn woken(listener: &mut PgListener, n: usize) -> Vec<InsertEvent> {
    let mut events = Vec::new();
    for _ in 0..n {
        events.push(next_event(listener).await);
    }
    events.sort_by(|a, b| a.job_type.cmp(&b.job_type));
    events
}

/// Nothing more was sent: the next notification is a sentinel sent now.
async fn assert_nothing_more(listener: &mut PgListener, pool: &PgPool, why: &str) {
    let sentinel = sentinel(pool, "split").await;
    assert_eq!(next_event(listener).await.id.to_string(), sentinel, "{why}");
}

fn job(queue: Queue, key: &str) -> NewJob {
    NewJob::new(queue, key, &serde_json::json!({ "key": key }))
}

#[tokio::test]
async fn jobs_wake_their_queues_once_after_commit_and_not_before() {
    let pool = fresh().await;
    let mut listener = listening(&pool).await;

    let mut tx = pool.begin().await.unwrap();
    let wake = enqueue(
        &mut tx,
        &[
            job(Queue::Rate, "p:1"),
            job(Queue::Rate, "p:2"),
            job(Queue::Render, "p:1"),
            // Delayed: found by the poll when its time comes, not woken now.
            job(Queue::Commit, "o:1").run_at(chrono::Utc::now() + chrono::Duration::hours(1)),
        ],
    )
    .await
    .unwrap();
    assert_eq!(wake.inserted(), 4);
    tx.commit().await.unwrap();
    assert_nothing_more(
        &mut listener,
        &pool,
        "a notification came from the enqueue's own transaction",
    )
    .await;

    wake.send(&pool).await;
    let woken = woken(&mut listener, 2).await;
    assert_eq!(
        woken
            .iter()
            .map(|e| e.job_type.as_str())
            .collect::<Vec<_>>(),
        ["rate", "render"],
        "one wake per queue with a job due now"
    );
    for event in &woken {
        let queued: String = sqlx::query_scalar("SELECT job_type FROM apalis.jobs WHERE id = $1")
            .bind(event.id.to_string())
            .fetch_one(&pool)
            .await
            .expect("the wake names a job that was enqueued");
        assert_eq!(queued, event.job_type);
    }
    assert_nothing_more(
        &mut listener,
        &pool,
        "the delayed commit job woke its queue",
    )
    .await;
}

#[tokio::test]
async fn a_key_already_queued_inserts_nothing_and_wakes_no_one() {
    let pool = fresh().await;
    let mut conn = pool.acquire().await.unwrap();
    enqueue(&mut conn, &[job(Queue::Split, "o:7:v1")])
        .await
        .unwrap()
        .send(&pool)
        .await;
    let mut listener = listening(&pool).await;

    let again = enqueue(&mut conn, &[job(Queue::Split, "o:7:v1")])
        .await
        .unwrap();
    assert_eq!(again.inserted(), 0);
    again.send(&pool).await;
    assert_nothing_more(&mut listener, &pool, "a job already queued woke its queue").await;
}

#[tokio::test]
async fn wakes_combine_into_one_per_queue() {
    let pool = fresh().await;
    let mut listener = listening(&pool).await;
    let mut conn = pool.acquire().await.unwrap();
    let first = enqueue(&mut conn, &[job(Queue::Split, "o:1:v1")])
        .await
        .unwrap();
    let second = enqueue(&mut conn, &[job(Queue::Split, "o:2:v1")])
        .await
        .unwrap();
    // A job put back on its queue (a dead letter retried) is woken by id.
    let id = ulid::Ulid::generate().to_string();
    let both = first
        .and(second)
        .and(Wake::job(Queue::Purchase, id.clone()));
    assert_eq!(both.inserted(), 2);
    both.send(&pool).await;
    let woken = woken(&mut listener, 2).await;
    assert_eq!(woken[0].job_type, "purchase");
    assert_eq!(woken[0].id.to_string(), id);
    assert_eq!(woken[1].job_type, "split");
    assert_nothing_more(
        &mut listener,
        &pool,
        "two split jobs woke their queue twice",
    )
    .await;
}
