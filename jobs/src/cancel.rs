//! The cancel job: an order cancelled on the channel after it was imported.
//!
//! Key: order + version. The import enqueues it when a newer version of an
//! order in the pipeline carries the channel's `cancelledAt`. In one
//! transaction, under the order's row lock, it voids every package of the
//! order, releases the stock the order holds and marks the order
//! `cancelled`; then it refunds every label of those packages that the
//! carrier sold (none of them was shipped: a shipped order is never
//! cancelled here). Jobs of the order still queued find it cancelled, or
//! their package voided, and do nothing.
//!
//! An order already shipped, or one whose fulfillment was already pushed
//! to the channel, is left as it is and the refusal is recorded in the
//! audit log (`order.cancel_refused`) for ops.
//!
//! Idempotent: a repeat finds the order cancelled, voids and releases
//! nothing more, and only refunds labels not yet marked refunded. A crash
//! between the transaction and the refunds leaves the refunds to the
//! re-run. A label still `buying` (a purchase in flight or crashed) is
//! looked up at the carrier: postage found is adopted and refunded; if
//! none exists yet, the purchase job refunds what it buys when it finds
//! its package voided ([`refund_label`] is shared with it).
//!
//! ```no_run
//! # async fn f(pool: sqlx::PgPool, carrier: &dyn conveyor_jobs::carrier::CarrierApi) -> Result<(), conveyor_jobs::error::JobError> {
//! use conveyor_jobs::cancel::{run, CancelJob};
//! run(&pool, carrier, CancelJob { order_id: 42, version: 1 }).await?;
//! # Ok(()) }
//! ```

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use crate::carrier::CarrierApi;
use crate::error::JobError;
use crate::queue::{NewJob, Queue};
use crate::replan::release_reservations;
use crate::state::{LabelState, OrderState};

/// The carrier's answer to a second refund of the same shipment: the
/// refund asked for earlier stands.
pub const REFUND_ALREADY_SUBMITTED: &str = "SHIPMENT.REFUND.ALREADY_SUBMITTED";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelJob {
    pub order_id: i64,
    /// The order's plan version when the cancellation was imported.
    pub version: i32,
}

impl CancelJob {
    pub fn key(&self) -> String {
        format!("order:{}:v{}", self.order_id, self.version)
    }

    pub fn to_job(&self) -> NewJob {
        NewJob::new(Queue::Cancel, self.key(), self)
    }
}

pub async fn run(pool: &PgPool, carrier: &dyn CarrierApi, job: CancelJob) -> Result<(), JobError> {
    let mut tx = pool.begin().await?;
    let order: Option<(OrderState, i32)> =
        sqlx::query_as("SELECT state, version FROM orders WHERE id = $1 FOR UPDATE")
            .bind(job.order_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((state, version)) = order else {
        return Err(JobError::permanent(format!(
            "order {} does not exist",
            job.order_id
        )));
    };
    match state {
        // A rejected order never entered the pipeline: nothing to undo.
        OrderState::Rejected => return Ok(()),
        OrderState::Shipped => {
            refuse(&mut tx, job.order_id, "the order was already shipped").await?;
            tx.commit().await?;
            return Ok(());
        }
        _ => {}
    }
    if state != OrderState::Cancelled {
        // Through the order's packages: fulfillments has no index of its
        // own on order_id, and grows with every package shipped.
        let pushed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM packages p JOIN fulfillments f ON f.package_id = p.id
             WHERE p.order_id = $1",
        )
        .bind(job.order_id)
        .fetch_one(&mut *tx)
        .await?;
        if pushed > 0 {
            let reason =
                format!("the fulfillment of {pushed} package(s) was already pushed to the channel");
            refuse(&mut tx, job.order_id, &reason).await?;
            tx.commit().await?;
            return Ok(());
        }
        let voided: Vec<i64> = sqlx::query_scalar(
            "UPDATE packages SET state = 'voided' WHERE order_id = $1 AND state <> 'voided' RETURNING id",
        )
        .bind(job.order_id)
        .fetch_all(&mut *tx)
        .await?;
        let released = release_reservations(&mut tx, job.order_id).await?;
        sqlx::query(
            "UPDATE orders SET state = 'cancelled', cancelled_at = now(), hold_reason = NULL, updated_at = now()
             WHERE id = $1",
        )
        .bind(job.order_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO audit_log (actor, action, entity, entity_id, detail)
             VALUES ('cancel', 'order.cancelled', 'order', $1::text,
                     jsonb_build_object('from_state', $2::text, 'version', $3::int,
                                        'released_units', $4::bigint, 'voided_packages', $5::bigint[]))",
        )
        .bind(job.order_id.to_string())
        .bind(state.as_str())
        .bind(version)
        .bind(released)
        .bind(&voided)
        .execute(&mut *tx)
        .await?;
        tracing::info!(order_id = job.order_id, %state, released, "order cancelled");
    }
    tx.commit().await?;

    // Refunds come after the commit: the packages are voided, so no new
    // label is bought for them while the carrier is called.
    let labelled: Vec<i64> = sqlx::query_scalar(
        "SELECT p.id FROM packages p JOIN labels l ON l.package_id = p.id
         WHERE p.order_id = $1 AND l.state <> 'refunded' ORDER BY p.id",
    )
    .bind(job.order_id)
    .fetch_all(pool)
    .await?;
    for package_id in labelled {
        refund_label(pool, carrier, package_id).await?;
    }
    Ok(())
}

