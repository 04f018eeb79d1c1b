//! The commit job: ship the order.
//!
//! Key: order + version. Runs once every package of the order has its label.
//! For each package not yet pushed, it pushes a fulfillment with that
//! package's lines and tracking number to the channel and records the push.
//! Before pushing, it reads the fulfillments the channel already holds for
//! the order: a package whose tracking number is among them was pushed by a
//! run that died before recording it, and is recorded, not pushed again.
//! (Asking the channel per line is not enough: when one line is split
//! across packages, a second push of the first package would take units
//! left for a later package and fulfil them under the wrong tracking
//! number.) A channel that says the lines are fulfilled already also counts
//! as done. Then,
//! in one transaction, it commits the order's held reservations (stock
//! leaves `on_hand` and `reserved` together) and marks the order shipped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::channel::{ChannelFulfillment, FulfillmentLine, FulfillmentOutcome, FulfillmentRequest};
use crate::error::JobError;
use crate::queue::{NewJob, Queue};
use crate::runner::Deps;
use crate::state::OrderState;
use crate::stock::{self, Change, Units};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitJob {
    pub order_id: i64,
    pub version: i32,
}

impl CommitJob {
    pub fn key(&self) -> String {
        format!("order:{}:v{}", self.order_id, self.version)
    }

    pub fn to_job(&self) -> NewJob {
        NewJob::new(Queue::Commit, self.key(), self)
    }
}

#[derive(sqlx::FromRow)]
struct PushRow {
    package_id: i64,
    carrier: String,
    tracking_code: String,
    line_external_id: String,
    fulfillment_ref: Option<serde_json::Value>,
    quantity: i32,
}

pub async fn run(deps: &Deps, job: CommitJob) -> Result<(), JobError> {
    let pool = &deps.pool;
    let order: Option<(OrderState, i32, String, String)> = sqlx::query_as(
        "SELECT o.state, o.version, o.external_id, c.code FROM orders o JOIN channels c ON c.id = o.channel_id WHERE o.id = $1",
    )
    .bind(job.order_id)
    .fetch_optional(pool)
    .await?;
    let Some((state, version, external_id, channel)) = order else {
        return Err(JobError::permanent(format!(
            "order {} does not exist",
            job.order_id
        )));
    };
    if version != job.version || state != OrderState::Labelled {
        return Ok(());
    }
    let api = deps.channel(&channel)?.clone();

    let rows: Vec<PushRow> = sqlx::query_as(
        "SELECT p.id AS package_id, lb.carrier, lb.tracking_code,
                l.external_id AS line_external_id, l.fulfillment_ref, i.quantity
         FROM packages p
         JOIN labels lb ON lb.package_id = p.id AND lb.state = 'purchased'
         JOIN package_items i ON i.package_id = p.id
         JOIN order_lines l ON l.id = i.order_line_id
         WHERE p.order_id = $1 AND p.order_version = $2
           AND NOT EXISTS (SELECT 1 FROM fulfillments f WHERE f.package_id = p.id)
         ORDER BY p.id, l.id",
    )
    .bind(job.order_id)
    .bind(version)
    .fetch_all(pool)
    .await?;
    let mut pushes: BTreeMap<i64, FulfillmentRequest> = BTreeMap::new();
    for row in rows {
        let request = pushes
            .entry(row.package_id)
            .or_insert_with(|| FulfillmentRequest {
                order_external_id: external_id.clone(),
                lines: Vec::new(),
                carrier: row.carrier.clone(),
                tracking_number: row.tracking_code.clone(),
                tracking_url: None,
                notify_customer: true,
            });
        request.lines.push(FulfillmentLine {
            line_external_id: row.line_external_id,
            fulfillment_ref: row.fulfillment_ref,
            quantity: row.quantity as u32,
        });
    }
    let on_channel: Vec<ChannelFulfillment> = if pushes.is_empty() {
        Vec::new()
    } else {
        crate::in_call::read(|| api.fulfillments(&external_id)).await?
    };
    for (package_id, request) in pushes {
        let pushed_before = on_channel
            .iter()
            .find(|f| f.tracking_numbers.contains(&request.tracking_number));
        let fulfillment_id = if let Some(earlier) = pushed_before {
            tracing::info!(
                order_id = job.order_id,
                package_id,
                "channel already holds this package's fulfillment; recording it"
            );
            Some(earlier.fulfillment_id.clone())
        } else {
            let outcome = match api.create_fulfillment(&request).await {
                Ok(outcome) => outcome,
                // The channel refuses fulfillments of an order cancelled or
                // edited there; if Conveyor has seen that change meanwhile,
                // the cancel job or ops take the order from here.
                Err(e) if !still_labelled(pool, job.order_id).await? => {
                    tracing::info!(order_id = job.order_id, error = %e, "order changed while committing; not shipped");
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            // The channel holds the fulfillment; we have not recorded it.
            crate::crash::point("commit.after_push");
            match outcome {
                FulfillmentOutcome::Created { fulfillment_id } => Some(fulfillment_id),
                FulfillmentOutcome::AlreadyFulfilled => {
                    tracing::info!(
                        order_id = job.order_id,
                        package_id,
                        "channel already holds this fulfillment"
                    );
                    None
                }
            }
        };
        sqlx::query(
            "INSERT INTO fulfillments (package_id, order_id, external_id) VALUES ($1, $2, $3)
             ON CONFLICT (package_id) DO NOTHING",
        )
        .bind(package_id)
        .bind(job.order_id)
        .bind(fulfillment_id)
        .execute(pool)
        .await?;
        crate::crash::point("commit.after_record");
    }

    let mut tx = pool.begin().await?;
    let state: OrderState = sqlx::query_scalar("SELECT state FROM orders WHERE id = $1 FOR UPDATE")
        .bind(job.order_id)
        .fetch_one(&mut *tx)
        .await?;
    if state != OrderState::Labelled {
        return Ok(());
    }
    let settled: Units = sqlx::query_as::<_, (String, String, i32)>(
        "UPDATE reservations SET state = 'committed', settled_at = now()
         WHERE order_id = $1 AND state = 'held'
         RETURNING sku, warehouse, quantity",
    )
    .bind(job.order_id)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    sqlx::query(
        "UPDATE orders SET state = 'shipped', shipped_at = now(), updated_at = now() WHERE id = $1",
    )
    .bind(job.order_id)
    .execute(&mut *tx)
    .await?;
    // The stock rows, shared by every order, last: held for two statements
    // and the commit.
    stock::lock(&mut tx, &settled).await?;
    stock::apply(&mut tx, Change::Ship, &settled).await?;
    tx.commit().await?;
    tracing::info!(order_id = job.order_id, "order shipped");
    Ok(())
}

async fn still_labelled(pool: &sqlx::PgPool, order_id: i64) -> Result<bool, JobError> {
    let state: OrderState = sqlx::query_scalar("SELECT state FROM orders WHERE id = $1")
        .bind(order_id)
        .fetch_one(pool)
        .await?;
    Ok(state == OrderState::Labelled)
}
