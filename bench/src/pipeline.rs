//! `conveyor-bench pipeline`: a backlog of orders through all seven jobs,
//! end to end, with real `conveyor-worker` processes.
//!
//! Each run gets a fresh database with the example catalog, warehouses and
//! stock (every stocked quantity multiplied so that the backlog ships, with
//! the example's gaps kept so that orders still split across warehouses),
//! and its own sandbox on a free port holding the whole backlog. The
//! scheduler runs in this process; `--workers` worker processes are started
//! together and the clock runs from their start until the last job of the
//! last order is done (both read off the database's clock). Figures come
//! from the database afterwards: per-stage latencies from the queue's own
//! timestamps, the order's from `orders.created_at` (imported) to
//! `shipped_at`; each worker's peak RSS from `/proc/<pid>/status` (VmHWM).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use conveyor_jobs::queue::Queue;
use conveyor_jobs::stats::unfinished_jobs;
use conveyor_sandbox::{ApiFaults, CarrierFaults, ChannelFaults, Faults};
use conveyor_tests::process::{Proc, sibling_binary};
use conveyor_tests::{AppOptions, TestApp, spawn_app};
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;

use crate::server;
use crate::slips;

#[derive(Args, Debug, Clone)]
pub struct PipelineArgs {
    /// Any database on the Postgres server to use; each run creates (and
    /// drops) its own database on that server.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database_url: String,
    /// Redis for the workers' circuit breakers; each run has its own key prefix.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Orders in the backlog of each run.
    #[arg(long, default_value_t = 20_000)]
    pub orders: usize,
    /// Worker processes per run, one run per number.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4])]
    pub workers: Vec<usize>,
    /// Sandbox latency profiles, one set of runs per profile: `zero`, or
    /// `realistic` (channel 200 ms, carrier 150 ms per call).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Profile::Zero, Profile::Realistic])]
    pub latency: Vec<Profile>,
    /// Job slots of each worker, shared equally by the six queues after
    /// import (rounded up); import keeps its own two.
    #[arg(long, default_value_t = 90)]
    pub concurrency: usize,
    /// Each worker's database pool (the worker's default is 20).
    #[arg(long, default_value_t = 20)]
    pub pool: u32,
    /// Seed of the sandbox's orders.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Packages rendered and merged in the document measurement (0: skip it).
    #[arg(long, default_value_t = 500)]
    pub slips: usize,
    /// Give up on a run after this many minutes.
    #[arg(long, default_value_t = 120)]
    pub timeout_mins: u64,
    /// Run even when Postgres has fsync, synchronous_commit or autovacuum
    /// off (the figures are then not comparable).
    #[arg(long)]
    pub allow_unsafe: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Zero,
    Realistic,
}

impl Profile {
    fn faults(self) -> Faults {
        let (channel_ms, carrier_ms) = match self {
            Profile::Zero => (0, 0),
            Profile::Realistic => (200, 150),
        };
        Faults {
            channel: ChannelFaults {
                api: ApiFaults {
                    latency_ms: channel_ms,
                    ..ApiFaults::default()
                },
                ..ChannelFaults::default()
            },
            carrier: CarrierFaults {
                api: ApiFaults {
                    latency_ms: carrier_ms,
                    ..ApiFaults::default()
                },
                ..CarrierFaults::default()
            },
        }
    }

    fn label(self) -> &'static str {
        match self {
            Profile::Zero => "zero latency",
            Profile::Realistic => "channel 200 ms, carrier 150 ms",
        }
    }
}

/// The queues whose slots `--concurrency` shares out: the six after import.
const SHARED: &[Queue] = Queue::PIPELINE.split_at(1).1;

/// What one run measured.
struct RunResult {
    profile: Profile,
    workers: usize,
    orders_per_hour: f64,
    peak_rss_mib: f64,
}

