//! The scheduler: one import job per channel per tick.
//!
//! Import jobs are keyed by channel and tick (`shop:176398000`), so any
//! number of schedulers firing in the same tick produce one job between
//! them: the queue's idempotency key does the deduplication, no
//! coordination needed.

use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;

use crate::import::{enqueue_tick, tick_of};
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

/// Fires on every tick until `shutdown` resolves. A database error is
/// logged and the next tick tries again: a scheduler never exits because
/// Postgres blinked.
pub async fn run(
    pool: PgPool,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    crate::runner::register_channels(&pool, &settings).await?;
    let mut ticker =
        tokio::time::interval(Duration::from_secs(settings.scheduler.tick_secs.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                match fire(&pool, &settings, chrono::Utc::now()).await {
                    Ok(n) => tracing::debug!(new_jobs = n, "scheduler tick"),
                    Err(e) => tracing::warn!(error = %e, "scheduler tick failed; will try again next tick"),
                }
            }
            _ = &mut shutdown => break,
        }
    }
    Ok(())
}
