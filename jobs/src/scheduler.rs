//! The scheduler: one import job per channel per tick.
//!
//! Any number of schedulers may run; one of them leads ([`crate::leader`])
//! and only the leader fires. Import jobs are keyed by channel and tick
//! (`shop:176398000`) besides, so two schedulers that both believe they
//! lead for a moment still produce one job per tick between them: the
//! queue's idempotency key does the deduplication.
//!
//! The leader also runs maintenance: [`crate::retention`] prunes finished
//! jobs every `retention.interval_secs`, in a task of its own so that a
//! long pass never delays an import tick.

use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;

use crate::import::{enqueue_tick, tick_of};
use crate::leader::{self, Election};
use crate::metrics::Metrics;
use crate::settings::Settings;

/// Enqueues this tick's import for every configured channel. Returns how
/// many jobs were new (the others were already enqueued by a peer).
pub async fn fire(
    pool: &PgPool,
    settings: &Settings,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<usize, sqlx::Error> {
    let tick = tick_of(now, settings.scheduler.tick_secs);
    let mut fresh = 0;
    for channel in &settings.channels {
        if enqueue_tick(pool, &channel.code, tick).await? {
            fresh += 1;
        }
    }
    Ok(fresh)
}

/// Fires on every tick while this scheduler leads, until `shutdown`
/// resolves. A database error is logged and the next tick tries again: a
/// scheduler never exits because Postgres blinked.
pub async fn run(
    pool: PgPool,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with_metrics(pool, settings, Metrics::new(), shutdown).await
}

/// [`run`], reporting the leadership on `metrics`
/// (`conveyor_scheduler_leader`).
pub async fn run_with_metrics(
    pool: PgPool,
    settings: Settings,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    crate::runner::register_channels(&pool, &settings).await?;
    let election = Election::start(
        &settings.database.url,
        leader::scheduler_name(),
        &settings.scheduler,
        metrics.scheduler_leader(),
    )?;
    let (leading, mut promoted) = (election.leading(), election.leading());
    let (stop_maintenance, maintenance_stopped) = tokio::sync::watch::channel(false);
    let mut maintenance = tokio::spawn(crate::retention::run(
        pool.clone(),
        settings.retention,
        election.leading(),
        metrics.clone(),
        maintenance_stopped,
    ));
    let mut ticker =
        tokio::time::interval(Duration::from_secs(settings.scheduler.tick_secs.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            // Followers never enqueue.
            _ = ticker.tick() => if *leading.borrow() {
                tick(&pool, &settings).await;
            },
            // A new leader fires at once instead of on its next tick.
            Ok(()) = promoted.changed() => if *promoted.borrow_and_update() {
                tick(&pool, &settings).await;
            },
            _ = &mut shutdown => break,
        }
    }
    // A pass still deleting after a few seconds is cut off: each batch is
    // its own transaction, so nothing is left half done.
    let _ = stop_maintenance.send(true);
    if tokio::time::timeout(Duration::from_secs(5), &mut maintenance)
        .await
        .is_err()
    {
        maintenance.abort();
    }
    election.stop().await;
    Ok(())
}

async fn tick(pool: &PgPool, settings: &Settings) {
    match fire(pool, settings, chrono::Utc::now()).await {
        Ok(n) => tracing::debug!(new_jobs = n, "scheduler tick"),
        Err(e) => tracing::warn!(error = %e, "scheduler tick failed; will try again next tick"),
    }
}
