//! One rate limit for the whole fleet: three real `conveyor-worker`
//! processes against a sandbox channel limited to 5 requests/s with a burst
//! of 5. The sandbox counts the channel requests it receives per second;
//! no stretch of seconds ever gets more than the burst plus the rate times
//! its length. When the workers' Redis (a `redis-server` of the test's own)
//! is killed mid-run, every worker falls back to its share of the rate,
//! says so on `/metrics`, and every order still ships.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conveyor_tests::process::{Proc, Procs, metric};
use conveyor_tests::servers::RedisServer;
use conveyor_tests::{AppOptions, TestApp, spawn_app};
use tokio::time::Instant;

const WORKERS: usize = 3;
/// The channel's limit for the fleet.
const RATE: f64 = 5.0;
const BURST: u64 = 5;
/// The channel API's name in the limiter's metrics.
const CHANNEL_API: &str = "shopify:shop";

/// Both tests run three workers each; one at a time is enough for a small
/// machine, and keeps the timing of one out of the other's way.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One worker process of the fleet, its stderr kept for the assertions and
/// the failure report.
fn start_worker(index: usize, config: &Path, env: &[(&str, &str)]) -> Proc {
    let prefix = format!("limited{index}");
    let mut all = vec![
        ("RUST_LOG", "warn,conveyor_jobs::ops_http=info"),
        ("CONVEYOR_WORKER__NAME_PREFIX", prefix.as_str()),
        ("CONVEYOR_DATABASE__MAX_CONNECTIONS", "8"),
        // Small import pages: the import spends many channel requests.
        ("CONVEYOR_SCHEDULER__PAGE_SIZE", "5"),
    ];
    all.extend_from_slice(env);
    Proc::start(
        &format!("worker {index}"),
        Path::new(env!("CARGO_BIN_EXE_conveyor-worker")),
        config,
        &all,
    )
}

/// A fresh app with `orders` on the channel and stock for all of them, and
/// the workers' settings file: the app's settings plus the limits.
async fn limited_app(orders: usize, carrier_limit: &str) -> (TestApp, PathBuf) {
    let app = spawn_app(AppOptions {
        orders,
        ..AppOptions::default()
    })
    .await;
    app.count(
        "WITH s AS (UPDATE stock SET on_hand = on_hand * 10 RETURNING 1) SELECT count(*) FROM s",
    )
    .await;
    let config = std::env::temp_dir().join(format!(
        "conveyor-rate-limit-{}-{}.toml",
        std::process::id(),
        app.settings.redis.prefix.rsplit(':').next().unwrap_or("x")
    ));
    let toml = format!(
        "{}\n[limits.shop]\nrate_per_sec = {RATE:?}\nburst = {BURST}\n\n{carrier_limit}\n\
         [limiter]\nmax_wait_ms = 2000\nexpected_workers = {WORKERS}\n",
        app.config_toml()
    );
    std::fs::write(&config, toml).unwrap();
    (app, config)
}

fn unix_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The most requests any run of `len` consecutive seconds received.
fn busiest(per_second: &BTreeMap<u64, u64>, len: u64) -> u64 {
    per_second
        .keys()
        .map(|start| per_second.range(*start..*start + len).map(|(_, n)| n).sum())
        .max()
        .unwrap_or(0)
}

