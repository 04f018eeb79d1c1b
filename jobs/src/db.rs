//! Connecting to PostgreSQL and bringing its schema up to date.
//!
//! Conveyor's own tables come from `migrations/` (embedded at build time);
//! the job queue's tables come from apalis-postgres's migrations. Both
//! migrators record their versions in the same `_sqlx_migrations` table, so
//! each is told to ignore versions it does not know (the other's).
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let pool = conveyor_jobs::db::connect("postgres://postgres@127.0.0.1:5432/conveyor", 10).await?;
//! conveyor_jobs::db::migrate(&pool).await?;
//! # Ok(()) }
//! ```

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection, PgPool};

/// Opens a pool. Statement logging is turned down to debug so that routine
/// queries do not flood the logs.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2));
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
}

/// Reads the server settings Conveyor's speed depends on and logs a warning
/// for each that is unlike a production server's. Never an error: the fleet
/// still runs, only slower.
pub async fn warn_about_server(pool: &PgPool) {
    let setting: Result<String, _> = sqlx::query_scalar("SHOW autovacuum").fetch_one(pool).await;
    match setting {
        Ok(setting) => {
            if let Some(warning) = autovacuum_warning(&setting) {
                tracing::warn!(autovacuum = %setting, "{warning}");
            }
        }
        Err(e) => tracing::debug!(error = %e, "could not read the server's autovacuum setting"),
    }
}

fn autovacuum_warning(setting: &str) -> Option<&'static str> {
    (setting != "on").then_some(
        "Postgres has autovacuum off: Conveyor's tables get no planner statistics and no \
         vacuum, so the plans Postgres caches for the jobs' statements are those made while \
         the tables were small, finished jobs' row versions are never reclaimed, and every \
         job slows down as the tables grow. Turn autovacuum on, or run VACUUM ANALYZE on a \
         schedule.",
    )
}

/// A pool for LISTEN connections only, opened lazily: each queue's worker
/// holds one connection of it for as long as it runs (sqlx's listener keeps
/// the pooled connection it starts with), so listeners never take the
/// connections the jobs need from the main pool.
pub fn listen_pool(url: &str, listeners: u32) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.log_statements(tracing::log::LevelFilter::Trace);
    Ok(PgPoolOptions::new()
        // A restarted worker opens its listener before the old one is
        // dropped: room for that too.
        .max_connections(listeners.saturating_mul(2).max(2))
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options))
}

/// Applies the queue's and Conveyor's migrations. Safe to run any number of
/// times, from any number of processes (sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut queue = apalis_postgres::PostgresStorage::migrations();
    queue.set_ignore_missing(true);
    queue.run(pool).await?;
    let mut own = sqlx::migrate!("../migrations");
    own.set_ignore_missing(true);
    own.run(pool).await?;
    Ok(())
}

/// Creates the database named in `url` when it does not exist yet, by
/// connecting to the server's `postgres` database.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let options = PgConnectOptions::from_str(url)?;
    let name = options
        .get_database()
        .ok_or_else(|| anyhow::anyhow!("the database URL names no database"))?
        .to_string();
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        // Identifiers cannot be bound as parameters; quote it instead.
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
            .execute(&mut admin)
            .await
        {
            Ok(_) => {}
            // Another process created it between our check and our CREATE.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    admin.close().await?;
    Ok(())
}

/// Creates a new, empty, migrated database on the server of `server_url`
/// and returns its URL. Tests use one per test.
pub async fn fresh_database(server_url: &str, prefix: &str) -> anyhow::Result<String> {
    let options = PgConnectOptions::from_str(server_url)?;
    let name = format!(
        "{}_{}",
        prefix,
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..12)
            .unwrap_or("x")
    );
    let url = replace_database(server_url, &name)?;
    let mut admin = PgConnection::connect_with(&options.database("postgres")).await?;
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    let pool = connect(&url, 2).await?;
    migrate(&pool).await?;
    pool.close().await;
    Ok(url)
}

/// `postgres://u@h:p/old?x` with the database replaced by `name`.
pub fn replace_database(url: &str, name: &str) -> anyhow::Result<String> {
    let mut parsed = url::Url::parse(url)?;
    parsed.set_path(&format!("/{name}"));
    Ok(parsed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autovacuum_off_is_warned_about() {
        assert!(autovacuum_warning("off").is_some());
        assert_eq!(autovacuum_warning("on"), None);
    }
}
