//! What the jobs do to the `stock` rows: hold units for an order (reserve),
//! release them (a re-plan or a cancel), and take them out when the order
//! ships (commit).
//!
//! Every order shares these rows, so a transaction holds their locks for as
//! few statements as it can: a change is one `UPDATE ... FROM unnest(...)`
//! however many rows it touches. The lock order every job keeps is the
//! order's row first, then the stock rows in (sku, warehouse) order; the
//! caller takes the stock locks ([`lock`], or its own `SELECT ... FOR NO
//! KEY UPDATE` when it must read the rows too or lock a SKU in every
//! warehouse) before it [`apply`]s a change. `FOR NO KEY UPDATE`, never
//! `FOR UPDATE`: no job changes a stock row's key, and the weaker lock does
//! not block the `FOR KEY SHARE` a reservation's foreign key takes.
//!
//! ```no_run
//! # async fn f(tx: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
//! use conveyor_jobs::stock::{Change, Units, apply, lock};
//! let units: Units = [("SOCK-M".to_string(), "RNO".to_string(), 2)].into_iter().collect();
//! lock(tx, &units).await?;
//! apply(tx, Change::Ship, &units).await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use sqlx::PgConnection;

/// Units per stock row. Two reservations or lines of one SKU in one
/// warehouse add up to one entry: an `UPDATE ... FROM` applies a single
/// source row to each target row, so they must be summed before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Units(BTreeMap<(String, String), i32>);

impl Units {
    pub fn add(&mut self, sku: &str, warehouse: &str, quantity: i32) {
        *self
            .0
            .entry((sku.to_string(), warehouse.to_string()))
            .or_default() += quantity;
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The SKUs of the rows, each once.
    pub fn skus(&self) -> Vec<&str> {
        let mut skus: Vec<&str> = self.0.keys().map(|(sku, _)| sku.as_str()).collect();
        skus.dedup();
        skus
    }

    /// Units over every row.
    pub fn total(&self) -> i64 {
        self.0.values().map(|q| i64::from(*q)).sum()
    }

    /// The rows in (sku, warehouse) order, as the columns `unnest` takes.
    fn columns(&self) -> (Vec<&str>, Vec<&str>, Vec<i32>) {
        let mut columns = (Vec::new(), Vec::new(), Vec::new());
        for ((sku, warehouse), quantity) in &self.0 {
            columns.0.push(sku.as_str());
            columns.1.push(warehouse.as_str());
            columns.2.push(*quantity);
        }
        columns
    }
}

impl FromIterator<(String, String, i32)> for Units {
    fn from_iter<I: IntoIterator<Item = (String, String, i32)>>(rows: I) -> Units {
        let mut units = Units::default();
        for (sku, warehouse, quantity) in rows {
            units.add(&sku, &warehouse, quantity);
        }
        units
    }
}

/// What happens to an order's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Reserved for the order: `reserved` goes up.
    Hold,
    /// Given back: `reserved` goes down.
    Release,
    /// Shipped: both `on_hand` and `reserved` go down.
    Ship,
}

impl Change {
    /// The signs `on_hand` and `reserved` move by.
    fn signs(self) -> (i32, i32) {
        match self {
            Change::Hold => (0, 1),
            Change::Release => (0, -1),
            Change::Ship => (-1, -1),
        }
    }
}

/// Locks the rows of `units` in (sku, warehouse) order, for a caller that
/// changes them without reading them first.
pub async fn lock(conn: &mut PgConnection, units: &Units) -> Result<(), sqlx::Error> {
    if units.is_empty() {
        return Ok(());
    }
    let (skus, warehouses, _) = units.columns();
    sqlx::query(
        "SELECT 1 FROM stock
         WHERE (sku, warehouse) IN (SELECT * FROM unnest($1::text[], $2::text[]))
         ORDER BY sku, warehouse FOR NO KEY UPDATE",
    )
    .bind(&skus)
    .bind(&warehouses)
    .execute(conn)
    .await?;
    Ok(())
}

/// Applies `change` to every row of `units` in one statement. The caller
/// holds the rows' locks.
pub async fn apply(
    conn: &mut PgConnection,
    change: Change,
    units: &Units,
) -> Result<(), sqlx::Error> {
    if units.is_empty() {
        return Ok(());
    }
    let (skus, warehouses, quantities) = units.columns();
    let (on_hand, reserved) = change.signs();
    sqlx::query(
        "UPDATE stock s SET on_hand = s.on_hand + $4 * t.quantity,
                            reserved = s.reserved + $5 * t.quantity,
                            updated_at = now()
         FROM unnest($1::text[], $2::text[], $3::int[]) AS t(sku, warehouse, quantity)
         WHERE s.sku = t.sku AND s.warehouse = t.warehouse",
    )
    .bind(&skus)
    .bind(&warehouses)
    .bind(&quantities)
    .bind(on_hand)
    .bind(reserved)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_of_one_row_add_up_and_rows_come_in_lock_order() {
        let units: Units = [
            ("SOCK-M".to_string(), "RNO".to_string(), 2),
            ("HAT".to_string(), "SEA".to_string(), 1),
            ("SOCK-M".to_string(), "RNO".to_string(), 3),
            ("HAT".to_string(), "ATL".to_string(), 4),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            units.columns(),
            (
                vec!["HAT", "HAT", "SOCK-M"],
                vec!["ATL", "SEA", "RNO"],
                vec![4, 1, 5]
            )
        );
        assert_eq!(units.total(), 10);
        assert_eq!(units.skus(), vec!["HAT", "SOCK-M"]);
        assert!(Units::default().is_empty());
    }
}
