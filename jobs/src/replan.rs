//! What a newer version of an order already in the pipeline changes.
//!
//! The import calls [`on_newer_version`] in its page transaction, with the
//! order's row locked, whenever the channel sends a version of an order
//! newer than the stored one:
//!
//! * cancelled on the channel (`cancelledAt`): a cancel job
//!   (`crate::cancel`) is enqueued, keyed by order + version;
//! * edited (lines, quantities, ship-to address or shipping method changed)
//!   before any label was bought: the order is re-planned. Its lines take
//!   the new quantities (a line the channel dropped keeps its row with
//!   quantity 0), the packages of the old plan are voided and their quotes
//!   and packing slips dropped, the version is bumped, and reserve is
//!   enqueued under the new version's key. That reserve job releases what
//!   the old plan held before it allocates again, in its own transaction
//!   (order row, then stock rows: the lock order every job keeps);
//! * edited after a label was bought: not re-planned. The order goes
//!   `on_hold` with the reason, and the audit log keeps the lines before
//!   and after, for ops.
//!
//! Any other change (a note, a tag) leaves the plan alone. Jobs of an old
//! plan still queued are no-ops: reserve, split and commit compare the
//! version in their key, and rate, render and purchase find their package
//! voided (a purchase that bought a label for a voided package refunds it).
//!
//! ```no_run
//! # async fn f(tx: &mut sqlx::PgConnection) -> Result<(), conveyor_jobs::error::JobError> {
//! // Inside a reserve job's transaction, with the order's row locked:
//! let units = conveyor_jobs::replan::release_reservations(tx, 42).await?;
//! # Ok(()) }
//! ```

use serde_json::{Value, json};
use sqlx::PgConnection;

use crate::address::Address;
use crate::cancel::CancelJob;
use crate::channel::ChannelOrder;
use crate::error::JobError;
use crate::queue::NewJob;
use crate::reserve::ReserveJob;
use crate::state::OrderState;
use crate::stock::{self, Change, Units};

/// The stored order as it was before the import's upsert.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Prior {
    pub state: OrderState,
    pub version: i32,
    pub ship_to: Value,
    pub service_level: String,
}

/// What the newer version does to the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing that changes the plan.
    Unchanged,
    /// A cancel job was enqueued.
    Cancelling,
    /// Re-planned under a new version; reserve was enqueued.
    Replanned,
    /// Put on hold for ops (or kept there).
    Held,
    /// Edited after it shipped or was cancelled: recorded, nothing changes.
    Ignored,
}

