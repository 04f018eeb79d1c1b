//! Durable retries against the sandbox's injected faults: an outage opens
//! the carrier's circuit breaker and the fleet stops calling the carrier
//! until it may be back; rate limiting is waited out without spending the
//! attempt budget; and without Redis every breaker runs on local state.
//!
//! Each test first imports, reserves and splits its orders with no fault
//! (a worker for those queues only), so that the fault then meets jobs
//! that need the carrier.

use std::cell::Cell;
use std::time::Duration;

use conveyor_jobs::queue::Queue;
use conveyor_jobs::retry::Deferral;
use conveyor_jobs::settings::{BreakerSettings, QueueConfig, Settings};
use conveyor_sandbox::{ApiFaults, Faults, Stats};

use conveyor_tests::{AppOptions, TestApp, spawn_app, wait_for};

const ORDERS: usize = 12;

/// Requests that reached the sandbox's carrier API (shipments, buys,
/// refunds, label downloads).
fn carrier_calls(stats: &Stats) -> u64 {
    stats
        .requests
        .iter()
        .filter(|(route, _)| route.contains(" /v2/") || route.contains(" /labels/"))
        .map(|(_, n)| n)
        .sum()
}

/// Imports, reserves and splits every order with no fault injected: when
/// this returns, every package waits on its rate job and nothing has
/// called the carrier yet.
async fn split_every_order(app: &mut TestApp) {
    app.start_scheduler();
    app.start_worker_for(&[Queue::Import, Queue::Reserve, Queue::Split]);
    let created = app.sandbox.stats().orders_created as i64;
    wait_for(Duration::from_secs(60), "every order is split", || async {
        let orders = app.count("SELECT count(*) FROM orders").await;
        let waiting = app
            .count(
                "SELECT count(*) FROM apalis.jobs
                 WHERE job_type IN ('reserve', 'split') AND status NOT IN ('Done', 'Killed')",
            )
            .await;
        let packages = app.count("SELECT count(*) FROM packages").await;
        let rate_jobs = app
            .count("SELECT count(*) FROM apalis.jobs WHERE job_type = 'rate'")
            .await;
        orders == created && waiting == 0 && packages > 0 && rate_jobs == packages
    })
    .await;
    assert_eq!(carrier_calls(&app.sandbox.stats()), 0);
}

/// Every order shipped, one label per package, nothing dead-lettered.
async fn assert_every_order_shipped(app: &TestApp) {
    let orders = app.count("SELECT count(*) FROM orders").await;
    let shipped = app
        .count("SELECT count(*) FROM orders WHERE state = 'shipped'")
        .await;
    assert_eq!(orders, ORDERS as i64);
    assert_eq!(shipped, orders, "every order shipped");
    let dead = app.count("SELECT count(*) FROM dead_letters").await;
    assert_eq!(dead, 0, "no job dead-lettered");
    let packages = app.count("SELECT count(*) FROM packages").await;
    let purchased = app
        .count("SELECT count(*) FROM packages WHERE state = 'purchased'")
        .await;
    assert_eq!(purchased, packages, "every package has its label");
    let stats = app.sandbox.stats();
    assert_eq!(stats.labels_sold as i64, packages, "one label per package");
    assert!(stats.labels_per_reference.values().all(|n| *n == 1));
    assert_eq!(stats.duplicate_purchase_attempts, 0);
}

