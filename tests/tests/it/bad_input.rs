//! Bad input loses nothing and blocks nothing: a malformed order is kept as
//! rejected with its reason while the others ship; an unknown SKU, an item
//! over the weight cap, an address the carrier rejects and a job payload
//! that cannot be read are each dead-lettered once, with a readable reason,
//! and never retried on their own. A dead letter whose cause is fixed ships
//! when it is retried.

use std::time::Duration;

use conveyor_jobs::catalog::{LoadKind, load_file};
use conveyor_jobs::dead_letter::{self, DeadLetter, Filter};
use conveyor_jobs::queue::Queue;
use conveyor_tests::{AppOptions, TestApp, spawn_app, wait_for};

/// Runs only the import queue until every order the sandbox created is
/// imported: the reserve jobs are then queued and nothing else has run.
async fn import_only(app: &mut TestApp) {
    app.start_scheduler();
    app.start_worker_for(&[Queue::Import]);
    let created = app.sandbox.stats().orders_created as i64;
    wait_for(
        Duration::from_secs(60),
        "every order is imported",
        || async { app.count("SELECT count(*) FROM orders").await >= created },
    )
    .await;
}

/// Runs the other six queues and waits until the pipeline is quiet.
async fn run_the_rest(app: &mut TestApp) {
    app.start_worker_for(&Queue::PIPELINE[1..]);
    app.drain(Duration::from_secs(120)).await;
}

async fn open_dead_letters(app: &TestApp) -> Vec<DeadLetter> {
    dead_letter::list(&app.pool, &Filter::default(), 1_000)
        .await
        .unwrap()
}

