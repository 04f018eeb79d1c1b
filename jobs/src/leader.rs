//! Scheduler leader election: of any number of `conveyor-scheduler`
//! replicas, one enqueues the imports.
//!
//! Every replica opens one *dedicated* connection to Postgres (a
//! `PgConnection` of its own, not one from the pool) and, while it follows,
//! tries `pg_try_advisory_lock(LEADER_LOCK_KEY)` on it every
//! `scheduler.election_secs` (2 s by default). The replica whose try
//! succeeds leads. A leader checks its connection with `SELECT 1` every
//! tick; if the check fails or does not answer in time, it steps down at
//! once and drops the connection, because the lock may be gone with it.
//!
//! Why this fails over: a session-level advisory lock belongs to the
//! database session that took it. Nothing releases it but
//! `pg_advisory_unlock` or the end of that session: no commit, no timeout.
//! When the leader process dies (`kill -9`, a panic, the OOM killer), the
//! operating system closes its socket, Postgres ends the session and
//! releases the lock, and a follower's next try takes it, within
//! `election_secs`. The connection has to be a dedicated one: a pooled
//! connection lives on its own terms, so the pool could close it (idle or
//! lifetime limits), silently ending the leadership, or hand it to some
//! other task which would then hold the lock without knowing. A dedicated
//! connection lives exactly as long as the leadership it carries.
//!
//! A leader whose machine vanishes without closing its socket would keep
//! its session alive on the server until TCP keepalives notice. So each
//! election connection sets `idle_session_timeout` (PostgreSQL 14 and
//! later) to a few election periods: a live replica talks on its
//! connection every period, a vanished one is cut off by the server and its
//! lock released.
//!
//! Leadership is a belief, not a guarantee: for a moment two replicas may
//! both believe they lead (a leader cut off from Postgres believes it until
//! its next check fails). That is harmless, because import jobs are keyed
//! by channel and tick (`shop:176398000`): two leaders firing in the same
//! tick make one job. The election only keeps followers from doing work
//! that would be thrown away.
//!
//! The lock is per database, so two Conveyor deployments on one server
//! with different databases elect a leader each.

use std::str::FromStr;
use std::time::Duration;

use prometheus::IntGauge;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::settings::SchedulerSettings;

/// The advisory lock key the scheduler leadership is held under: FNV-1a of
/// `"conveyor-scheduler"`.
pub const LEADER_LOCK_KEY: i64 = fnv1a(b"conveyor-scheduler");

const fn fnv1a(bytes: &[u8]) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash as i64
}

/// How long one election query (connect, try, check) may take before the
/// connection is given up on.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// A name unique to this start of this scheduler process (host, pid, start
/// time). It is the election connection's `application_name`, so
/// `pg_stat_activity` shows who holds the lock.
pub fn scheduler_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let host = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "host".into());
        let started = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f");
        format!("conveyor-scheduler-{host}-{}-{started}", std::process::id())
    })
    .clone()
}

/// The `application_name` of the session holding the leadership in the
/// pool's database, if any session does.
pub async fn current_leader(pool: &PgPool) -> Result<Option<String>, sqlx::Error> {
    // A bigint advisory key shows in pg_locks as classid (high 32 bits),
    // objid (low 32 bits) and objsubid 1.
    sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND ((l.classid::bigint << 32) | l.objid::bigint) = $1",
    )
    .bind(LEADER_LOCK_KEY)
    .fetch_optional(pool)
    .await
}

