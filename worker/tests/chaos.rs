//! Chaos: 500 orders through three real `conveyor-worker` processes while
//! the channel and the carrier misbehave, workers are SIGKILLed at random
//! every few seconds and restarted, and PostgreSQL and Redis (servers of the
//! test's own) are each restarted once. Then the faults stop and
//! `conveyor dlq retry --all` replays whatever was dead-lettered.
//!
//! At the end every order is shipped, waiting on stock or rejected with its
//! reason; no label was bought twice; stock balances exactly; no job is left
//! running. The test prints the figures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use conveyor_jobs::settings::{QueueConfig, Settings};
use conveyor_sandbox::{ApiFaults, CarrierFaults, ChannelFaults, Faults};
use conveyor_tests::process::{Proc, Procs, sibling_binary};
use conveyor_tests::servers::{PgServer, RedisServer};
use conveyor_tests::{AppOptions, TestApp, spawn_app};
use rand::Rng;
use tokio::process::Command;

const ORDERS: usize = 500;
/// How long workers are killed at random.
const CHAOS: Duration = Duration::from_secs(45);

fn chaos_faults() -> Faults {
    Faults {
        channel: ChannelFaults {
            api: ApiFaults {
                server_error_rate: 0.10,
                rate_limit_rate: 0.05,
                hang_rate: 0.02,
                // Longer than the channel client's timeout (below).
                hang_ms: 4_000,
                ..ApiFaults::default()
            },
            malformed_order_rate: 0.01,
            ..ChannelFaults::default()
        },
        carrier: CarrierFaults {
            api: ApiFaults {
                server_error_rate: 0.10,
                hang_ms: 4_000,
                ..ApiFaults::default()
            },
            purchase_no_answer_rate: 0.02,
        },
    }
}

fn configure(s: &mut Settings) {
    s.channels[0].timeout_ms = 2_500;
    s.carrier.timeout_ms = 2_500;
    s.worker.heartbeat_secs = 1;
    s.worker.missed_heartbeats = 3;
    // Retries come back within seconds, so the run is bounded; the budget
    // is the default one.
    for queue in conveyor_jobs::queue::Queue::ALL {
        s.queues.insert(
            queue,
            QueueConfig {
                backoff_base_ms: Some(100),
                backoff_cap_secs: Some(3),
                ..QueueConfig::default()
            },
        );
    }
}

struct Fleet {
    config: PathBuf,
    workers: Procs,
    kills: usize,
    restarts: usize,
}

impl Fleet {
    fn spawn_worker(&self, n: usize) -> Proc {
        let prefix = format!("chaos{n}");
        Proc::start(
            &format!("worker {n}"),
            Path::new(env!("CARGO_BIN_EXE_conveyor-worker")),
            &self.config,
            &[
                ("CONVEYOR_WORKER__NAME_PREFIX", prefix.as_str()),
                ("RUST_LOG", "error"),
            ],
        )
    }

    async fn kill(&mut self, n: usize) {
        self.workers.0[n].kill().await;
        self.kills += 1;
        self.workers.0[n] = self.spawn_worker(n);
    }

