//! The purchase job: buy one package's label exactly once, then make its
//! print-ready PDF.
//!
//! Key: package. The `labels` row (unique per package, with the carrier
//! shipment id) is written *before* the carrier is asked to buy. Whenever
//! that row already existed when this run started, an earlier run may have
//! bought postage that we never heard about (a crash, a timeout), so the
//! shipment is looked up first and existing postage is adopted; the carrier
//! is only asked to buy when it holds no postage for the shipment. A buy
//! whose outcome is unknown is reconciled the same way before anything else.
//! If the carrier still says postage exists (`SHIPMENT.POSTAGE.EXISTS`), the
//! postage is adopted, never bought again.
//!
//! Then the label and the packing slip are merged into one print-ready PDF
//! (label pages first); the last package of an order to get its label moves
//! the order to `labelled` and enqueues commit, in the same transaction.
//!
//! A package voided while its label was being bought (the order was
//! cancelled or re-planned on the channel) does not keep the label: the run
//! that finds it voided, now or on a retry, refunds it
//! (`crate::cancel::refund_label`). Nothing is bought for an order on hold.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::carrier::{BuyOutcome, CarrierApi, Postage};
use crate::commit::CommitJob;
use crate::error::{ErrorClass, JobError};
use crate::package::chosen_rate;
use crate::pdf::{merge_print_ready, page_count};
use crate::queue::{NewJob, Queue, Wake, enqueue};
use crate::state::{DocumentKind, LabelState, OrderState, PackageState};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseJob {
    pub package_id: i64,
}

impl PurchaseJob {
    pub fn key(&self) -> String {
        format!("package:{}", self.package_id)
    }

    pub fn to_job(&self) -> NewJob {
        NewJob::new(Queue::Purchase, self.key(), self)
    }
}

/// The key that makes a package's purchase unique in `labels`.
pub fn purchase_key(package_id: i64) -> String {
    format!("package:{package_id}")
}

