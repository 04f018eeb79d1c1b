//! Conveyor's sandbox: one local HTTP server that speaks the real wire formats of
//! the Shopify Admin GraphQL API (2025-01) and EasyPost's shipments API (v2), so
//! that Conveyor's HTTP adapters run against it, or against the real services,
//! by changing only a base URL and a token.
//!
//! It generates orders from a seed, sells labels, and counts everything a test
//! needs to prove that no label was bought twice and nothing was over-fulfilled
//! (`GET /_sandbox/stats`). Knobs, set per API ([`Faults`]), inject latency, 5xx
//! and 429 answers, hangs, malformed answers and orders, edits and cancellations
//! after import, and purchases that succeed but never answer.
//!
//! This file holds the configuration, the shared state, the router and the
//! [`Sandbox`] handle; each API lives in its own module.

mod catalog;
mod easypost;
mod faults;
mod geo;
mod graphql;
mod label;
mod orders;
mod shopify;
mod stats;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use catalog::{default_catalog, read_catalog_csv};
pub use faults::{ApiFaults, CarrierFaults, ChannelFaults, Faults};
pub use graphql::SCHEMA_SDL;
pub use label::{LabelInfo, render_label};
pub use shopify::ShopifyLimits;
pub use stats::{FaultCounts, InjectedFaults, Stats};

use easypost::Carrier;
use faults::{Api, Refusal};
use graphql::GraphQl;
use orders::{Generation, Shop};
use shopify::CostBucket;

/// The Shopify Admin API path the sandbox serves.
pub const SHOPIFY_GRAPHQL_PATH: &str = "/admin/api/2025-01/graphql.json";

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
    /// Shopify's query cost limits and throttling.
    pub shopify_limits: ShopifyLimits,
    /// Injected faults per API (changeable at run time).
    pub faults: Faults,
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
            shopify_limits: ShopifyLimits::default(),
            faults: Faults::default(),
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
    /// Draws of the channel's request faults.
    pub channel_rng: StdRng,
    /// Draws of the carrier's request faults.
    pub carrier_rng: StdRng,
    /// Draws of edits and cancellations after import, apart from the request
    /// faults so that page contents do not shift those.
    pub change_rng: StdRng,
    /// Orders a client has fetched in a page of `orders` at least once: each
    /// may be edited or cancelled once, right after its first fetch.
    pub seen_orders: HashSet<u64>,
}

impl World {
    /// Replaces the faults; the malformed-order share applies to orders created
    /// from now on.
    pub fn set_faults(&mut self, faults: Faults) {
        self.shop
            .set_malformed_rate(faults.channel.malformed_order_rate);
        self.faults = faults;
    }

    /// The stats, with the fault total filled in.
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats.clone();
        stats.injected_faults = stats.faults.channel.total() + stats.faults.carrier.total();
        stats
    }

    fn rng_and_counts(&mut self, api: Api) -> (&mut StdRng, &mut stats::FaultCounts) {
        match api {
            Api::Channel => (&mut self.channel_rng, &mut self.stats.faults.channel),
            Api::Carrier => (&mut self.carrier_rng, &mut self.stats.faults.carrier),
        }
    }

    fn api_faults(&self, api: Api) -> &ApiFaults {
        match api {
            Api::Channel => &self.faults.channel.api,
            Api::Carrier => &self.faults.carrier.api,
        }
    }
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
    /// Cancelled when the sandbox stops: requests held on purpose end at once.
    pub shutdown: CancellationToken,
}

