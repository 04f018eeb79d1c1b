//! The worker: one apalis worker per queue, all in one process, and the one
//! place where a job's result becomes a queue decision.
//!
//! A handler returns `Result<(), JobError>`; [`settle`] maps the error class
//! onto the queue:
//!
//! * retryable / unknown outcome: the job's `run_at` is moved to now +
//!   backoff (exponential, full jitter, capped, per queue) *in the
//!   database*, so the delay survives a crash and holds no worker slot;
//! * rate limited / circuit open: `run_at` is moved to when the API asked
//!   (Retry-After) or when its circuit breaker may close, and the run is
//!   recorded as a deferral (`crate::retry`), so it spends no attempt;
//! * permanent, or out of attempts: the job is recorded in `dead_letters`
//!   with its raw payload and ends `Killed`, never retried on its own.
//!
//! Every failed run is also kept in `job_failures` (class, message, worker,
//! time), and a payload that cannot be read at all is a permanent failure.
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

use crate::breaker::Breakers;
use crate::carrier::CarrierApi;
use crate::carrier::easypost::EasyPostClient;
use crate::channel::shopify::ShopifyClient;
use crate::channel::{ChannelApi, ChannelKind};
use crate::dead_letter::JobRefs;
use crate::error::{ErrorClass, JobError};
use crate::limiter::Limiters;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::raw::{RawPayload, RawPayloads, parse_json};
use crate::retry::Deferral;
use crate::settings::{QueueSettings, Settings};
use crate::{cancel, commit, import, purchase, rate, render, reserve, split};

/// Everything a handler may need. Each handler takes only the pieces it uses.
pub struct Deps {
    pub pool: PgPool,
    pub settings: Settings,
    /// Channel adapters by channel code, each behind its rate limit and
    /// its circuit breaker.
    pub channels: HashMap<String, Arc<dyn ChannelApi>>,
    /// The carrier adapter, behind its rate limit and its circuit breaker.
    pub carrier: Arc<dyn CarrierApi>,
    pub metrics: Metrics,
    /// The circuit breakers of the external APIs.
    pub breakers: Breakers,
    /// The fleet's rate limits of the external APIs.
    pub limiters: Limiters,
}

