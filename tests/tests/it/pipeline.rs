//! The whole pipeline, end to end: a backlog of orders on the sandbox
//! channel, a scheduler and a worker, until the pipeline is quiet.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use conveyor_jobs::pdf::page_texts;

use conveyor_tests::{AppOptions, spawn_app};

const ORDERS: usize = 320;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_flows_to_print_ready_labels_with_one_label_per_package_and_balanced_stock() {
    let mut app = spawn_app(AppOptions {
        orders: ORDERS,
        ..AppOptions::default()
    })
    .await;
    let initial = app.on_hand().await;
    assert!(
        app.count("SELECT count(*) FROM products").await >= 20,
        "catalog of at least 20 SKUs"
    );
    assert_eq!(app.count("SELECT count(*) FROM warehouses").await, 3);

    app.start_scheduler();
    app.start_worker();
    app.drain(Duration::from_secs(420)).await;

    // Every order is shipped or waiting on stock.
    let states: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT state::text, count(*) FROM orders GROUP BY state",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let total: i64 = states.values().sum();
    assert_eq!(
        total, ORDERS as i64,
        "every sandbox order imported once: {states:?}"
    );
    let shipped = states.get("shipped").copied().unwrap_or(0);
    let backordered = states.get("backordered").copied().unwrap_or(0);
    assert_eq!(
        shipped + backordered,
        total,
        "orders end shipped or backordered: {states:?}"
    );
    assert!(shipped > 0, "some orders shipped: {states:?}");
    assert!(
        backordered > 0,
        "stock is limited, so some orders wait: {states:?}"
    );
    let dead = app.count("SELECT count(*) FROM dead_letters").await;
    assert_eq!(dead, 0, "no job dead-lettered");

    // One label per package, no duplicate purchase.
    let stats = app.sandbox.stats();
    let packages = app.count("SELECT count(*) FROM packages").await;
    let purchased = app
        .count("SELECT count(*) FROM packages WHERE state = 'purchased'")
        .await;
    assert_eq!(purchased, packages, "every package has its label");
    assert_eq!(
        stats.labels_sold as i64, packages,
        "one label sold per package"
    );
    assert_eq!(stats.labels_per_reference.len() as i64, packages);
    assert!(
        stats.labels_per_reference.values().all(|n| *n == 1),
        "no package bought twice"
    );
    assert!(
        stats.labels_per_shipment.values().all(|n| *n == 1),
        "no shipment bought twice"
    );
    assert_eq!(
        stats.duplicate_purchase_attempts, 0,
        "no duplicate purchase refused"
    );

    // Every line of every shipped order fulfilled exactly once; nothing else.
    let lines: Vec<(String, i32, String)> = sqlx::query_as(
        "SELECT l.external_id, l.quantity, o.state::text FROM order_lines l JOIN orders o ON o.id = l.order_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    for (line, quantity, state) in &lines {
        let fulfilled = stats.fulfilled_per_line.get(line).copied().unwrap_or(0);
        let expected = if state == "shipped" {
            *quantity as u32
        } else {
            0
        };
        assert_eq!(fulfilled, expected, "line {line} of a {state} order");
    }
    assert_eq!(stats.over_fulfillment_attempts, 0);

    // Every print-ready PDF parses and has the label page(s) then the slip.
    let docs: Vec<(i64, String, Vec<u8>, i32)> = sqlx::query_as(
        "SELECT p.id, lb.tracking_code, d.pdf, d.pages FROM documents d
         JOIN packages p ON p.id = d.package_id JOIN labels lb ON lb.package_id = p.id
         WHERE d.kind = 'print_ready'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        docs.len() as i64,
        packages,
        "one print-ready PDF per package"
    );
    for (package_id, tracking, pdf, pages) in &docs {
        let texts = page_texts(pdf)
            .unwrap_or_else(|e| panic!("package {package_id}: PDF does not parse: {e}"));
        assert_eq!(texts.len(), *pages as usize);
        assert!(
            texts.len() >= 2,
            "package {package_id}: label and slip pages"
        );
        assert!(
            texts[0].contains(tracking.as_str()),
            "package {package_id}: first page is the label"
        );
        assert!(
            texts[1..].iter().any(|t| t.contains("Packing slip")),
            "package {package_id}: a packing slip page follows the label"
        );
    }

    // Stock balances: on hand = initial - shipped; reserved = held.
    let shipped_units: HashMap<(String, String), i64> = sqlx::query_as::<_, (String, String, i64)>(
        "SELECT sku, warehouse, sum(quantity)::bigint FROM reservations WHERE state = 'committed' GROUP BY sku, warehouse",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(s, w, q)| ((s, w), q))
    .collect();
    let held_units: HashMap<(String, String), i64> = sqlx::query_as::<_, (String, String, i64)>(
        "SELECT sku, warehouse, sum(quantity)::bigint FROM reservations WHERE state = 'held' GROUP BY sku, warehouse",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(s, w, q)| ((s, w), q))
    .collect();
    let now: Vec<(String, String, i32, i32)> =
        sqlx::query_as("SELECT sku, warehouse, on_hand, reserved FROM stock")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    for (sku, warehouse, on_hand, reserved) in now {
        let key = (sku.clone(), warehouse.clone());
        let shipped = shipped_units.get(&key).copied().unwrap_or(0);
        let held = held_units.get(&key).copied().unwrap_or(0);
        assert_eq!(
            i64::from(on_hand),
            initial[&key] - shipped,
            "{sku}@{warehouse}: on hand = initial - shipped"
        );
        assert_eq!(
            i64::from(reserved),
            held,
            "{sku}@{warehouse}: reserved = held"
        );
    }
    // Units shipped per line match what the sandbox saw fulfilled.
    let committed_total: i64 = shipped_units.values().sum();
    let fulfilled_total: u32 = stats.fulfilled_per_line.values().sum();
    assert_eq!(committed_total, i64::from(fulfilled_total));

    println!(
        "orders {total}: shipped {shipped}, backordered {backordered}; packages {packages}; labels sold {}",
        stats.labels_sold
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restock_serves_the_oldest_backordered_order_first() {
    let mut app = spawn_app(AppOptions {
        orders: 120,
        seed: 11,
        ..AppOptions::default()
    })
    .await;
    // Hold back stock so that orders wait.
    sqlx::query("UPDATE stock SET on_hand = on_hand / 4")
        .execute(&app.pool)
        .await
        .unwrap();
    app.start_scheduler();
    app.start_worker();
    app.drain(Duration::from_secs(300)).await;
    let backordered: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM orders WHERE state = 'backordered' ORDER BY created_at, id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(
        backordered.len() >= 2,
        "limited stock leaves orders waiting"
    );
    let oldest = backordered[0];

    // Restock exactly what the oldest backordered order still lacks: the
    // oldest must take it all, and nobody younger may get any of it.
    let lacking: Vec<(String, i64)> = sqlx::query_as(
        "SELECT l.sku, sum(l.quantity - COALESCE((SELECT sum(r.quantity) FROM reservations r
                                                  WHERE r.order_line_id = l.id AND r.state = 'held'), 0))::bigint
         FROM order_lines l WHERE l.order_id = $1 GROUP BY l.sku
         HAVING sum(l.quantity - COALESCE((SELECT sum(r.quantity) FROM reservations r
                                          WHERE r.order_line_id = l.id AND r.state = 'held'), 0)) > 0",
    )
    .bind(oldest)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(!lacking.is_empty());
    let mut csv = String::from("sku,warehouse,quantity\n");
    for (sku, units) in &lacking {
        csv.push_str(&format!("{sku},CMH,{units}\n"));
    }
    let file = std::env::temp_dir().join(format!(
        "conveyor-restock-{oldest}-{}.csv",
        std::process::id()
    ));
    std::fs::write(&file, csv).unwrap();
    let report = conveyor_jobs::catalog::load_file(
        &app.pool,
        conveyor_jobs::catalog::LoadKind::Restock,
        &file,
        "test",
    )
    .await
    .expect("restock loads");
    let _ = std::fs::remove_file(&file);
    assert_eq!(
        report.orders_resumed, 1,
        "exactly one order became fully reserved"
    );
    app.drain(Duration::from_secs(120)).await;

    let state: String = sqlx::query_scalar("SELECT state::text FROM orders WHERE id = $1")
        .bind(oldest)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(state, "shipped", "the oldest backordered order shipped");
    let still_waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders WHERE id = ANY($1) AND state = 'backordered'",
    )
    .bind(&backordered[1..])
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        still_waiting as usize,
        backordered.len() - 1,
        "younger orders got none of it"
    );
    app.shutdown().await;
}
