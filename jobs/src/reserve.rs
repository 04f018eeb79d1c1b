//! The reserve job: hold stock for an order's units.
//!
//! Key: order + version. Allocation prefers one warehouse holding
//! everything, then the nearest (great-circle) to the ship-to, then the
//! warehouse priority (`crate::allocation`). When stock is short the order
//! keeps what it could hold and becomes `backordered`; a restock tops
//! backordered orders up, oldest first ([`resume_backordered`]).
//!
//! Stock rows are locked in (sku, warehouse) order, always after the order
//! row, so concurrent reservations never deadlock and the schema's CHECK
//! (`reserved <= on_hand`) is never the thing that stops an oversell: the
//! allocation only ever sees what is really available.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use crate::address::Address;
use crate::allocation::{LineNeed, StockLevel, WarehouseSite, plan_allocation};
use crate::error::JobError;
use crate::queue::{NewJob, Queue, Wake, enqueue};
use crate::split::SplitJob;
use crate::state::OrderState;
use crate::stock::{self, Change, Units};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveJob {
    pub order_id: i64,
    pub version: i32,
}

impl ReserveJob {
    pub fn key(&self) -> String {
        format!("order:{}:v{}", self.order_id, self.version)
    }

    pub fn to_job(&self) -> NewJob {
        NewJob::new(Queue::Reserve, self.key(), self)
    }
}

pub async fn run(pool: &PgPool, job: ReserveJob) -> Result<(), JobError> {
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
    if version != job.version || state != OrderState::Imported {
        // Already reserved by an earlier run of this job, or superseded.
        tracing::debug!(order_id = job.order_id, %state, "reserve: nothing to do");
        return Ok(());
    }
    // An order re-planned after an edit still holds its old plan's stock:
    // released here, under the order's lock and before any other stock
    // lock, so that the new plan is allocated from scratch.
    crate::replan::release_reservations(&mut tx, job.order_id).await?;
    let complete = allocate(&mut tx, job.order_id).await?;
    let wake = advance(&mut tx, job.order_id, version, complete).await?;
    tx.commit().await?;
    crate::crash::point("reserve.after_commit");
    wake.send(pool).await;
    Ok(())
}

/// Records the outcome of an allocation: `reserved` (and split enqueued) or
/// `backordered`. Returns the split's wake, to send after commit.
async fn advance(
    tx: &mut PgConnection,
    order_id: i64,
    version: i32,
    complete: bool,
) -> Result<Wake, JobError> {
    let state = if complete {
        OrderState::Reserved
    } else {
        OrderState::Backordered
    };
    sqlx::query("UPDATE orders SET state = $2, updated_at = now() WHERE id = $1")
        .bind(order_id)
        .bind(state)
        .execute(&mut *tx)
        .await?;
    if !complete {
        return Ok(Wake::default());
    }
    Ok(enqueue(tx, &[SplitJob { order_id, version }.to_job()]).await?)
}