impl App {
    fn new(
        config: SandboxConfig,
        base_url: String,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let mut config = config;
        if config.catalog.is_empty() {
            config.catalog = default_catalog();
        }
        let mut stats = Stats::default();
        let mut shop = Shop::new(Generation {
            seed: config.seed,
            catalog: config.catalog.clone(),
            malformed_rate: config.faults.channel.malformed_order_rate,
        });
        shop.create_backlog(config.orders, &mut stats);
        let world = World {
            shop,
            carrier: Carrier::new(config.seed),
            stats,
            bucket: CostBucket::full(&config.shopify_limits),
            faults: config.faults.clone(),
            channel_rng: StdRng::seed_from_u64(config.seed ^ 0x6368_616e_6e65_6c00),
            carrier_rng: StdRng::seed_from_u64(config.seed ^ 0x6361_7272_6965_7200),
            change_rng: StdRng::seed_from_u64(config.seed ^ 0x6368_616e_6765_7300),
            seen_orders: HashSet::new(),
        };
        Ok(Self {
            graphql: GraphQl::new()?,
            world: Mutex::new(world),
            config,
            base_url,
            shutdown,
        })
    }

    /// Locks the world. A handler that panicked while holding the lock leaves
    /// counters that are still meaningful, so poisoning is ignored rather than
    /// taking the whole sandbox down.
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits the API's configured latency.
    pub async fn delay(&self, api: Api) {
        let latency = {
            let mut world = self.world();
            let latency = Duration::from_millis(world.api_faults(api).latency_ms);
            if !latency.is_zero() {
                world.rng_and_counts(api).1.delayed += 1;
            }
            latency
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    /// Holds a request for `duration`, or until the sandbox stops.
    pub async fn hold(&self, duration: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    /// Decides whether this request of `api` is refused by an injected fault.
    pub fn refusal(&self, api: Api) -> Option<Refusal> {
        let mut world = self.world();
        let faults = world.api_faults(api).clone();
        let (rng, counts) = world.rng_and_counts(api);
        faults.refusal(api, rng, counts)
    }

    /// `body` itself, or (at the API's malformed rate) a malformed version of
    /// it, counted.
    pub fn maybe_malform(&self, api: Api, body: String) -> String {
        let mut world = self.world();
        let rate = world.api_faults(api).malformed_rate;
        let (rng, counts) = world.rng_and_counts(api);
        if faults::roll(rng, rate) {
            counts.malformed += 1;
            faults::malform(&body, rng)
        } else {
            body
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

    /// The Shopify-shaped answer to an injected refusal (a hang is held first).
    pub async fn shopify_refusal(&self, refusal: Refusal) -> Response {
        match refusal {
            Refusal::ServerError => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "application/json")],
                json!({ "errors": "Service Unavailable" }).to_string(),
            )
                .into_response(),
            Refusal::RateLimited {
                retry_after_secs,
                http_429,
            } => {
                let limits = &self.config.shopify_limits;
                let status = if http_429 {
                    StatusCode::TOO_MANY_REQUESTS
                } else {
                    StatusCode::OK
                };
                let mut response = (
                    status,
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
                    .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, retry_after_secs.into());
                response
            }
            Refusal::Hang(duration) => {
                self.hold(duration).await;
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    [(header::CONTENT_TYPE, "application/json")],
                    json!({ "errors": "Gateway Timeout" }).to_string(),
                )
                    .into_response()
            }
        }
    }

    /// The EasyPost-shaped answer to an injected refusal (a hang is held first).
    pub async fn easypost_refusal(&self, refusal: Refusal) -> Response {
        match refusal {
            Refusal::ServerError => easypost::error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_SERVER_ERROR",
                "We're sorry, something went wrong. If the problem persists please contact support.",
                json!([]),
            ),
            Refusal::RateLimited {
                retry_after_secs, ..
            } => {
                let mut response = easypost::error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "RATE_LIMITED",
                    "You have sent too many requests. Please slow down and try again.",
                    json!([]),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, retry_after_secs.into());
                response
            }
            Refusal::Hang(duration) => {
                self.hold(duration).await;
                easypost::gateway_timeout()
            }
        }
    }

    /// Decides whether a purchase that just sold a label never answers; if so,
    /// how long to hold it.
    pub fn purchase_no_answer(&self, world: &mut World) -> Option<Duration> {
        let faults = &world.faults.carrier;
        let (rate, hold) = (
            faults.purchase_no_answer_rate,
            Duration::from_millis(faults.api.hang_ms),
        );
        if faults::roll(&mut world.carrier_rng, rate) {
            world.stats.faults.carrier.purchase_no_answer += 1;
            Some(hold)
        } else {
            None
        }
    }

    /// Right after a page of `orders` was rendered: each order served for the
    /// first time may be cancelled or edited (the client already holds the old
    /// version, as if it had been changed just after the import).
    pub fn change_after_fetch(&self, world: &mut World, served: &[u64]) {
        let (edit_rate, cancel_rate) = (
            world.faults.channel.edit_rate,
            world.faults.channel.cancel_rate,
        );
        for &id in served {
            if !world.seen_orders.insert(id) {
                continue;
            }
            let gid = format!("gid://shopify/Order/{id}");
            if faults::roll(&mut world.change_rng, cancel_rate) {
                if world.shop.cancel(&gid, &mut world.stats) {
                    world.stats.faults.channel.cancelled += 1;
                }
            } else if faults::roll(&mut world.change_rng, edit_rate) {
                let kind = orders::Edit::pick(&mut world.change_rng);
                if world
                    .shop
                    .edit_as(&gid, kind, &mut world.change_rng, &mut world.stats)
                {
                    world.stats.faults.channel.edited += 1;
                }
            }
        }
    }
}

