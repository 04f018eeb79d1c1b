//! Orders cancelled or edited on the channel after Conveyor imported them.
//!
//! The worker is not started: each test runs the queues' jobs itself, in
//! pipeline order, through the same dispatch the worker uses, so that the
//! channel's change lands exactly at the step under test. Every cancel job
//! and every re-import runs twice, and the second run must change nothing.
//! Stock is checked to balance exactly after every step: each unit reserved
//! is held by a reservation, and on-hand only ever drops by what shipped.

use std::collections::BTreeMap;

use conveyor_jobs::queue::Queue;
use conveyor_jobs::runner::dispatch;
use serde_json::Value;

use conveyor_tests::{AppOptions, CHANNEL, TestApp, spawn_app};

struct Shop {
    app: TestApp,
    tick: i64,
    /// On hand per (sku, warehouse) when the test began.
    initial: BTreeMap<(String, String), i64>,
}

/// Two orders on the channel, plenty of stock for both, nothing imported.
async fn shop() -> Shop {
    let app = spawn_app(AppOptions {
        orders: 2,
        seed: 11,
        ..AppOptions::default()
    })
    .await;
    sqlx::query("UPDATE stock SET on_hand = 100")
        .execute(&app.pool)
        .await
        .unwrap();
    let initial = app.on_hand().await;
    Shop {
        app,
        tick: 0,
        initial,
    }
}

/// Everything a cancel job or a re-import could change, as comparable JSON.
async fn snapshot(app: &TestApp) -> BTreeMap<String, Value> {
    let queries = [
        "SELECT id, state::text, version, hold_reason, cancelled_at IS NOT NULL AS c FROM orders ORDER BY id",
        "SELECT id, sku, quantity FROM order_lines ORDER BY id",
        "SELECT id, warehouse, quantity, state::text FROM reservations ORDER BY id",
        "SELECT sku, warehouse, on_hand, reserved FROM stock ORDER BY sku, warehouse",
        "SELECT id, order_version, state::text FROM packages ORDER BY id",
        "SELECT package_id, count(*) FROM rate_quotes GROUP BY 1 ORDER BY 1",
        "SELECT package_id, kind::text FROM documents ORDER BY 1, 2",
        "SELECT package_id, state::text, refunded_at IS NOT NULL AS r FROM labels ORDER BY 1",
        "SELECT job_type, idempotency_key FROM apalis.jobs ORDER BY 1, 2",
        "SELECT action, entity_id FROM audit_log WHERE entity <> 'load' ORDER BY id",
    ];
    let mut out = BTreeMap::new();
    for sql in queries {
        let rows: Vec<(Value,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT to_jsonb(t) FROM ({sql}) t"
        )))
        .fetch_all(&app.pool)
        .await
        .unwrap();
        out.insert(
            sql.to_string(),
            Value::Array(rows.into_iter().map(|(v,)| v).collect()),
        );
    }
    let mut stats = serde_json::to_value(app.sandbox.stats()).unwrap();
    // Request counters count reads, which a repeat may legitimately make.
    stats.as_object_mut().unwrap().retain(|k, _| {
        k != "requests" && k != "query_cost" && !k.ends_with("_requests_per_second")
    });
    out.insert("sandbox".into(), stats);
    out
}

fn assert_same(once: &BTreeMap<String, Value>, twice: &BTreeMap<String, Value>, what: &str) {
    for (table, value) in once {
        assert_eq!(
            Some(value),
            twice.get(table),
            "{what}: {table} differs on the second run"
        );
    }
}

impl Shop {
    /// Imports a new tick of the channel.
    async fn import(&mut self) {
        self.tick += 1;
        conveyor_jobs::import::enqueue_tick(&self.app.pool, CHANNEL, self.tick)
            .await
            .unwrap();
        self.app.run_pending(Queue::Import).await;
    }

