//! `conveyor-worker`: runs the pipeline's job queues and serves `/metrics`,
//! `/healthz` and `/readyz`. SIGTERM stops fetching, lets in-flight jobs
//! finish within the configured deadline, returns every job this process
//! still holds (fetched but never started, or cut off at the deadline) to
//! the queue, and exits 0.

use std::path::PathBuf;

use clap::Parser;
use conveyor_jobs::ops_http::{self, OpsState};
use conveyor_jobs::process::{init_tracing, load_settings, shutdown_signal};
use conveyor_jobs::queue::Queue;
use conveyor_jobs::runner::{self, Deps};

#[derive(Parser)]
#[command(version, about = "Run Conveyor's job queues")]
struct Args {
    /// Settings file (TOML); `CONVEYOR_*` environment variables override it.
    #[arg(long, env = "CONVEYOR_CONFIG")]
    config: Option<PathBuf>,
    /// Queues to run, comma separated (default: all of them).
    #[arg(long, value_delimiter = ',')]
    queues: Vec<Queue>,
    /// Address for /metrics, /healthz and /readyz (overrides worker.listen).
    #[arg(long)]
    listen: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let args = Args::parse();
    let settings = load_settings(args.config.as_deref())?;
    let queues = if args.queues.is_empty() {
        Queue::ALL.to_vec()
    } else {
        args.queues
    };
    let deps = Deps::from_settings(&settings).await?;
    let ops = OpsState {
        pool: deps.pool.clone(),
        redis_url: settings.redis.url.clone(),
        metrics: deps.metrics.clone(),
        dlq: true,
        token: settings.ops.token.clone(),
    };
    let listen = args
        .listen
        .unwrap_or_else(|| settings.worker.listen.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        let mut rx = stop_rx;
        ops_http::serve(&listen, ops, async move {
            let _ = rx.wait_for(|stop| *stop).await;
        })
        .await
    });
    tracing::info!(?queues, "worker starting");
    let pool = deps.pool.clone();
    let ours = runner::process_worker_prefix(&settings.worker.name_prefix);
    let ran = runner::run(deps, queues, shutdown_signal()).await;
    // Without this, jobs fetched in a batch but never started stay claimed
    // by this process until the orphan window runs out.
    match runner::release_claimed(&pool, &ours).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(jobs = n, "returned unfinished jobs to the queue"),
        Err(e) => {
            tracing::warn!(error = %e, "could not return unfinished jobs; they wait for the orphan window")
        }
    }
    ran?;
    let _ = stop_tx.send(true);
    if let Ok(Err(e)) = server.await {
        tracing::warn!(error = %e, "ops endpoints stopped with an error");
    }
    tracing::info!("worker stopped");
    Ok(())
}