pub async fn run(args: PipelineArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.orders > 0, "--orders must be at least 1");
    anyhow::ensure!(
        !args.workers.is_empty() && args.workers.iter().all(|w| *w > 0),
        "--workers takes one or more numbers above 0"
    );
    anyhow::ensure!(
        !args.latency.is_empty(),
        "--latency takes zero, realistic or both"
    );
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let machine = server::describe(&args.database_url, Some(&args.redis_url)).await?;
    print!("{machine}");
    machine.ensure_comparable(args.allow_unsafe)?;
    let most = args.workers.iter().copied().max().unwrap_or(1);
    // Each worker: its pool, plus a listener connection per queue.
    let needed = most as u64 * (u64::from(args.pool) + Queue::ALL.len() as u64) + 30;
    if let Some(limit) = machine
        .postgres_setting("max_connections")
        .and_then(|v| v.parse::<u64>().ok())
    {
        anyhow::ensure!(
            limit >= needed,
            "{most} workers with pools of {} need about {needed} connections; Postgres allows {limit}. \
             Pass a smaller --pool, or raise max_connections.",
            args.pool
        );
    }
    let worker = sibling_binary(std::env::current_exe()?, "conveyor-worker");
    let per_queue = args.concurrency.div_ceil(SHARED.len());

    if args.slips > 0 {
        println!("\nslip render + merge with the label, per package (one thread):");
        let packages = args.slips;
        let measured = tokio::task::spawn_blocking(move || {
            [3, 40]
                .into_iter()
                .map(|lines| slips::measure(lines, packages))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await??;
        for times in &measured {
            times.print();
        }
    }

    println!(
        "\n{} orders per run; each worker: {} slots ({per_queue} on each of {}), import 2, pool {}",
        args.orders,
        per_queue * SHARED.len(),
        SHARED
            .iter()
            .map(|q| q.name())
            .collect::<Vec<_>>()
            .join(", "),
        args.pool
    );
    let mut results = Vec::new();
    for profile in &args.latency {
        for workers in &args.workers {
            results.push(one_run(&args, &worker, *profile, *workers, per_queue).await?);
        }
    }
    print!("\n{}", summary(&results));
    println!("load average after the runs: {}", server::load_average());
    Ok(())
}

async fn one_run(
    args: &PipelineArgs,
    worker: &Path,
    profile: Profile,
    workers: usize,
    per_queue: usize,
) -> anyhow::Result<RunResult> {
    println!(
        "\n== {}, {workers} worker{} ==",
        profile.label(),
        if workers == 1 { "" } else { "s" }
    );
    let mut app = spawn_app(AppOptions {
        orders: args.orders,
        seed: args.seed,
        server_url: Some(args.database_url.clone()),
        redis_url: Some(args.redis_url.clone()),
        // Query costs are still computed and reported; the throttle would
        // measure the shop's plan, not Conveyor (see the cost line below).
        configure_sandbox: |sandbox| sandbox.shopify_limits.enforce_throttle = false,
        ..AppOptions::default()
    })
    .await;
    app.sandbox.set_faults(profile.faults());
    let result = measure(args, &mut app, worker, profile, workers, per_queue).await;
    app.shutdown().await;
    result
}

async fn measure(
    args: &PipelineArgs,
    app: &mut TestApp,
    worker: &Path,
    profile: Profile,
    workers: usize,
    per_queue: usize,
) -> anyhow::Result<RunResult> {
    let pool = app.pool.clone();
    sqlx::query("UPDATE stock SET on_hand = on_hand * 10000")
        .execute(&pool)
        .await?;
    // The production defaults, not the test suite's quicker heartbeats.
    let defaults = conveyor_jobs::settings::Settings::load(None)?;
    app.settings.worker = defaults.worker.clone();
    app.settings.scheduler.tick_secs = defaults.scheduler.tick_secs;
    let mut config = app.config_toml();
    for queue in SHARED {
        writeln!(
            config,
            "\n[queues.{}]\nconcurrency = {per_queue}",
            queue.name()
        )?;
    }
    let config_path = std::env::temp_dir().join(format!(
        "conveyor-bench-{}.toml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&config_path, config)?;

    let started_at: f64 =
        sqlx::query_scalar("SELECT extract(epoch FROM clock_timestamp())::float8")
            .fetch_one(&pool)
            .await?;
    let pool_size = args.pool.to_string();
    // Each worker's apalis workers are named after its own prefix, which
    // is how the jobs it ran are told apart (`apalis.jobs.lock_by`).
    let mut procs: Vec<Proc> = (1..=workers)
        .map(|i| {
            Proc::start(
                &worker_prefix(i),
                worker,
                &config_path,
                &[
                    ("CONVEYOR_DATABASE__MAX_CONNECTIONS", pool_size.as_str()),
                    ("CONVEYOR_WORKER__NAME_PREFIX", worker_prefix(i).as_str()),
                    ("RUST_LOG", "warn"),
                ],
            )
        })
        .collect();
    app.start_scheduler();

    let progress = ProgressBar::new(args.orders as u64).with_style(
        ProgressStyle::with_template("  {bar:40} {pos}/{len} orders finished, {msg}")
            .expect("a valid template"),
    );
    let clock = Instant::now();
    let deadline = clock + Duration::from_secs(args.timeout_mins * 60);
    let mut peak_in_flight: BTreeMap<String, i64> = BTreeMap::new();
    let mut waits: BTreeMap<String, i64> = BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (prefix, running) in jobs_per_worker(&pool, "Running").await? {
            let peak = peak_in_flight.entry(prefix).or_default();
            *peak = (*peak).max(running);
        }
        for (wait, count) in backend_waits(&pool).await? {
            *waits.entry(wait).or_default() += count;
        }
        let finished = finished_orders(&pool).await?;
        progress.set_position(finished as u64);
        let hours = clock.elapsed().as_secs_f64() / 3600.0;
        progress.set_message(format!("{:.0} orders/h so far", finished as f64 / hours));
        // The jobs table is only scanned once every order looks finished.
        if finished >= args.orders as i64 && unfinished_jobs(&pool).await? == 0 {
            break;
        }
        if let Some(dead) = procs.iter_mut().find_map(|p| match p.child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited: {status}", p.name)),
            _ => None,
        }) {
            progress.abandon();
            anyhow::bail!("{dead}");
        }
        if Instant::now() > deadline {
            progress.abandon();
            anyhow::bail!(
                "{finished} of {} orders finished after {} minutes; {} jobs left",
                args.orders,
                args.timeout_mins,
                unfinished_jobs(&pool).await?
            );
        }
    }
    progress.finish_and_clear();

    let rss: Vec<(String, u32, f64)> = procs
        .iter()
        .map(|p| (p.name.clone(), p.pid, peak_rss_mib(p.pid)))
        .collect();
    for proc in procs.drain(..) {
        proc.sigterm_and_wait().await;
    }
    let _ = std::fs::remove_file(&config_path);

    let finished_at: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(done_at))::float8 FROM apalis.jobs WHERE job_type <> 'import'",
    )
    .fetch_one(&pool)
    .await?;
    let elapsed = (finished_at - started_at).max(1e-3);
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state::text, count(*) FROM orders GROUP BY 1 ORDER BY 1")
            .fetch_all(&pool)
            .await?;
    let orders: i64 = states.iter().map(|(_, n)| n).sum();
    let orders_per_hour = orders as f64 / elapsed * 3600.0;
    println!(
        "  {orders} orders in {elapsed:.1} s: {} orders/h  ({})",
        thousands(orders_per_hour),
        states
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    print!("{}", stage_table(&pool).await?);

    println!(
        "  postgres, active backends sampled every 0.5 s: {}",
        shares(&waits)
    );
    let done_by: BTreeMap<String, i64> =
        jobs_per_worker(&pool, "Done").await?.into_iter().collect();
    for (name, pid, mib) in &rss {
        println!(
            "  {name} (pid {pid}): peak RSS {mib:.1} MiB, peak jobs in flight {}, jobs done {}",
            peak_in_flight.get(name).copied().unwrap_or(0),
            done_by.get(name).copied().unwrap_or(0)
        );
    }
    let stats = app.sandbox.stats();
    let open_letters: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE state = 'open'")
            .fetch_one(&pool)
            .await?;
    let packages: i64 = sqlx::query_scalar("SELECT count(*) FROM packages WHERE state <> 'voided'")
        .fetch_one(&pool)
        .await?;
    println!(
        "  checks: packages {packages}, labels sold {}, bought twice {}, fulfillments {}, open dead letters {open_letters}",
        stats.labels_sold,
        stats
            .labels_per_reference
            .values()
            .filter(|n| **n > 1)
            .count(),
        stats.fulfillments_created,
    );
    let cost_per_order = stats.query_cost as f64 / orders.max(1) as f64;
    println!(
        "  channel: {:.0} query-cost points per order; a shop restoring 1,000 points/s (Shopify Plus) allows {} orders/h",
        cost_per_order,
        thousands(1_000.0 * 3600.0 / cost_per_order.max(1e-9))
    );
    Ok(RunResult {
        profile,
        workers,
        orders_per_hour,
        peak_rss_mib: rss.iter().map(|(_, _, m)| *m).fold(0.0, f64::max),
    })
}

