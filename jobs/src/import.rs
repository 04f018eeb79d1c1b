//! The import job: page through a channel's orders since its cursor and
//! upsert them.
//!
//! Key: channel + scheduler tick, so two schedulers firing together make one
//! job. The job reads from `cursor - overlap` so that an order written while
//! the previous import ran is seen again; upserts keep only the newest
//! version the channel sent (by its `updatedAt`; a cancellation within the
//! same `updatedAt` second also counts as newer), so seeing an order twice changes
//! nothing. Each page is one transaction: its orders, the reserve
//! jobs for new ones, and the cursor move together, so a crash mid-import
//! loses nothing and repeats nothing that matters. One import per channel
//! runs at a time (a lease on the channel row); the lease a crashed run
//! leaves behind is taken over by the next run of the same job, while
//! other imports of the channel wait for it to run out.
//!
//! A malformed order is recorded as `rejected` with its reason and raw
//! payload; it never blocks the rest of the page.
//!
//! A newer version of an order already in the pipeline goes through
//! `crate::replan`: a cancellation enqueues the cancel job, an edit
//! re-plans the order (or puts it on hold once a label was bought), in the
//! same page transaction.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use crate::channel::{ChannelOrder, RejectedOrder};
use crate::error::JobError;
use crate::queue::{NewJob, Queue, enqueue};
use crate::rate_choice::ServiceLevel;
use crate::replan::Prior;
use crate::reserve::ReserveJob;
use crate::runner::Deps;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportJob {
    pub channel: String,
    pub tick: i64,
}

impl ImportJob {
    pub fn key(&self) -> String {
        format!("{}:{}", self.channel, self.tick)
    }

