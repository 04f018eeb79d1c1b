//! `conveyor-scheduler`: enqueues one import job per channel per tick and
//! serves `/metrics`, `/healthz` and `/readyz`. Any number of replicas may
//! run: they elect one leader (a Postgres advisory lock on a dedicated
//! connection), and only the leader enqueues; import jobs are keyed by
//! channel and tick besides, so a double fire makes one job.

use std::path::PathBuf;

use clap::Parser;
use conveyor_jobs::metrics::Metrics;
use conveyor_jobs::ops_http::{self, OpsState};
use conveyor_jobs::process::{init_tracing, load_settings, shutdown_signal};

#[derive(Parser)]
#[command(version, about = "Enqueue Conveyor's channel imports on a schedule")]
struct Args {
    /// Settings file (TOML); `CONVEYOR_*` environment variables override it.
    #[arg(long, env = "CONVEYOR_CONFIG")]
    config: Option<PathBuf>,
    /// Address for /metrics, /healthz and /readyz (overrides scheduler.listen).
    #[arg(long)]
    listen: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let args = Args::parse();
    let settings = load_settings(args.config.as_deref())?;
    let pool = conveyor_jobs::db::connect(&settings.database.url, 4).await?;
    conveyor_jobs::db::warn_about_server(&pool).await;
    let metrics = Metrics::new();
    let ops = OpsState {
        pool: pool.clone(),
        redis_url: settings.redis.url.clone(),
        metrics: metrics.clone(),
        dlq: false,
        token: None,
    };
    let listen = args
        .listen
        .unwrap_or_else(|| settings.scheduler.listen.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        let mut rx = stop_rx;
        ops_http::serve(&listen, ops, async move {
            let _ = rx.wait_for(|stop| *stop).await;
        })
        .await
    });
    tracing::info!(
        channels = settings.channels.len(),
        tick_secs = settings.scheduler.tick_secs,
        election_secs = settings.scheduler.election_secs,
        scheduler = %conveyor_jobs::leader::scheduler_name(),
        "scheduler starting"
    );
    conveyor_jobs::scheduler::run_with_metrics(pool, settings, metrics, shutdown_signal()).await?;
    let _ = stop_tx.send(true);
    let _ = server.await;
    tracing::info!("scheduler stopped");
    Ok(())
}
