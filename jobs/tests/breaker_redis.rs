//! The circuit breaker against a real Redis (127.0.0.1:6379, or
//! `CONVEYOR_TEST_REDIS_URL`): the fleet shares one state, the Lua scripts
//! follow the same state machine as the in-memory store, and an unreachable
//! Redis leaves every process with a working breaker of its own. Each test
//! uses its own key prefix and removes its keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use conveyor_jobs::breaker::{Admission, Breakers, MemoryStore, Policy, RedisStore, Transition};
use conveyor_jobs::carrier::{BuyOutcome, CarrierApi, CarrierShipment, ShipmentRequest};
use conveyor_jobs::error::{ApiError, ErrorClass};
use conveyor_jobs::metrics::Metrics;

fn redis_url() -> String {
    std::env::var("CONVEYOR_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn prefix() -> String {
    format!("conveyor:test:{}", uuid::Uuid::new_v4().simple())
}

fn policy(open: Duration) -> Policy {
    Policy {
        failures: 3,
        window: Duration::from_secs(10),
        open,
    }
}

/// A carrier API whose `get_shipment` answers 503 while `down`, and counts
/// the calls that reached it.
struct Carrier {
    calls: AtomicUsize,
    down: std::sync::atomic::AtomicBool,
}

impl Carrier {
    fn new(down: bool) -> Arc<Carrier> {
        Arc::new(Carrier {
            calls: AtomicUsize::new(0),
            down: std::sync::atomic::AtomicBool::new(down),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl CarrierApi for Carrier {
    async fn create_shipment(&self, _: &ShipmentRequest) -> Result<CarrierShipment, ApiError> {
        unimplemented!()
    }
    async fn get_shipment(&self, id: &str) -> Result<CarrierShipment, ApiError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(ApiError::from_status("easypost", 503, None, "down"));
        }
        Ok(CarrierShipment {
            id: id.into(),
            reference: None,
            rates: Vec::new(),
            postage: None,
            refund_status: None,
        })
    }
    async fn buy(&self, _: &str, _: &str) -> Result<BuyOutcome, ApiError> {
        unimplemented!()
    }
    async fn refund(&self, _: &str) -> Result<CarrierShipment, ApiError> {
        unimplemented!()
    }
    async fn fetch_label(&self, _: &str) -> Result<Vec<u8>, ApiError> {
        unimplemented!()
    }
}

/// One "worker": its own breakers (own local state, own metrics) over the
/// shared Redis, and its own view of the carrier.
fn worker(
    url: &str,
    prefix: &str,
    policy: Policy,
    api: Arc<Carrier>,
) -> (Breakers, Arc<dyn CarrierApi>) {
    let store = RedisStore::new(url, prefix).expect("a usable Redis URL");
    let breakers = Breakers::new(policy, Some(store), Metrics::new());
    let carrier = breakers.carrier("easypost", api);
    (breakers, carrier)
}

fn is_circuit_open(e: &ApiError) -> bool {
    matches!(e.class, ErrorClass::CircuitOpen { .. })
}

#[tokio::test]
async fn two_workers_share_the_open_state_through_redis() {
    let prefix = prefix();
    let api = Carrier::new(true);
    let policy = policy(Duration::from_secs(30));
    let (a_breakers, a) = worker(&redis_url(), &prefix, policy, api.clone());
    let (b_breakers, b) = worker(&redis_url(), &prefix, policy, api.clone());

    // Worker B sees the API fine before anything happened.
    api.down.store(false, Ordering::SeqCst);
    b.get_shipment("shp_1").await.expect("closed breaker calls");
    api.down.store(true, Ordering::SeqCst);

    // Worker A meets the outage, three times: the shared breaker opens.
    for _ in 0..3 {
        let e = a.get_shipment("shp_1").await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Retryable);
    }
    let redis = a_breakers.redis().unwrap();
    let state = redis.state("easypost").await.unwrap();
    assert!(state.open_until > 0, "open in Redis: {state:?}");

    // Worker B, which never saw a failure, does not call the API any more.
    let calls = api.calls();
    let e = b.get_shipment("shp_1").await.unwrap_err();
    assert!(is_circuit_open(&e), "{e}");
    let ErrorClass::CircuitOpen { retry_in } = e.class else {
        unreachable!()
    };
    assert!(retry_in > Duration::from_secs(25) && retry_in <= Duration::from_secs(30));
    assert_eq!(api.calls(), calls, "B made no call");
    let metrics_b = b_breakers.metrics();
    assert_eq!(
        metrics_b.breaker_open("easypost"),
        1,
        "B's gauge shows the breaker open"
    );
    assert_eq!(
        metrics_b.breaker_rejected_calls("easypost"),
        1,
        "B counted the refused call"
    );
    // Its local state knows nothing: the decision came from Redis.
    assert_eq!(b_breakers.local().state("easypost").open_until, 0);

    redis.clear("easypost").await.unwrap();
}

#[tokio::test]
async fn after_the_cool_down_one_worker_probes_and_its_success_closes_the_breaker_for_all() {
    let prefix = prefix();
    let api = Carrier::new(true);
    let policy = policy(Duration::from_millis(400));
    let (a_breakers, a) = worker(&redis_url(), &prefix, policy, api.clone());
    let (_b_breakers, b) = worker(&redis_url(), &prefix, policy, api.clone());
    for _ in 0..3 {
        let _ = a.get_shipment("shp_1").await;
    }
    assert!(is_circuit_open(&b.get_shipment("shp_1").await.unwrap_err()));

    // The API is back; wait (on the breaker, not the clock) until it lets
    // a probe through, then everyone calls again.
    api.down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match b.get_shipment("shp_1").await {
            Ok(_) => break,
            Err(e) => assert!(is_circuit_open(&e), "{e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the breaker never let a probe through"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    a.get_shipment("shp_1")
        .await
        .expect("closed for worker A too");
    let redis = a_breakers.redis().unwrap();
    assert_eq!(redis.state("easypost").await.unwrap().open_until, 0);
    redis.clear("easypost").await.unwrap();
}

#[tokio::test]
async fn the_redis_scripts_follow_the_same_state_machine_as_the_memory_store() {
    let prefix = prefix();
    let redis = RedisStore::new(&redis_url(), &prefix).unwrap();
    let memory = MemoryStore::default();
    let p = Policy {
        failures: 3,
        window: Duration::from_secs(10),
        open: Duration::from_secs(30),
    };
    let t0: u64 = 1_700_000_000_000;
    // (time offset in ms, step): true/false = record an outage or not,
    // None = ask for admission.
    let script: Vec<(u64, Option<bool>)> = vec![
        (0, None),
        (0, Some(true)),
        (1_000, Some(true)),
        (1_500, Some(false)), // resets the count
        (2_000, Some(true)),
        (13_000, Some(true)), // outside the window: starts over
        (14_000, Some(true)),
        (15_000, Some(true)), // opens
        (15_001, None),
        (20_000, Some(false)), // a late success while open: nothing
        (44_999, None),
        (45_000, None),       // the probe
        (45_010, None),       // waits for the probe
        (45_100, Some(true)), // probe failed: reopened
        (45_200, None),
        (75_100, None),        // the next probe
        (75_300, Some(false)), // closed
        (75_400, None),
        (75_500, Some(true)),
    ];
    for (offset, step) in script {
        let now = t0 + offset;
        match step {
            None => {
                let m = memory.admit("api", &p, now);
                let r = redis.admit("api", &p, Some(now)).await.unwrap();
                assert_eq!(r, m, "admission at +{offset} ms");
            }
            Some(outage) => {
                let m = memory.record("api", &p, now, outage);
                let r = redis.record("api", &p, Some(now), outage).await.unwrap();
                assert_eq!(r, m, "transition at +{offset} ms");
            }
        }
        let (m, r) = (memory.state("api"), redis.state("api").await.unwrap());
        assert_eq!(r.open_until, m.open_until, "open until, at +{offset} ms");
        assert_eq!(r.probe_until, m.probe_until, "probe until, at +{offset} ms");
        assert_eq!(r.failures, m.failures, "failures, at +{offset} ms");
    }
    assert_eq!(memory.state("api").failures, 1);
    redis.clear("api").await.unwrap();
}

#[tokio::test]
async fn with_redis_unreachable_each_worker_keeps_a_working_breaker_of_its_own() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("redis://127.0.0.1:{port}");
    let api = Carrier::new(false);
    let policy = policy(Duration::from_secs(30));
    let (breakers, carrier) = worker(&url, &prefix(), policy, api.clone());

    let started = Instant::now();
    carrier
        .get_shipment("shp_1")
        .await
        .expect("calls go through without Redis");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no long wait on Redis: {:?}",
        started.elapsed()
    );
    api.down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let e = carrier.get_shipment("shp_1").await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Retryable);
    }
    let calls = api.calls();
    let e = carrier.get_shipment("shp_1").await.unwrap_err();
    assert!(is_circuit_open(&e), "the local breaker opened: {e}");
    assert_eq!(api.calls(), calls);
    assert!(breakers.local().state("easypost").open_until > 0);
    assert_eq!(breakers.metrics().breaker_open("easypost"), 1);
}