    /// Imports the channel's changes, then imports again: the second import
    /// finds nothing newer and must change nothing.
    async fn import_twice(&mut self) {
        self.import().await;
        let once = snapshot(&self.app).await;
        self.tick += 1;
        conveyor_jobs::import::enqueue_tick(&self.app.pool, CHANNEL, self.tick)
            .await
            .unwrap();
        // Its own import job is the one difference a re-import may make.
        let payloads = self.app.run_pending(Queue::Import).await;
        assert_eq!(payloads.len(), 1);
        let mut twice = snapshot(&self.app).await;
        let jobs = "SELECT job_type, idempotency_key FROM apalis.jobs ORDER BY 1, 2";
        let key = format!("{CHANNEL}:{}", self.tick);
        if let Some(Value::Array(rows)) = twice.get_mut(jobs) {
            rows.retain(|r| r["idempotency_key"] != Value::String(key.clone()));
        }
        assert_same(&once, &twice, "re-import");
    }

    /// Runs the pipeline's queues from reserve up to and including `last`.
    async fn run_through(&self, last: Queue) {
        for queue in &Queue::PIPELINE[1..] {
            self.app.run_pending(*queue).await;
            self.assert_stock_balances().await;
            if *queue == last {
                break;
            }
        }
    }

    /// Runs every queue until no job is left.
    async fn finish(&self) {
        loop {
            let mut ran = 0;
            for queue in &Queue::ALL {
                ran += self.app.run_pending(*queue).await.len();
            }
            self.assert_stock_balances().await;
            if ran == 0 {
                return;
            }
        }
    }

    /// Runs the pending cancel jobs, then the same payloads again: the
    /// second run must change nothing. Returns how many there were.
    async fn cancel_twice(&self) -> usize {
        let payloads = self.app.run_pending(Queue::Cancel).await;
        let once = snapshot(&self.app).await;
        for payload in &payloads {
            dispatch(&self.app.deps, Queue::Cancel, payload.clone())
                .await
                .unwrap_or_else(|e| panic!("cancel repeat failed: {e}"));
        }
        assert_same(&once, &snapshot(&self.app).await, "cancel");
        self.assert_stock_balances().await;
        payloads.len()
    }

    /// Every reserved unit is held by a reservation, and on hand dropped
    /// by exactly the units committed (shipped).
    async fn assert_stock_balances(&self) {
        let rows: Vec<(String, String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT s.sku, s.warehouse, s.on_hand::bigint, s.reserved::bigint,
                    COALESCE(sum(r.quantity) FILTER (WHERE r.state = 'held'), 0)::bigint,
                    COALESCE(sum(r.quantity) FILTER (WHERE r.state = 'committed'), 0)::bigint
             FROM stock s LEFT JOIN reservations r ON r.sku = s.sku AND r.warehouse = s.warehouse
             GROUP BY s.sku, s.warehouse",
        )
        .fetch_all(&self.app.pool)
        .await
        .unwrap();
        for (sku, warehouse, on_hand, reserved, held, committed) in rows {
            assert_eq!(reserved, held, "{sku}@{warehouse}: reserved = held");
            let initial = self.initial[&(sku.clone(), warehouse.clone())];
            assert_eq!(
                on_hand,
                initial - committed,
                "{sku}@{warehouse}: on hand = initial - shipped"
            );
        }
    }

    /// The first imported order: (id, channel gid).
    async fn first_order(&self) -> (i64, String) {
        sqlx::query_as("SELECT id, external_id FROM orders ORDER BY id LIMIT 1")
            .fetch_one(&self.app.pool)
            .await
            .unwrap()
    }

    async fn state(&self, order_id: i64) -> String {
        sqlx::query_scalar("SELECT state::text FROM orders WHERE id = $1")
            .bind(order_id)
            .fetch_one(&self.app.pool)
            .await
            .unwrap()
    }

    async fn count(&self, sql: &str, order_id: i64) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .bind(order_id)
            .fetch_one(&self.app.pool)
            .await
            .unwrap()
    }

    async fn units_reserved(&self) -> i64 {
        self.app
            .count("SELECT COALESCE(sum(reserved), 0)::bigint FROM stock")
            .await
    }

    /// The other order went its normal way: shipped, nothing dead-lettered.
    async fn assert_the_other_order_shipped(&self, order_id: i64) {
        let other: String = sqlx::query_scalar("SELECT state::text FROM orders WHERE id <> $1")
            .bind(order_id)
            .fetch_one(&self.app.pool)
            .await
            .unwrap();
        assert_eq!(other, "shipped");
        assert_eq!(self.app.count("SELECT count(*) FROM dead_letters").await, 0);
    }

    async fn shutdown(self) {
        self.app.shutdown().await;
    }
}

