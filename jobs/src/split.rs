//! The split job: pack each warehouse's reserved units into packages.
//!
//! Key: order + version. First-fit decreasing by weight under the
//! configured package weight cap, then the smallest box that holds each
//! package (`crate::packing`). An item heavier than the cap is a permanent
//! error whose message names the SKU and the weights.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::error::JobError;
use crate::packing::{Unit, pack};
use crate::queue::{NewJob, Queue, enqueue};
use crate::rate::RateJob;
use crate::settings::PipelineSettings;
use crate::state::OrderState;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitJob {
    pub order_id: i64,
    pub version: i32,
}

impl SplitJob {
    pub fn key(&self) -> String {
        format!("order:{}:v{}", self.order_id, self.version)
    }

    pub fn to_job(&self) -> NewJob {
        NewJob::new(Queue::Split, self.key(), self)
    }
}

#[derive(sqlx::FromRow)]
struct HeldUnit {
    warehouse: String,
    order_line_id: i64,
    sku: String,
    quantity: i32,
    weight_g: i32,
    length_mm: i32,
    width_mm: i32,
    height_mm: i32,
}

pub async fn run(
    pool: &PgPool,
    settings: &PipelineSettings,
    job: SplitJob,
) -> Result<(), JobError> {
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
    if version != job.version || state != OrderState::Reserved {
        tracing::debug!(order_id = job.order_id, %state, "split: nothing to do");
        return Ok(());
    }
    let held: Vec<HeldUnit> = sqlx::query_as(
        "SELECT r.warehouse, r.order_line_id, r.sku, sum(r.quantity)::int AS quantity,
                p.weight_g, p.length_mm, p.width_mm, p.height_mm
         FROM reservations r JOIN products p ON p.sku = r.sku
         WHERE r.order_id = $1 AND r.state = 'held'
         GROUP BY r.warehouse, r.order_line_id, r.sku, p.weight_g, p.length_mm, p.width_mm, p.height_mm
         ORDER BY r.warehouse, r.order_line_id",
    )
    .bind(job.order_id)
    .fetch_all(&mut *tx)
    .await?;
    if held.is_empty() {
        return Err(JobError::permanent(format!(
            "order {} is reserved but holds no stock",
            job.order_id
        )));
    }
    let mut by_warehouse: BTreeMap<&str, Vec<Unit>> = BTreeMap::new();
    for h in &held {
        let units = by_warehouse.entry(h.warehouse.as_str()).or_default();
        for _ in 0..h.quantity {
            units.push(Unit {
                line_id: h.order_line_id,
                sku: h.sku.clone(),
                weight_g: h.weight_g as u32,
                length_mm: h.length_mm as u32,
                width_mm: h.width_mm as u32,
                height_mm: h.height_mm as u32,
            });
        }
    }
    let boxes = settings.boxes();
    let mut seq = 0;
    let mut jobs = Vec::new();
    for (warehouse, units) in by_warehouse {
        let packages = pack(&units, settings.package_weight_cap_g, &boxes).map_err(|e| {
            JobError::permanent(format!("order {} cannot be packed: {e}", job.order_id))
        })?;
        for p in packages {
            seq += 1;
            let package_id: i64 = sqlx::query_scalar(
                "INSERT INTO packages (order_id, order_version, warehouse, seq, box_code, length_mm, width_mm, height_mm, weight_g)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            )
            .bind(job.order_id)
            .bind(version)
            .bind(warehouse)
            .bind(seq)
            .bind(&p.box_spec.code)
            .bind(p.box_spec.length_mm as i32)
            .bind(p.box_spec.width_mm as i32)
            .bind(p.box_spec.height_mm as i32)
            .bind((p.contents_g + p.box_spec.tare_g) as i32)
            .fetch_one(&mut *tx)
            .await?;
            for item in &p.items {
                sqlx::query(
                    "INSERT INTO package_items (package_id, order_line_id, sku, quantity) VALUES ($1, $2, $3, $4)",
                )
                .bind(package_id)
                .bind(item.line_id)
                .bind(&item.sku)
                .bind(item.quantity as i32)
                .execute(&mut *tx)
                .await?;
            }
            jobs.push(RateJob { package_id }.to_job());
        }
    }
    sqlx::query("UPDATE orders SET state = 'packed', updated_at = now() WHERE id = $1")
        .bind(job.order_id)
        .execute(&mut *tx)
        .await?;
    let wake = enqueue(&mut tx, &jobs).await?;
    tx.commit().await?;
    crate::crash::point("split.after_commit");
    wake.send(pool).await;
    Ok(())
}