    /// Starts again any worker that exited on its own.
    fn revive(&mut self) {
        for n in 0..self.workers.0.len() {
            if let Ok(Some(_)) = self.workers.0[n].child.try_wait() {
                self.restarts += 1;
                self.workers.0[n] = self.spawn_worker(n);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Figures {
    orders: BTreeMap<String, i64>,
    dead_letters: BTreeMap<String, i64>,
    labels_sold: u64,
    labels_bought_twice: usize,
    duplicate_purchase_attempts: u64,
    fulfillments_pushed: u64,
    fulfillments_recorded: i64,
    lines_over_fulfilled: usize,
    oversold_rows: i64,
    unbalanced_rows: i64,
    jobs_running: i64,
    orders_unaccounted: i64,
}

async fn figures(app: &TestApp, initial: &BTreeMap<(String, String), i64>) -> Figures {
    let mut f = Figures::default();
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT state::text, count(*) FROM orders GROUP BY 1")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    f.orders.extend(rows);
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT queue || ' ' || error_class, count(*) FROM dead_letters WHERE state = 'open' GROUP BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    f.dead_letters.extend(rows);
    let stats = app.sandbox.stats();
    f.labels_sold = stats.labels_sold;
    f.labels_bought_twice = stats
        .labels_per_reference
        .values()
        .filter(|n| **n > 1)
        .count();
    f.duplicate_purchase_attempts = stats.duplicate_purchase_attempts;
    f.fulfillments_pushed = stats.fulfillments_created;
    f.fulfillments_recorded = app.count("SELECT count(*) FROM fulfillments").await;
    f.lines_over_fulfilled = stats
        .fulfilled_per_line
        .iter()
        .filter(|(line, n)| **n > stats.ordered_per_line.get(*line).copied().unwrap_or(0))
        .count();
    f.oversold_rows = app
        .count("SELECT count(*) FROM stock WHERE reserved > on_hand OR on_hand < 0")
        .await;
    // Stock balances: on hand = loaded - committed; reserved = still held.
    let rows: Vec<(String, String, i32, i32, i64, i64)> = sqlx::query_as(
        "SELECT s.sku, s.warehouse, s.on_hand, s.reserved,
                COALESCE((SELECT sum(quantity) FROM reservations r WHERE r.sku = s.sku AND r.warehouse = s.warehouse AND r.state = 'committed'), 0)::bigint,
                COALESCE((SELECT sum(quantity) FROM reservations r WHERE r.sku = s.sku AND r.warehouse = s.warehouse AND r.state = 'held'), 0)::bigint
         FROM stock s",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    f.unbalanced_rows = rows
        .iter()
        .filter(|(sku, wh, on_hand, reserved, committed, held)| {
            let loaded = initial
                .get(&(sku.clone(), wh.clone()))
                .copied()
                .unwrap_or(0);
            i64::from(*on_hand) != loaded - committed || i64::from(*reserved) != *held
        })
        .count() as i64;
    // The scheduler keeps enqueueing an import every tick, which finds
    // nothing new; any other job still claimed, or an import claimed for
    // longer than one can take, is one left behind.
    f.jobs_running = app
        .count(
            "SELECT count(*) FROM apalis.jobs WHERE status IN ('Running', 'Queued')
               AND (job_type <> 'import' OR lock_at < now() - interval '30 seconds')",
        )
        .await;
    // Every order ends shipped, waiting on stock, rejected with its reason,
    // or with an open dead letter that says why.
    f.orders_unaccounted = app
        .count(
            "SELECT count(*) FROM orders o
             WHERE o.state NOT IN ('shipped', 'backordered', 'rejected')
               AND NOT EXISTS (
                   SELECT 1 FROM dead_letters d
                   WHERE d.state = 'open' AND d.order_id = o.id)",
        )
        .await;
    f
}

fn print(label: &str, f: &Figures, fleet: &Fleet, started: Instant) {
    println!(
        "chaos [{label}] after {:.0?}: orders {:?}; open dead letters {:?}; labels sold {}, bought twice {}, second buys refused {}; fulfillments pushed {}, recorded {}, lines over-fulfilled {}; oversold stock rows {}, unbalanced stock rows {}; jobs running {}; orders unaccounted {}; workers killed {}, exited and restarted {}",
        started.elapsed(),
        f.orders,
        f.dead_letters,
        f.labels_sold,
        f.labels_bought_twice,
        f.duplicate_purchase_attempts,
        f.fulfillments_pushed,
        f.fulfillments_recorded,
        f.lines_over_fulfilled,
        f.oversold_rows,
        f.unbalanced_rows,
        f.jobs_running,
        f.orders_unaccounted,
        fleet.kills,
        fleet.restarts,
    );
}

fn assert_invariants(f: &Figures, app_labels: i64) {
    assert_eq!(f.labels_bought_twice, 0, "no label bought twice");
    assert_eq!(
        f.labels_sold as i64, app_labels,
        "every label sold is one we hold"
    );
    assert_eq!(
        f.lines_over_fulfilled, 0,
        "no line fulfilled beyond its quantity"
    );
    assert_eq!(
        f.fulfillments_pushed as i64, f.fulfillments_recorded,
        "one fulfillment pushed per fulfillment recorded"
    );
    assert_eq!(f.oversold_rows, 0, "no unit sold twice");
    assert_eq!(f.unbalanced_rows, 0, "stock balances exactly");
    assert_eq!(f.jobs_running, 0, "no job left running");
    assert_eq!(f.orders_unaccounted, 0, "no order lost");
}

/// Waits until no job is waiting or running (three polls in a row) while
/// keeping the workers alive; panics after `limit`.
async fn settle(app: &TestApp, fleet: &mut Fleet, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut quiet = 0;
    while quiet < 3 {
        fleet.revive();
        let created = app.sandbox.stats().orders_created as i64;
        let imported = app.count("SELECT count(*) FROM orders").await;
        // The scheduler enqueues an import every tick for as long as it
        // runs; an import younger than half a minute is that, not work left.
        let unfinished = app
            .count(
                "SELECT count(*) FROM apalis.jobs
                 WHERE status NOT IN ('Done', 'Killed')
                   AND NOT (status = 'Failed' AND attempts >= max_attempts)
                   AND NOT (job_type = 'import' AND run_at > now() - interval '30 seconds')",
            )
            .await;
        quiet = if imported >= created && unfinished == 0 {
            quiet + 1
        } else {
            0
        };
        if Instant::now() >= deadline {
            let left: Vec<(String, String, i32, String, Option<String>)> = sqlx::query_as(
                "SELECT job_type, status, attempts, (now() - run_at)::text, last_result::text
                 FROM apalis.jobs WHERE status NOT IN ('Done', 'Killed') LIMIT 20",
            )
            .fetch_all(&app.pool)
            .await
            .unwrap_or_default();
            panic!(
                "not quiet after {limit:?}: {imported}/{created} imported, {unfinished} jobs unfinished: {left:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleet_loses_nothing_and_buys_nothing_twice_under_chaos() {
    let started = Instant::now();
    let pg = PgServer::start();
    let mut redis = RedisServer::start();
    let mut app = spawn_app(AppOptions {
        orders: ORDERS,
        seed: 4242,
        configure,
        // Malformed orders are made when orders are created: the faults
        // are in place from the start.
        configure_sandbox: |c| c.faults = chaos_faults(),
        server_url: Some(pg.url()),
        redis_url: Some(redis.url()),
        ..AppOptions::default()
    })
    .await;
    let initial = app.on_hand().await;
    let config = std::env::temp_dir().join(format!("conveyor-chaos-{}.toml", std::process::id()));
    std::fs::write(&config, app.config_toml()).unwrap();
    let mut fleet = Fleet {
        config: config.clone(),
        workers: Procs::default(),
        kills: 0,
        restarts: 0,
    };
    fleet.workers = Procs((0..3).map(|n| fleet.spawn_worker(n)).collect());
    app.start_scheduler();

    // Kill a random worker every 2-4 s; restart Postgres once and Redis once.
    let chaos_started = Instant::now();
    let (mut pg_restarted, mut redis_restarted) = (false, false);
    while chaos_started.elapsed() < CHAOS {
        let wait = rand::rng().random_range(2_000..4_000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let victim = rand::rng().random_range(0..fleet.workers.0.len());
        fleet.kill(victim).await;
        fleet.revive();
        if !pg_restarted && chaos_started.elapsed() > Duration::from_secs(12) {
            tokio::task::block_in_place(|| pg.restart());
            pg_restarted = true;
            println!("chaos: PostgreSQL restarted at {:.0?}", started.elapsed());
        }
        if !redis_restarted && chaos_started.elapsed() > Duration::from_secs(24) {
            tokio::task::block_in_place(|| redis.restart(Duration::from_secs(2)));
            redis_restarted = true;
            println!("chaos: Redis restarted at {:.0?}", started.elapsed());
        }
    }
    assert!(pg_restarted && redis_restarted);
    // The killing stops; the faults go on until the fleet has done what it can.
    settle(&app, &mut fleet, Duration::from_secs(300)).await;
    let first = figures(&app, &initial).await;
    print("faults on", &first, &fleet, started);
    let injected = app.sandbox.stats();
    println!(
        "chaos: faults injected: {} in all; channel {:?}; carrier {:?}",
        injected.injected_faults, injected.faults.channel, injected.faults.carrier
    );
    let labels = app
        .count("SELECT count(*) FROM labels WHERE state = 'purchased'")
        .await;
    assert_invariants(&first, labels);
    let shipped = first.orders.get("shipped").copied().unwrap_or(0);
    assert!(shipped > 0, "orders ship through the chaos");

    // The faults stop; ops replay every dead letter.
    app.sandbox.set_faults(Faults::default());
    let out = Command::new(sibling_binary(
        env!("CARGO_BIN_EXE_conveyor-worker"),
        "conveyor",
    ))
    .env("CONVEYOR_CONFIG", &config)
    .env("RUST_LOG", "warn")
    .args(["dlq", "retry", "--all", "--reason", "chaos over"])
    .output()
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let dead_before: i64 = first.dead_letters.values().sum();
    if dead_before > 0 {
        assert!(
            out.status.success(),
            "dlq retry --all: {said} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains(&format!("retried {dead_before}")), "{said}");
    }
    println!("chaos: conveyor dlq retry --all: {}", said.trim());
    settle(&app, &mut fleet, Duration::from_secs(180)).await;
    let last = figures(&app, &initial).await;
    print("after dlq retry --all", &last, &fleet, started);
    let labels = app
        .count("SELECT count(*) FROM labels WHERE state = 'purchased'")
        .await;
    assert_invariants(&last, labels);
    assert!(
        last.dead_letters.is_empty(),
        "every replayed job went through: {:?}",
        last.dead_letters
    );
    let settled: i64 = ["shipped", "backordered", "rejected"]
        .iter()
        .map(|s| last.orders.get(*s).copied().unwrap_or(0))
        .sum();
    assert_eq!(
        settled,
        last.orders.values().sum::<i64>(),
        "{:?}",
        last.orders
    );
    assert!(
        last.orders.get("rejected").copied().unwrap_or(0) > 0,
        "malformed orders were sent and rejected"
    );
    let fulfilled_wrong = app
        .count(
            "SELECT count(*) FROM order_lines l JOIN orders o ON o.id = l.order_id
             WHERE o.state = 'shipped' AND l.quantity <> (
                 SELECT COALESCE(sum(pi.quantity), 0) FROM package_items pi WHERE pi.order_line_id = l.id)",
        )
        .await;
    assert_eq!(fulfilled_wrong, 0);

    for mut w in std::mem::take(&mut fleet.workers.0) {
        w.kill().await;
    }
    let _ = std::fs::remove_file(&config);
    app.shutdown().await;
    drop(redis);
    drop(pg);
}
