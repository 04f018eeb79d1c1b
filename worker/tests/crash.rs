//! Real `conveyor-worker` processes killed at every crash-injection point
//! (`CONVEYOR_CRASH_AT`): the process must die there, of the abort; then a
//! fresh worker drains the queue, and the end state must be what a clean run
//! promises. Every order shipped or backordered, nothing dead-lettered, one
//! label bought per package and none twice, one fulfillment per package
//! under its own tracking number, every line fulfilled exactly its quantity,
//! and stock that balances (`on_hand = initial - committed`).
//!
//! The dead worker's heartbeat is aged past the orphan window once the
//! process is gone (it is gone: the test waited for its exit status), so the
//! fresh worker re-enqueues its jobs at once instead of after the window.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use conveyor_jobs::queue::Queue;
use conveyor_tests::{AppOptions, CHANNEL, TestApp, spawn_app};
use tokio::process::Command;

/// Packages no heavier than this (contents and box): heavy lines of two or
/// three units (skillets, plate sets, boards) are split across packages.
const WEIGHT_CAP_G: u32 = 3_200;
const SIGABRT: i32 = 6;

/// Where the crash happens.
enum Stage {
    /// A worker for every queue, from the first import on, crashes at the
    /// `after`th pass through the point.
    FromTheStart { after: u32 },
    /// The pipeline runs up to labels in this process; then a worker for
    /// the commit queue alone crashes while committing an order whose line
    /// is split across packages, after the first package's push.
    CommitOfASplitLine,
}

struct Files {
    config: PathBuf,
    stderr: PathBuf,
}

impl Files {
    fn new(point: &str, config: String) -> Files {
        let dir = std::env::temp_dir();
        let stem = format!("conveyor-crash-{}-{point}", std::process::id());
        let files = Files {
            config: dir.join(format!("{stem}.toml")),
            stderr: dir.join(format!("{stem}.stderr")),
        };
        std::fs::write(&files.config, config).unwrap();
        files
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.stderr);
    }
}

async fn crash_then_recover(point: &'static str, stage: Stage) {
    let mut app = spawn_app(AppOptions {
        orders: 30,
        weight_cap_g: WEIGHT_CAP_G,
        ..AppOptions::default()
    })
    .await;
    let initial = app.on_hand().await;
    let files = Files::new(point, app.config_toml());
    conveyor_jobs::import::enqueue_tick(&app.pool, CHANNEL, 1)
        .await
        .unwrap();

    // The queues the crashing worker runs, and those the fresh one runs
    // after it (a worker for the others may already run in this process).
    let (queues, after, recover): (_, _, &[Queue]) = match stage {
        Stage::FromTheStart { after } => (None, after, &Queue::ALL),
        Stage::CommitOfASplitLine => {
            hold_all_commits_but_a_split_line(&mut app).await;
            (Some("commit"), 1, &[Queue::Commit])
        }
    };

    let mut command = Command::new(env!("CARGO_BIN_EXE_conveyor-worker"));
    command
        .env("CONVEYOR_CONFIG", &files.config)
        .env("CONVEYOR_CRASH_AT", point)
        .env("CONVEYOR_CRASH_AFTER", after.to_string())
        .env("RUST_LOG", "warn")
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&files.stderr).unwrap())
        .kill_on_drop(true);
    if let Some(queues) = queues {
        command.args(["--queues", queues]);
    }
    let mut worker = command.spawn().expect("the worker binary starts");
    let pid = worker.id().expect("a running worker");
    let status = tokio::time::timeout(Duration::from_secs(60), worker.wait())
        .await
        .unwrap_or_else(|_| panic!("the worker never reached {point}"))
        .unwrap();
    let stderr = std::fs::read_to_string(&files.stderr).unwrap_or_default();
    assert_eq!(
        status.signal(),
        Some(SIGABRT),
        "the worker died of the crash at {point}, not {status:?}; its stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("crash point {point} reached")),
        "the abort came from {point}; stderr:\n{stderr}"
    );

    release_held_commits(&app).await;
    age_dead_workers(&app, pid).await;
    app.start_worker_for(recover);
    app.drain(Duration::from_secs(60)).await;
    assert_clean_end_state(&app, &initial, point).await;
    app.shutdown().await;
}