#[tokio::test]
async fn an_order_cancelled_before_reserve_never_holds_stock() {
    let mut shop = shop().await;
    shop.import().await;
    let (order_id, gid) = shop.first_order().await;
    assert!(shop.app.sandbox.cancel_order(&gid));
    shop.import_twice().await;
    assert_eq!(shop.cancel_twice().await, 1, "one cancel job");
    assert_eq!(shop.state(order_id).await, "cancelled");

    // Its reserve job, still queued, does nothing.
    shop.finish().await;
    assert_eq!(shop.state(order_id).await, "cancelled");
    let held = "SELECT count(*) FROM reservations WHERE order_id = $1";
    assert_eq!(shop.count(held, order_id).await, 0);
    let packages = "SELECT count(*) FROM packages WHERE order_id = $1";
    assert_eq!(shop.count(packages, order_id).await, 0);
    shop.assert_the_other_order_shipped(order_id).await;
    shop.shutdown().await;
}

#[tokio::test]
async fn an_order_cancelled_after_reserve_releases_exactly_the_stock_it_held() {
    let mut shop = shop().await;
    shop.import().await;
    let (order_id, gid) = shop.first_order().await;
    shop.run_through(Queue::Reserve).await;
    let units = "SELECT sum(quantity)::bigint FROM order_lines WHERE order_id = $1";
    let ordered = shop.count(units, order_id).await;
    let held = "SELECT COALESCE(sum(quantity), 0)::bigint FROM reservations WHERE order_id = $1 AND state = 'held'";
    assert_eq!(shop.count(held, order_id).await, ordered);
    let reserved_before = shop.units_reserved().await;

    assert!(shop.app.sandbox.cancel_order(&gid));
    shop.import_twice().await;
    assert_eq!(shop.cancel_twice().await, 1);
    assert_eq!(shop.state(order_id).await, "cancelled");
    assert_eq!(shop.units_reserved().await, reserved_before - ordered);
    let released = "SELECT COALESCE(sum(quantity), 0)::bigint FROM reservations WHERE order_id = $1 AND state = 'released'";
    assert_eq!(shop.count(released, order_id).await, ordered);

    shop.finish().await;
    let packages = "SELECT count(*) FROM packages WHERE order_id = $1";
    assert_eq!(
        shop.count(packages, order_id).await,
        0,
        "its split did nothing"
    );
    shop.assert_the_other_order_shipped(order_id).await;
    shop.shutdown().await;
}

#[tokio::test]
async fn an_order_cancelled_after_its_labels_were_bought_refunds_them_and_releases_its_stock() {
    let mut shop = shop().await;
    shop.import().await;
    let (order_id, gid) = shop.first_order().await;
    shop.run_through(Queue::Purchase).await;
    assert_eq!(shop.state(order_id).await, "labelled");
    let labels = "SELECT count(*) FROM labels l JOIN packages p ON p.id = l.package_id WHERE p.order_id = $1";
    let bought = shop.count(labels, order_id).await;
    assert!(bought >= 1);

    assert!(shop.app.sandbox.cancel_order(&gid));
    shop.import_twice().await;
    assert_eq!(shop.cancel_twice().await, 1);
    assert_eq!(shop.state(order_id).await, "cancelled");
    let stats = shop.app.sandbox.stats();
    assert_eq!(stats.refunds as i64, bought, "every label refunded once");
    let refunded = "SELECT count(*) FROM labels l JOIN packages p ON p.id = l.package_id
                    WHERE p.order_id = $1 AND l.state = 'refunded' AND l.refunded_at IS NOT NULL";
    assert_eq!(shop.count(refunded, order_id).await, bought);
    let live = "SELECT count(*) FROM packages WHERE order_id = $1 AND state <> 'voided'";
    assert_eq!(shop.count(live, order_id).await, 0);
    let held = "SELECT count(*) FROM reservations WHERE order_id = $1 AND state <> 'released'";
    assert_eq!(shop.count(held, order_id).await, 0);

    // Its commit job, still queued, ships nothing.
    shop.finish().await;
    assert_eq!(shop.state(order_id).await, "cancelled");
    let pushed = "SELECT count(*) FROM fulfillments WHERE order_id = $1";
    assert_eq!(shop.count(pushed, order_id).await, 0);
    assert_eq!(shop.app.sandbox.stats().refunds as i64, bought);
    shop.assert_the_other_order_shipped(order_id).await;
    shop.shutdown().await;
}