/// Holds stock for whatever the order still lacks. Returns whether every
/// unit of the order is now held. The caller holds the order's row lock.
pub async fn allocate(tx: &mut PgConnection, order_id: i64) -> Result<bool, JobError> {
    let lines: Vec<(i64, String, i32, i64)> = sqlx::query_as(
        "SELECT l.id, l.sku, l.quantity,
                COALESCE((SELECT sum(r.quantity) FROM reservations r
                          WHERE r.order_id = $1 AND r.order_line_id = l.id
                            AND r.state = 'held'), 0)::bigint
         FROM order_lines l WHERE l.order_id = $1 AND l.quantity > 0 ORDER BY l.id",
    )
    .bind(order_id)
    .fetch_all(&mut *tx)
    .await?;
    if lines.is_empty() {
        return Err(JobError::permanent(format!(
            "order {order_id} has no lines"
        )));
    }
    let skus: Vec<String> = lines.iter().map(|(_, sku, _, _)| sku.clone()).collect();
    let known: Vec<String> = sqlx::query_scalar("SELECT sku FROM products WHERE sku = ANY($1)")
        .bind(&skus)
        .fetch_all(&mut *tx)
        .await?;
    if let Some(unknown) = skus.iter().find(|s| !known.contains(s)) {
        return Err(JobError::permanent(format!(
            "unknown SKU {unknown:?}: it is not in the catalog (load it with `conveyor catalog load`)"
        )));
    }
    let needs: Vec<LineNeed> = lines
        .iter()
        .filter(|(_, _, qty, held)| i64::from(*qty) > *held)
        .map(|(id, sku, qty, held)| LineNeed {
            line_id: *id,
            sku: sku.clone(),
            quantity: (i64::from(*qty) - held) as u32,
        })
        .collect();
    if needs.is_empty() {
        return Ok(true);
    }
    // What the plan needs besides stock is read before the stock rows are
    // locked: every order shares those rows, so the lock is held for as few
    // round trips as the plan allows (this read, one update, one insert).
    let sites: Vec<WarehouseSite> = sqlx::query_as::<_, (String, f64, f64, i32)>(
        "SELECT code, latitude, longitude, priority FROM warehouses",
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(code, latitude, longitude, priority)| WarehouseSite {
        code,
        latitude,
        longitude,
        priority,
    })
    .collect();
    let ship_to: serde_json::Value = sqlx::query_scalar("SELECT ship_to FROM orders WHERE id = $1")
        .bind(order_id)
        .fetch_one(&mut *tx)
        .await?;
    let destination = serde_json::from_value::<Address>(ship_to)
        .ok()
        .and_then(|a| a.coordinates());

    let stock: Vec<(String, String, i32, i32)> = sqlx::query_as(
        "SELECT sku, warehouse, on_hand, reserved FROM stock
         WHERE sku = ANY($1) ORDER BY sku, warehouse FOR NO KEY UPDATE",
    )
    .bind(&skus)
    .fetch_all(&mut *tx)
    .await?;
    let levels: Vec<StockLevel> = stock
        .iter()
        .map(|(sku, warehouse, on_hand, reserved)| StockLevel {
            warehouse: warehouse.clone(),
            sku: sku.clone(),
            available: (on_hand - reserved).max(0) as u32,
        })
        .collect();
    let plan = plan_allocation(&needs, &sites, &levels, destination);
    if plan.allocations.is_empty() {
        return Ok(plan.short.is_empty());
    }
    let sku_of: HashMap<i64, &str> = needs.iter().map(|n| (n.line_id, n.sku.as_str())).collect();
    let mut units = Units::default();
    let (mut held_lines, mut held_skus, mut held_warehouses, mut held_quantities) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for a in &plan.allocations {
        let sku = sku_of.get(&a.line_id).copied().unwrap_or_default();
        units.add(sku, &a.warehouse, a.quantity as i32);
        held_lines.push(a.line_id);
        held_skus.push(sku);
        held_warehouses.push(a.warehouse.as_str());
        held_quantities.push(a.quantity as i32);
    }
    stock::apply(tx, Change::Hold, &units).await?;
    sqlx::query(
        "INSERT INTO reservations (order_id, order_line_id, sku, warehouse, quantity)
         SELECT $1, line, sku, warehouse, quantity
         FROM unnest($2::bigint[], $3::text[], $4::text[], $5::int[]) AS t(line, sku, warehouse, quantity)",
    )
    .bind(order_id)
    .bind(&held_lines)
    .bind(&held_skus)
    .bind(&held_warehouses)
    .bind(&held_quantities)
    .execute(&mut *tx)
    .await?;
    Ok(plan.short.is_empty())
}

/// Gives backordered orders, oldest first, the stock a restock just added.
/// Runs inside the restock's transaction. Returns how many orders became
/// fully reserved (and had their split enqueued), and the splits' wake to
/// send after the restock commits.
pub async fn resume_backordered(conn: &mut PgConnection) -> Result<(u64, Wake), JobError> {
    // Lock every backordered order first (oldest first), then stock inside
    // `allocate`: the same order-then-stock lock order as the reserve job.
    let orders: Vec<(i64, i32)> = sqlx::query_as(
        "SELECT id, version FROM orders WHERE state = 'backordered' ORDER BY created_at, id FOR UPDATE",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut resumed = 0;
    let mut wake = Wake::default();
    for (order_id, version) in orders {
        let complete = match allocate(conn, order_id).await {
            Ok(complete) => complete,
            // An order that cannot be allocated at all (its SKU left the
            // catalog) must not block the restock of everyone else.
            Err(e) if e.class == crate::error::ErrorClass::Permanent => {
                tracing::warn!(order_id, error = %e, "backordered order skipped by restock");
                continue;
            }
            Err(e) => return Err(e),
        };
        if complete {
            wake = wake.and(advance(conn, order_id, version, true).await?);
            resumed += 1;
        }
    }
    Ok((resumed, wake))
}