#[tokio::test]
async fn the_state_expires_from_redis_when_no_one_uses_the_api() {
    let prefix = prefix();
    let redis = RedisStore::new(&redis_url(), &prefix).unwrap();
    let p = policy(Duration::from_millis(100));
    assert_eq!(
        redis.record("api", &p, None, true).await.unwrap(),
        Transition::None
    );
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(redis.key("api"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 10_000 + 2 * 100 + 60_000, "ttl {ttl}");
    assert_eq!(redis.admit("api", &p, None).await.unwrap(), Admission::Call);
    redis.clear("api").await.unwrap();
}

/// A TCP proxy in front of Redis that can be cut: while cut, it drops the
/// connections it holds and every new one.
struct Proxy {
    port: u16,
    up: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, _) = tokio::sync::watch::channel(true);
        let state = up.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut cut = state.subscribe();
                if !*cut.borrow() {
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy { port, up }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

#[tokio::test]
async fn when_redis_answers_again_the_breaker_state_is_shared_again() {
    let target = redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_string();
    let proxy = Proxy::start(target).await;
    let prefix = prefix();
    let api = Carrier::new(true);
    let policy = policy(Duration::from_secs(30));
    let (breakers, carrier) = worker(&proxy.url(), &prefix, policy, api.clone());
    let direct = RedisStore::new(&redis_url(), &prefix).unwrap();

    // One outage, counted in Redis.
    let _ = carrier.get_shipment("shp_1").await;
    assert_eq!(direct.state("easypost").await.unwrap().failures, 1);

    // Redis goes away: the outages are counted here and open the local
    // breaker; Redis never hears of them.
    proxy.set_up(false);
    for _ in 0..3 {
        let e = carrier.get_shipment("shp_1").await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Retryable);
    }
    assert!(breakers.local().state("easypost").open_until > 0);
    assert!(is_circuit_open(
        &carrier.get_shipment("shp_1").await.unwrap_err()
    ));
    assert_eq!(direct.state("easypost").await.unwrap().failures, 1);

    // Redis is back: within a few seconds the process asks it again (its
    // breaker is closed there) and counts the next outages there.
    proxy.set_up(true);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = carrier.get_shipment("shp_1").await;
        if direct.state("easypost").await.unwrap().failures >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the breaker never went back to Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    direct.clear("easypost").await.unwrap();
}
