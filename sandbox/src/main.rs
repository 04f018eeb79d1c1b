//! `conveyor-sandbox`: parses the command line, builds a [`SandboxConfig`] and runs
//! the sandbox until ctrl-c or SIGTERM. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use conveyor_sandbox::{
    ApiFaults, CarrierFaults, ChannelFaults, Faults, SandboxConfig, ShopifyLimits, default_catalog,
    read_catalog_csv,
};
use tracing_subscriber::EnvFilter;

/// Local Shopify-style and EasyPost-style APIs for Conveyor.
#[derive(Debug, Parser)]
#[command(name = "conveyor-sandbox", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090", env = "SANDBOX_LISTEN")]
    listen: SocketAddr,
    /// Seed of every random choice: the same seed gives the same orders.
    #[arg(long, default_value_t = 42, env = "SANDBOX_SEED")]
    seed: u64,
    /// Orders created at start (spread over the past hour).
    #[arg(long, default_value_t = 0, env = "SANDBOX_ORDERS")]
    orders: usize,
    /// New orders per minute while running (0: none).
    #[arg(long, default_value_t = 0.0, env = "SANDBOX_ORDERS_PER_MINUTE")]
    orders_per_minute: f64,
    /// CSV with a header row containing `sku` and `name` columns.
    #[arg(long, env = "SANDBOX_CATALOG")]
    catalog: Option<PathBuf>,
    /// Expected `X-Shopify-Access-Token`.
    #[arg(
        long,
        default_value = "sandbox-shop-token",
        env = "SANDBOX_SHOP_TOKEN",
        hide_env_values = true
    )]
    shop_token: String,
    /// Expected EasyPost API key.
    #[arg(
        long,
        default_value = "sandbox-carrier-key",
        env = "SANDBOX_CARRIER_KEY",
        hide_env_values = true
    )]
    carrier_key: String,
    /// Base URL written into label URLs (default: the request's Host).
    #[arg(long, env = "SANDBOX_PUBLIC_URL")]
    public_url: Option<String>,
    #[command(flatten)]
    faults: FaultArgs,
    /// Report GraphQL query costs but never throttle on the leaky bucket.
    #[arg(long)]
    no_throttle: bool,
    /// Shopify cost points restored per second.
    #[arg(long, default_value_t = 100.0)]
    restore_rate: f64,
}