fn outage() -> Faults {
    Faults::everywhere(ApiFaults {
        server_error_rate: 1.0,
        ..ApiFaults::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_carrier_outage_opens_the_breaker_stops_carrier_calls_and_every_order_ships_after_it() {
    let mut app = spawn_app(AppOptions {
        orders: ORDERS,
        configure: |s: &mut Settings| {
            s.breaker = BreakerSettings {
                failures: 5,
                window_secs: 30,
                open_secs: 2,
            };
        },
        ..AppOptions::default()
    })
    .await;
    split_every_order(&mut app).await;
    let redis = app
        .deps
        .breakers
        .redis()
        .expect("Redis is configured")
        .clone();
    let metrics = app.deps.metrics.clone();

    // The carrier (and the channel) answer every request with a 5xx.
    app.sandbox.set_faults(outage());
    app.start_worker_for(&[Queue::Rate, Queue::Render, Queue::Purchase, Queue::Commit]);
    let first_open_until = Cell::new(0);
    // The worker that opens the breaker writes Redis first and its gauge
    // right after: wait for both rather than read the gauge in between.
    wait_for(
        Duration::from_secs(30),
        "the carrier's breaker opens and the gauge shows it",
        || {
            let redis = redis.clone();
            let first = &first_open_until;
            let metrics = &metrics;
            async move {
                let state = redis.state("easypost").await.unwrap();
                first.set(state.open_until);
                state.open_until > 0 && metrics.breaker_open("easypost") == 1
            }
        },
    )
    .await;
    let first_open_until = first_open_until.get();
    let calls_when_opened = carrier_calls(&app.sandbox.stats());
    assert!(
        calls_when_opened >= 5,
        "the outage was met: {calls_when_opened}"
    );

    // While it is open no call reaches the carrier; after the cool-down a
    // single probe goes out, fails, and opens it again.
    wait_for(
        Duration::from_secs(30),
        "a failed probe opens the breaker again",
        || {
            let redis = redis.clone();
            async move {
                let state = redis.state("easypost").await.unwrap();
                state.open_until > first_open_until
            }
        },
    )
    .await;
    let calls_after_probe = carrier_calls(&app.sandbox.stats());
    assert!(
        calls_after_probe <= calls_when_opened + 1,
        "only the probe reached the carrier while the breaker was open: {calls_when_opened} -> {calls_after_probe}"
    );
    assert!(metrics.deferrals(Queue::Rate, Deferral::CircuitOpen) > 0);
    assert!(metrics.breaker_rejected_calls("easypost") > 0);
    // Waiting on the breaker spent no attempt: no rate job has used more
    // than the runs it made before the breaker opened.
    let most_spent = app
        .count(
            "SELECT COALESCE(max(j.attempts - COALESCE(d.deferrals, 0)), 0)::bigint
             FROM apalis.jobs j LEFT JOIN job_deferrals d ON d.job_id = j.id
             WHERE j.job_type = 'rate'",
        )
        .await;
    assert!(
        most_spent <= 2,
        "attempts spent by a rate job: {most_spent}"
    );
    assert_eq!(app.count("SELECT count(*) FROM dead_letters").await, 0);

    // The carrier is back: the next probe closes the breaker and the
    // rescheduled jobs finish.
    app.sandbox.set_faults(Faults::default());
    app.drain(Duration::from_secs(120)).await;
    assert_every_order_shipped(&app).await;
    assert_eq!(redis.state("easypost").await.unwrap().open_until, 0);
    assert_eq!(metrics.breaker_open("easypost"), 0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limited_jobs_outlive_their_attempt_budget_and_finish_when_the_limit_lifts() {
    let mut app = spawn_app(AppOptions {
        orders: ORDERS,
        configure: |s: &mut Settings| {
            for queue in [Queue::Rate, Queue::Purchase, Queue::Commit] {
                s.queues.insert(
                    queue,
                    QueueConfig {
                        max_attempts: Some(2),
                        ..QueueConfig::default()
                    },
                );
            }
        },
        ..AppOptions::default()
    })
    .await;
    split_every_order(&mut app).await;

    // Every carrier answer is a 429 with Retry-After: 1.
    app.sandbox.set_faults(Faults::everywhere(ApiFaults {
        rate_limit_rate: 1.0,
        ..ApiFaults::default()
    }));
    app.start_worker_for(&[Queue::Rate, Queue::Render, Queue::Purchase, Queue::Commit]);
    wait_for(
        Duration::from_secs(60),
        "every rate job has run twice its attempt budget",
        || async {
            let dead = app.count("SELECT count(*) FROM dead_letters").await;
            assert_eq!(dead, 0, "a rate-limited job was dead-lettered");
            app.count("SELECT min(attempts)::bigint FROM apalis.jobs WHERE job_type = 'rate'")
                .await
                >= 4
        },
    )
    .await;
    let killed = app
        .count("SELECT count(*) FROM apalis.jobs WHERE job_type = 'rate' AND status = 'Killed'")
        .await;
    assert_eq!(killed, 0, "no rate job was given up");
    assert_eq!(app.count("SELECT count(*) FROM dead_letters").await, 0);
    let spent = app
        .count(
            "SELECT count(*) FROM apalis.jobs j LEFT JOIN job_deferrals d ON d.job_id = j.id
             WHERE j.job_type = 'rate' AND j.attempts > COALESCE(d.deferrals, 0)",
        )
        .await;
    assert_eq!(spent, 0, "every run was a deferral: the budget is intact");
    let metrics = &app.deps.metrics;
    assert!(metrics.rate_limit_waits("easypost") >= 4);
    assert!(metrics.deferrals(Queue::Rate, Deferral::RateLimited) >= 4);
    assert_eq!(metrics.breaker_open("easypost"), 0, "429s do not open it");

    app.sandbox.set_faults(Faults::default());
    app.drain(Duration::from_secs(120)).await;
    assert_every_order_shipped(&app).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_unreachable_the_breakers_run_on_local_state_and_every_order_ships() {
    let mut app = spawn_app(AppOptions {
        orders: ORDERS,
        configure: |s: &mut Settings| {
            // A port nothing listens on.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            drop(listener);
            s.redis.url = format!("redis://127.0.0.1:{port}");
            s.breaker.open_secs = 2;
        },
        ..AppOptions::default()
    })
    .await;
    split_every_order(&mut app).await;

    app.sandbox.set_faults(outage());
    app.start_worker_for(&[Queue::Rate, Queue::Render, Queue::Purchase, Queue::Commit]);
    let breakers = app.deps.breakers.clone();
    wait_for(
        Duration::from_secs(30),
        "the carrier's breaker opens in this process",
        || async { breakers.local().state("easypost").open_until > 0 },
    )
    .await;
    assert_eq!(app.deps.metrics.breaker_open("easypost"), 1);

    app.sandbox.set_faults(Faults::default());
    app.drain(Duration::from_secs(120)).await;
    assert_every_order_shipped(&app).await;
    assert_eq!(breakers.local().state("easypost").open_until, 0);
    app.shutdown().await;
}