/// Records, once per order, that a cancellation could not be carried out.
async fn refuse(tx: &mut PgConnection, order_id: i64, reason: &str) -> Result<(), JobError> {
    tracing::warn!(order_id, reason, "cancellation refused");
    sqlx::query(
        "INSERT INTO audit_log (actor, action, entity, entity_id, detail)
         SELECT 'cancel', 'order.cancel_refused', 'order', $1::text, jsonb_build_object('reason', $2::text)
         WHERE NOT EXISTS (SELECT 1 FROM audit_log
                           WHERE entity = 'order' AND entity_id = $1::text AND action = 'order.cancel_refused')",
    )
    .bind(order_id.to_string())
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Refunds the label of a package that will not ship (its package is
/// voided). Returns whether a refund was recorded by this call.
///
/// A `purchased` label is refunded at the carrier; a carrier that already
/// holds a refund for the shipment counts as done. A `buying` label is
/// looked up first: postage the carrier sold is adopted and refunded, and
/// when there is none, nothing was bought and there is nothing to refund.
pub async fn refund_label(
    pool: &PgPool,
    carrier: &dyn CarrierApi,
    package_id: i64,
) -> Result<bool, JobError> {
    let label: Option<(LabelState, String)> =
        sqlx::query_as("SELECT state, carrier_shipment_id FROM labels WHERE package_id = $1")
            .bind(package_id)
            .fetch_optional(pool)
            .await?;
    let Some((state, shipment_id)) = label else {
        return Ok(false);
    };
    match state {
        LabelState::Refunded => return Ok(false),
        LabelState::Purchased => {}
        LabelState::Buying => {
            let shipment = crate::in_call::read(|| carrier.get_shipment(&shipment_id)).await?;
            let Some(postage) = shipment.postage else {
                return Ok(false);
            };
            sqlx::query(
                "UPDATE labels SET state = 'purchased', tracking_code = $2, label_url = $3, purchased_at = now()
                 WHERE package_id = $1 AND state = 'buying'",
            )
            .bind(package_id)
            .bind(&postage.tracking_code)
            .bind(&postage.label_url)
            .execute(pool)
            .await?;
            if shipment.refund_status.is_some() {
                return mark_refunded(pool, package_id, &shipment_id).await;
            }
        }
    }
    match carrier.refund(&shipment_id).await {
        Ok(_) => {}
        Err(e) if e.code.as_deref() == Some(REFUND_ALREADY_SUBMITTED) => {
            tracing::info!(
                package_id,
                shipment_id,
                "the carrier already holds a refund for this label"
            );
        }
        Err(e) => return Err(e.into()),
    }
    mark_refunded(pool, package_id, &shipment_id).await
}

async fn mark_refunded(
    pool: &PgPool,
    package_id: i64,
    shipment_id: &str,
) -> Result<bool, JobError> {
    let mut tx = pool.begin().await?;
    let marked = sqlx::query(
        "UPDATE labels SET state = 'refunded', refunded_at = now() WHERE package_id = $1 AND state <> 'refunded'",
    )
    .bind(package_id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if marked {
        sqlx::query(
            "INSERT INTO audit_log (actor, action, entity, entity_id, detail)
             VALUES ('refund', 'label.refunded', 'package', $1::text,
                     jsonb_build_object('carrier_shipment_id', $2::text))",
        )
        .bind(package_id.to_string())
        .bind(shipment_id)
        .execute(&mut *tx)
        .await?;
        tracing::info!(package_id, shipment_id, "label refunded");
    }
    tx.commit().await?;
    Ok(marked)
}
