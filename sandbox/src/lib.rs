//! Conveyor's sandbox: one local HTTP server that speaks the real wire formats of
//! the Shopify Admin GraphQL API (2025-01) and EasyPost's shipments API (v2), so
//! that Conveyor's HTTP adapters run against it, or against the real services,
//! by changing only a base URL and a token.
//!
//! It generates orders from a seed, sells labels, and counts everything a test
//! needs to prove that no label was bought twice and nothing was over-fulfilled
//! (`GET /_sandbox/stats`). Knobs inject latency, 5xx and 429 answers, malformed
//! orders, purchases that succeed but answer late, and edits and cancellations.
//!
//! This file holds the configuration, the shared state, the router and the
//! [`Sandbox`] handle; each API lives in its own module.

mod catalog;
mod easypost;
mod geo;
mod graphql;
mod label;
mod orders;
mod shopify;
mod stats;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use catalog::{default_catalog, read_catalog_csv};
pub use graphql::SCHEMA_SDL;
pub use label::{LabelInfo, render_label};
pub use shopify::ShopifyLimits;
pub use stats::Stats;

use easypost::Carrier;
use graphql::GraphQl;
use orders::{Generation, Shop};
use shopify::CostBucket;

/// The Shopify Admin API path the sandbox serves.
pub const SHOPIFY_GRAPHQL_PATH: &str = "/admin/api/2025-01/graphql.json";

/// Faults injected into API answers. Rates are probabilities in `0.0..=1.0`, drawn
/// from an RNG seeded from the sandbox seed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Share of API requests answered with a 5xx before doing anything
    /// (Shopify: 503 `{"errors": ...}`; EasyPost: 500 with its error body).
    pub server_error_rate: f64,
    /// Share of API requests answered "slow down" before doing anything
    /// (Shopify: 200 with a `THROTTLED` error; EasyPost: 429 `RATE_LIMITED` with
    /// `Retry-After: 1`).
    pub rate_limit_rate: f64,
    /// Share of successful label purchases that answer only after
    /// `purchase_timeout_ms`: the label is sold, the client most likely times out.
    pub purchase_timeout_rate: f64,
    /// How late such a purchase answers, in milliseconds.
    pub purchase_timeout_ms: u64,
}

/// How to run a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Seed of every random choice (orders, ids, prices, faults).
    pub seed: u64,
    /// Orders created at start, spread over the past hour.
    pub orders: usize,
    /// New orders per minute after start (0: none).
    pub orders_per_minute: f64,
    /// `(sku, name)` pairs orders draw from; empty means the default catalog.
    pub catalog: Vec<(String, String)>,
    /// Expected `X-Shopify-Access-Token`.
    pub shop_token: String,
    /// Expected EasyPost API key (HTTP Basic user name).
    pub carrier_key: String,
    /// Delay added to every API response.
    pub latency: Duration,
    /// Shopify's query cost limits and throttling.
    pub shopify_limits: ShopifyLimits,
    /// Injected faults (changeable at run time).
    pub faults: Faults,
    /// Share of generated orders that are malformed (no shipping address, or a
    /// line without SKU).
    pub malformed_order_rate: f64,
    /// Base URL put into label and tracker URLs. Default: `http://<Host header>`
    /// of the request, else the listening address.
    pub public_url: Option<String>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            orders: 0,
            orders_per_minute: 0.0,
            catalog: default_catalog(),
            shop_token: "sandbox-shop-token".to_owned(),
            carrier_key: "sandbox-carrier-key".to_owned(),
            latency: Duration::ZERO,
            shopify_limits: ShopifyLimits::default(),
            faults: Faults::default(),
            malformed_order_rate: 0.0,
            public_url: None,
        }
    }
}

/// Everything that changes while the sandbox runs.
pub(crate) struct World {
    pub shop: Shop,
    pub carrier: Carrier,
    pub stats: Stats,
    pub bucket: CostBucket,
    pub faults: Faults,
    pub fault_rng: StdRng,
}

/// Shared by all handlers.
///
/// The world sits behind a std `Mutex`, not an async one: every critical section
/// is short and synchronous (no `.await` while holding it, which the compiler
/// enforces because the guard is not `Send`), so an async mutex would only add
/// overhead. A single lock also makes each API call atomic, which is what makes
/// "a second buy is refused" hold under any concurrency.
pub(crate) struct App {
    pub config: SandboxConfig,
    pub graphql: GraphQl,
    pub world: Mutex<World>,
    pub base_url: String,
}

impl App {
    fn new(config: SandboxConfig, base_url: String) -> anyhow::Result<Self> {
        let mut config = config;
        if config.catalog.is_empty() {
            config.catalog = default_catalog();
        }
        let mut stats = Stats::default();
        let mut shop = Shop::new(Generation {
            seed: config.seed,
            catalog: config.catalog.clone(),
            malformed_rate: config.malformed_order_rate,
        });
        shop.create_backlog(config.orders, &mut stats);
        let world = World {
            shop,
            carrier: Carrier::new(config.seed),
            stats,
            bucket: CostBucket::full(&config.shopify_limits),
            faults: config.faults.clone(),
            fault_rng: StdRng::seed_from_u64(config.seed ^ 0x6661_756c_7473),
        };
        Ok(Self {
            graphql: GraphQl::new()?,
            world: Mutex::new(world),
            config,
            base_url,
        })
    }