#[tokio::test]
async fn an_order_cancelled_after_it_shipped_stays_shipped_and_the_refusal_is_audited() {
    let mut shop = shop().await;
    shop.import().await;
    let (order_id, gid) = shop.first_order().await;
    shop.finish().await;
    assert_eq!(shop.state(order_id).await, "shipped");
    let before = snapshot(&shop.app).await;

    assert!(shop.app.sandbox.cancel_order(&gid));
    shop.import_twice().await;
    assert_eq!(shop.cancel_twice().await, 1);
    assert_eq!(shop.state(order_id).await, "shipped");
    assert_eq!(shop.app.sandbox.stats().refunds, 0);
    let refused = "SELECT count(*) FROM audit_log WHERE entity = 'order' AND entity_id = $1::text
                   AND action = 'order.cancel_refused'";
    assert_eq!(shop.count(refused, order_id).await, 1);
    // Only the audit row, the import and cancel jobs are new.
    let after = snapshot(&shop.app).await;
    for (table, value) in &before {
        // The sandbox counts the cancellation itself.
        if table.contains("audit_log") || table.contains("apalis.jobs") || table == "sandbox" {
            continue;
        }
        assert_eq!(Some(value), after.get(table), "{table} changed");
    }
    shop.shutdown().await;
}

#[tokio::test]
async fn an_order_edited_before_its_labels_are_bought_is_replanned_and_ships_the_new_quantities() {
    let mut shop = shop().await;
    shop.import().await;
    let (order_id, gid) = shop.first_order().await;
    shop.run_through(Queue::Render).await;
    assert_eq!(shop.state(order_id).await, "packed");
    let old_packages: Vec<i64> = sqlx::query_scalar("SELECT id FROM packages WHERE order_id = $1")
        .bind(order_id)
        .fetch_all(&shop.app.pool)
        .await
        .unwrap();
    let units = "SELECT sum(quantity)::bigint FROM order_lines WHERE order_id = $1";
    let ordered = shop.count(units, order_id).await;

    assert!(shop.app.sandbox.edit_order(&gid), "one more unit on a line");
    shop.import_twice().await;
    assert_eq!(shop.state(order_id).await, "imported");
    let version = "SELECT version::bigint FROM orders WHERE id = $1";
    assert_eq!(shop.count(version, order_id).await, 2);
    assert_eq!(shop.count(units, order_id).await, ordered + 1);
    let voided = "SELECT count(*) FROM packages WHERE order_id = $1 AND state = 'voided'";
    assert_eq!(
        shop.count(voided, order_id).await,
        old_packages.len() as i64
    );
    let dropped = "SELECT count(*) FROM rate_quotes q JOIN packages p ON p.id = q.package_id WHERE p.order_id = $1";
    assert_eq!(shop.count(dropped, order_id).await, 0, "old quotes dropped");
    let reserve = format!("order:{order_id}:v2");
    let queued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE job_type = 'reserve' AND idempotency_key = $1",
    )
    .bind(&reserve)
    .fetch_one(&shop.app.pool)
    .await
    .unwrap();
    assert_eq!(queued, 1, "reserve enqueued under the new version");

    // The old plan's purchase jobs are still queued: they buy nothing.
    shop.finish().await;
    assert_eq!(shop.state(order_id).await, "shipped");
    let stats = shop.app.sandbox.stats();
    for package_id in &old_packages {
        assert!(
            !stats
                .labels_per_reference
                .contains_key(&format!("package-{package_id}")),
            "no label for the old plan's package {package_id}"
        );
    }
    assert_eq!(stats.refunds, 0);
    let lines: Vec<(String, i32)> =
        sqlx::query_as("SELECT external_id, quantity FROM order_lines WHERE order_id = $1")
            .bind(order_id)
            .fetch_all(&shop.app.pool)
            .await
            .unwrap();
    for (line, quantity) in lines {
        assert_eq!(stats.ordered_per_line.get(&line), Some(&(quantity as u32)));
        assert_eq!(
            stats.fulfilled_per_line.get(&line),
            Some(&(quantity as u32)),
            "{line}: the new quantity shipped"
        );
    }
    let committed = "SELECT sum(quantity)::bigint FROM reservations WHERE order_id = $1 AND state = 'committed'";
    assert_eq!(shop.count(committed, order_id).await, ordered + 1);
    shop.assert_the_other_order_shipped(order_id).await;
    shop.shutdown().await;
}