pub async fn run(
    pool: &PgPool,
    carrier: &dyn CarrierApi,
    job: PurchaseJob,
) -> Result<(), JobError> {
    // No connection is held across a carrier call: each statement takes
    // one from the pool and gives it back.
    let state: Option<(PackageState, OrderState)> = sqlx::query_as(
        "SELECT p.state, o.state FROM packages p JOIN orders o ON o.id = p.order_id WHERE p.id = $1",
    )
    .bind(job.package_id)
    .fetch_optional(pool)
    .await?;
    match state {
        None => {
            return Err(JobError::permanent(format!(
                "package {} does not exist",
                job.package_id
            )));
        }
        Some((PackageState::Rendered, OrderState::Packed)) => {}
        // Voided (order cancelled or re-planned) while an earlier run of
        // this job was buying: whatever it bought is refunded.
        Some((PackageState::Voided, _)) => {
            crate::cancel::refund_label(pool, carrier, job.package_id).await?;
            return Ok(());
        }
        // Purchased already (a repeat), not ready, or the order is on hold:
        // nothing to do.
        Some(_) => return Ok(()),
    }
    let rate = {
        let mut conn = pool.acquire().await?;
        match chosen_rate(&mut conn, job.package_id).await {
            Ok(rate) => rate,
            // A re-plan dropped the quotes of the package just now.
            Err(_) if package_voided(&mut conn, job.package_id).await? => return Ok(()),
            Err(e) => return Err(e),
        }
    };

    // Record the shipment before buying, so any later run knows to look.
    let created = sqlx::query(
        "INSERT INTO labels (package_id, purchase_key, carrier_shipment_id, carrier_rate_id, carrier, service, amount_cents)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (package_id) DO NOTHING",
    )
    .bind(job.package_id)
    .bind(purchase_key(job.package_id))
    .bind(&rate.carrier_shipment_id)
    .bind(&rate.carrier_rate_id)
    .bind(&rate.carrier)
    .bind(&rate.service)
    .bind(rate.amount_cents)
    .execute(pool)
    .await?
    .rows_affected()
        == 1;
    crate::crash::point("purchase.after_record");
    let (label_state, shipment_id, tracking, label_url): (LabelState, String, Option<String>, Option<String>) =
        sqlx::query_as(
            "SELECT state, carrier_shipment_id, tracking_code, label_url FROM labels WHERE package_id = $1",
        )
        .bind(job.package_id)
        .fetch_one(pool)
        .await?;

    let label_url = match (label_state, tracking, label_url) {
        (LabelState::Purchased, Some(_), Some(url)) => url,
        (LabelState::Refunded, ..) => {
            return Err(JobError::permanent(format!(
                "package {}'s label was refunded",
                job.package_id
            )));
        }
        _ => {
            let earlier = if created {
                None
            } else {
                crate::in_call::read(|| carrier.get_shipment(&shipment_id))
                    .await?
                    .postage
            };
            let postage = match earlier {
                Some(postage) => {
                    tracing::info!(
                        package_id = job.package_id,
                        "adopting postage bought by an earlier attempt"
                    );
                    postage
                }
                None => buy_or_adopt(carrier, &shipment_id, &rate.carrier_rate_id).await?,
            };
            // Postage is bought and paid for; only the carrier knows it yet.
            crate::crash::point("purchase.after_buy");
            sqlx::query(
                "UPDATE labels SET state = 'purchased', tracking_code = $2, label_url = $3, purchased_at = now(),
                        carrier = COALESCE($4, carrier), service = COALESCE($5, service),
                        carrier_rate_id = COALESCE($6, carrier_rate_id)
                 WHERE package_id = $1 AND state = 'buying'",
            )
            .bind(job.package_id)
            .bind(&postage.tracking_code)
            .bind(&postage.label_url)
            .bind(&postage.carrier)
            .bind(&postage.service)
            .bind(&postage.rate_id)
            .execute(pool)
            .await?;
            postage.label_url
        }
    };
    let label_pdf = crate::in_call::read(|| carrier.fetch_label(&label_url)).await?;
    let mut tx = pool.begin().await?;
    let (order_id, order_version): (i64, i32) =
        sqlx::query_as("SELECT order_id, order_version FROM packages WHERE id = $1")
            .bind(job.package_id)
            .fetch_one(&mut *tx)
            .await?;
    // Order first, then package: the lock order every job uses.
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    let state: PackageState =
        sqlx::query_scalar("SELECT state FROM packages WHERE id = $1 FOR UPDATE")
            .bind(job.package_id)
            .fetch_one(&mut *tx)
            .await?;
    if state != PackageState::Rendered {
        drop(tx);
        if state == PackageState::Voided {
            // The order was cancelled or re-planned while the carrier sold
            // this label: it will not ship, so it is refunded.
            crate::cancel::refund_label(pool, carrier, job.package_id).await?;
        }
        return Ok(());
    }
    let slip: Vec<u8> = sqlx::query_scalar(
        "SELECT pdf FROM documents WHERE package_id = $1 AND kind = 'packing_slip'",
    )
    .bind(job.package_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| {
        JobError::permanent(format!("package {} has no packing slip", job.package_id))
    })?;
    let merged = merge_print_ready(&label_pdf, &slip).map_err(|e| {
        JobError::permanent(format!(
            "print-ready PDF for package {}: {e}",
            job.package_id
        ))
    })?;
    crate::crash::point("purchase.after_merge");
    for (kind, pdf) in [
        (DocumentKind::Label, &label_pdf),
        (DocumentKind::PrintReady, &merged),
    ] {
        let pages = page_count(pdf).map_err(|e| JobError::permanent(format!("{kind} PDF: {e}")))?;
        sqlx::query(
            "INSERT INTO documents (package_id, kind, pages, pdf) VALUES ($1, $2, $3, $4)
             ON CONFLICT (package_id, kind) DO UPDATE SET pages = EXCLUDED.pages, pdf = EXCLUDED.pdf, created_at = now()",
        )
        .bind(job.package_id)
        .bind(kind)
        .bind(pages as i32)
        .bind(pdf)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("UPDATE packages SET state = 'purchased' WHERE id = $1")
        .bind(job.package_id)
        .execute(&mut *tx)
        .await?;
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM packages WHERE order_id = $1 AND order_version = $2 AND state <> 'purchased'",
    )
    .bind(order_id)
    .bind(order_version)
    .fetch_one(&mut *tx)
    .await?;
    // An order put on hold meanwhile keeps its labels but is not committed.
    let labelled = waiting == 0
        && sqlx::query(
            "UPDATE orders SET state = 'labelled', updated_at = now()
             WHERE id = $1 AND state = 'packed' AND version = $2",
        )
        .bind(order_id)
        .bind(order_version)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
    let wake = if labelled {
        enqueue(
            &mut tx,
            &[CommitJob {
                order_id,
                version: order_version,
            }
            .to_job()],
        )
        .await?
    } else {
        Wake::default()
    };
    tx.commit().await?;
    wake.send(pool).await;
    Ok(())
}

async fn package_voided(conn: &mut sqlx::PgConnection, package_id: i64) -> Result<bool, JobError> {
    let state: PackageState = sqlx::query_scalar("SELECT state FROM packages WHERE id = $1")
        .bind(package_id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(state == PackageState::Voided)
}

/// Buys the rate; if the carrier says postage exists or the outcome is
/// unknown, looks the shipment up and adopts what it holds.
async fn buy_or_adopt(
    carrier: &dyn CarrierApi,
    shipment_id: &str,
    rate_id: &str,
) -> Result<Postage, JobError> {
    let lookup = async {
        carrier
            .get_shipment(shipment_id)
            .await?
            .postage
            .ok_or_else(|| {
                JobError::new(
                    ErrorClass::UnknownOutcome,
                    format!(
                        "shipment {shipment_id}: purchase outcome unknown and no postage found yet"
                    ),
                )
            })
    };
    match carrier.buy(shipment_id, rate_id).await {
        Ok(BuyOutcome::Bought(shipment)) => match shipment.postage {
            Some(postage) => Ok(postage),
            None => lookup.await,
        },
        Ok(BuyOutcome::PostageExists) => {
            tracing::info!(
                shipment_id,
                "carrier already holds postage for this shipment; adopting it"
            );
            lookup.await
        }
        Err(e) if e.class == ErrorClass::UnknownOutcome => {
            tracing::warn!(shipment_id, error = %e, "purchase outcome unknown; reconciling");
            lookup.await
        }
        Err(e) => Err(e.into()),
    }
}