    pub fn to_job(&self) -> NewJob {
        NewJob::new(Queue::Import, self.key(), self)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub pages: u32,
    pub new_orders: u32,
    pub updated_orders: u32,
    pub unchanged_orders: u32,
    pub rejected_orders: u32,
}

pub async fn run(deps: &Deps, job: ImportJob) -> Result<ImportReport, JobError> {
    let api = deps.channel(&job.channel)?.clone();
    let channel: Option<(i64, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT id, cursor FROM channels WHERE code = $1")
            .bind(&job.channel)
            .fetch_optional(&deps.pool)
            .await?;
    let Some((channel_id, cursor)) = channel else {
        return Err(JobError::permanent(format!(
            "channel {:?} is not registered",
            job.channel
        )));
    };
    // One import per channel at a time across the fleet: overlapping imports
    // would fetch the same pages twice and spend the channel's rate budget.
    // The holder names this job and this run: a run of the same job (after
    // its worker died holding the lease) takes the lease over at once.
    let holder = lease_holder(&job, &ulid::Ulid::generate().to_string());
    if !take_lease(&deps.pool, channel_id, &job, &holder).await? {
        tracing::info!(channel = %job.channel, "another import of this channel is running; this tick is skipped");
        return Ok(ImportReport::default());
    }
    let result = import_pages(deps, api.as_ref(), &job, channel_id, cursor, &holder).await;
    let released = sqlx::query(
        "UPDATE channels SET import_lease_until = NULL, import_lease_by = NULL WHERE id = $1 AND import_lease_by = $2",
    )
    .bind(channel_id)
    .bind(&holder)
    .execute(&deps.pool)
    .await;
    if let Err(e) = released {
        // The lease runs out by itself; the next import only waits for that.
        tracing::warn!(error = %e, "import lease not released");
    }
    let report = result?;
    tracing::info!(channel = %job.channel, ?report, "import finished");
    Ok(report)
}

/// How long an import's lease lasts without renewal (renewed every page).
const LEASE_SECS: i64 = 60;

/// `{job key}#{run}`: which job holds the lease, and which run of it.
fn lease_holder(job: &ImportJob, run: &str) -> String {
    format!("{}#{run}", job.key())
}

/// Takes the channel's import lease when it is free, ran out, or is held by
/// an earlier run of the same job. An earlier run is one whose worker died
/// (the queue only runs a job again when its worker stopped answering); if
/// it is somehow still alive, it finds the lease gone at its next page and
/// stops.
async fn take_lease(
    pool: &PgPool,
    channel_id: i64,
    job: &ImportJob,
    holder: &str,
) -> Result<bool, sqlx::Error> {
    let taken = sqlx::query(
        "UPDATE channels SET import_lease_until = now() + make_interval(secs => $3), import_lease_by = $2
         WHERE id = $1 AND (import_lease_until IS NULL OR import_lease_until < now()
                            OR import_lease_by = $2 OR starts_with(import_lease_by, $4))",
    )
    .bind(channel_id)
    .bind(holder)
    .bind(LEASE_SECS as f64)
    .bind(lease_holder(job, ""))
    .execute(pool)
    .await?
    .rows_affected();
    Ok(taken == 1)
}

async fn import_pages(
    deps: &Deps,
    api: &dyn crate::channel::ChannelApi,
    job: &ImportJob,
    channel_id: i64,
    cursor: Option<DateTime<Utc>>,
    holder: &str,
) -> Result<ImportReport, JobError> {
    let overlap = ChronoDuration::seconds(deps.settings.scheduler.overlap_secs as i64);
    let since = cursor
        .map(|c| c - overlap)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let page_size = deps.settings.scheduler.page_size.clamp(1, 250);

    let mut report = ImportReport::default();
    let mut after: Option<String> = None;
    loop {
        let page =
            crate::in_call::read(|| api.orders_page(since, after.as_deref(), page_size)).await?;
        report.pages += 1;
        let mut tx = deps.pool.begin().await?;
        let mut newest: Option<DateTime<Utc>> = None;
        let mut jobs = Vec::new();
        for order in &page.orders {
            newest = newest.max(Some(order.updated_at));
            match upsert_order(&mut tx, channel_id, order).await? {
                Upserted::New { order_id, version } => {
                    report.new_orders += 1;
                    if order.cancelled_at.is_none() {
                        jobs.push(ReserveJob { order_id, version }.to_job());
                    }
                }
                Upserted::Updated(next) => {
                    report.updated_orders += 1;
                    jobs.extend(next);
                }
                Upserted::Unchanged => report.unchanged_orders += 1,
            }
        }
        for rejected in &page.rejected {
            newest = newest.max(rejected.updated_at);
            record_rejected(&mut tx, channel_id, rejected).await?;
            report.rejected_orders += 1;
        }
        let wake = enqueue(&mut tx, &jobs).await?;
        crate::crash::point("import.after_upsert");
        let still_ours = sqlx::query(
            "UPDATE channels SET cursor = GREATEST(cursor, $2), last_import_at = now(),
                    import_lease_until = now() + make_interval(secs => $4)
             WHERE id = $1 AND import_lease_by = $3",
        )
        .bind(channel_id)
        .bind(newest.unwrap_or(since.max(cursor.unwrap_or(since))))
        .bind(holder)
        .bind(LEASE_SECS as f64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if still_ours == 0 {
            // Our lease ran out and another import took over: leave this
            // page to it rather than import concurrently.
            tracing::warn!(channel = %job.channel, "import lease lost; stopping");
            return Ok(report);
        }
        tx.commit().await?;
        wake.send(&deps.pool).await;
        match page.next_page {
            Some(next) if !page.orders.is_empty() || !page.rejected.is_empty() => {
                after = Some(next)
            }
            _ => break,
        }
    }
    Ok(report)
}

enum Upserted {
    New {
        order_id: i64,
        version: i32,
    },
    /// A newer version of an order in the pipeline, with the jobs it makes
    /// due (cancel, or reserve under a new version).
    Updated(Vec<NewJob>),
    Unchanged,
}

/// Inserts the order, or overwrites it when the channel's version is newer.
/// A newer version of an order that was rejected earlier is taken as new.
async fn upsert_order(
    tx: &mut PgConnection,
    channel_id: i64,
    order: &ChannelOrder,
) -> Result<Upserted, JobError> {
    let level = ServiceLevel::from_shipping_title(&order.shipping_title);
    let level = serde_json::to_value(level)
        .ok()
        .and_then(|v| v.as_str().map(str::to_lowercase))
        .unwrap_or_else(|| "standard".into());
    let ship_to = serde_json::to_value(&order.ship_to).unwrap_or_default();
    let cancelled = order.cancelled_at.is_some();
    // The stored version, locked: what an edit changes is judged against it.
    let prior: Option<Prior> = sqlx::query_as(
        "SELECT state, version, ship_to, service_level FROM orders
         WHERE channel_id = $1 AND external_id = $2 FOR UPDATE",
    )
    .bind(channel_id)
    .bind(&order.external_id)
    .fetch_optional(&mut *tx)
    .await?;
    let row: Option<(i64, i32, bool, bool)> = sqlx::query_as(
        "INSERT INTO orders (channel_id, external_id, name, state, channel_updated_at, service_level, ship_to, raw, cancelled_at)
         VALUES ($1, $2, $3, CASE WHEN $8 THEN 'cancelled'::order_state ELSE 'imported'::order_state END, $4, $5, $6, $7,
                 CASE WHEN $8 THEN now() END)
         ON CONFLICT (channel_id, external_id) DO UPDATE
             SET name = EXCLUDED.name,
                 channel_updated_at = EXCLUDED.channel_updated_at,
                 service_level = CASE WHEN orders.state = 'rejected' THEN EXCLUDED.service_level ELSE orders.service_level END,
                 ship_to = CASE WHEN orders.state = 'rejected' THEN EXCLUDED.ship_to ELSE orders.ship_to END,
                 raw = EXCLUDED.raw,
                 updated_at = now(),
                 state = CASE WHEN orders.state = 'rejected' THEN EXCLUDED.state ELSE orders.state END,
                 cancelled_at = CASE WHEN orders.state = 'rejected' THEN EXCLUDED.cancelled_at ELSE orders.cancelled_at END,
                 rejected_reason = CASE WHEN orders.state = 'rejected' THEN NULL ELSE orders.rejected_reason END,
                 version = CASE WHEN orders.state = 'rejected' THEN orders.version + 1 ELSE orders.version END
             WHERE orders.channel_updated_at < EXCLUDED.channel_updated_at
                -- updatedAt has whole seconds: a cancellation in the same
                -- second as the version we hold carries the same one. Only
                -- that is told apart (an order is never un-cancelled); any
                -- other same-second body is not taken as newer, so that a
                -- re-read never flips an order between two versions.
                OR (orders.channel_updated_at = EXCLUDED.channel_updated_at
                    AND orders.raw ->> 'cancelledAt' IS NULL
                    AND EXCLUDED.raw ->> 'cancelledAt' IS NOT NULL)
         RETURNING id, version, (xmax = 0) AS inserted,
                   (SELECT count(*) = 0 FROM order_lines l WHERE l.order_id = orders.id) AS no_lines",
    )
    .bind(channel_id)
    .bind(&order.external_id)
    .bind(&order.name)
    .bind(order.updated_at)
    .bind(&level)
    .bind(&ship_to)
    .bind(&order.raw)
    .bind(cancelled)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((order_id, version, inserted, no_lines)) = row else {
        return Ok(Upserted::Unchanged);
    };
    if !inserted && !no_lines {
        // A newer version of an order already in the pipeline: the raw
        // payload is refreshed above; the plan (lines, ship-to, service
        // level) only changes through a re-plan.
        if let Some(prior) = prior {
            let (outcome, jobs) =
                crate::replan::on_newer_version(tx, order_id, &prior, order, &level).await?;
            tracing::debug!(order_id, ?outcome, "newer version of an order");
            return Ok(Upserted::Updated(jobs));
        }
        return Ok(Upserted::Updated(Vec::new()));
    }
    store_lines(tx, order_id, &order.lines).await?;
    Ok(Upserted::New { order_id, version })
}

/// Writes an order's lines as the channel sent them: new lines added, known
/// ones (by the channel's line id) brought up to date.
pub(crate) async fn store_lines(
    tx: &mut PgConnection,
    order_id: i64,
    lines: &[crate::channel::ChannelLine],
) -> Result<(), sqlx::Error> {
    for line in lines {
        sqlx::query(
            "INSERT INTO order_lines (order_id, external_id, sku, name, quantity, fulfillment_ref)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (order_id, external_id) DO UPDATE
                 SET sku = EXCLUDED.sku, name = EXCLUDED.name, quantity = EXCLUDED.quantity,
                     fulfillment_ref = EXCLUDED.fulfillment_ref",
        )
        .bind(order_id)
        .bind(&line.external_id)
        .bind(&line.sku)
        .bind(&line.name)
        .bind(line.quantity as i32)
        .bind(&line.fulfillment_ref)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Keeps a malformed order where ops can see it: as a `rejected` order when
/// it has an id (never overwriting a good version of it), and in the audit
/// log either way.
async fn record_rejected(
    tx: &mut PgConnection,
    channel_id: i64,
    rejected: &RejectedOrder,
) -> Result<(), JobError> {
    tracing::warn!(external_id = ?rejected.external_id, reason = %rejected.reason, "order rejected");
    if let Some(external_id) = &rejected.external_id {
        sqlx::query(
            "INSERT INTO orders (channel_id, external_id, name, state, channel_updated_at, raw, rejected_reason)
             VALUES ($1, $2, $2, 'rejected', COALESCE($3, now()), $4, $5)
             ON CONFLICT (channel_id, external_id) DO UPDATE
                 SET raw = EXCLUDED.raw, rejected_reason = EXCLUDED.rejected_reason,
                     channel_updated_at = EXCLUDED.channel_updated_at, updated_at = now()
                 WHERE orders.state = 'rejected' AND orders.channel_updated_at <= EXCLUDED.channel_updated_at",
        )
        .bind(channel_id)
        .bind(external_id)
        .bind(rejected.updated_at)
        .bind(&rejected.raw)
        .bind(&rejected.reason)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO audit_log (actor, action, entity, entity_id, detail)
         VALUES ('import', 'order.rejected', 'order', $1, jsonb_build_object('channel_id', $2::bigint, 'reason', $3::text, 'raw', $4::jsonb))",
    )
    .bind(rejected.external_id.clone().unwrap_or_else(|| "(no id)".into()))
    .bind(channel_id)
    .bind(&rejected.reason)
    .bind(&rejected.raw)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The scheduler tick an instant falls in, for channel import keys.
pub fn tick_of(at: DateTime<Utc>, tick_secs: u64) -> i64 {
    at.timestamp().div_euclid(tick_secs.max(1) as i64)
}

/// Used by tests and the scheduler alike: enqueue the import job of this
/// tick (a no-op when another scheduler already did).
pub async fn enqueue_tick(pool: &PgPool, channel: &str, tick: i64) -> Result<bool, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let job = ImportJob {
        channel: channel.to_string(),
        tick,
    };
    let wake = enqueue(&mut conn, &[job.to_job()]).await?;
    let inserted = wake.inserted() == 1;
    wake.send(pool).await;
    Ok(inserted)
}