impl Deps {
    /// Connects to Postgres, registers the configured channels and builds
    /// the HTTP adapters from configuration, each behind its rate limit
    /// (`[limits.<code>]`, `[limits.carrier]`) and, outside that, its circuit
    /// breaker (`shopify:<code>`, `easypost`): a call the open breaker
    /// refuses takes no slot of the limit. Redis is not needed to start:
    /// breakers and limiters keep local state while it cannot be reached.
    pub async fn from_settings(settings: &Settings) -> anyhow::Result<Arc<Deps>> {
        let pool =
            crate::db::connect(&settings.database.url, settings.database.max_connections).await?;
        crate::db::warn_about_server(&pool).await;
        let metrics = Metrics::new();
        let breakers = Breakers::from_settings(settings, metrics.clone())?;
        let limiters = Limiters::from_settings(
            settings,
            breakers.redis().map(|r| r.connection()),
            metrics.clone(),
        )?;
        let mut channels: HashMap<String, Arc<dyn ChannelApi>> = HashMap::new();
        for ch in &settings.channels {
            let timeout = Duration::from_millis(ch.timeout_ms);
            let api: Arc<dyn ChannelApi> = match ch.kind {
                ChannelKind::Shopify => breakers.channel(
                    "shopify",
                    &ch.code,
                    limiters.channel(
                        "shopify",
                        &ch.code,
                        settings.channel_limit(&ch.code, ch.kind),
                        Arc::new(ShopifyClient::new(&ch.base_url, ch.token.clone(), timeout)?),
                    ),
                ),
                other => anyhow::bail!(
                    "channel {:?}: the {other:?} adapter is not available yet; configure a shopify channel",
                    ch.code
                ),
            };
            channels.insert(ch.code.clone(), api);
        }
        let carrier = breakers.carrier(
            "easypost",
            limiters.carrier(
                "easypost",
                settings.carrier_limit(),
                Arc::new(EasyPostClient::new(
                    &settings.carrier.base_url,
                    settings.carrier.api_key.clone(),
                    Duration::from_millis(settings.carrier.timeout_ms),
                )?),
            ),
        );
        Ok(Arc::new(Deps {
            pool,
            settings: settings.clone(),
            channels,
            carrier,
            metrics,
            breakers,
            limiters,
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
    format!("{}{queue}-r{restarts}", process_worker_prefix(prefix))
}

/// How every worker name of this start of this process begins
/// (`{prefix}-{host}-{pid}-{start time}-`), and no other process's does.
pub fn process_worker_prefix(prefix: &str) -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into());
    let started = START.get_or_init(|| chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f").to_string());
    format!("{prefix}-{host}-{}-{started}-", std::process::id())
}

/// Returns every job still claimed by workers whose names begin with
/// `worker_prefix` to `Pending`, unlocked, so that another worker takes it
/// at once instead of after the orphan window. For a stopping process:
/// jobs fetched in a batch but never started (`Queued`) keep their
/// attempts; jobs cut off at the shutdown deadline (`Running`) spend one,
/// as apalis counts a re-enqueued orphan. Returns how many were released.
pub async fn release_claimed(pool: &PgPool, worker_prefix: &str) -> Result<u64, sqlx::Error> {
    let released = sqlx::query(
        "UPDATE apalis.jobs
         SET status = 'Pending', lock_by = NULL, lock_at = NULL, done_at = NULL,
             attempts = attempts + CASE WHEN status = 'Running' THEN 1 ELSE 0 END
         WHERE status IN ('Queued', 'Running') AND starts_with(lock_by, $1)",
    )
    .bind(worker_prefix)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(released)
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
    let listen_pool = crate::db::listen_pool(&deps.settings.database.url, queues.len() as u32)?;
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
        let listen_pool = listen_pool.clone();
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
                .stream(Pubsub::new(listen_pool.clone(), queue.name().to_string()))
                .interval(Duration::from_millis(s.worker.poll_interval_ms.max(5)));
            // Handlers get the stored bytes and read them themselves, so
            // that a payload which is not JSON is dead-lettered, not stuck.
            let backend = RawPayloads::new(
                PostgresStorage::<serde_json::Value>::new(&deps.pool)
                    .with_config(config)
                    .poll_with_strategy(strategy),
            );
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
    payload: RawPayload,
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
    let payload = match parse_json(&payload) {
        Ok(payload) => payload,
        Err(reason) => {
            // Unreadable bytes cannot become readable by running again:
            // dead-lettered at once, the bytes kept as they are.
            let err = JobError::permanent(reason);
            deps.metrics
                .observe_job(queue, Err(&err), started.elapsed());
            let span = tracing::info_span!("job", job_id = %task_id, %queue, attempt);
            return Err(settle(
                &deps,
                queue,
                &task_id.to_string(),
                attempt,
                JobRefs::default(),
                err,
            )
            .instrument(span)
            .await);
        }
    };
    // Order and package ids go on every log line of the job when the payload
    // names them; payloads carry ids only, never personal data.
    let order_id = payload.get("order_id").and_then(serde_json::Value::as_i64);
    let package_id = payload
        .get("package_id")
        .and_then(serde_json::Value::as_i64);
    let span = tracing::info_span!("job", job_id = %task_id, %queue, attempt, order_id, package_id);
    async move {
        let result = dispatch(&deps, queue, payload).await;
        deps.metrics
            .observe_job(queue, result.as_ref().map(|_| ()), started.elapsed());
        match result {
            Ok(()) => Ok(()),
            Err(err) => {
                let refs = JobRefs {
                    order_id,
                    package_id,
                };
                Err(settle(&deps, queue, &task_id.to_string(), attempt, refs, err).await)
            }
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
        Queue::Cancel => cancel::run(&deps.pool, deps.carrier.as_ref(), decode(payload)?).await,
    }
}

/// Backoff after `attempt` spent attempts: full jitter (uniform) under an
/// exponential ceiling, `backoff_base_ms` doubled per attempt and capped at
/// `backoff_cap_secs` ([`backoff_ceiling`]); never zero: at least 50 ms, or
/// the ceiling when that is lower.
pub fn backoff(attempt: usize, queue: &QueueSettings) -> Duration {
    let ceiling = (backoff_ceiling(attempt, queue).as_millis() as u64).max(1);
    let floor = ceiling.min(50);
    Duration::from_millis(rand::rng().random_range(floor..=ceiling))
}

/// The most [`backoff`] waits after `attempt` spent attempts: base, 2 x
/// base, 4 x base, ... up to the cap.
pub fn backoff_ceiling(attempt: usize, queue: &QueueSettings) -> Duration {
    let cap = Duration::from_secs(queue.backoff_cap_secs).max(Duration::from_millis(1));
    let base = Duration::from_millis(queue.backoff_base_ms.max(1));
    let exp = attempt.saturating_sub(1).min(31) as u32;
    base.saturating_mul(2u32.saturating_pow(exp)).min(cap)
}

/// Turns a failed attempt into what apalis should do with the job.
async fn settle(
    deps: &Deps,
    queue: Queue,
    job_id: &str,
    attempt: usize,
    refs: JobRefs,
    err: JobError,
) -> BoxDynError {
    let q = deps.settings.queue(queue);
    // Every failed run is kept, so a dead letter shows its whole history.
    if let Err(db) = crate::dead_letter::record_failure(
        &deps.pool,
        job_id,
        queue,
        attempt,
        err.class,
        &err.message,
    )
    .await
    {
        tracing::warn!(error = %db, "could not record the failed run");
    }
    // Waits the API asked for, or an open breaker: rescheduled without
    // spending an attempt, however long it lasts.
    let deferral = match err.class {
        ErrorClass::RateLimited { retry_after } => Some((
            Deferral::RateLimited,
            crate::retry::with_jitter(
                retry_after.unwrap_or(Duration::from_secs(1)),
                Duration::from_millis(250),
            ),
        )),
        ErrorClass::CircuitOpen { retry_in } => Some((
            Deferral::CircuitOpen,
            crate::retry::with_jitter(retry_in, Duration::from_secs(1)),
        )),
        ErrorClass::Retryable | ErrorClass::UnknownOutcome | ErrorClass::Permanent => None,
    };
    if let Some((reason, delay)) = deferral {
        tracing::info!(class = %err.class, error = %err.message, retry_in_ms = delay.as_millis() as u64, "job deferred; no attempt spent");
        deps.metrics.deferred(queue, reason);
        if let Err(db) = crate::retry::defer(&deps.pool, job_id, attempt, reason, delay).await {
            tracing::warn!(error = %db, "could not store the deferral; the job runs again at once");
        }
        return Box::new(RetryAfterError::new(err.message, delay));
    }

    let deferred = match crate::retry::deferrals(&deps.pool, job_id, attempt).await {
        Ok(n) => n,
        Err(db) => {
            tracing::warn!(error = %db, "could not read the job's deferrals; counting every run");
            0
        }
    };
    let spent = crate::retry::spent(attempt, deferred);
    let max_attempts = q.max_attempts.max(1) as usize;
    let exhausted = spent >= max_attempts;
    if err.class == ErrorClass::Permanent || exhausted {
        let reason = if exhausted && err.class != ErrorClass::Permanent {
            if deferred > 0 {
                format!(
                    "gave up after {spent} attempts (and {deferred} deferred runs): {}",
                    err.message
                )
            } else {
                format!("gave up after {spent} attempts: {}", err.message)
            }
        } else {
            err.message.clone()
        };
        tracing::error!(class = %err.class, error = %reason, "job dead-lettered");
        if let Err(db) =
            crate::dead_letter::record(&deps.pool, job_id, queue, err.class, &reason, spent, refs)
                .await
        {
            // The job is not dropped: it goes back to the queue after a
            // backoff, runs again and is recorded then.
            tracing::error!(error = %db, "could not record the dead letter; the job will run again");
            let delay = backoff(spent, &q);
            let _ = sqlx::query("UPDATE apalis.jobs SET run_at = now() + $2 WHERE id = $1")
                .bind(job_id)
                .bind(delay)
                .execute(&deps.pool)
                .await;
            return Box::new(RetryAfterError::new(
                format!("{reason} (dead letter not recorded: {db})"),
                delay,
            ));
        }
        if let Err(db) = crate::retry::forget(&deps.pool, job_id).await {
            tracing::warn!(error = %db, "could not forget the dead job's deferrals");
        }
        deps.metrics.dead_lettered(queue);
        return Box::new(AbortError::new(reason));
    }
    let delay = backoff(spent, &q);
    tracing::warn!(class = %err.class, error = %err.message, spent, max_attempts, retry_in_ms = delay.as_millis() as u64, "job failed; retrying later");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn q(base_ms: u64, cap_secs: u64) -> QueueSettings {
        QueueSettings {
            concurrency: 1,
            max_attempts: 10,
            backoff_base_ms: base_ms,
            backoff_cap_secs: cap_secs,
        }
    }

    #[test]
    fn the_backoff_ceiling_doubles_with_each_attempt_from_the_base() {
        let q = q(500, 3600);
        assert_eq!(backoff_ceiling(1, &q), Duration::from_millis(500));
        for attempt in 1..12 {
            assert_eq!(
                backoff_ceiling(attempt + 1, &q),
                backoff_ceiling(attempt, &q) * 2,
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn the_backoff_never_exceeds_the_cap_even_after_many_attempts() {
        let q = q(1_000, 30);
        for attempt in [1, 5, 6, 7, 20, 64, 10_000, usize::MAX] {
            assert!(backoff_ceiling(attempt, &q) <= Duration::from_secs(30));
            for _ in 0..200 {
                assert!(backoff(attempt, &q) <= Duration::from_secs(30), "{attempt}");
            }
        }
        assert_eq!(backoff_ceiling(64, &q), Duration::from_secs(30));
    }

    #[test]
    fn the_backoff_is_never_zero() {
        for q in [q(0, 0), q(1, 0), q(20, 0), q(1_000, 300)] {
            for attempt in 0..40 {
                let floor = backoff_ceiling(attempt, &q).min(Duration::from_millis(50));
                assert!(floor >= Duration::from_millis(1));
                for _ in 0..50 {
                    assert!(backoff(attempt, &q) >= floor, "{q:?} {attempt}");
                }
            }
        }
    }

    #[test]
    fn the_backoff_is_spread_over_the_whole_range_below_the_ceiling() {
        let q = q(1_000, 300);
        let draws: Vec<Duration> = (0..2_000).map(|_| backoff(6, &q)).collect();
        let ceiling = backoff_ceiling(6, &q);
        assert_eq!(ceiling, Duration::from_secs(32));
        assert!(draws.iter().all(|d| *d <= ceiling));
        // Full jitter: some draws in the lowest and some in the highest tenth.
        assert!(draws.iter().any(|d| *d < ceiling / 10));
        assert!(draws.iter().any(|d| *d > ceiling * 9 / 10));
        // And later attempts wait longer on average.
        let mean = |a: usize| (0..2_000).map(|_| backoff(a, &q).as_millis()).sum::<u128>() / 2_000;
        assert!(mean(8) > mean(4) * 4, "{} vs {}", mean(8), mean(4));
    }
}