/// Every order shipped, one label per package, nothing dead-lettered.
async fn assert_all_shipped(app: &TestApp) {
    let created = app.sandbox.stats().orders_created as i64;
    let shipped = app
        .count("SELECT count(*) FROM orders WHERE state = 'shipped'")
        .await;
    assert_eq!(shipped, created, "every order shipped");
    assert_eq!(app.count("SELECT count(*) FROM dead_letters").await, 0);
    let stats = app.sandbox.stats();
    let packages = app.count("SELECT count(*) FROM packages").await;
    assert_eq!(stats.labels_sold as i64, packages, "one label per package");
    assert_eq!(stats.duplicate_purchase_attempts, 0);
    // A commit re-run that overlaps the run it replaces (its worker missed
    // heartbeats under load) may push again; the channel refuses the excess
    // and commit takes that as done. What must hold: no line fulfilled
    // beyond its quantity, one fulfillment per package.
    for (line, fulfilled) in &stats.fulfilled_per_line {
        let ordered = stats.ordered_per_line.get(line).copied().unwrap_or(0);
        assert!(
            *fulfilled <= ordered,
            "line {line}: {fulfilled} of {ordered}"
        );
    }
    assert_eq!(
        stats.fulfillments_created as i64,
        app.count("SELECT count(*) FROM fulfillments").await,
        "one fulfillment per package"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_together_never_call_the_channel_faster_than_its_limit_and_burst() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (mut app, config) = limited_app(60, "").await;
    let mut fleet = Procs(
        (0..WORKERS)
            .map(|i| start_worker(i, &config, &[]))
            .collect(),
    );
    app.settings.scheduler.tick_secs = 2;
    app.start_scheduler();
    app.drain(Duration::from_secs(240)).await;
    eprintln!("drained after {:?}", started.elapsed());
    assert_all_shipped(&app).await;

    let per_second = app.sandbox.stats().channel_requests_per_second;
    let total: u64 = per_second.values().sum();
    eprintln!("channel requests per second: {per_second:?}");
    // The fleet had far more to send than the limit lets through: at least
    // one fulfillment per order, and the import's pages.
    assert!(total >= 60 + 12, "{total} channel requests");
    let top = busiest(&per_second, 1);
    assert!(
        top as f64 >= RATE,
        "the fleet never reached the limit ({top}/s at most): the test proves nothing"
    );
    // Any run of n seconds: at most the burst plus n seconds at the rate.
    let span = per_second.keys().last().unwrap() - per_second.keys().next().unwrap() + 1;
    for len in 1..=span {
        let most = busiest(&per_second, len);
        assert!(
            most as f64 <= BURST as f64 + RATE * len as f64,
            "{most} channel requests within {len} s (limit {RATE}/s, burst {BURST}): {per_second:?}"
        );
    }

    // The waits show on the workers' /metrics; none fell back.
    let mut waits = 0.0;
    for w in &fleet.0 {
        let addr = w.wait_listen_addr().await;
        waits += metric(
            &addr,
            &format!("conveyor_rate_limit_waits_total{{api=\"{CHANNEL_API}\"}}"),
        )
        .await
        .unwrap_or(0.0);
        assert_eq!(
            metric(
                &addr,
                &format!("conveyor_rate_limiter_fallback{{api=\"{CHANNEL_API}\"}}")
            )
            .await,
            Some(0.0)
        );
    }
    assert!(waits > 0.0, "the limiter held calls back");

    for w in std::mem::take(&mut fleet.0) {
        w.sigterm_and_wait().await;
    }
    let _ = std::fs::remove_file(&config);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_order_ships_when_redis_dies_mid_run_and_each_worker_keeps_to_its_share() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let mut redis = RedisServer::start();
    let redis_url = redis.url();
    // The carrier limited too, so that every worker's carrier calls also go
    // through the limiter when Redis dies.
    let (mut app, config) =
        limited_app(45, "[limits.carrier]\nrate_per_sec = 10.0\nburst = 10\n").await;
    let env = [("CONVEYOR_REDIS__URL", redis_url.as_str())];
    let mut fleet = Procs(
        (0..WORKERS)
            .map(|i| start_worker(i, &config, &env))
            .collect(),
    );
    app.settings.scheduler.tick_secs = 2;
    app.start_scheduler();

    // Mid-run: the first fulfillments pushed, most of the work ahead.
    let deadline = Instant::now() + Duration::from_secs(120);
    while app.sandbox.stats().fulfillments_created < 3 {
        assert!(Instant::now() < deadline, "no fulfillment within 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed_at = unix_second();
    redis.stop();
    let shipped_before = app
        .count("SELECT count(*) FROM orders WHERE state = 'shipped'")
        .await;
    eprintln!(
        "redis killed after {:?}, {shipped_before} orders shipped",
        started.elapsed()
    );
    assert!(shipped_before < 40, "the kill came too late to matter");

    app.drain(Duration::from_secs(300)).await;
    eprintln!("drained after {:?}", started.elapsed());
    assert_all_shipped(&app).await;

    // Every worker noticed, fell back, and says so in its log and metrics.
    for w in &fleet.0 {
        assert!(
            w.logged("rate limiters: Redis cannot be reached"),
            "worker {} logged the fallback",
            w.pid
        );
        let addr = w.wait_listen_addr().await;
        for api in [CHANNEL_API, "easypost"] {
            assert_eq!(
                metric(
                    &addr,
                    &format!("conveyor_rate_limiter_fallback{{api=\"{api}\"}}")
                )
                .await,
                Some(1.0),
                "worker {} limits {api} on its own share",
                w.pid
            );
        }
    }

    // Without Redis the fleet stays near the limit: each worker takes a
    // third of it (burst 1). Slots reserved in Redis before the kill are
    // used within the 2 s longest wait; after that, every second is within
    // the limit again. Around the kill, a fresh local burst per worker may
    // come on top of them, never more than the limit twice over.
    let per_second = app.sandbox.stats().channel_requests_per_second;
    eprintln!("channel requests per second (redis killed in {killed_at}): {per_second:?}");
    for (second, n) in &per_second {
        let limit = RATE + BURST as f64;
        if *second >= killed_at + 3 {
            assert!(
                *n as f64 <= limit,
                "{n} requests in second {second}: {per_second:?}"
            );
        } else {
            assert!(
                *n as f64 <= 2.0 * limit,
                "{n} requests in second {second}: {per_second:?}"
            );
        }
    }

    for w in std::mem::take(&mut fleet.0) {
        w.sigterm_and_wait().await;
    }
    let _ = std::fs::remove_file(&config);
    app.shutdown().await;
}