#[tokio::test]
async fn an_order_edited_after_a_label_was_bought_is_put_on_hold_for_ops() {
    let mut shop = shop().await;
    shop.import().await;
    let (order_id, gid) = shop.first_order().await;
    shop.run_through(Queue::Purchase).await;
    assert_eq!(shop.state(order_id).await, "labelled");
    let units = "SELECT sum(quantity)::bigint FROM order_lines WHERE order_id = $1";
    let ordered = shop.count(units, order_id).await;

    assert!(shop.app.sandbox.edit_order(&gid));
    shop.import_twice().await;
    assert_eq!(shop.state(order_id).await, "on_hold");
    let reason: String = sqlx::query_scalar("SELECT hold_reason FROM orders WHERE id = $1")
        .bind(order_id)
        .fetch_one(&shop.app.pool)
        .await
        .unwrap();
    assert!(reason.contains("label"), "{reason}");
    let held = "SELECT count(*) FROM audit_log WHERE entity = 'order' AND entity_id = $1::text
                AND action = 'order.held' AND detail ? 'reason'";
    assert_eq!(shop.count(held, order_id).await, 1);
    assert_eq!(shop.count(units, order_id).await, ordered, "not re-planned");

    // Its commit job, still queued, ships nothing; nothing is refunded.
    shop.finish().await;
    assert_eq!(shop.state(order_id).await, "on_hold");
    let pushed = "SELECT count(*) FROM fulfillments WHERE order_id = $1";
    assert_eq!(shop.count(pushed, order_id).await, 0);
    assert_eq!(shop.app.sandbox.stats().refunds, 0);
    let still_held = "SELECT COALESCE(sum(quantity), 0)::bigint FROM reservations WHERE order_id = $1 AND state = 'held'";
    assert_eq!(shop.count(still_held, order_id).await, ordered);
    shop.assert_the_other_order_shipped(order_id).await;

    // Ops may still have it cancelled on the channel: labels refunded,
    // stock released.
    assert!(shop.app.sandbox.cancel_order(&gid));
    shop.import_twice().await;
    assert_eq!(shop.cancel_twice().await, 1);
    assert_eq!(shop.state(order_id).await, "cancelled");
    let labels = "SELECT count(*) FROM labels l JOIN packages p ON p.id = l.package_id WHERE p.order_id = $1";
    assert_eq!(
        shop.app.sandbox.stats().refunds as i64,
        shop.count(labels, order_id).await
    );
    assert_eq!(shop.count(still_held, order_id).await, 0);
    shop.shutdown().await;
}

#[tokio::test]
async fn a_label_bought_while_its_package_was_voided_is_refunded_by_the_purchase_job() {
    let mut shop = shop().await;
    shop.import().await;
    let (order_id, _) = shop.first_order().await;
    shop.run_through(Queue::Purchase).await;
    // The fixture a cancellation or re-plan leaves when it lands while a
    // purchase is at the carrier: the package voided, its label bought.
    let package_id: i64 =
        sqlx::query_scalar("SELECT id FROM packages WHERE order_id = $1 ORDER BY id LIMIT 1")
            .bind(order_id)
            .fetch_one(&shop.app.pool)
            .await
            .unwrap();
    sqlx::query("UPDATE packages SET state = 'voided' WHERE id = $1")
        .bind(package_id)
        .execute(&shop.app.pool)
        .await
        .unwrap();
    let payload = serde_json::json!({ "package_id": package_id });
    for _ in 0..2 {
        dispatch(&shop.app.deps, Queue::Purchase, payload.clone())
            .await
            .unwrap();
    }
    assert_eq!(shop.app.sandbox.stats().refunds, 1, "refunded once");
    let state: String = sqlx::query_scalar("SELECT state::text FROM labels WHERE package_id = $1")
        .bind(package_id)
        .fetch_one(&shop.app.pool)
        .await
        .unwrap();
    assert_eq!(state, "refunded");
    shop.shutdown().await;
}