/// Runs every queue but commit here until every order is labelled or
/// backordered, then holds back every commit job but that of an order with
/// a line split across packages.
async fn hold_all_commits_but_a_split_line(app: &mut TestApp) {
    app.start_worker_for(&Queue::PIPELINE[..6]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let created = app.sandbox.stats().orders_created as i64;
        let settled = app
            .count("SELECT count(*) FROM orders WHERE state IN ('labelled', 'backordered')")
            .await;
        let busy = app
            .count(
                "SELECT count(*) FROM apalis.jobs
                 WHERE job_type <> 'commit' AND status NOT IN ('Done', 'Killed')",
            )
            .await;
        if settled == created && busy == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pipeline never reached labels: {settled}/{created} orders labelled or backordered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let split: Option<i64> = sqlx::query_scalar(
        "SELECT l.order_id FROM order_lines l JOIN package_items i ON i.order_line_id = l.id
         JOIN orders o ON o.id = l.order_id
         WHERE o.state = 'labelled'
         GROUP BY l.order_id, l.id HAVING count(DISTINCT i.package_id) > 1
         ORDER BY l.order_id LIMIT 1",
    )
    .fetch_optional(&app.pool)
    .await
    .unwrap();
    let order_id = split.expect("the backlog has an order with a line split across packages");
    let held = sqlx::query(
        "UPDATE apalis.jobs SET run_at = now() + interval '1 hour'
         WHERE job_type = 'commit' AND status = 'Pending' AND idempotency_key NOT LIKE $1",
    )
    .bind(format!("order:{order_id}:v%"))
    .execute(&app.pool)
    .await
    .unwrap()
    .rows_affected();
    assert!(held > 0, "other orders wait for their commit too");
}

async fn release_held_commits(app: &TestApp) {
    sqlx::query(
        "UPDATE apalis.jobs SET run_at = now()
         WHERE job_type = 'commit' AND status = 'Pending' AND run_at > now()",
    )
    .execute(&app.pool)
    .await
    .unwrap();
}

/// The dead process's workers last answered an hour ago, as far as the
/// queue can tell: what the orphan window would show after waiting it out.
async fn age_dead_workers(app: &TestApp, pid: u32) {
    let aged = sqlx::query(
        "UPDATE apalis.workers SET last_seen = now() - interval '1 hour'
         WHERE id LIKE '%-' || $1 || '-%'",
    )
    .bind(pid.to_string())
    .execute(&app.pool)
    .await
    .unwrap()
    .rows_affected();
    assert!(aged > 0, "the dead worker {pid} had registered its workers");
}

async fn rows<T>(app: &TestApp, sql: &'static str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(sql).fetch_all(&app.pool).await.unwrap()
}

async fn assert_clean_end_state(
    app: &TestApp,
    initial: &BTreeMap<(String, String), i64>,
    point: &str,
) {
    let stats = app.sandbox.stats();
    let at = format!("after a crash at {point}");

    // Every order imported, and shipped or backordered; nothing dead.
    let orders = app.count("SELECT count(*) FROM orders").await;
    assert_eq!(orders, stats.orders_created as i64, "{at}");
    let states: Vec<(String, i64)> = rows(
        app,
        "SELECT state::text, count(*) FROM orders GROUP BY 1 ORDER BY 1",
    )
    .await;
    assert!(
        states
            .iter()
            .all(|(s, _)| s == "shipped" || s == "backordered"),
        "{at}: orders by state {states:?}"
    );
    assert!(
        states.iter().any(|(s, n)| s == "shipped" && *n > 0),
        "{at}: {states:?}"
    );
    let dead: Vec<(String, String)> = rows(app, "SELECT queue, error FROM dead_letters").await;
    assert!(dead.is_empty(), "{at}: dead letters {dead:?}");

    // One label per package, bought once.
    let packages: Vec<(i64, Option<String>)> = rows(
        app,
        "SELECT p.id, lb.tracking_code FROM packages p
         LEFT JOIN labels lb ON lb.package_id = p.id AND lb.state = 'purchased'
         ORDER BY p.id",
    )
    .await;
    assert!(!packages.is_empty(), "{at}");
    let tracking: BTreeSet<String> = packages
        .iter()
        .map(|(id, t)| {
            t.clone()
                .unwrap_or_else(|| panic!("{at}: package {id} has no label"))
        })
        .collect();
    assert_eq!(
        tracking.len(),
        packages.len(),
        "{at}: tracking numbers repeat"
    );
    let references: BTreeSet<String> = packages
        .iter()
        .map(|(id, _)| format!("package-{id}"))
        .collect();
    assert_eq!(
        stats
            .labels_per_reference
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>(),
        references,
        "{at}"
    );
    assert!(
        stats.labels_per_reference.values().all(|n| *n == 1),
        "{at}: labels per package {:?}",
        stats.labels_per_reference
    );
    assert_eq!(stats.labels_sold, packages.len() as u64, "{at}");
    assert_eq!(stats.duplicate_purchase_attempts, 0, "{at}");

    // One fulfillment per package, under that package's tracking number.
    assert_eq!(
        stats
            .fulfillments_per_tracking_number
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>(),
        tracking,
        "{at}"
    );
    assert!(
        stats
            .fulfillments_per_tracking_number
            .values()
            .all(|n| *n == 1),
        "{at}: fulfillments per tracking number {:?}",
        stats.fulfillments_per_tracking_number
    );
    assert_eq!(stats.fulfillments_created, packages.len() as u64, "{at}");
    assert_eq!(stats.over_fulfillment_attempts, 0, "{at}");
    let recorded = app.count("SELECT count(*) FROM fulfillments").await;
    assert_eq!(recorded, packages.len() as i64, "{at}");

    // Each line of a shipped order fulfilled, packed and committed exactly
    // its quantity; lines of backordered orders not at all.
    let lines: Vec<(String, String, i32, i64, i64)> = rows(
        app,
        "SELECT l.external_id, o.state::text, l.quantity,
                COALESCE((SELECT sum(i.quantity) FROM package_items i WHERE i.order_line_id = l.id), 0)::bigint,
                COALESCE((SELECT sum(r.quantity) FROM reservations r
                          WHERE r.order_line_id = l.id AND r.state = 'committed'), 0)::bigint
         FROM order_lines l JOIN orders o ON o.id = l.order_id ORDER BY l.id",
    )
    .await;
    for (line, state, quantity, packed, committed) in &lines {
        let fulfilled = stats.fulfilled_per_line.get(line).copied().unwrap_or(0);
        let expected = if state == "shipped" { *quantity } else { 0 };
        assert_eq!(
            fulfilled as i32, expected,
            "{at}: line {line} ({state}) fulfilled"
        );
        assert_eq!(
            *packed as i32, expected,
            "{at}: line {line} ({state}) packed"
        );
        assert_eq!(
            *committed as i32, expected,
            "{at}: line {line} ({state}) committed"
        );
    }
    let ours: BTreeSet<&String> = lines.iter().map(|(l, ..)| l).collect();
    assert!(
        stats.fulfilled_per_line.keys().all(|l| ours.contains(l)),
        "{at}: a line of no order was fulfilled"
    );

    // Stock balances: what left is what was committed; what is reserved is
    // what backordered orders hold.
    let now: Vec<(String, String, i32, i32, i64, i64)> = rows(
        app,
        "SELECT s.sku, s.warehouse, s.on_hand, s.reserved,
                COALESCE((SELECT sum(r.quantity) FROM reservations r
                          WHERE r.sku = s.sku AND r.warehouse = s.warehouse AND r.state = 'committed'), 0)::bigint,
                COALESCE((SELECT sum(r.quantity) FROM reservations r
                          WHERE r.sku = s.sku AND r.warehouse = s.warehouse AND r.state = 'held'), 0)::bigint
         FROM stock s ORDER BY 1, 2",
    )
    .await;
    assert_eq!(now.len(), initial.len(), "{at}");
    for (sku, warehouse, on_hand, reserved, committed, held) in now {
        let before = initial[&(sku.clone(), warehouse.clone())];
        assert_eq!(
            i64::from(on_hand),
            before - committed,
            "{at}: on hand of {sku} at {warehouse}"
        );
        assert_eq!(
            i64::from(reserved),
            held,
            "{at}: reserved {sku} at {warehouse}"
        );
    }
    let held_by_others = app
        .count(
            "SELECT count(*) FROM reservations r JOIN orders o ON o.id = r.order_id
             WHERE r.state = 'held' AND o.state <> 'backordered'",
        )
        .await;
    assert_eq!(held_by_others, 0, "{at}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_order_is_lost_when_the_worker_dies_importing_before_the_cursor_moves() {
    // The second page: the first is committed, the lease is held.
    crash_then_recover("import.after_upsert", Stage::FromTheStart { after: 2 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_is_reserved_once_when_the_worker_dies_after_reserving() {
    crash_then_recover("reserve.after_commit", Stage::FromTheStart { after: 3 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_packed_once_when_the_worker_dies_after_splitting() {
    crash_then_recover("split.after_commit", Stage::FromTheStart { after: 3 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_is_rated_once_when_the_worker_dies_holding_unsaved_quotes() {
    crash_then_recover("rate.after_quotes", Stage::FromTheStart { after: 3 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packing_slip_is_rendered_once_when_the_worker_dies_after_storing_it() {
    crash_then_recover("render.after_store", Stage::FromTheStart { after: 3 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_is_bought_once_when_the_worker_dies_after_recording_the_shipment() {
    crash_then_recover("purchase.after_record", Stage::FromTheStart { after: 3 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_is_bought_once_when_the_worker_dies_after_the_carrier_sold_it() {
    crash_then_recover("purchase.after_buy", Stage::FromTheStart { after: 3 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_is_bought_once_when_the_worker_dies_merging_the_print_ready_pdf() {
    crash_then_recover("purchase.after_merge", Stage::FromTheStart { after: 3 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_line_is_fulfilled_once_when_the_worker_dies_after_pushing_a_package() {
    crash_then_recover("commit.after_push", Stage::CommitOfASplitLine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_of_an_order_is_pushed_when_the_worker_dies_after_recording_a_package() {
    crash_then_recover("commit.after_record", Stage::CommitOfASplitLine).await;
}
