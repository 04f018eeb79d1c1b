//! The render job: the packing slip for one package, as a PDF.
//!
//! Key: package. The slip (order number, ship-to, ship-from, every line's
//! SKU, name and quantity, "package k of n", carrier and service) is stored
//! in `documents`; the purchase job merges it with the label.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::error::JobError;
use crate::package::{PackageView, chosen_rate};
use crate::pdf::{PackingSlip, SlipLine, page_count, render_packing_slip};
use crate::purchase::PurchaseJob;
use crate::queue::{NewJob, Queue, enqueue};
use crate::state::{DocumentKind, OrderState, PackageState};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderJob {
    pub package_id: i64,
}

impl RenderJob {
    pub fn key(&self) -> String {
        format!("package:{}", self.package_id)
    }

    pub fn to_job(&self) -> NewJob {
        NewJob::new(Queue::Render, self.key(), self)
    }
}

pub fn slip_for(package: &PackageView, carrier_service: Option<String>) -> PackingSlip {
    PackingSlip {
        order_name: package.order_name.clone(),
        ship_to: package.ship_to.lines(),
        ship_from: package.ship_from.lines(),
        package_index: package.seq as u32,
        package_count: package.count as u32,
        carrier_service,
        lines: package
            .items
            .iter()
            .map(|i| SlipLine {
                sku: i.sku.clone(),
                name: i.name.clone(),
                quantity: i.quantity as u32,
            })
            .collect(),
    }
}

pub async fn run(pool: &PgPool, job: RenderJob) -> Result<(), JobError> {
    let mut tx = pool.begin().await?;
    let package = PackageView::load(&mut tx, job.package_id, true).await?;
    if package.state != PackageState::Rated || package.order_state != OrderState::Packed {
        return Ok(());
    }
    let rate = chosen_rate(&mut tx, package.id).await?;
    let slip = slip_for(&package, Some(format!("{} {}", rate.carrier, rate.service)));
    let pdf = render_packing_slip(&slip)
        .map_err(|e| JobError::permanent(format!("packing slip: {e}")))?;
    let pages = page_count(&pdf).map_err(|e| JobError::permanent(format!("packing slip: {e}")))?;
    sqlx::query(
        "INSERT INTO documents (package_id, kind, pages, pdf) VALUES ($1, $2, $3, $4)
         ON CONFLICT (package_id, kind) DO UPDATE SET pages = EXCLUDED.pages, pdf = EXCLUDED.pdf, created_at = now()",
    )
    .bind(package.id)
    .bind(DocumentKind::PackingSlip)
    .bind(pages as i32)
    .bind(&pdf)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE packages SET state = 'rendered' WHERE id = $1")
        .bind(package.id)
        .execute(&mut *tx)
        .await?;
    let wake = enqueue(
        &mut tx,
        &[PurchaseJob {
            package_id: package.id,
        }
        .to_job()],
    )
    .await?;
    tx.commit().await?;
    crate::crash::point("render.after_store");
    wake.send(pool).await;
    Ok(())
}