    /// Locks the world. A handler that panicked while holding the lock leaves
    /// counters that are still meaningful, so poisoning is ignored rather than
    /// taking the whole sandbox down.
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configured artificial latency.
    pub async fn delay(&self) {
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
    }

    /// Base URL for links handed to clients (labels, trackers).
    pub fn public_base_url(&self, headers: &HeaderMap) -> String {
        if let Some(url) = &self.config.public_url {
            return url.trim_end_matches('/').to_owned();
        }
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty())
            .map(|h| format!("http://{h}"))
            .unwrap_or_else(|| self.base_url.clone())
    }

    /// Decides whether to inject a fault: `Some(true)` 5xx, `Some(false)` 429.
    fn roll_fault(&self) -> Option<bool> {
        let mut world = self.world();
        let world = &mut *world;
        let faults = &world.faults;
        let (error_rate, limit_rate) = (
            faults.server_error_rate.clamp(0.0, 1.0),
            faults.rate_limit_rate.clamp(0.0, 1.0),
        );
        let fault = if error_rate > 0.0 && world.fault_rng.random_bool(error_rate) {
            Some(true)
        } else if limit_rate > 0.0 && world.fault_rng.random_bool(limit_rate) {
            Some(false)
        } else {
            None
        };
        if fault.is_some() {
            world.stats.injected_faults += 1;
        }
        fault
    }

    pub fn shopify_fault(&self) -> Option<Response> {
        let server_error = self.roll_fault()?;
        let response = if server_error {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "application/json")],
                json!({ "errors": "Service Unavailable" }).to_string(),
            )
                .into_response()
        } else {
            let limits = &self.config.shopify_limits;
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                json!({
                    "errors": [{
                        "message": "Throttled",
                        "extensions": {
                            "code": "THROTTLED",
                            "documentation": "https://shopify.dev/api/usage/rate-limits",
                        },
                    }],
                    "extensions": { "cost": {
                        "requestedQueryCost": null,
                        "actualQueryCost": null,
                        "throttleStatus": {
                            "maximumAvailable": limits.bucket_size,
                            "currentlyAvailable": 0,
                            "restoreRate": limits.restore_rate,
                        },
                    }},
                })
                .to_string(),
            )
                .into_response()
        };
        Some(response)
    }

    pub fn easypost_fault(&self) -> Option<Response> {
        let server_error = self.roll_fault()?;
        Some(if server_error {
            easypost::error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_SERVER_ERROR",
                "We're sorry, something went wrong. If the problem persists please contact support.",
                json!([]),
            )
        } else {
            let mut response = easypost::error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                "You have sent too many requests. Please slow down and try again.",
                json!([]),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            response
        })
    }

    /// Decides whether a purchase that just sold a label answers late.
    pub fn purchase_timeout(&self, world: &mut World) -> Option<Duration> {
        let rate = world.faults.purchase_timeout_rate.clamp(0.0, 1.0);
        if rate > 0.0 && world.fault_rng.random_bool(rate) {
            world.stats.purchase_timeouts += 1;
            Some(Duration::from_millis(world.faults.purchase_timeout_ms))
        } else {
            None
        }
    }
}

/// Counts every request by method and route pattern.
async fn count_requests(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(unmatched)".to_owned(), |p| p.as_str().to_owned());
    let key = format!("{} {route}", request.method());
    let api = if route == SHOPIFY_GRAPHQL_PATH {
        Some(stats::Api::Channel)
    } else if route.starts_with("/v2/") {
        Some(stats::Api::Carrier)
    } else {
        None
    };
    {
        let mut world = app.world();
        world.stats.count_request(key);
        if let Some(api) = api {
            let second = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            world.stats.count_api_second(api, second);
        }
    }
    next.run(request).await
}

async fn stats_handler(State(app): State<Arc<App>>) -> Json<Stats> {
    Json(app.world().stats.clone())
}

async fn healthz() -> &'static str {
    "ok"
}

#[derive(Deserialize)]
struct AddOrders {
    count: usize,
}

/// `POST /_sandbox/orders` with `{"count": n}`: create n orders now.
async fn add_orders_handler(
    State(app): State<Arc<App>>,
    Json(body): Json<AddOrders>,
) -> Json<serde_json::Value> {
    let mut world = app.world();
    let world = &mut *world;
    world.shop.create_now(body.count, &mut world.stats);
    Json(json!({ "orders_created": world.stats.orders_created }))
}

fn order_gid(id: &str) -> String {
    if id.starts_with("gid://") {
        id.to_owned()
    } else {
        format!("gid://shopify/Order/{id}")
    }
}

