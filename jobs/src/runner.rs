//! The worker: one apalis worker per queue, all in one process, and the one
//! place where a job's result becomes a queue decision.
//!
//! A handler returns `Result<(), JobError>`; [`settle`] maps the error class
//! onto the queue:
//!
//! * retryable / unknown outcome / rate limited: the job's `run_at` is moved
//!   to now + backoff (exponential, full jitter, capped) *in the database*,
//!   so the delay survives a crash and holds no worker slot;
//! * permanent, or out of attempts: the job is recorded in `dead_letters`
//!   with its raw payload and ends `Killed`, never retried on its own.
//!
//! ```no_run
//! # async fn f(settings: conveyor_jobs::settings::Settings) -> anyhow::Result<()> {
//! let deps = conveyor_jobs::runner::Deps::from_settings(&settings).await?;
//! conveyor_jobs::runner::run(deps, conveyor_jobs::queue::Queue::ALL.to_vec(), async {
//!     let _ = tokio::signal::ctrl_c().await;
//! }).await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::layers::WorkerBuilderExt;
use apalis::prelude::{Data, Monitor, TaskId, WorkerBuilder};
use apalis_core::backend::ext::BackendExt;
use apalis_core::backend::ext::poll_strategy::Strategy;
use apalis_core::backend::queue::Queue as ApalisQueue;
use apalis_core::error::{AbortError, BoxDynError, RetryAfterError};
use apalis_core::task::attempt::Attempt;
use apalis_postgres::{Config, PostgresStorage, Pubsub};
use rand::Rng;
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use tracing::Instrument;

use crate::carrier::CarrierApi;
use crate::carrier::easypost::EasyPostClient;
use crate::channel::shopify::ShopifyClient;
use crate::channel::{ChannelApi, ChannelKind};
use crate::error::{ErrorClass, JobError};
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::settings::Settings;
use crate::{commit, import, purchase, rate, render, reserve, split};

/// Everything a handler may need. Each handler takes only the pieces it uses.
pub struct Deps {
    pub pool: PgPool,
    pub settings: Settings,
    /// Channel adapters by channel code.
    pub channels: HashMap<String, Arc<dyn ChannelApi>>,
    pub carrier: Arc<dyn CarrierApi>,
    pub metrics: Metrics,
}

impl Deps {
    /// Connects to Postgres, registers the configured channels and builds
    /// the HTTP adapters from configuration.
    pub async fn from_settings(settings: &Settings) -> anyhow::Result<Arc<Deps>> {
        let pool =
            crate::db::connect(&settings.database.url, settings.database.max_connections).await?;
        let mut channels: HashMap<String, Arc<dyn ChannelApi>> = HashMap::new();
        for ch in &settings.channels {
            let timeout = Duration::from_millis(ch.timeout_ms);
            let api: Arc<dyn ChannelApi> = match ch.kind {
                ChannelKind::Shopify => {
                    Arc::new(ShopifyClient::new(&ch.base_url, ch.token.clone(), timeout)?)
                }
                other => anyhow::bail!(
                    "channel {:?}: the {other:?} adapter is not available yet; configure a shopify channel",
                    ch.code
                ),
            };
            channels.insert(ch.code.clone(), api);
        }
        let carrier = Arc::new(EasyPostClient::new(
            &settings.carrier.base_url,
            settings.carrier.api_key.clone(),
            Duration::from_millis(settings.carrier.timeout_ms),
        )?);
        Ok(Arc::new(Deps {
            pool,
            settings: settings.clone(),
            channels,
            carrier,
            metrics: Metrics::new(),
        }))
    }

    pub fn channel(&self, code: &str) -> Result<&Arc<dyn ChannelApi>, JobError> {
        self.channels.get(code).ok_or_else(|| {
            JobError::permanent(format!("channel {code:?} is not configured on this worker"))
        })
    }
}

