//! A job's work for one order does not grow with the backlog around it. A
//! statement that reads every held reservation to find one order's costs
//! more with each order in flight, so a peak-season backlog would slow down
//! the larger it is.

use std::time::Duration;

use conveyor_jobs::queue::Queue;
use conveyor_jobs::reserve;
use conveyor_tests::{AppOptions, spawn_app, wait_for};

const BACKLOG: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reserving_an_order_reads_its_own_rows_only_whatever_the_backlog() {
    let mut app = spawn_app(AppOptions {
        orders: BACKLOG,
        ..AppOptions::default()
    })
    .await;
    // Stock for all of it: every order of the backlog ends with its units
    // held, none backordered.
    sqlx::query("UPDATE stock SET on_hand = on_hand * 1000")
        .execute(&app.pool)
        .await
        .unwrap();
    // Import and reserve only: the backlog stays reserved, waiting on split.
    app.start_scheduler();
    app.start_worker_for(&[Queue::Import, Queue::Reserve]);
    let pool = app.pool.clone();
    wait_for(
        Duration::from_secs(240),
        "the whole backlog is reserved",
        || {
            let pool = pool.clone();
            async move {
                let reserved: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM orders WHERE state = 'reserved'")
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                reserved == BACKLOG as i64
            }
        },
    )
    .await;
    // Statistics, as autovacuum gathers them on a production server.
    sqlx::query("ANALYZE").execute(&app.pool).await.unwrap();
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM reservations WHERE state = 'held'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(held >= BACKLOG as i64, "the backlog holds stock: {held}");

    // Reserve one order of it again, in a transaction whose reads the test
    // counts (the counts of a transaction in progress are its own).
    let mut tx = app.pool.begin().await.unwrap();
    let (order_id, lines): (i64, i64) = sqlx::query_as(
        "SELECT o.id, (SELECT count(*) FROM order_lines l WHERE l.order_id = o.id)
         FROM orders o ORDER BY o.id DESC LIMIT 1 FOR UPDATE OF o",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let before = rows_read(&mut tx).await;
    let all_held = reserve::allocate(&mut tx, order_id).await.unwrap();
    let after = rows_read(&mut tx).await;
    tx.rollback().await.unwrap();
    assert!(all_held, "order {order_id} was already fully held");

    let (lines_read, reservations_read) = (after.0 - before.0, after.1 - before.1);
    assert!(
        lines_read >= lines,
        "the counts saw the order's {lines} lines being read: {lines_read}"
    );
    // Each line sums the order's own held reservations: a few rows each.
    assert!(
        reservations_read <= 10 * lines,
        "reserving an order with {lines} lines read {reservations_read} reservation rows \
         of the {held} the backlog holds"
    );
    app.shutdown().await;
}

/// Rows of order_lines and of reservations read so far by the current
/// transaction, whole-table scans and index fetches together.
async fn rows_read(tx: &mut sqlx::PgConnection) -> (i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)) FILTER (WHERE relname = 'order_lines'), 0)::bigint,
                coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)) FILTER (WHERE relname = 'reservations'), 0)::bigint
         FROM pg_stat_xact_user_tables",
    )
    .fetch_one(tx)
    .await
    .unwrap()
}