/// Orders in a state they stay in without more work.
async fn finished_orders(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM orders
         WHERE state IN ('shipped', 'backordered', 'cancelled', 'rejected', 'on_hold')",
    )
    .fetch_one(pool)
    .await?)
}

/// What the run's active Postgres backends are waiting on now (`running`:
/// on no wait event, so on CPU or about to be), this query's own aside.
async fn backend_waits(pool: &PgPool) -> anyhow::Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT coalesce(wait_event_type || ':' || wait_event, 'running'), count(*)
         FROM pg_stat_activity
         WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()
         GROUP BY 1",
    )
    .fetch_all(pool)
    .await?)
}

/// The largest shares of `counts`, as `name 42%`, the rest summed up.
fn shares(counts: &BTreeMap<String, i64>) -> String {
    let total: i64 = counts.values().sum();
    if total == 0 {
        return "none seen".into();
    }
    let mut sorted: Vec<(&String, &i64)> = counts.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut parts: Vec<String> = sorted
        .iter()
        .take(6)
        .map(|(name, n)| format!("{name} {:.0}%", **n as f64 * 100.0 / total as f64))
        .collect();
    let rest: i64 = sorted.iter().skip(6).map(|(_, n)| **n).sum();
    if rest > 0 {
        parts.push(format!("other {:.0}%", rest as f64 * 100.0 / total as f64));
    }
    parts.join(", ")
}

