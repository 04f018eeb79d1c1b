//! Each job, run twice on the same payload, leaves the same rows and the same
//! sandbox counts as running it once.
//!
//! The worker is not started: each test runs the queues' jobs itself, in
//! pipeline order, through the same dispatch the worker uses; at the job
//! under test it runs every job of that queue once, takes a snapshot, runs
//! them all again, and compares.

use std::collections::BTreeMap;

use conveyor_jobs::queue::Queue;
use conveyor_jobs::runner::dispatch;
use serde_json::Value;

use conveyor_tests::{AppOptions, CHANNEL, TestApp, spawn_app};

/// Everything a job could change, as comparable text.
async fn snapshot(app: &TestApp) -> BTreeMap<String, Value> {
    let queries = [
        (
            "orders",
            "SELECT id, state::text, version, name FROM orders ORDER BY id",
        ),
        (
            "order_lines",
            "SELECT id, order_id, sku, quantity FROM order_lines ORDER BY id",
        ),
        (
            "reservations",
            "SELECT order_line_id, warehouse, quantity, state::text FROM reservations ORDER BY id",
        ),
        (
            "stock",
            "SELECT sku, warehouse, on_hand, reserved FROM stock ORDER BY sku, warehouse",
        ),
        (
            "packages",
            "SELECT id, order_id, warehouse, seq, box_code, weight_g, state::text FROM packages ORDER BY id",
        ),
        (
            "package_items",
            "SELECT package_id, order_line_id, quantity FROM package_items ORDER BY 1, 2",
        ),
        (
            "rate_quotes",
            "SELECT package_id, carrier_rate_id, amount_cents, chosen FROM rate_quotes ORDER BY id",
        ),
        (
            "labels",
            "SELECT package_id, carrier_shipment_id, state::text, tracking_code FROM labels ORDER BY package_id",
        ),
        (
            "documents",
            "SELECT package_id, kind::text, pages FROM documents ORDER BY package_id, kind",
        ),
        (
            "fulfillments",
            "SELECT package_id, external_id FROM fulfillments ORDER BY package_id",
        ),
        (
            "jobs",
            "SELECT job_type, idempotency_key FROM apalis.jobs ORDER BY job_type, idempotency_key",
        ),
        (
            "dead_letters",
            "SELECT job_key FROM dead_letters ORDER BY job_key",
        ),
        (
            "channel_cursor",
            "SELECT cursor::text FROM channels ORDER BY id",
        ),
    ];
    let mut out = BTreeMap::new();
    for (name, sql) in queries {
        let rows: Vec<(Value,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT to_jsonb(t) FROM ({sql}) t"
        )))
        .fetch_all(&app.pool)
        .await
        .unwrap();
        out.insert(
            name.to_string(),
            Value::Array(rows.into_iter().map(|(v,)| v).collect()),
        );
    }
    let mut stats = serde_json::to_value(app.sandbox.stats()).unwrap();
    // Request counters (and the query cost the requests spent) count reads,
    // which a repeat may legitimately make.
    if let Some(map) = stats.as_object_mut() {
        for counter in [
            "requests",
            "query_cost",
            "channel_requests_per_second",
            "carrier_requests_per_second",
        ] {
            map.remove(counter);
        }
    }
    out.insert("sandbox".into(), stats);
    out
}

async fn job_runs_twice_as_once(target: Queue) {
    let app = spawn_app(AppOptions {
        orders: 6,
        seed: 3,
        ..AppOptions::default()
    })
    .await;
    conveyor_jobs::import::enqueue_tick(&app.pool, CHANNEL, 1)
        .await
        .unwrap();
    for queue in Queue::ALL {
        if queue != target {
            let ran = app.run_pending(queue).await;
            assert!(!ran.is_empty(), "{queue}: something to run");
            continue;
        }
        let before = snapshot(&app).await;
        let payloads = app.run_pending(queue).await;
        assert!(!payloads.is_empty(), "{queue}: something to run");
        let once = snapshot(&app).await;
        assert_ne!(before, once, "{queue}: the first run changed something");
        for payload in payloads {
            dispatch(&app.deps, queue, payload)
                .await
                .unwrap_or_else(|e| panic!("{queue} repeat failed: {e}"));
        }
        let twice = snapshot(&app).await;
        for (table, value) in &once {
            assert_eq!(
                Some(value),
                twice.get(table),
                "{queue}: {table} differs after running the job twice"
            );
        }
        break;
    }
    app.shutdown().await;
}

#[tokio::test]
async fn import_twice_is_import_once() {
    job_runs_twice_as_once(Queue::Import).await;
}

#[tokio::test]
async fn reserve_twice_is_reserve_once() {
    job_runs_twice_as_once(Queue::Reserve).await;
}

#[tokio::test]
async fn split_twice_is_split_once() {
    job_runs_twice_as_once(Queue::Split).await;
}

#[tokio::test]
async fn rate_twice_is_rate_once() {
    job_runs_twice_as_once(Queue::Rate).await;
}

#[tokio::test]
async fn render_twice_is_render_once() {
    job_runs_twice_as_once(Queue::Render).await;
}

#[tokio::test]
async fn purchase_twice_is_purchase_once() {
    job_runs_twice_as_once(Queue::Purchase).await;
}

#[tokio::test]
async fn commit_twice_is_commit_once() {
    job_runs_twice_as_once(Queue::Commit).await;
}