/// Malforms successful answers of the carrier's JSON API at its malformed rate.
async fn malform_carrier(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if !response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let body = app.maybe_malform(Api::Carrier, String::from_utf8_lossy(&bytes).into_owned());
    Response::from_parts(parts, axum::body::Body::from(body))
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
    Json(app.world().stats())
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

/// `GET /_sandbox/faults`: the injected faults.
async fn get_faults(State(app): State<Arc<App>>) -> Json<Faults> {
    Json(app.world().faults.clone())
}

/// `POST` (or `PUT`) `/_sandbox/faults`: replace the injected faults; what the
/// JSON leaves out is off (`{}` switches every fault off). Answers the faults
/// now in force.
async fn set_faults(State(app): State<Arc<App>>, Json(faults): Json<Faults>) -> Json<Faults> {
    app.world().set_faults(faults.clone());
    Json(faults)
}

fn router(app: Arc<App>) -> Router {
    let carrier_api = Router::new()
        .route("/v2/shipments", post(easypost::create))
        .route("/v2/shipments/{id}", get(easypost::retrieve))
        .route("/v2/shipments/{id}/buy", post(easypost::buy))
        .route("/v2/shipments/{id}/refund", post(easypost::refund))
        .route_layer(middleware::from_fn_with_state(app.clone(), malform_carrier));
    Router::new()
        .route(SHOPIFY_GRAPHQL_PATH, post(shopify::graphql))
        .merge(carrier_api)
        .route("/labels/{file}", get(easypost::label))
        .route("/track/{code}", get(easypost::track))
        .route("/_sandbox/stats", get(stats_handler))
        .route("/_sandbox/orders", post(add_orders_handler))
        .route("/_sandbox/orders/{id}/cancel", post(cancel_handler))
        .route("/_sandbox/orders/{id}/edit", post(edit_handler))
        .route(
            "/_sandbox/faults",
            get(get_faults).post(set_faults).put(set_faults),
        )
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
        let shutdown = CancellationToken::new();
        let app = Arc::new(App::new(
            config,
            format!("http://{addr}"),
            shutdown.clone(),
        )?);

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
        self.app.world().stats()
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

    /// Replaces the injected faults (the same as `POST /_sandbox/faults`);
    /// `Faults::default()` switches them all off.
    pub fn set_faults(&self, faults: Faults) {
        self.app.world().set_faults(faults);
    }

    /// The faults in force (the same as `GET /_sandbox/faults`).
    pub fn faults(&self) -> Faults {
        self.app.world().faults.clone()
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
