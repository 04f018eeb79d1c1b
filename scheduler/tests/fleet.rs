//! A fleet as separate processes: three `conveyor-worker`s and two
//! `conveyor-scheduler`s against one Postgres. One scheduler leads; it is
//! killed with SIGKILL and the other takes over within 10 s; a backlog plus
//! the orders created after the kill all go through with one import job per
//! (channel, tick), one label per package, every line fulfilled once, and
//! work spread over all three workers.
//!
//! The worker binary is found next to this package's `conveyor-scheduler`
//! (built first when a narrower `cargo test` did not build it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use conveyor_jobs::import::tick_of;
use conveyor_jobs::leader::current_leader;
use conveyor_tests::process::{Proc, Procs, metric, sibling_binary};
use conveyor_tests::{AppOptions, TestApp, spawn_app};
use tokio::time::Instant;

/// Orders waiting on the channel when the fleet starts.
const BACKLOG: usize = 420;
/// Orders created on the channel right after the leader is killed: only the
/// new leader's imports can bring them in.
const AFTER_KILL: usize = 100;
const WORKERS: usize = 3;

/// Polls `check` every 50 ms until it returns `Some`, for at most `limit`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The scheduler among `schedulers` whose session holds the leadership,
/// from the election connection's `application_name`
/// (`conveyor-scheduler-HOST-PID-START`).
async fn leader_index(app: &TestApp, schedulers: &[&Proc]) -> Option<usize> {
    let name = current_leader(&app.pool).await.unwrap()?;
    let pid: u32 = name.rsplit('-').nth(1)?.parse().ok()?;
    schedulers.iter().position(|s| s.pid == pid)
}