/// `POST /_sandbox/orders/{id}/cancel` (`id`: the order's legacy numeric id).
async fn cancel_handler(State(app): State<Arc<App>>, Path(id): Path<String>) -> StatusCode {
    let mut world = app.world();
    let world = &mut *world;
    if world.shop.cancel(&order_gid(&id), &mut world.stats) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

/// `POST /_sandbox/orders/{id}/edit`: one more unit on the first open line.
async fn edit_handler(State(app): State<Arc<App>>, Path(id): Path<String>) -> StatusCode {
    let mut world = app.world();
    let world = &mut *world;
    if world.shop.edit(&order_gid(&id), &mut world.stats) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

/// `GET`/`PUT /_sandbox/faults`: read or replace the injected faults.
async fn get_faults(State(app): State<Arc<App>>) -> Json<Faults> {
    Json(app.world().faults.clone())
}

async fn put_faults(State(app): State<Arc<App>>, Json(faults): Json<Faults>) -> StatusCode {
    app.world().faults = faults;
    StatusCode::NO_CONTENT
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(SHOPIFY_GRAPHQL_PATH, post(shopify::graphql))
        .route("/v2/shipments", post(easypost::create))
        .route("/v2/shipments/{id}", get(easypost::retrieve))
        .route("/v2/shipments/{id}/buy", post(easypost::buy))
        .route("/v2/shipments/{id}/refund", post(easypost::refund))
        .route("/labels/{file}", get(easypost::label))
        .route("/track/{code}", get(easypost::track))
        .route("/_sandbox/stats", get(stats_handler))
        .route("/_sandbox/orders", post(add_orders_handler))
        .route("/_sandbox/orders/{id}/cancel", post(cancel_handler))
        .route("/_sandbox/orders/{id}/edit", post(edit_handler))
        .route("/_sandbox/faults", get(get_faults).put(put_faults))
        .route("/healthz", get(healthz))
        .layer(middleware::from_fn_with_state(app.clone(), count_requests))
        .with_state(app)
}

/// A running sandbox.
pub struct Sandbox {
    addr: SocketAddr,
    app: Arc<App>,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
    generator: Option<JoinHandle<()>>,
}

impl Sandbox {
    /// Generates the backlog and starts serving on `listener` (bind it to port 0
    /// in tests).
    pub async fn start(config: SandboxConfig, listener: TcpListener) -> anyhow::Result<Sandbox> {
        let mut addr = listener.local_addr()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let orders_per_minute = config.orders_per_minute;
        let app = Arc::new(App::new(config, format!("http://{addr}"))?);
        let shutdown = CancellationToken::new();

        let serve = axum::serve(listener, router(app.clone()))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let server = tokio::spawn(async move {
            if let Err(error) = serve.await {
                tracing::error!(%error, "sandbox server stopped");
            }
        });

        let generator = (orders_per_minute > 0.0 && orders_per_minute.is_finite()).then(|| {
            let app = app.clone();
            let stop = shutdown.clone();
            let period = Duration::from_secs_f64(60.0 / orders_per_minute);
            tokio::spawn(async move {
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = ticks.tick() => {
                            let mut world = app.world();
                            let world = &mut *world;
                            world.shop.create_now(1, &mut world.stats);
                        }
                    }
                }
            })
        });

        {
            let world = app.world();
            tracing::info!(
                %addr,
                seed = app.config.seed,
                backlog = world.stats.orders_created,
                orders_per_minute,
                skus = app.config.catalog.len(),
                "sandbox listening"
            );
        }
        Ok(Sandbox {
            addr,
            app,
            shutdown,
            server,
            generator,
        })
    }

    /// `http://127.0.0.1:PORT` (the Shopify API is at
    /// `{base_url}/admin/api/2025-01/graphql.json`, EasyPost's at `{base_url}/v2`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The same data as `GET /_sandbox/stats`.
    pub fn stats(&self) -> Stats {
        self.app.world().stats.clone()
    }

    /// Creates `n` more orders now.
    pub fn add_orders(&self, n: usize) {
        let mut world = self.app.world();
        let world = &mut *world;
        world.shop.create_now(n, &mut world.stats);
    }

    /// Cancels an order (gid or legacy id); false if unknown or already cancelled.
    pub fn cancel_order(&self, order_id: &str) -> bool {
        let mut world = self.app.world();
        let world = &mut *world;
        world.shop.cancel(&order_gid(order_id), &mut world.stats)
    }

    /// Adds one unit to the first open line of an order (gid or legacy id); false
    /// if unknown, cancelled, or fully fulfilled.
    pub fn edit_order(&self, order_id: &str) -> bool {
        let mut world = self.app.world();
        let world = &mut *world;
        world.shop.edit(&order_gid(order_id), &mut world.stats)
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        self.app.world().faults = faults;
    }

    /// Stops generating orders, stops accepting connections, and waits (at most
    /// five seconds) for requests in flight.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        if let Some(generator) = self.generator {
            let _ = generator.await;
        }
        let mut server = self.server;
        if tokio::time::timeout(Duration::from_secs(5), &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
        tracing::info!("sandbox stopped");
    }
}

/// Runs a sandbox until `shutdown` completes (the binary passes ctrl-c/SIGTERM).
pub async fn run(
    config: SandboxConfig,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let sandbox = Sandbox::start(config, listener).await?;
    shutdown.await;
    sandbox.shutdown().await;
    Ok(())
}
