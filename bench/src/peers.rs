//! The peers, run under the same protocol as Conveyor: graphile-worker on
//! the same Postgres (a fresh database per run) and BullMQ on Redis (a fresh
//! key prefix per run). Their npm packages are installed, at pinned
//! versions, into a scratch folder that is never committed; the small
//! runners in `bench/js/` are written next to them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::QueueArgs;
use crate::conveyor::drain_limit;
use crate::drain::WorkerProcess;
use crate::report::SystemResult;
use crate::server;

pub const GRAPHILE_WORKER: &str = "0.17.3";
pub const BULLMQ: &str = "6.7.0";
/// BullMQ's Redis client, an optional peer dependency of it: the version
/// BullMQ 6.7.0 itself is developed against.
pub const IOREDIS: &str = "5.11.1";

const GRAPHILE_RUNNER: &str = include_str!("../js/graphile.mjs");
const BULLMQ_RUNNER: &str = include_str!("../js/bullmq.mjs");

fn package_json() -> String {
    format!(
        r#"{{
  "name": "conveyor-bench-peers",
  "private": true,
  "type": "module",
  "dependencies": {{
    "bullmq": "{BULLMQ}",
    "graphile-worker": "{GRAPHILE_WORKER}",
    "ioredis": "{IOREDIS}"
  }}
}}
"#
    )
}

/// Writes the package.json and the runners into `dir` and installs the
/// packages there, unless exactly these are installed already.
pub async fn install(dir: &Path) -> anyhow::Result<PathBuf> {
    tokio::fs::create_dir_all(dir).await?;
    let dir = dir.canonicalize()?;
    let manifest = dir.join("package.json");
    let wanted = package_json();
    let current = tokio::fs::read_to_string(&manifest)
        .await
        .unwrap_or_default();
    let installed = dir.join("node_modules/.package-lock.json").exists();
    if current != wanted || !installed {
        tokio::fs::write(&manifest, &wanted).await?;
        println!(
            "installing graphile-worker {GRAPHILE_WORKER}, bullmq {BULLMQ} and ioredis {IOREDIS} into {}",
            dir.display()
        );
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .await
            .map_err(|e| anyhow::anyhow!("cannot run npm (node and npm are needed for the peers; --no-peers skips them): {e}"))?;
        anyhow::ensure!(status.success(), "npm install failed ({status})");
    }
    tokio::fs::write(dir.join("graphile.mjs"), GRAPHILE_RUNNER).await?;
    tokio::fs::write(dir.join("bullmq.mjs"), BULLMQ_RUNNER).await?;
    Ok(dir)
}

pub async fn measure_graphile(args: &QueueArgs, dir: &Path) -> anyhow::Result<SystemResult> {
    let mut result = SystemResult::new(format!("graphile-worker {GRAPHILE_WORKER}"));
    for &concurrency in &args.concurrency {
        for _ in 0..args.runs {
            let url = server::create_database(&args.database_url, "graphile_bench").await?;
            let run = graphile_run(args, dir, &url, concurrency).await;
            server::drop_database(&args.database_url, &url).await?;
            let (enqueue, drain) = run?;
            result.record(concurrency, args.jobs, enqueue, drain);
        }
    }
    Ok(result)
}

async fn graphile_run(
    args: &QueueArgs,
    dir: &Path,
    url: &str,
    concurrency: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let enqueue = enqueue_with(
        dir,
        &[
            "graphile.mjs",
            "enqueue",
            url,
            &args.jobs.to_string(),
            &args.enqueue_batch.to_string(),
        ],
    )
    .await?;
    let mut command = Command::new("node");
    command.current_dir(dir).env("NO_LOG_SUCCESS", "1").args([
        "graphile.mjs",
        "work",
        url,
        &concurrency.to_string(),
    ]);
    let pool = conveyor_jobs::db::connect(url, 1).await?;
    let mut worker = WorkerProcess::start(command).await?;
    // graphile-worker deletes a job when it completes.
    let drained = worker
        .wait_until_done(args.jobs, drain_limit(args.jobs), || async {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM graphile_worker._private_jobs")
                    .fetch_one(&pool)
                    .await?;
            Ok(args.jobs.saturating_sub(left as usize))
        })
        .await;
    worker.stop().await;
    pool.close().await;
    Ok((enqueue, drained?))
}

pub async fn measure_bullmq(args: &QueueArgs, dir: &Path) -> anyhow::Result<SystemResult> {
    let mut result = SystemResult::new(format!("BullMQ {BULLMQ} (Redis)"));
    let client = redis::Client::open(args.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    for &concurrency in &args.concurrency {
        for _ in 0..args.runs {
            let prefix = format!(
                "conveyor-bench-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            );
            let run = bullmq_run(args, dir, &prefix, concurrency, &mut conn).await;
            delete_prefix(&mut conn, &prefix).await?;
            let (enqueue, drain) = run?;
            result.record(concurrency, args.jobs, enqueue, drain);
        }
    }
    Ok(result)
}

async fn bullmq_run(
    args: &QueueArgs,
    dir: &Path,
    prefix: &str,
    concurrency: usize,
    conn: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<(Duration, Duration)> {
    let enqueue = enqueue_with(
        dir,
        &[
            "bullmq.mjs",
            "enqueue",
            &args.redis_url,
            prefix,
            &args.jobs.to_string(),
            &args.enqueue_batch.to_string(),
        ],
    )
    .await?;
    let mut command = Command::new("node");
    command.current_dir(dir).args([
        "bullmq.mjs",
        "work",
        &args.redis_url,
        prefix,
        &concurrency.to_string(),
    ]);
    let completed = format!("{prefix}:bench:completed");
    let mut worker = WorkerProcess::start(command).await?;
    let drained = worker
        .wait_until_done(args.jobs, drain_limit(args.jobs), || {
            let mut conn = conn.clone();
            let completed = completed.clone();
            async move {
                let done: u64 = redis::cmd("ZCARD")
                    .arg(&completed)
                    .query_async(&mut conn)
                    .await?;
                Ok(done as usize)
            }
        })
        .await;
    worker.stop().await;
    Ok((enqueue, drained?))
}

/// Runs a peer's `enqueue` mode and reads the time it reports for adding
/// the jobs alone (the last line of its output: `{"enqueue_ms": ...}`).
async fn enqueue_with(dir: &Path, args: &[&str]) -> anyhow::Result<Duration> {
    let output = Command::new("node")
        .current_dir(dir)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "node {} failed ({})",
        args.join(" "),
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(last)
        .map_err(|e| anyhow::anyhow!("unexpected output from node {}: {last:?} ({e})", args[0]))?;
    let ms = report["enqueue_ms"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("no enqueue_ms in {last:?}"))?;
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

/// Deletes every key under `prefix:`, the run's whole BullMQ queue.
async fn delete_prefix(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> anyhow::Result<()> {
    let pattern = format!("{prefix}:*");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            let _: u64 = redis::cmd("DEL").arg(&keys).query_async(conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