/// Writes the configured channels into the `channels` table (new ones are
/// added; a changed kind is updated). Cursors are kept.
pub async fn register_channels(pool: &PgPool, settings: &Settings) -> Result<(), sqlx::Error> {
    for ch in &settings.channels {
        sqlx::query(
            "INSERT INTO channels (code, kind) VALUES ($1, $2)
             ON CONFLICT (code) DO UPDATE SET kind = EXCLUDED.kind",
        )
        .bind(&ch.code)
        .bind(ch.kind)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// A name unique to this start of this process: a restarted worker must
/// never reuse a dead one's name, or the dead one's lease would stay alive.
pub fn unique_worker_name(prefix: &str, queue: Queue, restarts: usize) -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into());
    let started = START.get_or_init(|| chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f").to_string());
    format!(
        "{prefix}-{host}-{}-{started}-{queue}-r{restarts}",
        std::process::id()
    )
}

static START: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Runs workers for `queues` until `shutdown` resolves, then stops fetching,
/// lets in-flight jobs finish within the configured deadline and returns.
pub async fn run(
    deps: Arc<Deps>,
    queues: Vec<Queue>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    register_channels(&deps.pool, &deps.settings).await?;
    let deadline = Duration::from_secs(deps.settings.worker.shutdown_deadline_secs);
    let mut monitor = Monitor::new()
        .shutdown_timeout(deadline)
        // A transient database error ends an apalis worker; the monitor
        // starts it again (with a new name) instead of leaving the queue idle.
        .should_restart(|ctx, err| {
            tracing::warn!(worker = %ctx.name(), error = %err, "worker stopped; restarting");
            true
        });
    for queue in queues {
        let deps = deps.clone();
        monitor = monitor.register(move |restarts| {
            let s = &deps.settings;
            let config = Config::default()
                .queue(queue.name())
                .batch_size(s.worker.batch_size.max(1))
                .heartbeat_interval(s.heartbeat())
                .missed_heartbeats(s.worker.missed_heartbeats.max(2));
            // LISTEN/NOTIFY picks new jobs up at once; the short interval
            // picks up jobs whose run_at (a backoff) has come.
            let strategy = Strategy::new()
                .stream(Pubsub::new(deps.pool.clone(), queue.name().to_string()))
                .interval(Duration::from_millis(s.worker.poll_interval_ms.max(5)));
            let backend = PostgresStorage::<serde_json::Value>::new(&deps.pool)
                .with_config(config)
                .poll_with_strategy(strategy);
            WorkerBuilder::new(unique_worker_name(&s.worker.name_prefix, queue, restarts))
                .backend(backend)
                .concurrency(s.queue(queue).concurrency.max(1))
                .catch_panic()
                .data(deps.clone())
                .build(handle)
        });
    }
    monitor
        .run_with_signal(async move {
            shutdown.await;
            Ok(())
        })
        .await?;
    Ok(())
}

/// The task function every queue's worker runs.
async fn handle(
    payload: serde_json::Value,
    deps: Data<Arc<Deps>>,
    attempt: Attempt,
    task_id: TaskId,
    queue: ApalisQueue,
) -> Result<(), BoxDynError> {
    let Ok(queue) = queue.as_ref().parse::<Queue>() else {
        return Err(Box::new(AbortError::new(format!(
            "no handler for queue {:?}",
            queue.as_ref()
        ))));
    };
    let started = Instant::now();
    let attempt = attempt.current();
    // Order and package ids go on every log line of the job when the payload
    // names them; payloads carry ids only, never personal data.
    let order_id = payload.get("order_id").and_then(serde_json::Value::as_i64);
    let package_id = payload
        .get("package_id")
        .and_then(serde_json::Value::as_i64);
    let span = tracing::info_span!("job", job_id = %task_id, %queue, attempt, order_id, package_id);
    async move {
        let result = dispatch(&deps, queue, payload).await;
        deps.metrics.observe_job(queue, &result, started.elapsed());
        match result {
            Ok(()) => Ok(()),
            Err(err) => Err(settle(&deps, queue, &task_id.to_string(), attempt, err).await),
        }
    }
    .instrument(span)
    .await
}

fn decode<T: DeserializeOwned>(payload: serde_json::Value) -> Result<T, JobError> {
    serde_json::from_value(payload)
        .map_err(|e| JobError::permanent(format!("payload cannot be read: {e}")))
}

/// Runs one job of `queue`: what the worker does with each task, minus the
/// retry and dead-letter bookkeeping. Tests call it directly.
pub async fn dispatch(
    deps: &Deps,
    queue: Queue,
    payload: serde_json::Value,
) -> Result<(), JobError> {
    match queue {
        Queue::Import => import::run(deps, decode(payload)?).await.map(|_| ()),
        Queue::Reserve => reserve::run(&deps.pool, decode(payload)?).await,
        Queue::Split => split::run(&deps.pool, &deps.settings.pipeline, decode(payload)?).await,
        Queue::Rate => rate::run(&deps.pool, deps.carrier.as_ref(), decode(payload)?).await,
        Queue::Render => render::run(&deps.pool, decode(payload)?).await,
        Queue::Purchase => purchase::run(&deps.pool, deps.carrier.as_ref(), decode(payload)?).await,
        Queue::Commit => commit::run(deps, decode(payload)?).await,
    }
}

/// Backoff before attempt `attempt + 1`: full jitter over an exponential
/// ceiling (1 s, 2 s, 4 s, ... capped at 5 min).
pub fn backoff(attempt: usize) -> Duration {
    let exp = attempt.saturating_sub(1).min(20) as u32;
    let ceiling = Duration::from_secs(1)
        .saturating_mul(2u32.saturating_pow(exp))
        .min(Duration::from_secs(300));
    let millis = rand::rng().random_range(0..=ceiling.as_millis().max(1) as u64);
    Duration::from_millis(millis.max(50))
}

/// Turns a failed attempt into what apalis should do with the job.
async fn settle(
    deps: &Deps,
    queue: Queue,
    job_id: &str,
    attempt: usize,
    err: JobError,
) -> BoxDynError {
    let max_attempts = deps.settings.queue(queue).max_attempts.max(1) as usize;
    let exhausted = attempt >= max_attempts;
    if err.class == ErrorClass::Permanent || exhausted {
        let reason = if exhausted && err.class != ErrorClass::Permanent {
            format!("gave up after {attempt} attempts: {}", err.message)
        } else {
            err.message.clone()
        };
        tracing::error!(class = %err.class, error = %reason, "job dead-lettered");
        if let Err(db) =
            crate::dead_letter::record(&deps.pool, job_id, queue, err.class, &reason, attempt).await
        {
            // The job is not dropped: returning a plain error leaves it Failed
            // with attempts left, so it runs again and is recorded then.
            tracing::error!(error = %db, "could not record the dead letter; the job will run again");
            return format!("{reason} (dead letter not recorded: {db})").into();
        }
        deps.metrics.dead_lettered(queue);
        return Box::new(AbortError::new(reason));
    }
    let delay = match err.class {
        ErrorClass::RateLimited { retry_after } => retry_after.unwrap_or(Duration::from_secs(1)),
        _ => backoff(attempt),
    };
    tracing::warn!(class = %err.class, error = %err.message, retry_in_ms = delay.as_millis() as u64, "job failed; retrying later");
    let moved = sqlx::query("UPDATE apalis.jobs SET run_at = now() + $2 WHERE id = $1")
        .bind(job_id)
        .bind(delay)
        .execute(&deps.pool)
        .await;
    if let Err(db) = moved {
        tracing::warn!(error = %db, "could not store the backoff; the job retries at once");
    }
    Box::new(RetryAfterError::new(err.message, delay))
}