/// Injected faults, per API: the channel (Shopify-style) and the carrier
/// (EasyPost-style). Shares are probabilities in 0..=1; all can be changed at
/// run time with `POST /_sandbox/faults`.
#[derive(Debug, clap::Args)]
struct FaultArgs {
    /// Delay added to every channel request, in milliseconds.
    #[arg(long, default_value_t = 0, env = "SANDBOX_CHANNEL_LATENCY_MS")]
    channel_latency_ms: u64,
    /// Share of channel requests answered 503.
    #[arg(long, default_value_t = 0.0, env = "SANDBOX_CHANNEL_5XX")]
    channel_5xx: f64,
    /// Share of channel requests answered THROTTLED (HTTP 200 or 429, with Retry-After).
    #[arg(long, default_value_t = 0.0, env = "SANDBOX_CHANNEL_429")]
    channel_429: f64,
    /// Share of channel requests held for --hang-ms, then answered 504.
    #[arg(long, default_value_t = 0.0, env = "SANDBOX_CHANNEL_HANG")]
    channel_hang: f64,
    /// Share of pages of orders answered truncated or not as JSON.
    #[arg(long, default_value_t = 0.0, env = "SANDBOX_CHANNEL_MALFORMED_PAGE")]
    channel_malformed_page: f64,
    /// Share of orders created malformed (no address, no SKU, negative quantity).
    #[arg(long, default_value_t = 0.0, env = "SANDBOX_CHANNEL_MALFORMED_ORDER")]
    channel_malformed_order: f64,
    /// Share of orders edited right after their first fetch.
    #[arg(long, default_value_t = 0.0, env = "SANDBOX_CHANNEL_EDIT_RATE")]
    channel_edit_rate: f64,
    /// Share of orders cancelled right after their first fetch.
    #[arg(long, default_value_t = 0.0, env = "SANDBOX_CHANNEL_CANCEL_RATE")]
    channel_cancel_rate: f64,
    /// Delay added to every carrier request, in milliseconds.
    #[arg(long, default_value_t = 0, env = "SANDBOX_CARRIER_LATENCY_MS")]
    carrier_latency_ms: u64,
    /// Share of carrier requests answered 500.
    #[arg(long, default_value_t = 0.0, env = "SANDBOX_CARRIER_5XX")]
    carrier_5xx: f64,
    /// Share of carrier requests answered 429 with Retry-After.
    #[arg(long, default_value_t = 0.0, env = "SANDBOX_CARRIER_429")]
    carrier_429: f64,
    /// Share of carrier requests held for --hang-ms, then answered 504.
    #[arg(long, default_value_t = 0.0, env = "SANDBOX_CARRIER_HANG")]
    carrier_hang: f64,
    /// Share of successful carrier answers truncated or not JSON (the work is done).
    #[arg(long, default_value_t = 0.0, env = "SANDBOX_CARRIER_MALFORMED")]
    carrier_malformed: f64,
    /// Share of label purchases that sell the label and never answer.
    #[arg(
        long,
        default_value_t = 0.0,
        env = "SANDBOX_CARRIER_PURCHASE_NO_ANSWER"
    )]
    carrier_purchase_no_answer: f64,
    /// Retry-After of injected 429s, in seconds.
    #[arg(long, default_value_t = 1, env = "SANDBOX_RETRY_AFTER_SECS")]
    retry_after_secs: u64,
    /// How long hanging requests and unanswered purchases are held, in milliseconds.
    #[arg(long, default_value_t = 30_000, env = "SANDBOX_HANG_MS")]
    hang_ms: u64,
}

impl FaultArgs {
    fn faults(&self) -> Faults {
        let api =
            |latency_ms, server_error_rate, rate_limit_rate, hang_rate, malformed_rate| ApiFaults {
                latency_ms,
                server_error_rate,
                rate_limit_rate,
                retry_after_secs: self.retry_after_secs,
                hang_rate,
                hang_ms: self.hang_ms,
                malformed_rate,
            };
        Faults {
            channel: ChannelFaults {
                api: api(
                    self.channel_latency_ms,
                    self.channel_5xx,
                    self.channel_429,
                    self.channel_hang,
                    self.channel_malformed_page,
                ),
                malformed_order_rate: self.channel_malformed_order,
                edit_rate: self.channel_edit_rate,
                cancel_rate: self.channel_cancel_rate,
            },
            carrier: CarrierFaults {
                api: api(
                    self.carrier_latency_ms,
                    self.carrier_5xx,
                    self.carrier_429,
                    self.carrier_hang,
                    self.carrier_malformed,
                ),
                purchase_no_answer_rate: self.carrier_purchase_no_answer,
            },
        }
    }
}

/// Resolves on ctrl-c or SIGTERM. The handlers are installed right away (not on
/// first poll), so a signal arriving during start-up is not lost.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let (mut interrupt, mut terminate) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        #[cfg(not(unix))]
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down");
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let catalog = match &args.catalog {
        Some(path) => read_catalog_csv(path)?,
        None => default_catalog(),
    };
    let config = SandboxConfig {
        seed: args.seed,
        orders: args.orders,
        orders_per_minute: args.orders_per_minute,
        catalog,
        shop_token: args.shop_token,
        carrier_key: args.carrier_key,
        shopify_limits: ShopifyLimits {
            enforce_throttle: !args.no_throttle,
            restore_rate: args.restore_rate,
            ..ShopifyLimits::default()
        },
        faults: args.faults.faults(),
        public_url: args.public_url,
    };
    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    conveyor_sandbox::run(config, listener, shutdown).await
}
