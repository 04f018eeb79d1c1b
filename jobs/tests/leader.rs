//! Scheduler leader election against a real Postgres: one of several
//! candidates leads, and another takes over when the leader's session ends
//! (the process died) or when it stops (SIGTERM).

mod common;

use std::time::Duration;

use conveyor_jobs::db;
use conveyor_jobs::leader::{Election, current_leader};
use conveyor_jobs::settings::{SchedulerSettings, Settings};
use prometheus::IntGauge;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::time::Instant;

fn scheduler_settings() -> SchedulerSettings {
    let mut s = Settings::load(None).unwrap().scheduler;
    s.election_secs = 1;
    s.tick_secs = 1;
    s
}

struct Candidate {
    name: String,
    election: Election,
    leading: watch::Receiver<bool>,
    gauge: IntGauge,
}

fn candidate(url: &str, name: &str) -> Candidate {
    let gauge = IntGauge::new("conveyor_scheduler_leader", "test").unwrap();
    let election = Election::start(url, name.to_string(), &scheduler_settings(), gauge.clone())
        .expect("the election starts");
    let leading = election.leading();
    Candidate {
        name: name.to_string(),
        election,
        leading,
        gauge,
    }
}

/// Waits until exactly one of `candidates` leads; returns its index.
async fn one_leader(candidates: &[&Candidate], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let leaders: Vec<usize> = (0..candidates.len())
            .filter(|i| *candidates[*i].leading.borrow())
            .collect();
        assert!(leaders.len() <= 1, "two candidates lead at once");
        if let [leader] = leaders[..] {
            return leader;
        }
        assert!(Instant::now() < deadline, "no leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fresh() -> (String, PgPool) {
    let url = db::fresh_database(&common::server_url(), "leader")
        .await
        .unwrap();
    let pool = db::connect(&url, 2).await.unwrap();
    (url, pool)
}

async fn drop_database(url: &str, pool: PgPool) {
    pool.close().await;
    let name = url.rsplit('/').next().unwrap().to_string();
    let admin = db::connect(&common::server_url(), 1).await.unwrap();
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

#[tokio::test]
async fn a_follower_takes_over_when_the_leaders_session_ends() {
    let (url, pool) = fresh().await;
    let a = candidate(&url, "leader-test-a");
    let b = candidate(&url, "leader-test-b");
    let first = one_leader(&[&a, &b], Duration::from_secs(10)).await;
    let (leader, follower) = if first == 0 { (&a, &b) } else { (&b, &a) };
    assert_eq!(leader.gauge.get(), 1);
    assert_eq!(follower.gauge.get(), 0);
    assert_eq!(
        current_leader(&pool).await.unwrap().as_deref(),
        Some(leader.name.as_str()),
        "pg_locks shows the leader's session holding the lock"
    );

    // The leader's session ends as when its process dies.
    let ended = Instant::now();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&leader.name)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(killed, vec![true]);

    let mut took_over = follower.leading.clone();
    tokio::time::timeout(Duration::from_secs(5), took_over.wait_for(|l| *l))
        .await
        .expect("the follower leads within 5 s")
        .unwrap();
    let failover = ended.elapsed();
    let mut stepped_down = leader.leading.clone();
    tokio::time::timeout(Duration::from_secs(5), stepped_down.wait_for(|l| !*l))
        .await
        .expect("the old leader notices its connection is gone")
        .unwrap();
    assert_eq!(follower.gauge.get(), 1);
    assert_eq!(leader.gauge.get(), 0);
    assert_eq!(
        current_leader(&pool).await.unwrap().as_deref(),
        Some(follower.name.as_str())
    );
    eprintln!("failover after the leader's session ended: {failover:?}");

    // The old leader reconnects as a follower and stays one.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(!*leader.leading.borrow(), "the old leader stays a follower");
    assert!(*follower.leading.borrow());

    a.election.stop().await;
    b.election.stop().await;
    drop_database(&url, pool).await;
}

#[tokio::test]
async fn a_stopped_leader_hands_over_at_once() {
    let (url, pool) = fresh().await;
    let a = candidate(&url, "leader-test-c");
    let b = candidate(&url, "leader-test-d");
    let first = one_leader(&[&a, &b], Duration::from_secs(10)).await;
    let (leader, follower) = if first == 0 { (a, b) } else { (b, a) };

    let stopped = Instant::now();
    let mut old = leader.leading.clone();
    leader.election.stop().await;
    assert!(
        !*old.borrow_and_update(),
        "a stopped election leads no more"
    );
    assert_eq!(leader.gauge.get(), 0);
    let mut took_over = follower.leading.clone();
    tokio::time::timeout(Duration::from_secs(3), took_over.wait_for(|l| *l))
        .await
        .expect("the follower leads within one election period or so")
        .unwrap();
    eprintln!("handover after stop: {:?}", stopped.elapsed());
    assert_eq!(
        current_leader(&pool).await.unwrap().as_deref(),
        Some(follower.name.as_str())
    );

    follower.election.stop().await;
    assert_eq!(current_leader(&pool).await.unwrap(), None);
    drop_database(&url, pool).await;
}
