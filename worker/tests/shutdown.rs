//! The real `conveyor-worker` process: SIGTERM lets in-flight jobs finish,
//! claims nothing it will not run, and exits 0; a fresh worker then
//! finishes the rest without buying any label twice.

use std::process::Stdio;
use std::time::Duration;

use conveyor_tests::{AppOptions, CHANNEL, spawn_app};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_in_flight_jobs_and_exits_zero() {
    let mut app = spawn_app(AppOptions {
        orders: 60,
        latency: Duration::from_millis(150),
        ..AppOptions::default()
    })
    .await;
    let config = std::env::temp_dir().join(format!("conveyor-worker-{}.toml", std::process::id()));
    std::fs::write(&config, app.config_toml()).unwrap();
    conveyor_jobs::import::enqueue_tick(&app.pool, CHANNEL, 1)
        .await
        .unwrap();

    let mut worker = Command::new(env!("CARGO_BIN_EXE_conveyor-worker"))
        .env("CONVEYOR_CONFIG", &config)
        .env("RUST_LOG", "warn")
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the worker binary starts");

    // Wait until the worker is in the middle of buying labels.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let bought = app.count("SELECT count(*) FROM labels").await;
        if bought >= 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never got to purchases"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = worker.id().expect("a running worker") as i32;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(45), worker.wait())
        .await
        .expect("the worker exits within its shutdown deadline")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let _ = std::fs::remove_file(&config);

    let claimed = app
        .count("SELECT count(*) FROM apalis.jobs WHERE status IN ('Running', 'Queued')")
        .await;
    assert_eq!(
        claimed, 0,
        "no job left running or claimed by the stopped worker"
    );
    let half_bought = app
        .count("SELECT count(*) FROM labels WHERE state = 'buying'")
        .await;
    assert_eq!(half_bought, 0, "every purchase in flight finished");

    app.start_scheduler();
    app.start_worker();
    app.drain(Duration::from_secs(180)).await;
    let packages = app.count("SELECT count(*) FROM packages").await;
    let stats = app.sandbox.stats();
    assert_eq!(stats.labels_sold as i64, packages);
    assert!(stats.labels_per_reference.values().all(|n| *n == 1));
    assert_eq!(stats.duplicate_purchase_attempts, 0);
    app.shutdown().await;
}
