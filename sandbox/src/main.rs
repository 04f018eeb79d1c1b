//! `conveyor-sandbox`: parses the command line, builds a [`SandboxConfig`] and runs
//! the sandbox until ctrl-c or SIGTERM. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use conveyor_sandbox::{Faults, SandboxConfig, ShopifyLimits, default_catalog, read_catalog_csv};
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
    /// Delay added to every API response, in milliseconds.
    #[arg(long, default_value_t = 0, env = "SANDBOX_LATENCY_MS")]
    latency_ms: u64,
    /// Base URL written into label URLs (default: the request's Host).
    #[arg(long, env = "SANDBOX_PUBLIC_URL")]
    public_url: Option<String>,
    /// Share of API requests answered with a 5xx.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Share of API requests answered with a 429 / THROTTLED.
    #[arg(long, default_value_t = 0.0)]
    rate_limit_rate: f64,
    /// Share of label purchases that succeed but answer late.
    #[arg(long, default_value_t = 0.0)]
    purchase_timeout_rate: f64,
    /// How late such purchases answer, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    purchase_timeout_ms: u64,
    /// Share of generated orders that are malformed.
    #[arg(long, default_value_t = 0.0)]
    malformed_order_rate: f64,
    /// Report GraphQL query costs but never throttle on the leaky bucket.
    #[arg(long)]
    no_throttle: bool,
    /// Shopify cost points restored per second.
    #[arg(long, default_value_t = 100.0)]
    restore_rate: f64,
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
        latency: Duration::from_millis(args.latency_ms),
        shopify_limits: ShopifyLimits {
            enforce_throttle: !args.no_throttle,
            restore_rate: args.restore_rate,
            ..ShopifyLimits::default()
        },
        faults: Faults {
            server_error_rate: args.error_rate,
            rate_limit_rate: args.rate_limit_rate,
            purchase_timeout_rate: args.purchase_timeout_rate,
            purchase_timeout_ms: args.purchase_timeout_ms,
        },
        malformed_order_rate: args.malformed_order_rate,
        public_url: args.public_url,
    };
    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    conveyor_sandbox::run(config, listener, shutdown).await
}