/// Each dead letter died once, after exactly one run, and its job is dead
/// (`Killed`), not waiting to run again.
async fn assert_dead_once(app: &TestApp, letters: &[DeadLetter]) {
    for d in letters {
        assert_eq!(d.deaths, 1, "{d:?}");
        assert_eq!(
            d.attempts, 1,
            "a permanent failure spends one attempt: {d:?}"
        );
        let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM job_failures WHERE job_id = $1")
            .bind(&d.job_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert_eq!(runs, 1, "ran once: {d:?}");
        let status: String = sqlx::query_scalar("SELECT status FROM apalis.jobs WHERE id = $1")
            .bind(&d.job_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert_eq!(status, "Killed", "{d:?}");
    }
}

/// Every order but `except` ended shipped or waiting on stock.
async fn assert_others_done(app: &TestApp, except: &[i64]) {
    let stuck: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, state::text FROM orders
         WHERE state NOT IN ('shipped', 'backordered') AND NOT (id = ANY($1))",
    )
    .bind(except)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(
        stuck.is_empty(),
        "orders neither shipped nor waiting: {stuck:?}"
    );
    let shipped = app
        .count("SELECT count(*) FROM orders WHERE state = 'shipped'")
        .await;
    assert!(shipped > 0, "the good orders ship");
}

async fn first_order(app: &TestApp) -> i64 {
    app.count("SELECT min(id) FROM orders").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_orders_are_rejected_with_their_reason_and_the_others_ship() {
    let mut app = spawn_app(AppOptions {
        orders: 30,
        seed: 21,
        configure_sandbox: |c| c.faults.channel.malformed_order_rate = 0.2,
        ..AppOptions::default()
    })
    .await;
    app.start_scheduler();
    app.start_worker();
    app.drain(Duration::from_secs(120)).await;

    let rejected: Vec<(String, String)> = sqlx::query_as(
        "SELECT external_id, rejected_reason FROM orders WHERE state = 'rejected' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(!rejected.is_empty(), "the sandbox sent malformed orders");
    for (id, reason) in &rejected {
        // What the sandbox breaks: the shipping address, a line's SKU, or a
        // line's quantity (served negative).
        assert!(
            reason.contains("shipping address")
                || reason.contains("has no SKU")
                || reason.contains("has quantity -"),
            "{id}: a reason a person can act on, got {reason:?}"
        );
    }
    let audited = app
        .count("SELECT count(*) FROM audit_log WHERE action = 'order.rejected'")
        .await;
    assert!(audited >= rejected.len() as i64);
    assert!(
        open_dead_letters(&app).await.is_empty(),
        "a rejected order is not a dead job"
    );
    let rejected_ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM orders WHERE state = 'rejected'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_others_done(&app, &rejected_ids).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_sku_is_dead_lettered_once_and_ships_once_the_catalog_has_it() {
    let mut app = spawn_app(AppOptions {
        orders: 8,
        seed: 5,
        ..AppOptions::default()
    })
    .await;
    import_only(&mut app).await;
    // The channel sells a SKU that the catalog does not have (yet).
    let order = first_order(&app).await;
    sqlx::query(
        "UPDATE order_lines SET sku = 'SKU-NEW-1' WHERE id = (SELECT min(id) FROM order_lines WHERE order_id = $1)",
    )
    .bind(order)
    .execute(&app.pool)
    .await
    .unwrap();
    run_the_rest(&mut app).await;

    let letters = open_dead_letters(&app).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let d = &letters[0];
    assert_eq!(d.queue, "reserve");
    assert_eq!(d.error_class, "permanent");
    assert_eq!(d.order_id, Some(order));
    assert_eq!(d.channel.as_deref(), Some(conveyor_tests::CHANNEL));
    assert!(
        d.error.contains("unknown SKU") && d.error.contains("SKU-NEW-1"),
        "{}",
        d.error
    );
    assert_dead_once(&app, &letters).await;
    assert_others_done(&app, &[order]).await;

    // Ops load the product and its stock, then retry the dead letter.
    let dir = tempdir();
    let catalog = dir.join("catalog.csv");
    std::fs::write(
        &catalog,
        "sku,name,weight_g,length_mm,width_mm,height_mm\nSKU-NEW-1,Ceramic mug,350,120,90,100\n",
    )
    .unwrap();
    let stock = dir.join("stock.csv");
    std::fs::write(&stock, "sku,warehouse,quantity\nSKU-NEW-1,CMH,50\n").unwrap();
    load_file(&app.pool, LoadKind::Catalog, &catalog, "test")
        .await
        .unwrap();
    load_file(&app.pool, LoadKind::Stock, &stock, "test")
        .await
        .unwrap();
    let outcome = dead_letter::retry(&app.pool, &[d.id], "test:ops", "SKU-NEW-1 loaded")
        .await
        .unwrap();
    assert_eq!(outcome.done, vec![d.id]);
    app.drain(Duration::from_secs(120)).await;

    let state: String = sqlx::query_scalar("SELECT state::text FROM orders WHERE id = $1")
        .bind(order)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(state, "shipped", "the retried order ships");
    assert!(open_dead_letters(&app).await.is_empty());
    let stats = app.sandbox.stats();
    assert!(stats.labels_per_reference.values().all(|n| *n == 1));
    let (on_hand, committed): (i32, i64) = sqlx::query_as(
        "SELECT s.on_hand, (SELECT COALESCE(sum(quantity), 0) FROM reservations
                            WHERE sku = 'SKU-NEW-1' AND state = 'committed')
         FROM stock s WHERE s.sku = 'SKU-NEW-1'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(committed > 0);
    assert_eq!(on_hand as i64, 50 - committed, "stock balances");
    let _ = std::fs::remove_dir_all(dir);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_item_over_the_weight_cap_is_dead_lettered_once_with_the_reason() {
    let mut app = spawn_app(AppOptions {
        orders: 24,
        seed: 8,
        // The skillet (2,450 g) and the plates (2,300 g) fit no package.
        weight_cap_g: 2_000,
        ..AppOptions::default()
    })
    .await;
    app.start_scheduler();
    app.start_worker();
    app.drain(Duration::from_secs(120)).await;

    let letters = open_dead_letters(&app).await;
    assert!(!letters.is_empty(), "some orders hold a heavy item");
    let mut dead_orders = Vec::new();
    for d in &letters {
        assert_eq!(d.queue, "split", "{d:?}");
        assert_eq!(d.error_class, "permanent");
        assert!(d.error.contains("cannot be packed"), "{}", d.error);
        assert!(d.error.contains("weighs"), "names the weight: {}", d.error);
        let order = d.order_id.expect("the dead letter names its order");
        // The reason names an item of this order, and that item is one of
        // the heavy ones.
        let skus: Vec<(String, i32)> = sqlx::query_as(
            "SELECT l.sku, p.weight_g FROM order_lines l JOIN products p ON p.sku = l.sku WHERE l.order_id = $1",
        )
        .bind(order)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        let named = skus
            .iter()
            .find(|(sku, _)| d.error.contains(&format!("item {sku} ")))
            .unwrap_or_else(|| panic!("{} names none of {skus:?}", d.error));
        assert!(named.1 > 1_500, "{named:?} is not heavy");
        dead_orders.push(order);
    }
    assert_dead_once(&app, &letters).await;
    assert_others_done(&app, &dead_orders).await;
    // Ops cannot ship these as they are: a discard closes them, with a reason.
    let ids: Vec<i64> = letters.iter().map(|d| d.id).collect();
    let outcome = dead_letter::discard(&app.pool, &ids, "test:ops", "ships by freight instead")
        .await
        .unwrap();
    assert_eq!(outcome.done.len(), ids.len());
    assert!(open_dead_letters(&app).await.is_empty());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_address_the_carrier_rejects_is_dead_lettered_once_and_ships_once_corrected() {
    let mut app = spawn_app(AppOptions {
        orders: 8,
        seed: 9,
        ..AppOptions::default()
    })
    .await;
    import_only(&mut app).await;
    let order = first_order(&app).await;
    sqlx::query(
        "UPDATE orders SET ship_to = jsonb_set(ship_to, '{zip}', '\"00000\"') WHERE id = $1",
    )
    .bind(order)
    .execute(&app.pool)
    .await
    .unwrap();
    run_the_rest(&mut app).await;

    let letters = open_dead_letters(&app).await;
    assert!(!letters.is_empty());
    for d in &letters {
        assert_eq!(d.queue, "rate", "{d:?}");
        assert_eq!(d.error_class, "permanent");
        assert_eq!(d.order_id, Some(order));
        assert!(d.error.to_lowercase().contains("address"), "{}", d.error);
    }
    assert_dead_once(&app, &letters).await;
    assert_others_done(&app, &[order]).await;
    let dead_order_labels = app
        .count_with(
            "SELECT count(*) FROM labels l JOIN packages p ON p.id = l.package_id WHERE p.order_id = $1",
            order,
        )
        .await;
    assert_eq!(
        dead_order_labels, 0,
        "nothing was bought for the rejected address"
    );

    // The customer corrects the address; ops retry every rate dead letter.
    sqlx::query(
        "UPDATE orders SET ship_to = jsonb_set(ship_to, '{zip}', '\"10001\"') WHERE id = $1",
    )
    .bind(order)
    .execute(&app.pool)
    .await
    .unwrap();
    let filter = Filter {
        queue: Some("rate".into()),
        ..Filter::default()
    };
    let outcome = dead_letter::retry_matching(&app.pool, &filter, "test:ops", "address corrected")
        .await
        .unwrap();
    assert_eq!(outcome.done.len(), letters.len());
    app.drain(Duration::from_secs(120)).await;
    let state: String = sqlx::query_scalar("SELECT state::text FROM orders WHERE id = $1")
        .bind(order)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(state == "shipped" || state == "backordered", "{state}");
    let stats = app.sandbox.stats();
    assert!(stats.labels_per_reference.values().all(|n| *n == 1));
    assert_eq!(
        stats.labels_sold as i64,
        app.count("SELECT count(*) FROM labels WHERE state = 'purchased'")
            .await,
        "one label per package, none bought twice"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payload_that_cannot_be_read_is_dead_lettered_once_with_its_bytes_kept() {
    let mut app = spawn_app(AppOptions::default()).await;
    let garbage: &[u8] = b"\xff\xfe\x00not json {";
    let wrong_shape: &[u8] = br#"{"order": "forty-two"}"#;
    for (key, bytes) in [("garbage", garbage), ("wrong-shape", wrong_shape)] {
        sqlx::query(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, idempotency_key)
             VALUES ($1, 'reserve', $2, 'Pending', 0, 12, now(), 0, $3)",
        )
        .bind(ulid::Ulid::generate().to_string())
        .bind(bytes)
        .bind(key)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    app.start_worker();
    wait_for(Duration::from_secs(30), "both jobs are dead", || async {
        app.count("SELECT count(*) FROM dead_letters").await == 2
    })
    .await;
    app.drain(Duration::from_secs(30)).await;

    let letters = open_dead_letters(&app).await;
    assert_eq!(letters.len(), 2);
    assert_dead_once(&app, &letters).await;
    for d in &letters {
        let detail = dead_letter::show(&app.pool, d.id).await.unwrap().unwrap();
        assert_eq!(d.error_class, "permanent");
        assert!(d.error.contains("payload cannot be read"), "{}", d.error);
        match d.job_key.as_deref() {
            Some("garbage") => {
                assert!(d.error.contains("as JSON"), "{}", d.error);
                assert_eq!(detail.payload, None);
                assert_eq!(
                    detail.payload_hex.as_deref(),
                    Some("fffe006e6f74206a736f6e207b")
                );
            }
            Some("wrong-shape") => {
                assert!(
                    d.error.contains("order_id"),
                    "names the missing field: {}",
                    d.error
                );
                assert_eq!(detail.payload.as_deref(), Some(r#"{"order": "forty-two"}"#));
            }
            other => panic!("unexpected job key {other:?}"),
        }
        let stored: Vec<u8> = sqlx::query_scalar("SELECT payload FROM dead_letters WHERE id = $1")
            .bind(d.id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        let queued: Vec<u8> = sqlx::query_scalar("SELECT job FROM apalis.jobs WHERE id = $1")
            .bind(&d.job_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert_eq!(stored, queued, "the bytes are kept as they were");
    }
    app.shutdown().await;
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "conveyor-bad-input-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
