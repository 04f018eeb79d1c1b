//! Conveyor's side: jobs enqueued through `conveyor_jobs::queue::enqueue`,
//! drained by a worker process built the way `conveyor_jobs::runner` builds
//! one (apalis-postgres storage, LISTEN/NOTIFY plus an interval, raw
//! payloads, a concurrency limit, panics caught), with a handler that does
//! nothing, so that only the queue is measured.

use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant};

use apalis::layers::WorkerBuilderExt;
use apalis::prelude::WorkerBuilder;
use apalis_core::backend::ext::BackendExt;
use apalis_core::backend::ext::poll_strategy::Strategy;
use apalis_core::error::BoxDynError;
use apalis_postgres::{Config, PostgresStorage, Pubsub};
use clap::Args;
use conveyor_jobs::queue::{NewJob, Queue, enqueue};
use conveyor_jobs::raw::{RawPayload, RawPayloads};
use sqlx::PgPool;

use crate::QueueArgs;
use crate::drain::WorkerProcess;
use crate::report::SystemResult;
use crate::server;

/// The queue the benchmark's jobs go on, in a scratch database of their own.
const QUEUE: Queue = Queue::Import;

/// How the worker uses apalis-postgres: the knobs this benchmark tunes.
#[derive(Args, Debug, Clone)]
pub struct Tuning {
    /// Jobs apalis-postgres fetches (and locks) per query; its
    /// acknowledgements are batched to the same size. 1000 drained fastest
    /// of 20 to 2000 (docs/BENCHMARKS.md).
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Poll interval on top of LISTEN/NOTIFY, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub poll_interval_ms: u64,
    /// Connections in the worker process's pool.
    #[arg(long, default_value_t = 4)]
    pub pool_size: u32,
    /// apalis workers on the queue inside the one worker process; the
    /// concurrency is split between them.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

impl fmt::Display for Tuning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "batch size {}, poll interval {} ms, pool {} connections, {} apalis worker(s) per process",
            self.batch_size, self.poll_interval_ms, self.pool_size, self.workers
        )
    }
}

impl Tuning {
    fn to_args(&self) -> Vec<String> {
        vec![
            "--batch-size".into(),
            self.batch_size.to_string(),
            "--poll-interval-ms".into(),
            self.poll_interval_ms.to_string(),
            "--pool-size".into(),
            self.pool_size.to_string(),
            "--workers".into(),
            self.workers.to_string(),
        ]
    }
}

#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    #[arg(long)]
    pub database_url: String,
    #[arg(long)]
    pub concurrency: usize,
    #[command(flatten)]
    pub tuning: Tuning,
}

/// The worker process: drains the queue until it is killed.
pub async fn work(args: WorkerArgs) -> anyhow::Result<()> {
    println!("ready");
    std::io::stdout().flush()?;
    // Silent unless asked: `RUST_LOG=sqlx::query=trace` shows every
    // statement the queue runs, with its time, to see where a drain goes.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let t = &args.tuning;
    anyhow::ensure!(t.workers > 0, "--workers must be at least 1");
    anyhow::ensure!(t.batch_size > 0, "--batch-size must be at least 1");
    let pool = conveyor_jobs::db::connect(&args.database_url, t.pool_size.max(2)).await?;
    let per_worker = args.concurrency.div_ceil(t.workers).max(1);
    let mut running = Vec::new();
    for n in 0..t.workers {
        let config = Config::default()
            .queue(QUEUE.name())
            .batch_size(t.batch_size)
            .heartbeat_interval(Duration::from_secs(5))
            .missed_heartbeats(3);
        let strategy = Strategy::new()
            .stream(Pubsub::new(pool.clone(), QUEUE.name().to_string()))
            .interval(Duration::from_millis(t.poll_interval_ms.max(1)));
        let backend = RawPayloads::new(
            PostgresStorage::<serde_json::Value>::new(&pool)
                .with_config(config)
                .poll_with_strategy(strategy),
        );
        let worker = WorkerBuilder::new(format!("conveyor-bench-{}-{n}", std::process::id()))
            .backend(backend)
            .concurrency(per_worker)
            .catch_panic()
            .build(nothing);
        running.push(worker.run());
    }
    futures::future::try_join_all(running).await?;
    Ok(())
}

async fn nothing(_payload: RawPayload) -> Result<(), BoxDynError> {
    Ok(())
}

/// Every run at every concurrency, each on a fresh database.
pub async fn measure(args: &QueueArgs) -> anyhow::Result<SystemResult> {
    let mut result = SystemResult::new("Conveyor (apalis-postgres 1.0)");
    for &concurrency in &args.concurrency {
        for _ in 0..args.runs {
            let url =
                conveyor_jobs::db::fresh_database(&args.database_url, "conveyor_bench").await?;
            let run = one_run(args, &url, concurrency).await;
            server::drop_database(&args.database_url, &url).await?;
            let (enqueue, drain) = run?;
            result.record(concurrency, args.jobs, enqueue, drain);
        }
    }
    Ok(result)
}

async fn one_run(
    args: &QueueArgs,
    url: &str,
    concurrency: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let pool = conveyor_jobs::db::connect(url, 2).await?;
    let enqueue = enqueue_all(&pool, args.jobs, args.enqueue_batch).await?;
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command
        .arg("queue-worker")
        .arg("--database-url")
        .arg(url)
        .arg("--concurrency")
        .arg(concurrency.to_string())
        .args(args.tuning.to_args());
    let mut worker = WorkerProcess::start(command).await?;
    let drained = worker
        .wait_until_done(args.jobs, drain_limit(args.jobs), || async {
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status = 'Done'",
            )
            .bind(QUEUE.name())
            .fetch_one(&pool)
            .await?;
            Ok(done as usize)
        })
        .await;
    worker.stop().await;
    pool.close().await;
    Ok((enqueue, drained?))
}

/// Enqueues `jobs` no-op jobs, `batch` per statement, each with its own
/// idempotency key, and returns how long that took.
async fn enqueue_all(pool: &PgPool, jobs: usize, batch: usize) -> anyhow::Result<Duration> {
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut next = 0;
    while next < jobs {
        let end = (next + batch).min(jobs);
        let chunk: Vec<NewJob> = (next..end)
            .map(|n| NewJob::new(QUEUE, format!("bench:{n}"), &serde_json::json!({ "n": n })))
            .collect();
        let wake = enqueue(&mut conn, &chunk).await?;
        anyhow::ensure!(
            wake.inserted() as usize == chunk.len(),
            "only {} of {} jobs were enqueued",
            wake.inserted(),
            chunk.len()
        );
        wake.send(pool).await;
        next = end;
    }
    Ok(started.elapsed())
}

/// Generous: a drain slower than 100 jobs/s is a broken run, not a figure.
pub fn drain_limit(jobs: usize) -> Duration {
    Duration::from_secs(60).max(Duration::from_millis(jobs as u64 * 10))
}