/// Worker `i`'s name prefix: a single word, so that it is the part of
/// every apalis worker name of that process before the first `-`.
fn worker_prefix(i: usize) -> String {
    format!("worker{i}")
}

/// Jobs in `status` per worker process, by its name prefix.
async fn jobs_per_worker(pool: &PgPool, status: &str) -> anyhow::Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT split_part(lock_by, '-', 1), count(*) FROM apalis.jobs
         WHERE status = $1 AND lock_by IS NOT NULL GROUP BY 1",
    )
    .bind(status)
    .fetch_all(pool)
    .await?)
}

/// Per queue: how many jobs ran, and p50/p95/p99 of the time from being
/// enqueued (or due, for a retry) to done, and from being claimed to done.
async fn stage_table(pool: &PgPool) -> anyhow::Result<String> {
    let rows: Vec<(String, i64, Vec<f64>, Vec<f64>)> = sqlx::query_as(
        "SELECT job_type, count(*),
                percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
                    (ORDER BY extract(epoch FROM done_at - run_at)::float8),
                percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
                    (ORDER BY extract(epoch FROM done_at - lock_at)::float8)
         FROM apalis.jobs WHERE status = 'Done' AND done_at IS NOT NULL AND lock_at IS NOT NULL
         GROUP BY job_type",
    )
    .fetch_all(pool)
    .await?;
    let order: Option<Vec<f64>> = sqlx::query_scalar(
        "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
                    (ORDER BY extract(epoch FROM shipped_at - created_at)::float8)
         FROM orders WHERE state = 'shipped'",
    )
    .fetch_one(pool)
    .await?;
    let mut out = String::new();
    writeln!(
        out,
        "  {:<9} {:>7}  {:>26}  {:>26}",
        "stage", "jobs", "queued→done p50/p95/p99 s", "claimed→done p50/p95/p99 s"
    )?;
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{s:.3}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for queue in Queue::ALL {
        if let Some((_, count, queued, claimed)) = rows.iter().find(|r| r.0 == queue.name()) {
            writeln!(
                out,
                "  {:<9} {:>7}  {:>26}  {:>26}",
                queue.name(),
                count,
                fmt(queued),
                fmt(claimed)
            )?;
        }
    }
    if let Some(order) = order {
        writeln!(
            out,
            "  {:<9} {:>7}  {:>26}  (imported → shipped)",
            "order",
            "",
            fmt(&order)
        )?;
    }
    Ok(out)
}

/// VmHWM: the most resident memory the process has had.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let kb = line.strip_prefix("VmHWM:")?;
                kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok()
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn summary(results: &[RunResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<32} {:>7} {:>12} {:>14} {:>18}",
        "latency", "workers", "orders/h", "vs 1 worker", "peak RSS (max)"
    );
    for r in results {
        let one = results
            .iter()
            .find(|o| o.profile == r.profile && o.workers == 1)
            .map(|o| format!("{:.2}x", r.orders_per_hour / o.orders_per_hour))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<32} {:>7} {:>12} {:>14} {:>14.1} MiB",
            r.profile.label(),
            r.workers,
            thousands(r.orders_per_hour),
            one,
            r.peak_rss_mib
        );
    }
    out
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_show_the_largest_first_and_sum_the_rest() {
        let counts: BTreeMap<String, i64> = [
            ("running", 50),
            ("Lock:tuple", 20),
            ("a", 5),
            ("b", 5),
            ("c", 5),
            ("d", 5),
            ("e", 5),
            ("f", 5),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(
            shares(&counts),
            "running 50%, Lock:tuple 20%, a 5%, b 5%, c 5%, d 5%, other 10%"
        );
        assert_eq!(shares(&BTreeMap::new()), "none seen");
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(123_456_789.0), "123,456,789");
    }
}
