//! The machine and servers a run measures on, and scratch databases.

use std::fmt;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// What a table of figures needs next to it: the machine, and the
/// settings of Postgres (and Redis) that decide what a commit costs.
pub struct Machine {
    cpus: usize,
    cpu_model: String,
    memory: String,
    postgres: Vec<(&'static str, String)>,
    redis: Option<String>,
}

impl Machine {
    /// Refuses a Postgres set up unlike a production one, unless
    /// `allow_unsafe`: with `fsync` or `synchronous_commit` off commits are
    /// not durable; with `autovacuum` off no table ever gets statistics, so
    /// the plans Postgres caches for the jobs' statements are made for empty
    /// tables and kept, and jobs slow down as the tables grow.
    pub fn ensure_comparable(&self, allow_unsafe: bool) -> anyhow::Result<()> {
        let off: Vec<&str> = ["fsync", "synchronous_commit", "autovacuum"]
            .into_iter()
            .filter(|name| self.postgres_setting(name) != Some("on"))
            .collect();
        if off.is_empty() || allow_unsafe {
            return Ok(());
        }
        let turn_on: String = off
            .iter()
            .map(|name| format!("ALTER SYSTEM SET {name} = on; "))
            .collect();
        anyhow::bail!(
            "Postgres runs with {} off: figures would not be comparable with a production \
             server's. Turn it on ({turn_on}SELECT pg_reload_conf();), or pass --allow-unsafe \
             to run anyway.",
            off.join(" and ")
        )
    }

    /// One of the Postgres settings read (`SHOW name`).
    pub fn postgres_setting(&self, name: &str) -> Option<&str> {
        self.postgres
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "machine: {} CPUs ({}), {} memory, load average {}",
            self.cpus,
            self.cpu_model,
            self.memory,
            load_average()
        )?;
        let settings: Vec<String> = self
            .postgres
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        writeln!(f, "postgres: {}", settings.join(", "))?;
        if let Some(redis) = &self.redis {
            writeln!(f, "redis: {redis}")?;
        }
        Ok(())
    }
}

/// Reads the machine and the servers' settings.
/// Redis is described only when `redis_url` is given.
pub async fn describe(database_url: &str, redis_url: Option<&str>) -> anyhow::Result<Machine> {
    let mut conn = PgConnection::connect_with(&PgConnectOptions::from_str(database_url)?)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Postgres at {database_url}: {e}"))?;
    let mut postgres = Vec::new();
    for name in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "autovacuum",
        "full_page_writes",
        "wal_sync_method",
        "shared_buffers",
        "max_connections",
    ] {
        let value: String = sqlx::query_scalar(AssertSqlSafe(format!("SHOW {name}")))
            .fetch_one(&mut conn)
            .await?;
        postgres.push((name, value));
    }
    conn.close().await?;
    let redis = match redis_url {
        Some(url) => Some(redis_settings(url).await?),
        None => None,
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Ok(Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: proc_field(&cpuinfo, "model name").unwrap_or_else(|| "unknown CPU".into()),
        memory: proc_field(&meminfo, "MemTotal")
            .and_then(|kb| kb.trim_end_matches(" kB").trim().parse::<u64>().ok())
            .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown".into()),
        postgres,
        redis,
    })
}

async fn redis_settings(url: &str) -> anyhow::Result<String> {
    let client = redis::Client::open(url)?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Redis at {url}: {e}"))?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await?;
    let version = proc_field(&info, "redis_version").unwrap_or_else(|| "unknown".into());
    // CONFIG may be disabled on a managed Redis; the version is enough then.
    let persistence: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(&mut conn)
        .await;
    let fsync: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync")
        .query_async(&mut conn)
        .await;
    let setting = |r: Result<Vec<String>, _>| {
        r.ok()
            .and_then(|v| v.get(1).cloned())
            .unwrap_or_else(|| "unknown".into())
    };
    Ok(format!(
        "version {version}, appendonly={}, appendfsync={}",
        setting(persistence),
        setting(fsync)
    ))
}

/// `name : value` lines, as in /proc/cpuinfo, /proc/meminfo or Redis INFO.
fn proc_field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().to_string())
    })
}

/// The 1, 5 and 15 minute load averages, as `uptime` shows them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// Creates an empty database on the server of `server_url`; returns its URL.
pub async fn create_database(server_url: &str, prefix: &str) -> anyhow::Result<String> {
    let name = format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut admin = admin(server_url).await?;
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    conveyor_jobs::db::replace_database(server_url, &name)
}

/// Drops the database of `url`, even if a killed worker's connection to it
/// is still closing.
pub async fn drop_database(server_url: &str, url: &str) -> anyhow::Result<()> {
    let options = PgConnectOptions::from_str(url)?;
    let name = options
        .get_database()
        .ok_or_else(|| anyhow::anyhow!("{url} names no database"))?
        .replace('"', "\"\"");
    let mut admin = admin(server_url).await?;
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    admin.close().await?;
    Ok(())
}

async fn admin(server_url: &str) -> anyhow::Result<PgConnection> {
    let options = PgConnectOptions::from_str(server_url)?.database("postgres");
    Ok(PgConnection::connect_with(&options).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_from_colon_separated_lines() {
        let text =
            "model name\t: Some CPU @ 3.0GHz\nMemTotal:       8000000 kB\r\nredis_version:7.2.4";
        assert_eq!(
            proc_field(text, "model name").as_deref(),
            Some("Some CPU @ 3.0GHz")
        );
        assert_eq!(proc_field(text, "MemTotal").as_deref(), Some("8000000 kB"));
        assert_eq!(proc_field(text, "redis_version").as_deref(), Some("7.2.4"));
        assert_eq!(proc_field(text, "missing"), None);
    }
}
