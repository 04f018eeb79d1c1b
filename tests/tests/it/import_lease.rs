//! The channel's import lease after a crash: a run of the same import job
//! takes over the lease its dead predecessor left; any other import of the
//! channel still waits for it to run out.

use conveyor_jobs::import::{self, ImportJob};
use conveyor_tests::{AppOptions, CHANNEL, TestApp, spawn_app};

/// A lease as a worker killed mid-import leaves it: held for another
/// minute by the run `holder`.
async fn leave_lease(app: &TestApp, holder: &str) {
    sqlx::query(
        "UPDATE channels SET import_lease_by = $2, import_lease_until = now() + interval '60 seconds'
         WHERE code = $1",
    )
    .bind(CHANNEL)
    .bind(holder)
    .execute(&app.pool)
    .await
    .unwrap();
}

fn job(tick: i64) -> ImportJob {
    ImportJob {
        channel: CHANNEL.into(),
        tick,
    }
}

#[tokio::test]
async fn the_same_import_job_takes_over_the_lease_its_crashed_run_left() {
    let app = spawn_app(AppOptions {
        orders: 5,
        ..AppOptions::default()
    })
    .await;
    leave_lease(&app, &format!("{}#01DEADRUN", job(41).key())).await;

    let report = import::run(&app.deps, job(41)).await.unwrap();
    assert_eq!(report.new_orders, 5, "{report:?}");
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 5);
    let lease_left = app
        .count("SELECT count(*) FROM channels WHERE import_lease_by IS NOT NULL")
        .await;
    assert_eq!(lease_left, 0, "the run releases the lease it took over");
    app.shutdown().await;
}

#[tokio::test]
async fn another_import_of_the_channel_waits_for_a_crashed_runs_lease() {
    let app = spawn_app(AppOptions {
        orders: 5,
        ..AppOptions::default()
    })
    .await;
    // Tick 4 is not a prefix match of tick 41's key, and neither is a
    // different channel's job.
    leave_lease(&app, &format!("{}#01DEADRUN", job(41).key())).await;

    let report = import::run(&app.deps, job(4)).await.unwrap();
    assert_eq!(report, import::ImportReport::default());
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 0);
    let still_held = app
        .count("SELECT count(*) FROM channels WHERE import_lease_by LIKE 'shop:41#%'")
        .await;
    assert_eq!(still_held, 1);
    app.shutdown().await;
}
