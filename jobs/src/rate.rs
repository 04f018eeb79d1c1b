//! The rate job: rate-shop the carriers for one package and choose.
//!
//! Key: package. Creates the carrier shipment (which carries the rates from
//! every carrier and service the account has), records every quote, and
//! chooses the cheapest that meets the order's promised service level
//! (`crate::rate_choice`). The shipment id is recorded with the quotes, so
//! the purchase job buys on exactly this shipment.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::carrier::{CarrierApi, Parcel, ShipmentRequest};
use crate::error::JobError;
use crate::package::PackageView;
use crate::queue::{NewJob, Queue, enqueue};
use crate::rate_choice::{ServiceLevel, choose_rate};
use crate::render::RenderJob;
use crate::state::{OrderState, PackageState};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateJob {
    pub package_id: i64,
}

impl RateJob {
    pub fn key(&self) -> String {
        format!("package:{}", self.package_id)
    }

    pub fn to_job(&self) -> NewJob {
        NewJob::new(Queue::Rate, self.key(), self)
    }
}

pub fn service_level(stored: &str) -> ServiceLevel {
    ServiceLevel::from_shipping_title(stored)
}

pub async fn run(pool: &PgPool, carrier: &dyn CarrierApi, job: RateJob) -> Result<(), JobError> {
    let package = {
        let mut conn = pool.acquire().await?;
        PackageView::load(&mut conn, job.package_id, false).await?
    };
    // A voided package (its order cancelled or re-planned) or an order on
    // hold: nothing to rate.
    if package.state != PackageState::Planned || package.order_state != OrderState::Packed {
        return Ok(());
    }
    let request = ShipmentRequest {
        reference: format!("package-{}", package.id),
        from: package.ship_from.clone(),
        to: package.ship_to.clone(),
        parcel: Parcel::from_metric(
            package.length_mm as u32,
            package.width_mm as u32,
            package.height_mm as u32,
            package.weight_g as u32,
        ),
    };
    let shipment = carrier.create_shipment(&request).await?;
    let level = service_level(&package.service_level);
    let chosen = choose_rate(&shipment.rates, level)
        .cloned()
        .ok_or_else(|| {
            JobError::permanent(format!(
                "no carrier service reaches {} {} within {} day(s) ({} rates offered)",
                package.ship_to.city,
                package.ship_to.zip,
                level.max_days(),
                shipment.rates.len()
            ))
        })?;
    // The carrier holds a shipment with these quotes; nothing of it is stored yet.
    crate::crash::point("rate.after_quotes");

    let mut tx = pool.begin().await?;
    let state: PackageState =
        sqlx::query_scalar("SELECT state FROM packages WHERE id = $1 FOR UPDATE")
            .bind(package.id)
            .fetch_one(&mut *tx)
            .await?;
    if state != PackageState::Planned {
        // Another run of this job got here first; its shipment stands.
        return Ok(());
    }
    for quote in &shipment.rates {
        sqlx::query(
            "INSERT INTO rate_quotes (package_id, carrier_shipment_id, carrier_rate_id, carrier, service,
                                      amount_cents, currency, delivery_days, chosen)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (package_id, carrier_rate_id) DO NOTHING",
        )
        .bind(package.id)
        .bind(&shipment.id)
        .bind(&quote.rate_id)
        .bind(&quote.carrier)
        .bind(&quote.service)
        .bind(quote.amount_cents)
        .bind(&quote.currency)
        .bind(quote.delivery_days.map(|d| d as i32))
        .bind(quote.rate_id == chosen.rate_id)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("UPDATE packages SET state = 'rated' WHERE id = $1")
        .bind(package.id)
        .execute(&mut *tx)
        .await?;
    let wake = enqueue(
        &mut tx,
        &[RenderJob {
            package_id: package.id,
        }
        .to_job()],
    )
    .await?;
    tx.commit().await?;
    wake.send(pool).await;
    Ok(())
}
