//! `conveyor-bench`: how fast Conveyor's queue itself moves jobs, measured
//! the same way, on the same machine and in the same session, as two peers:
//! graphile-worker on Postgres and BullMQ on Redis.
//!
//! `conveyor-bench queue` enqueues no-op jobs in bulk (timed alone), then
//! starts one worker process and times how long it takes until every job is
//! done, at each concurrency, several times, and prints the medians. Each
//! run gets a fresh database (or a fresh Redis key prefix), so no run sees
//! another's rows.
//!
//! `conveyor-bench pipeline` pushes a backlog of orders through all seven
//! jobs with real `conveyor-worker` processes and prints orders per hour,
//! per-stage latencies and each worker's peak RSS.
//!
//! ```text
//! cargo run --release -p conveyor-bench -- pipeline
//! cargo run --release -p conveyor-bench -- pipeline --orders 2000 --workers 1 --latency zero
//! cargo run --release -p conveyor-bench -- queue                 # Conveyor and the peers
//! cargo run --release -p conveyor-bench -- queue --no-peers --jobs 2000
//! cargo run --release -p conveyor-bench -- queue --no-peers --batch-size 100 --concurrency 50
//! ```

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

mod conveyor;
mod drain;
mod peers;
mod pipeline;
mod report;
mod server;
mod slips;

#[derive(Parser)]
#[command(
    name = "conveyor-bench",
    about = "Conveyor's benchmarks: the queue against its peers, and the whole pipeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enqueue, then drain, no-op jobs on Conveyor's queue and on the peers;
    /// print the medians and the ratios.
    Queue(QueueArgs),
    /// Push a backlog of orders through all seven jobs with 1, 2 and 4
    /// worker processes, at zero and at realistic sandbox latency; print
    /// orders per hour, per-stage latencies and each worker's peak RSS.
    Pipeline(pipeline::PipelineArgs),
    /// One worker process draining the benchmark queue; `queue` starts it.
    #[command(hide = true)]
    QueueWorker(conveyor::WorkerArgs),
}

#[derive(Args, Debug, Clone)]
pub struct QueueArgs {
    /// Any database on the Postgres server to use; each run creates (and
    /// drops) its own database on that server.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database_url: String,
    /// Redis for BullMQ; each run uses its own key prefix and deletes it.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Jobs enqueued, then drained, in each run.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// Jobs per enqueue call (one INSERT for Conveyor, one addJobs or
    /// addBulk call for the peers).
    #[arg(long, default_value_t = 1_000)]
    pub enqueue_batch: usize,
    /// Runs per system and concurrency; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Worker concurrencies to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 50])]
    pub concurrency: Vec<usize>,
    #[command(flatten)]
    pub tuning: conveyor::Tuning,
    /// Also measure graphile-worker and BullMQ (the default).
    #[arg(long, overrides_with = "no_peers")]
    pub peers: bool,
    /// Measure Conveyor only.
    #[arg(long, overrides_with = "peers")]
    pub no_peers: bool,
    /// Where the peers' npm packages and runners are installed (never
    /// committed).
    #[arg(long, default_value = "target/bench-peers")]
    pub peers_dir: PathBuf,
    /// Run even when Postgres has fsync, synchronous_commit or autovacuum
    /// off (the figures are then not comparable).
    #[arg(long)]
    pub allow_unsafe: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Queue(args) => run_queue(args).await,
        Command::Pipeline(args) => pipeline::run(args).await,
        Command::QueueWorker(args) => conveyor::work(args).await,
    }
}

async fn run_queue(args: QueueArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.jobs > 0, "--jobs must be at least 1");
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(args.enqueue_batch > 0, "--enqueue-batch must be at least 1");
    anyhow::ensure!(
        !args.concurrency.is_empty() && args.concurrency.iter().all(|c| *c > 0),
        "--concurrency takes one or more numbers above 0"
    );
    let redis = (!args.no_peers).then_some(args.redis_url.as_str());
    let machine = server::describe(&args.database_url, redis).await?;
    print!("{machine}");
    machine.ensure_comparable(args.allow_unsafe)?;
    let with_peers = !args.no_peers;
    println!(
        "\n{} jobs per run, enqueued {} at a time; runs per system and concurrency: {}; concurrency {:?}",
        args.jobs, args.enqueue_batch, args.runs, args.concurrency
    );
    println!("Conveyor worker: {}", args.tuning);

    let mut rows = vec![conveyor::measure(&args).await?];
    if with_peers {
        let dir = peers::install(&args.peers_dir).await?;
        rows.push(peers::measure_graphile(&args, &dir).await?);
        rows.push(peers::measure_bullmq(&args, &dir).await?);
    }
    println!();
    print!("{}", report::table(&rows, &args.concurrency));
    println!("load average after the runs: {}", server::load_average());
    Ok(())
}
