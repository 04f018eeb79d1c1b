//! Test support for Conveyor's workspace-level tests.
//!
//! `spawn_app()`: a fresh database, the sandbox on a free port, the example
//! catalog, warehouses and stock loaded, and (on request) a scheduler and a
//! worker running in this process against them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use conveyor_jobs::catalog::{LoadKind, load_file};
use conveyor_jobs::channel::ChannelKind;
use conveyor_jobs::queue::Queue;
use conveyor_jobs::runner::{self, Deps};
use conveyor_jobs::settings::{ChannelSettings, Settings};
use conveyor_sandbox::{ApiFaults, Faults, Sandbox, SandboxConfig, ShopifyLimits};
use secrecy::SecretString;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod process;
pub mod servers;

pub const CHANNEL: &str = "shop";

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn example(name: &str) -> PathBuf {
    workspace_root().join("examples").join(name)
}

/// Drops a test database, closing whatever connections it still has.
/// Waits until `condition` holds, polling every 20 ms; panics with `what`
/// after `limit`.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn drop_database(url: &str) {
    let Some(name) = url
        .rsplit('/')
        .next()
        .map(|n| n.split('?').next().unwrap_or(n).to_string())
    else {
        return;
    };
    let Ok(admin_url) = conveyor_jobs::db::replace_database(url, "postgres") else {
        return;
    };
    let Ok(admin) = sqlx::PgPool::connect(&admin_url).await else {
        return;
    };
    let sql = format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "")
    );
    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await;
    admin.close().await;
}

