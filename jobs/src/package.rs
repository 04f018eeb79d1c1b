//! A package as the per-package jobs (rate, render, purchase) read it: the
//! package row with its order, ship-to, ship-from and contents.

use sqlx::{AssertSqlSafe, PgConnection};

use crate::address::Address;
use crate::error::JobError;
use crate::state::{OrderState, PackageState};

#[derive(Debug, Clone)]
pub struct PackageView {
    pub id: i64,
    pub order_id: i64,
    pub order_version: i32,
    pub order_name: String,
    pub order_state: OrderState,
    pub service_level: String,
    pub seq: i32,
    /// Packages in this plan of the order.
    pub count: i32,
    pub state: PackageState,
    pub weight_g: i32,
    pub length_mm: i32,
    pub width_mm: i32,
    pub height_mm: i32,
    pub ship_to: Address,
    pub ship_from: Address,
    pub items: Vec<PackageItem>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PackageItem {
    pub order_line_id: i64,
    pub sku: String,
    pub name: String,
    pub quantity: i32,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    order_id: i64,
    order_version: i32,
    order_name: String,
    order_state: OrderState,
    service_level: String,
    seq: i32,
    count: i64,
    state: PackageState,
    weight_g: i32,
    length_mm: i32,
    width_mm: i32,
    height_mm: i32,
    ship_to: serde_json::Value,
    w_name: String,
    w_address1: String,
    w_city: String,
    w_province: String,
    w_zip: String,
    w_country: String,
}

impl PackageView {
    /// Loads the package; `for_update` also locks its row.
    pub async fn load(
        conn: &mut PgConnection,
        package_id: i64,
        for_update: bool,
    ) -> Result<PackageView, JobError> {
        let lock = if for_update { " FOR UPDATE OF p" } else { "" };
        let row: Option<Row> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT p.id, p.order_id, p.order_version, o.name AS order_name, o.state AS order_state, o.service_level,
                    p.seq, (SELECT count(*) FROM packages q WHERE q.order_id = p.order_id AND q.order_version = p.order_version) AS count,
                    p.state, p.weight_g, p.length_mm, p.width_mm, p.height_mm, o.ship_to,
                    w.name AS w_name, w.address1 AS w_address1, w.city AS w_city, w.province AS w_province,
                    w.zip AS w_zip, w.country AS w_country
             FROM packages p JOIN orders o ON o.id = p.order_id JOIN warehouses w ON w.code = p.warehouse
             WHERE p.id = $1{lock}"
        )))
        .bind(package_id)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else {
            return Err(JobError::permanent(format!(
                "package {package_id} does not exist"
            )));
        };
        let items: Vec<PackageItem> = sqlx::query_as(
            "SELECT i.order_line_id, i.sku, l.name, i.quantity
             FROM package_items i JOIN order_lines l ON l.id = i.order_line_id
             WHERE i.package_id = $1 ORDER BY i.order_line_id",
        )
        .bind(package_id)
        .fetch_all(&mut *conn)
        .await?;
        let ship_to: Address = serde_json::from_value(row.ship_to).map_err(|e| {
            JobError::permanent(format!(
                "order {} has an unreadable ship-to address: {e}",
                row.order_id
            ))
        })?;
        Ok(PackageView {
            id: row.id,
            order_id: row.order_id,
            order_version: row.order_version,
            order_name: row.order_name,
            order_state: row.order_state,
            service_level: row.service_level,
            seq: row.seq,
            count: row.count as i32,
            state: row.state,
            weight_g: row.weight_g,
            length_mm: row.length_mm,
            width_mm: row.width_mm,
            height_mm: row.height_mm,
            ship_to,
            ship_from: Address {
                name: row.w_name,
                street1: row.w_address1,
                city: row.w_city,
                state: row.w_province,
                zip: row.w_zip,
                country: row.w_country,
                ..Address::default()
            },
            items,
        })
    }
}

/// The rate the rate job chose for a package.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChosenRate {
    pub carrier_shipment_id: String,
    pub carrier_rate_id: String,
    pub carrier: String,
    pub service: String,
    pub amount_cents: i64,
}

pub async fn chosen_rate(conn: &mut PgConnection, package_id: i64) -> Result<ChosenRate, JobError> {
    sqlx::query_as(
        "SELECT carrier_shipment_id, carrier_rate_id, carrier, service, amount_cents
         FROM rate_quotes WHERE package_id = $1 AND chosen",
    )
    .bind(package_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| JobError::permanent(format!("package {package_id} has no chosen rate")))
}
