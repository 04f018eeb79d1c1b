//! What the fleet has done and what it holds: the numbers behind
//! `conveyor stats --json` and the database gauges of `/metrics`.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::PgPool;

use crate::state::{JobState, OrderState, PackageState};

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Orders by state.
    pub orders: BTreeMap<String, i64>,
    /// Packages by state.
    pub packages: BTreeMap<String, i64>,
    /// Jobs by queue, then by state.
    pub jobs: BTreeMap<String, BTreeMap<String, i64>>,
    /// Open dead letters by queue.
    pub dead_letters: BTreeMap<String, i64>,
    pub labels_purchased: i64,
    pub stock_on_hand: i64,
    pub stock_reserved: i64,
    pub channels: Vec<ChannelStats>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ChannelStats {
    pub code: String,
    pub cursor: Option<chrono::DateTime<chrono::Utc>>,
    pub last_import_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub async fn collect(pool: &PgPool) -> Result<Stats, sqlx::Error> {
    let mut stats = Stats::default();
    for state in OrderState::ALL {
        stats.orders.insert(state.to_string(), 0);
    }
    for state in PackageState::ALL {
        stats.packages.insert(state.to_string(), 0);
    }
    let rows: Vec<(OrderState, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM orders GROUP BY state")
            .fetch_all(pool)
            .await?;
    stats
        .orders
        .extend(rows.into_iter().map(|(s, n)| (s.to_string(), n)));
    let rows: Vec<(PackageState, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM packages GROUP BY state")
            .fetch_all(pool)
            .await?;
    stats
        .packages
        .extend(rows.into_iter().map(|(s, n)| (s.to_string(), n)));
    // apalis stores statuses as text; the cast to `job_state` fails loudly
    // on a status this code does not know rather than reporting it as text.
    let rows: Vec<(String, JobState, i64)> = sqlx::query_as(
        "SELECT job_type, lower(status)::job_state, count(*) FROM apalis.jobs GROUP BY 1, 2",
    )
    .fetch_all(pool)
    .await?;
    for (queue, state, n) in rows {
        stats
            .jobs
            .entry(queue)
            .or_default()
            .insert(state.to_string(), n);
    }
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT queue, count(*) FROM dead_letters WHERE state = 'open' GROUP BY queue",
    )
    .fetch_all(pool)
    .await?;
    stats.dead_letters.extend(rows);
    stats.labels_purchased =
        sqlx::query_scalar("SELECT count(*) FROM labels WHERE state = 'purchased'")
            .fetch_one(pool)
            .await?;
    let (on_hand, reserved): (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT sum(on_hand)::bigint, sum(reserved)::bigint FROM stock")
            .fetch_one(pool)
            .await?;
    stats.stock_on_hand = on_hand.unwrap_or(0);
    stats.stock_reserved = reserved.unwrap_or(0);
    stats.channels =
        sqlx::query_as("SELECT code, cursor, last_import_at FROM channels ORDER BY code")
            .fetch_all(pool)
            .await?;
    Ok(stats)
}

/// Jobs that are neither finished nor dead: the pipeline is quiet when this
/// is zero.
pub async fn unfinished_jobs(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs
         WHERE status NOT IN ('Done', 'Killed') AND NOT (status = 'Failed' AND attempts >= max_attempts)",
    )
    .fetch_one(pool)
    .await
}