fn server_url() -> String {
    std::env::var("CONVEYOR_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

pub struct TestApp {
    pub pool: PgPool,
    /// The test's own database, dropped by [`TestApp::shutdown`].
    pub database_url: String,
    pub sandbox: Sandbox,
    pub settings: Settings,
    pub deps: Arc<Deps>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

pub struct AppOptions {
    pub orders: usize,
    pub seed: u64,
    pub weight_cap_g: u32,
    /// Added by the sandbox to every API response.
    pub latency: Duration,
    /// Changes the settings before the dependencies are built from them.
    pub configure: fn(&mut Settings),
    /// Changes the sandbox's configuration before it starts.
    pub configure_sandbox: fn(&mut SandboxConfig),
    /// The PostgreSQL server to make the test database on (default:
    /// `CONVEYOR_TEST_DATABASE_URL`, else the machine's on 5432).
    pub server_url: Option<String>,
    /// The Redis to use (default: the settings' default, 127.0.0.1:6379).
    pub redis_url: Option<String>,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            orders: 0,
            seed: 7,
            weight_cap_g: 18_000,
            latency: Duration::ZERO,
            configure: |_| {},
            configure_sandbox: |_| {},
            server_url: None,
            redis_url: None,
        }
    }
}

/// Starts everything except the scheduler and the worker.
pub async fn spawn_app(options: AppOptions) -> TestApp {
    // Logs go through the test harness's capture (shown for failing tests
    // only); RUST_LOG raises or lowers them.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    let server = options.server_url.clone().unwrap_or_else(server_url);
    let url = conveyor_jobs::db::fresh_database(&server, "conveyor_test")
        .await
        .expect("a fresh test database");
    let catalog =
        conveyor_sandbox::read_catalog_csv(&example("catalog.csv")).expect("example catalog");
    // Shopify Plus's cost limits (a 20,000-point bucket refilling at 1,000
    // points/s): the standard plan's would make the backlog tests wait on
    // the throttle rather than exercise the pipeline.
    let shopify_limits = ShopifyLimits {
        bucket_size: 20_000.0,
        restore_rate: 1_000.0,
        ..ShopifyLimits::default()
    };
    let latency = ApiFaults {
        latency_ms: options.latency.as_millis() as u64,
        ..ApiFaults::default()
    };
    let mut sandbox_config = SandboxConfig {
        shopify_limits,
        faults: Faults::everywhere(latency),
        seed: options.seed,
        orders: options.orders,
        catalog,
        ..SandboxConfig::default()
    };
    (options.configure_sandbox)(&mut sandbox_config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let sandbox = Sandbox::start(sandbox_config.clone(), listener)
        .await
        .expect("sandbox starts");

    let mut settings = Settings::load(None).expect("default settings");
    settings.database.url = url.clone();
    settings.database.max_connections = 16;
    settings.channels = vec![ChannelSettings {
        code: CHANNEL.into(),
        kind: ChannelKind::Shopify,
        base_url: sandbox.base_url(),
        token: SecretString::from(sandbox_config.shop_token.clone()),
        timeout_ms: 10_000,
    }];
    settings.carrier.base_url = sandbox.base_url();
    settings.carrier.api_key = SecretString::from(sandbox_config.carrier_key.clone());
    settings.scheduler.tick_secs = 1;
    settings.worker.heartbeat_secs = 2;
    settings.worker.poll_interval_ms = 50;
    settings.pipeline.package_weight_cap_g = options.weight_cap_g;
    // Each test's fleet state (circuit breakers) under its own Redis keys.
    settings.redis.prefix = format!("conveyor:test:{}", uuid::Uuid::new_v4().simple());
    if let Some(redis) = &options.redis_url {
        settings.redis.url = redis.clone();
    }
    (options.configure)(&mut settings);

    let deps = Deps::from_settings(&settings).await.expect("dependencies");
    let pool = deps.pool.clone();
    runner::register_channels(&pool, &settings)
        .await
        .expect("channels registered");
    for (kind, file) in [
        (LoadKind::Catalog, "catalog.csv"),
        (LoadKind::Warehouses, "warehouses.csv"),
        (LoadKind::Stock, "stock.csv"),
    ] {
        load_file(&pool, kind, &example(file), "test")
            .await
            .expect("example data loads");
    }
    let (stop, _) = watch::channel(false);
    TestApp {
        pool,
        database_url: url,
        sandbox,
        settings,
        deps,
        stop,
        tasks: Vec::new(),
    }
}

impl TestApp {
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Starts a worker running every queue, in this process.
    pub fn start_worker(&mut self) {
        self.start_worker_for(&Queue::ALL);
    }

    /// Starts a worker running `queues`, in this process.
    pub fn start_worker_for(&mut self, queues: &[Queue]) {
        let stopped = self.stopped();
        self.tasks.push(tokio::spawn(runner::run(
            self.deps.clone(),
            queues.to_vec(),
            stopped,
        )));
    }

    pub fn start_scheduler(&mut self) {
        let stopped = self.stopped();
        let (pool, settings) = (self.pool.clone(), self.settings.clone());
        self.tasks.push(tokio::spawn(conveyor_jobs::scheduler::run(
            pool, settings, stopped,
        )));
    }

    /// Waits until every order the sandbox created is imported and no job
    /// is waiting or running, three polls in a row. Panics after `limit`.
    pub async fn drain(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut quiet = 0;
        loop {
            let created = self.sandbox.stats().orders_created as i64;
            let imported: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
                .fetch_one(&self.pool)
                .await
                .unwrap();
            let unfinished = conveyor_jobs::stats::unfinished_jobs(&self.pool)
                .await
                .unwrap();
            quiet = if imported >= created && unfinished == 0 {
                quiet + 1
            } else {
                0
            };
            if quiet >= 3 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pipeline not quiet after {limit:?}: {imported}/{created} orders imported, {unfinished} jobs unfinished"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.expect("task joins").expect("task ends cleanly");
        }
        self.sandbox.shutdown().await;
        self.pool.close().await;
        drop_database(&self.database_url).await;
    }

    /// The settings of this app as a TOML file a Conveyor binary can read
    /// (`CONVEYOR_CONFIG`).
    pub fn config_toml(&self) -> String {
        use secrecy::ExposeSecret;
        let s = &self.settings;
        let channel = &s.channels[0];
        format!(
            "[database]\nurl = {db:?}\n\n[redis]\nurl = {redis:?}\nprefix = {prefix:?}\n\n[worker]\nheartbeat_secs = {hb}\npoll_interval_ms = {poll}\nshutdown_deadline_secs = 30\n\n\
             [scheduler]\ntick_secs = {tick}\n\n[pipeline]\npackage_weight_cap_g = {cap}\n\n\
             [[channels]]\ncode = {code:?}\nkind = \"shopify\"\nbase_url = {curl:?}\ntoken = {token:?}\n\n\
             [carrier]\nbase_url = {carrier:?}\napi_key = {key:?}\n",
            db = s.database.url,
            redis = s.redis.url,
            prefix = s.redis.prefix,
            hb = s.worker.heartbeat_secs,
            poll = s.worker.poll_interval_ms,
            tick = s.scheduler.tick_secs,
            cap = s.pipeline.package_weight_cap_g,
            code = channel.code,
            curl = channel.base_url,
            token = channel.token.expose_secret(),
            carrier = s.carrier.base_url,
            key = s.carrier.api_key.expose_secret(),
        )
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// The payloads queued on `queue` that have not run yet, with their ids.
    pub async fn pending_jobs(&self, queue: Queue) -> Vec<(String, serde_json::Value)> {
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT id, job FROM apalis.jobs WHERE job_type = $1 AND status = 'Pending' ORDER BY id",
        )
        .bind(queue.name())
        .fetch_all(&self.pool)
        .await
        .unwrap();
        rows.into_iter()
            .map(|(id, job)| (id, serde_json::from_slice(&job).unwrap()))
            .collect()
    }

    /// Runs every pending job of `queue` once through the worker's own
    /// dispatch (a failure fails the test) and marks it done; returns the
    /// payloads it ran.
    pub async fn run_pending(&self, queue: Queue) -> Vec<serde_json::Value> {
        let mut payloads = Vec::new();
        for (id, payload) in self.pending_jobs(queue).await {
            runner::dispatch(&self.deps, queue, payload.clone())
                .await
                .unwrap_or_else(|e| panic!("{queue} job {payload} failed: {e}"));
            sqlx::query("UPDATE apalis.jobs SET status = 'Done', done_at = now() WHERE id = $1")
                .bind(&id)
                .execute(&self.pool)
                .await
                .unwrap();
            payloads.push(payload);
        }
        payloads
    }

    /// Units on hand per (SKU, warehouse): the starting point stock must
    /// balance against.
    pub async fn on_hand(&self) -> std::collections::BTreeMap<(String, String), i64> {
        sqlx::query_as::<_, (String, String, i32)>("SELECT sku, warehouse, on_hand FROM stock")
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(sku, warehouse, units)| ((sku, warehouse), i64::from(units)))
            .collect()
    }

    /// [`TestApp::count`] with one bound id (`$1`).
    pub async fn count_with(&self, sql: &'static str, id: i64) -> i64 {
        sqlx::query_scalar(sql)
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}