/// Applies a newer channel version of an order already in the pipeline.
/// `service_level` is the new version's level as stored on orders. Returns
/// the jobs to enqueue in the same transaction.
pub async fn on_newer_version(
    tx: &mut PgConnection,
    order_id: i64,
    prior: &Prior,
    order: &ChannelOrder,
    service_level: &str,
) -> Result<(Outcome, Vec<NewJob>), JobError> {
    if order.cancelled_at.is_some() {
        if prior.state == OrderState::Cancelled {
            return Ok((Outcome::Unchanged, Vec::new()));
        }
        let job = CancelJob {
            order_id,
            version: prior.version,
        };
        return Ok((Outcome::Cancelling, vec![job.to_job()]));
    }

    let before: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT external_id, sku, quantity FROM order_lines WHERE order_id = $1 AND quantity > 0
         ORDER BY external_id",
    )
    .bind(order_id)
    .fetch_all(&mut *tx)
    .await?;
    let mut after: Vec<(String, String, i32)> = order
        .lines
        .iter()
        .map(|l| (l.external_id.clone(), l.sku.clone(), l.quantity as i32))
        .collect();
    after.sort();
    let lines_changed = before != after;
    let address_changed = serde_json::from_value::<Address>(prior.ship_to.clone())
        .ok()
        .as_ref()
        != Some(&order.ship_to);
    let level_changed = prior.service_level != service_level;
    if !lines_changed && !address_changed && !level_changed {
        return Ok((Outcome::Unchanged, Vec::new()));
    }
    let change = json!({
        "lines_before": lines_json(&before),
        "lines_after": lines_json(&after),
        "address_changed": address_changed,
        "service_level_before": prior.service_level,
        "service_level_after": service_level,
    });

    match prior.state {
        OrderState::Shipped | OrderState::Cancelled | OrderState::Rejected => {
            audit(tx, order_id, "order.edit_ignored", prior, change).await?;
            return Ok((Outcome::Ignored, Vec::new()));
        }
        _ => {}
    }
    let labels: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM labels l JOIN packages p ON p.id = l.package_id
         WHERE p.order_id = $1 AND p.state <> 'voided' AND l.state <> 'refunded'",
    )
    .bind(order_id)
    .fetch_one(&mut *tx)
    .await?;
    if labels > 0 || matches!(prior.state, OrderState::Labelled | OrderState::OnHold) {
        let reason = format!(
            "edited on the channel after {labels} label(s) were bought; not re-planned automatically"
        );
        sqlx::query(
            "UPDATE orders SET state = 'on_hold', hold_reason = $2, updated_at = now() WHERE id = $1",
        )
        .bind(order_id)
        .bind(&reason)
        .execute(&mut *tx)
        .await?;
        let mut detail = change;
        detail["reason"] = json!(reason);
        audit(tx, order_id, "order.held", prior, detail).await?;
        tracing::warn!(order_id, "order edited after a label was bought; on hold");
        return Ok((Outcome::Held, Vec::new()));
    }

    let version = prior.version + 1;
    crate::import::store_lines(tx, order_id, &order.lines).await?;
    let kept: Vec<String> = order.lines.iter().map(|l| l.external_id.clone()).collect();
    sqlx::query(
        "UPDATE order_lines SET quantity = 0 WHERE order_id = $1 AND NOT (external_id = ANY($2))",
    )
    .bind(order_id)
    .bind(&kept)
    .execute(&mut *tx)
    .await?;
    let voided: Vec<i64> = sqlx::query_scalar(
        "UPDATE packages SET state = 'voided' WHERE order_id = $1 AND state <> 'voided' RETURNING id",
    )
    .bind(order_id)
    .fetch_all(&mut *tx)
    .await?;
    // A voided package that has a label row keeps its quote: a purchase in
    // flight refunds that label and the row says what it was.
    for table in ["rate_quotes", "documents"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} t WHERE t.package_id = ANY($1)
               AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.package_id = t.package_id)"
        )))
        .bind(&voided)
        .execute(&mut *tx)
        .await?;
    }
    let ship_to = serde_json::to_value(&order.ship_to).unwrap_or_default();
    sqlx::query(
        "UPDATE orders SET version = $2, state = 'imported', ship_to = $3, service_level = $4,
                hold_reason = NULL, updated_at = now()
         WHERE id = $1",
    )
    .bind(order_id)
    .bind(version)
    .bind(&ship_to)
    .bind(service_level)
    .execute(&mut *tx)
    .await?;
    let mut detail = change;
    detail["to_version"] = json!(version);
    detail["voided_packages"] = json!(voided);
    audit(tx, order_id, "order.replanned", prior, detail).await?;
    tracing::info!(order_id, version, "order edited on the channel; re-planned");
    Ok((
        Outcome::Replanned,
        vec![ReserveJob { order_id, version }.to_job()],
    ))
}

fn lines_json(lines: &[(String, String, i32)]) -> Value {
    Value::Array(
        lines
            .iter()
            .map(|(id, sku, qty)| json!({ "line": id, "sku": sku, "quantity": qty }))
            .collect(),
    )
}

async fn audit(
    tx: &mut PgConnection,
    order_id: i64,
    action: &str,
    prior: &Prior,
    mut detail: Value,
) -> Result<(), JobError> {
    detail["from_state"] = json!(prior.state.as_str());
    detail["from_version"] = json!(prior.version);
    sqlx::query(
        "INSERT INTO audit_log (actor, action, entity, entity_id, detail)
         VALUES ('import', $1, 'order', $2, $3)",
    )
    .bind(action)
    .bind(order_id.to_string())
    .bind(&detail)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Releases every reservation the order still holds (`stock.reserved`
/// goes down by exactly what was held). The caller holds the order's row
/// lock. The stock rows of the order's lines and holds are locked in
/// (sku, warehouse) order, so that a reserve job that allocates after
/// releasing takes no stock lock out of that order. Returns the units
/// released.
pub async fn release_reservations(tx: &mut PgConnection, order_id: i64) -> Result<i64, JobError> {
    // The reservations are the order's own rows, under its row lock: they
    // are settled first, and the shared stock rows locked last.
    let held: Units = sqlx::query_as::<_, (String, String, i32)>(
        "UPDATE reservations SET state = 'released', settled_at = now()
         WHERE order_id = $1 AND state = 'held'
         RETURNING sku, warehouse, quantity",
    )
    .bind(order_id)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    if held.is_empty() {
        return Ok(0);
    }
    sqlx::query(
        "SELECT 1 FROM stock
         WHERE sku IN (SELECT sku FROM order_lines WHERE order_id = $1) OR sku = ANY($2)
         ORDER BY sku, warehouse FOR NO KEY UPDATE",
    )
    .bind(order_id)
    .bind(held.skus())
    .execute(&mut *tx)
    .await?;
    stock::apply(tx, Change::Release, &held).await?;
    Ok(held.total())
}