/// A running election: a task that campaigns for the leadership on its own
/// connection until [`Election::stop`].
pub struct Election {
    leading: watch::Receiver<bool>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Election {
    /// Starts campaigning as `name`. Followers try for the lock every
    /// `election_secs`; the leader checks its connection every
    /// `min(election_secs, tick_secs)`. `gauge` follows the leadership (1/0).
    pub fn start(
        database_url: &str,
        name: String,
        settings: &SchedulerSettings,
        gauge: IntGauge,
    ) -> Result<Election, sqlx::Error> {
        let election = Duration::from_secs(settings.election_secs.max(1));
        let check = election.min(Duration::from_secs(settings.tick_secs.max(1)));
        // Longer than any pause a live replica makes between two queries.
        let idle_timeout = election * 2 + QUERY_TIMEOUT;
        let options = PgConnectOptions::from_str(database_url)?
            .application_name(&name)
            .log_statements(tracing::log::LevelFilter::Trace);
        let candidate = Candidate {
            options,
            idle_timeout,
            name,
            conn: None,
            leading: false,
        };
        let (tx, leading) = watch::channel(false);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(campaign(candidate, tx, gauge, stopped, election, check));
        Ok(Election {
            leading,
            stop,
            task,
        })
    }

    /// `true` while this process leads. Changes are announced on the
    /// receiver (`changed()`).
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Stops campaigning; a leader closes its connection, which releases
    /// the lock, so a follower takes over on its next try.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn campaign(
    mut candidate: Candidate,
    tx: watch::Sender<bool>,
    gauge: IntGauge,
    mut stopped: oneshot::Receiver<()>,
    election: Duration,
    check: Duration,
) {
    loop {
        let leading = candidate.round().await;
        gauge.set(i64::from(leading));
        tx.send_if_modified(|was| std::mem::replace(was, leading) != leading);
        let wait = if leading { check } else { election };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stopped => break,
        }
    }
    candidate.resign().await;
    gauge.set(0);
    tx.send_replace(false);
}

/// One replica's side of the election: its dedicated connection, and
/// whether it holds the lock on it.
struct Candidate {
    options: PgConnectOptions,
    idle_timeout: Duration,
    name: String,
    conn: Option<PgConnection>,
    leading: bool,
}

impl Candidate {
    /// One round: a leader checks its connection, a follower tries for the
    /// lock. Returns whether this replica leads after it.
    async fn round(&mut self) -> bool {
        let outcome = if self.leading {
            self.check().await
        } else {
            self.try_lock().await
        };
        match outcome {
            Ok(leading) => {
                if leading && !self.leading {
                    tracing::info!(scheduler = %self.name, "became the leader: this scheduler enqueues the imports");
                }
                self.leading = leading;
            }
            Err(e) => {
                // Whatever state the connection is in, it goes: if it held
                // the lock, closing it is what releases it.
                self.conn = None;
                if self.leading {
                    tracing::warn!(scheduler = %self.name, error = %e, "lost the leadership: the election connection failed; stepping down");
                } else {
                    tracing::debug!(scheduler = %self.name, error = %e, "election try failed; trying again next period");
                }
                self.leading = false;
            }
        }
        self.leading
    }

    async fn check(&mut self) -> Result<bool, ElectionError> {
        let conn = self.conn.as_mut().ok_or(ElectionError::Disconnected)?;
        within(sqlx::query("SELECT 1").execute(&mut *conn)).await?;
        Ok(true)
    }

    async fn try_lock(&mut self) -> Result<bool, ElectionError> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let conn = self.conn.as_mut().ok_or(ElectionError::Disconnected)?;
        let taken: bool = within(
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LEADER_LOCK_KEY)
                .fetch_one(&mut *conn),
        )
        .await?;
        Ok(taken)
    }

    async fn connect(&self) -> Result<PgConnection, ElectionError> {
        let mut conn = within(PgConnection::connect_with(&self.options)).await?;
        let set = format!(
            "SET idle_session_timeout = {}",
            self.idle_timeout.as_millis()
        );
        if let Err(e) = within(sqlx::query(sqlx::AssertSqlSafe(set)).execute(&mut conn)).await {
            // Before PostgreSQL 14: a vanished leader's lock then lasts until
            // the server's TCP keepalives notice.
            tracing::debug!(error = %e, "idle_session_timeout not set on the election connection");
        }
        Ok(conn)
    }

    /// Ends the session, which releases the lock if this replica held it.
    async fn resign(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = tokio::time::timeout(QUERY_TIMEOUT, conn.close()).await;
        }
        if self.leading {
            tracing::info!(scheduler = %self.name, "gave up the leadership on shutdown");
        }
        self.leading = false;
    }
}

#[derive(Debug, thiserror::Error)]
enum ElectionError {
    #[error("no election connection")]
    Disconnected,
    #[error("the election connection did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

async fn within<T>(fut: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, ElectionError> {
    match tokio::time::timeout(QUERY_TIMEOUT, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ElectionError::Timeout(QUERY_TIMEOUT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_key_is_fixed() {
        // Changing it would let old and new schedulers lead side by side
        // during an upgrade.
        assert_eq!(LEADER_LOCK_KEY, 0xd2b6_0e22_6ca3_fbc8_u64 as i64);
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325_u64 as i64);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c_u64 as i64);
    }
}