async fn import_ticks(app: &TestApp) -> Vec<i64> {
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT idempotency_key FROM apalis.jobs WHERE job_type = 'import' ORDER BY idempotency_key",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut ticks: Vec<i64> = keys
        .iter()
        .map(|k| {
            let (channel, tick) = k.split_once(':').expect("import key channel:tick");
            assert_eq!(channel, conveyor_tests::CHANNEL);
            tick.parse().expect("a tick number")
        })
        .collect();
    ticks.sort_unstable();
    ticks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_survives_its_leading_scheduler_being_killed() {
    let started = Instant::now();
    let worker_bin = sibling_binary(env!("CARGO_BIN_EXE_conveyor-scheduler"), "conveyor-worker");
    let scheduler_bin = PathBuf::from(env!("CARGO_BIN_EXE_conveyor-scheduler"));
    let app = spawn_app(AppOptions {
        orders: BACKLOG,
        ..AppOptions::default()
    })
    .await;
    // Stock for every order, so that all of them go through all seven jobs.
    sqlx::query("UPDATE stock SET on_hand = on_hand * 10")
        .execute(&app.pool)
        .await
        .unwrap();
    let tick_secs = app.settings.scheduler.tick_secs;
    let config = std::env::temp_dir().join(format!("conveyor-fleet-{}.toml", std::process::id()));
    std::fs::write(&config, app.config_toml()).unwrap();
    let mut fleet = Procs::default();

    // Leadership changes, the /metrics address and every tick fired.
    let scheduler_log = "warn,conveyor_jobs::leader=info,conveyor_jobs::ops_http=info,conveyor_jobs::scheduler=debug";
    for i in 0..WORKERS {
        let prefix = format!("fleet{i}");
        fleet.0.push(Proc::start(
            &format!("worker {i}"),
            &worker_bin,
            &config,
            &[
                ("RUST_LOG", "warn"),
                ("CONVEYOR_WORKER__NAME_PREFIX", prefix.as_str()),
                ("CONVEYOR_DATABASE__MAX_CONNECTIONS", "10"),
            ],
        ));
    }
    for i in 0..2 {
        fleet.0.push(Proc::start(
            &format!("scheduler {i}"),
            &scheduler_bin,
            &config,
            &[("RUST_LOG", scheduler_log)],
        ));
    }

    // One scheduler leads; the leadership shows in pg_locks and on both
    // schedulers' /metrics.
    let (first, second) = {
        let schedulers = [&fleet.0[WORKERS], &fleet.0[WORKERS + 1]];
        let leader = wait_for("a scheduler leads", Duration::from_secs(30), || {
            leader_index(&app, &schedulers)
        })
        .await;
        (WORKERS + leader, WORKERS + 1 - leader)
    };
    for (index, expected) in [(first, 1), (second, 0)] {
        let proc = &fleet.0[index];
        let addr = wait_for(
            "the scheduler's /metrics address",
            Duration::from_secs(10),
            || async { proc.listen_addr() },
        )
        .await;
        wait_for(
            &format!("{}'s conveyor_scheduler_leader = {expected}", proc.name),
            Duration::from_secs(10),
            || async {
                (metric(&addr, "conveyor_scheduler_leader").await == Some(f64::from(expected)))
                    .then_some(())
            },
        )
        .await;
    }
    eprintln!(
        "{} leads after {:?}",
        fleet.0[first].name,
        started.elapsed()
    );

    // Let the pipeline get going under the first leader: the backlog
    // imported and labels being bought.
    wait_for(
        "the backlog imported and labels bought",
        Duration::from_secs(120),
        || async {
            let imported = app.count("SELECT count(*) FROM orders").await;
            let labels = app.count("SELECT count(*) FROM labels").await;
            (imported >= BACKLOG as i64 && labels >= 20).then_some(())
        },
    )
    .await;
    let last_backlog_order = app.count("SELECT max(id) FROM orders").await;

    // Kill the leader; new orders arrive that only the new leader imports.
    let killed_at = Instant::now();
    fleet.0[first].kill().await;
    // Any import of a later tick comes from the new leader.
    let kill_tick = tick_of(chrono::Utc::now(), tick_secs);
    app.sandbox.add_orders(AFTER_KILL);
    let survivor_pid = fleet.0[second].pid;
    let leads_after = wait_for(
        "the surviving scheduler leads",
        Duration::from_secs(10),
        || async {
            let name = current_leader(&app.pool).await.unwrap()?;
            (name.rsplit('-').nth(1)? == survivor_pid.to_string()).then(|| killed_at.elapsed())
        },
    )
    .await;
    let imports_after = wait_for(
        "an import enqueued by the new leader",
        Duration::from_secs(10),
        || async {
            let ticks = import_ticks(&app).await;
            ticks
                .iter()
                .any(|t| *t > kill_tick)
                .then(|| killed_at.elapsed())
        },
    )
    .await;
    let survivor_addr = fleet.0[second].listen_addr().expect("listening");
    assert_eq!(
        metric(&survivor_addr, "conveyor_scheduler_leader").await,
        Some(1.0),
        "the survivor's gauge shows it leads"
    );
    eprintln!(
        "failover: the survivor leads {leads_after:?} after the kill; its first import is enqueued {imports_after:?} after it"
    );
    assert!(leads_after < Duration::from_secs(10));
    assert!(imports_after < Duration::from_secs(10));

    // Followers never enqueue: each scheduler logged its ticks only after
    // it became the leader.
    for index in [first, second] {
        let proc = &fleet.0[index];
        let became = proc.first_line("became the leader");
        let first_tick = proc.first_line("scheduler tick");
        assert!(
            became.is_some() && first_tick.is_some() && became < first_tick,
            "{} fired only as the leader (became leader at line {became:?}, first tick at {first_tick:?})",
            proc.name
        );
    }

    app.drain(Duration::from_secs(300)).await;
    eprintln!("drained after {:?}", started.elapsed());

    // No import job twice per (channel, tick): the keys are unique, and the
    // ticks run on without repeats, with a gap only around the failover.
    let duplicates: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT job_type, idempotency_key, count(*) FROM apalis.jobs
         GROUP BY job_type, idempotency_key HAVING count(*) > 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(duplicates.is_empty(), "duplicate jobs: {duplicates:?}");
    let ticks = import_ticks(&app).await;
    let distinct: BTreeSet<i64> = ticks.iter().copied().collect();
    assert_eq!(distinct.len(), ticks.len(), "no tick imported twice");
    let (low, high) = (ticks[0], ticks[ticks.len() - 1]);
    let missing = (high - low + 1) as usize - ticks.len();
    let failover_ticks = (imports_after.as_secs() / tick_secs.max(1) + 1) as usize;
    assert!(
        missing <= failover_ticks + ticks.len() / 20 + 2,
        "ticks {low}..={high}: {missing} missing, {failover_ticks} expected around the failover"
    );
    assert!(
        ticks.iter().any(|t| *t <= kill_tick) && ticks.iter().any(|t| *t > kill_tick),
        "both leaders fired"
    );

    // Every order imported once and shipped, those created after the kill
    // included: the new leader's imports brought them in.
    let created = app.sandbox.stats().orders_created as i64;
    assert_eq!(created, (BACKLOG + AFTER_KILL) as i64);
    let states: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT state::text, count(*) FROM orders GROUP BY state",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    eprintln!("orders by state: {states:?}");
    assert_eq!(states.get("shipped"), Some(&created), "{states:?}");
    let after_kill: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE state = 'shipped' AND id > $1")
            .bind(last_backlog_order)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        after_kill, AFTER_KILL as i64,
        "the orders created after the kill shipped"
    );
    assert_eq!(app.count("SELECT count(*) FROM dead_letters").await, 0);

    // One label per package; every line of a shipped order fulfilled once.
    let stats = app.sandbox.stats();
    let packages = app.count("SELECT count(*) FROM packages").await;
    assert_eq!(stats.labels_sold as i64, packages, "one label per package");
    assert_eq!(stats.labels_per_reference.len() as i64, packages);
    assert!(stats.labels_per_reference.values().all(|n| *n == 1));
    assert!(stats.labels_per_shipment.values().all(|n| *n == 1));
    assert_eq!(stats.duplicate_purchase_attempts, 0);
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

    // Work spread over the three workers: each ran a real share of the jobs,
    // under names carrying its pid.
    let by_worker: Vec<(String, i64)> = sqlx::query_as(
        "SELECT split_part(lock_by, '-', 1), count(*) FROM apalis.jobs
         WHERE status = 'Done' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let done: i64 = by_worker.iter().map(|(_, n)| n).sum();
    eprintln!("jobs done by worker: {by_worker:?} of {done}");
    assert_eq!(by_worker.len(), WORKERS, "{by_worker:?}");
    for (i, proc) in fleet.0.iter().take(WORKERS).enumerate() {
        let prefix = format!("fleet{i}");
        let n = by_worker
            .iter()
            .find(|(p, _)| *p == prefix)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        assert!(
            n * 10 >= done,
            "{} ran {n} of {done} jobs: {by_worker:?}",
            proc.name
        );
        let named: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM apalis.jobs WHERE status = 'Done' AND lock_by LIKE $1 || '-%-' || $2 || '-%'",
        )
        .bind(&prefix)
        .bind(proc.pid.to_string())
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(named, n, "{}'s worker names carry its pid", proc.name);
    }

    // SIGTERM: every live process exits 0.
    let procs = std::mem::take(&mut fleet.0);
    for proc in procs.into_iter().filter(|p| !p.killed) {
        proc.sigterm_and_wait().await;
    }
    let _ = std::fs::remove_file(&config);
    app.shutdown().await;
    eprintln!("fleet test took {:?}", started.elapsed());
}
