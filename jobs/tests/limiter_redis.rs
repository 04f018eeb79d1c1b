//! The fleet's rate limiter against a real Redis (127.0.0.1:6379, or
//! `CONVEYOR_TEST_REDIS_URL`): the Lua script makes the same GCRA decisions
//! as the in-memory schedule, several processes share one limit, and a
//! Redis that goes away (a `redis-server` of the test's own, killed) leaves
//! every process limiting on its own share until Redis is back. Each test
//! uses its own key prefix and removes its keys.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conveyor_jobs::breaker::connect_lazy;
use conveyor_jobs::limiter::{Decision, Gcra, Limiters, MemoryLimiter, RedisLimiter};
use conveyor_jobs::metrics::Metrics;

fn redis_url() -> String {
    std::env::var("CONVEYOR_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn prefix() -> String {
    format!("conveyor:test:{}", uuid::Uuid::new_v4().simple())
}

fn shared(url: &str, prefix: &str) -> RedisLimiter {
    RedisLimiter::new(connect_lazy(url).expect("a readable URL"), prefix)
}

/// A `redis-server` of this test's own on a free port, without persistence;
/// killed when dropped.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = OwnRedis { port, child: None };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and waits until it answers.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (is it installed?)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn the_script_decides_exactly_like_the_in_memory_schedule() {
    let redis = shared(&redis_url(), &prefix());
    let memory = MemoryLimiter::default();
    let gcra = Gcra::new(5.0, 3).unwrap();
    let max_wait = Duration::from_millis(700);
    let t0: u64 = 1_700_000_000_000_000;
    // Clumps of requests, some further apart than the schedule needs to
    // empty, some closer; every decision (waits, refusals, what is
    // reserved) must agree.
    let mut now = t0;
    let mut decisions = Vec::new();
    for (gap_ms, clump) in [(0, 8), (150, 3), (1_000, 6), (5_000, 10), (90, 2), (400, 4)] {
        now += gap_ms * 1_000;
        for _ in 0..clump {
            let expected = memory.take("api", &gcra, now, max_wait);
            let got = redis.take("api", &gcra, Some(now), max_wait).await.unwrap();
            assert_eq!(got, expected, "at +{} µs", now - t0);
            decisions.push(got);
        }
    }
    // Both kinds of answer were exercised.
    assert!(
        decisions
            .iter()
            .any(|d| matches!(d, Decision::Refuse { .. }))
    );
    assert!(
        decisions
            .iter()
            .any(|d| matches!(d, Decision::Go { wait } if !wait.is_zero()))
    );
    // The schedule expires once its last slot has passed.
    let mut conn = connect_lazy(&redis_url()).unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(redis.key("api"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0, "the schedule key expires (PTTL {ttl})");
    redis.clear("api").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_share_one_limit_and_never_exceed_rate_plus_burst() {
    const RATE: f64 = 40.0;
    const BURST: u32 = 5;
    const PER_PROCESS: usize = 30;
    let prefix = prefix();
    let gcra = Gcra::new(RATE, BURST).unwrap();
    // Three "processes": each its own connection, limiters and metrics.
    let processes: Vec<Limiters> = (0..3)
        .map(|_| {
            Limiters::new(
                Some(shared(&redis_url(), &prefix)),
                Duration::from_secs(5),
                3,
                Metrics::new(),
            )
        })
        .collect();
    let admitted = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut calls = Vec::new();
    for limiters in &processes {
        let limiter = limiters.get("shopify:shop", "shopify", gcra);
        for _ in 0..PER_PROCESS {
            let limiter = limiter.clone();
            let admitted = admitted.clone();
            calls.push(tokio::spawn(async move {
                limiter.acquire().await.expect("waits, never refused");
                admitted.lock().unwrap().push(started.elapsed());
            }));
        }
    }
    for call in calls {
        call.await.unwrap();
    }
    let elapsed = started.elapsed();
    let mut times = admitted.lock().unwrap().clone();
    times.sort_unstable();
    assert_eq!(times.len(), 3 * PER_PROCESS);
    // One schedule for all three: 90 calls at 40/s after a burst of 5 take
    // at least (90 - 5) / 40 s; three separate limits would take a third.
    let least = Duration::from_secs_f64((3 * PER_PROCESS - BURST as usize) as f64 / RATE);
    assert!(
        elapsed >= least - Duration::from_millis(50),
        "{elapsed:?} < {least:?}: the processes did not share the limit"
    );
    let busiest = times
        .iter()
        .map(|start| {
            times
                .iter()
                .filter(|t| **t >= *start && **t < *start + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    eprintln!(
        "{} calls in {elapsed:?}, busiest second {busiest}",
        times.len()
    );
    // Times are taken when each call wakes up; a late wake-up can carry
    // one call across a window's edge, hence the one call of slack.
    assert!(
        busiest as f64 <= RATE + f64::from(BURST) + 1.0,
        "{busiest} calls in one second"
    );
    for limiters in &processes {
        assert!(limiters.metrics().rate_limit_waits("shopify:shop") > 0);
        assert_eq!(limiters.metrics().limiter_fallback("shopify:shop"), 0);
    }
    processes[0]
        .redis()
        .unwrap()
        .clear("shopify:shop")
        .await
        .unwrap();
}

#[tokio::test]
async fn without_redis_each_process_limits_on_its_share_and_recovers_when_redis_is_back() {
    let mut own = OwnRedis::start();
    let prefix = prefix();
    let metrics = Metrics::new();
    let limiters = Limiters::new(
        Some(shared(&own.url(), &prefix)),
        Duration::from_secs(2),
        2,
        metrics.clone(),
    );
    // 10/s for the fleet, bursts of 4: 5/s and bursts of 2 for each of two
    // workers.
    let limiter = limiters.get("easypost", "easypost", Gcra::new(10.0, 4).unwrap());
    for _ in 0..4 {
        assert_eq!(limiter.acquire().await.unwrap(), Duration::ZERO);
    }
    assert!(!limiters.in_fallback());
    assert_eq!(metrics.limiter_fallback("easypost"), 0);

    own.kill();
    // Every call still goes through, at this process's share of the rate:
    // a fresh local schedule with a burst of 2, then one per 200 ms.
    let started = Instant::now();
    let mut waits = Vec::new();
    for _ in 0..6 {
        waits.push(limiter.acquire().await.expect("no call fails for Redis"));
    }
    let elapsed = started.elapsed();
    assert!(limiters.in_fallback());
    assert_eq!(metrics.limiter_fallback("easypost"), 1);
    assert_eq!(waits[0], Duration::ZERO);
    assert_eq!(waits[1], Duration::ZERO);
    for w in &waits[2..] {
        assert!(
            *w > Duration::from_millis(150) && *w <= Duration::from_millis(200),
            "{waits:?}"
        );
    }
    assert!(
        elapsed >= Duration::from_millis(750) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );

    // Redis comes back; after the reconnect backoff the limit is shared
    // again and the gauge says so.
    own.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while limiters.in_fallback() {
        assert!(Instant::now() < deadline, "never went back to Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = limiter.acquire().await.expect("no call fails");
    }
    assert_eq!(metrics.limiter_fallback("easypost"), 0);
    let mut conn = connect_lazy(&own.url()).unwrap();
    let exists: i64 = redis::cmd("EXISTS")
        .arg(limiters.redis().unwrap().key("easypost"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 1, "the schedule lives in Redis again");
}
