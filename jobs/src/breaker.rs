//! A circuit breaker per external API, shared by the fleet through Redis.
//!
//! Each API has its own breaker, named `shopify:<channel code>` or
//! `easypost`. It counts outages (5xx, timeouts, lost connections:
//! [`ErrorClass::is_outage`]); refused requests (other 4xx) and rate
//! limiting come from an API that works and reset the count. After
//! `failures` consecutive outages within `window` the breaker **opens**:
//! for `open` no worker calls the API, and every call returns an
//! [`ErrorClass::CircuitOpen`] error that the runner turns into a
//! reschedule (`run_at` = when the breaker may close, plus jitter) that
//! spends no attempt. When the cool-down is over the breaker is
//! **half-open**: one call (the probe) goes through, the others wait a
//! moment; a probe that works closes the breaker, one that fails opens it
//! again for another cool-down. A probe that never reports back (its worker
//! died) is replaced after `open`.
//!
//! The state lives in Redis (one hash per API, `{prefix}:breaker:{api}`,
//! changed only by two Lua scripts, so that every step is atomic across the
//! fleet, timed by the Redis server's clock). When Redis cannot be reached
//! the process logs it once and keeps the same state machine in memory
//! ([`MemoryStore`]) until Redis answers again: each worker then has its own
//! breaker, and no job fails because Redis is down.
//!
//! Adapters are wrapped where they are built: [`Breakers::channel`] and
//! [`Breakers::carrier`] return a [`ChannelApi`] / [`CarrierApi`] that asks
//! the breaker before every call and reports every result to it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::carrier::{BuyOutcome, CarrierApi, CarrierShipment, ShipmentRequest};
use crate::channel::{
    ChannelApi, ChannelFulfillment, FulfillmentOutcome, FulfillmentRequest, OrdersPage,
};
use crate::error::{ApiError, ErrorClass};
use crate::metrics::Metrics;
use crate::redis_link::{REDIS_WAIT, RedisLink};
use crate::settings::{BreakerSettings, Settings};

/// While a probe is out, other calls are sent back for at most this long.
const HALF_OPEN_WAIT: Duration = Duration::from_secs(1);

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Consecutive outages that open the breaker ...
    pub failures: u32,
    /// ... when they fall within this window.
    pub window: Duration,
    /// The cool-down: how long an open breaker refuses calls. Also how long
    /// a probe may take before another one is let through.
    pub open: Duration,
}

impl Policy {
    pub fn from_settings(s: &BreakerSettings) -> Policy {
        Policy {
            failures: s.failures.max(1),
            window: Duration::from_secs(s.window_secs.max(1)),
            open: Duration::from_secs(s.open_secs.max(1)),
        }
    }

    fn open_ms(&self) -> u64 {
        (self.open.as_millis() as u64).max(1)
    }

    fn window_ms(&self) -> u64 {
        self.window.as_millis() as u64
    }

    /// How long other calls wait while a probe is out.
    fn half_open_wait_ms(&self) -> u64 {
        (HALF_OPEN_WAIT.min(self.open).as_millis() as u64).max(1)
    }

    /// How long Redis keeps an idle breaker's state.
    fn ttl_ms(&self) -> u64 {
        self.window_ms() + 2 * self.open_ms() + 60_000
    }

    /// Whether a call may go out now; a probe is taken on the state.
    pub fn admit(&self, s: &mut State, now: u64) -> Admission {
        if s.open_until == 0 {
            return Admission::Call;
        }
        if now < s.open_until {
            return Admission::Refuse {
                retry_in: Duration::from_millis(s.open_until - now),
            };
        }
        if s.probe_until > now {
            return Admission::Refuse {
                retry_in: Duration::from_millis(
                    (s.probe_until - now).min(self.half_open_wait_ms()),
                ),
            };
        }
        s.probe_until = now + self.open_ms();
        Admission::Probe
    }

    /// Takes in the result of a call: `outage` when it failed the way a
    /// down API fails.
    pub fn record(&self, s: &mut State, now: u64, outage: bool) -> Transition {
        if s.open_until != 0 {
            if now < s.open_until {
                // A call that went out before the breaker opened: the
                // cool-down stands either way.
                return Transition::None;
            }
            return if outage {
                *s = State {
                    open_until: now + self.open_ms(),
                    ..State::default()
                };
                Transition::Reopened
            } else {
                *s = State::default();
                Transition::Closed
            };
        }
        if !outage {
            s.failures = 0;
            return Transition::None;
        }
        if s.failures == 0 || now.saturating_sub(s.window_start) > self.window_ms() {
            s.failures = 1;
            s.window_start = now;
        } else {
            s.failures += 1;
        }
        if s.failures >= self.failures {
            *s = State {
                open_until: now + self.open_ms(),
                ..State::default()
            };
            return Transition::Opened;
        }
        Transition::None
    }
}

/// One breaker's state. Times are milliseconds since the Unix epoch; 0 is
/// "none".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// Consecutive outages counted in the current window.
    pub failures: u32,
    pub window_start: u64,
    /// Closed when 0; open before this instant, half-open from it on.
    pub open_until: u64,
    /// While half-open: a probe is out until this instant.
    pub probe_until: u64,
}

/// What the breaker says about a call about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: call.
    Call,
    /// Half-open and this call is the probe.
    Probe,
    /// Open (or half-open with a probe out): do not call; try again in
    /// `retry_in`.
    Refuse { retry_in: Duration },
}

/// What a result did to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    /// Closed -> open: too many outages in the window.
    Opened,
    /// Half-open -> open: the probe failed.
    Reopened,
    /// Half-open -> closed: the probe worked.
    Closed,
}

/// Breaker state in this process's memory: the fallback when Redis cannot
/// be reached, and the reference the Redis scripts follow.
#[derive(Debug, Default)]
pub struct MemoryStore {
    states: Mutex<HashMap<String, State>>,
}

impl MemoryStore {
    pub fn admit(&self, api: &str, policy: &Policy, now: u64) -> Admission {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        policy.admit(states.entry(api.to_string()).or_default(), now)
    }

    pub fn record(&self, api: &str, policy: &Policy, now: u64, outage: bool) -> Transition {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        policy.record(states.entry(api.to_string()).or_default(), now, outage)
    }

    pub fn state(&self, api: &str) -> State {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.get(api).copied().unwrap_or_default()
    }
}

/// The clock both scripts use: the caller's `ARGV[1]` when it is given
/// (tests), else the Redis server's, so that every worker of the fleet
/// times the breaker alike.
const LUA_NOW: &str = r#"
local now = tonumber(ARGV[1])
if now == nil or now < 0 then
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function n(v) return tonumber(v or '0') or 0 end
local function s(v) return string.format('%.0f', v) end
"#;

/// [`Policy::admit`] in Lua. ARGV: now, probe lease (ms), half-open wait
/// (ms), ttl (ms). Returns {0} call, {1} probe, {2, ms} refuse.
const LUA_ADMIT: &str = r#"
local key = KEYS[1]
local lease, wait, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local st = redis.call('HMGET', key, 'ou', 'pu')
local ou, pu = n(st[1]), n(st[2])
if ou == 0 then return {0, 0} end
if now < ou then return {2, ou - now} end
if pu > now then return {2, math.min(pu - now, wait)} end
redis.call('HSET', key, 'pu', s(now + lease))
redis.call('PEXPIRE', key, ttl)
return {1, 0}
"#;

/// [`Policy::record`] in Lua. ARGV: now, outage (0/1), failures, window
/// (ms), open (ms), ttl (ms). Returns {0} nothing, {1} opened, {2}
/// reopened, {3} closed.
const LUA_RECORD: &str = r#"
local key = KEYS[1]
local outage = ARGV[2] == '1'
local threshold, window, open, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local st = redis.call('HMGET', key, 'f', 'ws', 'ou')
local f, ws, ou = n(st[1]), n(st[2]), n(st[3])
if ou ~= 0 then
  if now < ou then return {0} end
  if outage then
    redis.call('DEL', key)
    redis.call('HSET', key, 'ou', s(now + open))
    redis.call('PEXPIRE', key, ttl)
    return {2}
  end
  redis.call('DEL', key)
  return {3}
end
if not outage then
  if f ~= 0 then redis.call('HSET', key, 'f', 0) end
  return {0}
end
if f == 0 or now - ws > window then
  f = 1
  ws = now
else
  f = f + 1
end
if f >= threshold then
  redis.call('DEL', key)
  redis.call('HSET', key, 'ou', s(now + open))
  redis.call('PEXPIRE', key, ttl)
  return {1}
end
redis.call('HSET', key, 'f', f, 'ws', s(ws))
redis.call('PEXPIRE', key, ttl)
return {0}
"#;

/// A connection to `url` that connects at its first use and gives up on a
/// command after [`REDIS_WAIT`]: short timeouts, so that a Redis that is
/// down costs a call a quarter of a second, not a job. Only a URL that
/// cannot be read is an error. Must run inside a Tokio runtime.
pub fn connect_lazy(url: &str) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(REDIS_WAIT))
        .set_response_timeout(Some(REDIS_WAIT))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(200));
    ConnectionManager::new_lazy_with_config(client, config)
}

/// Breaker state in Redis, shared by every worker that uses the same
/// Redis and prefix.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    admit: Arc<redis::Script>,
    record: Arc<redis::Script>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisStore {
    /// Prepares a connection to `url` without connecting: an unreachable
    /// Redis is found out (and worked around) at the first call. Only a URL
    /// that cannot be read is an error. Must run inside a Tokio runtime.
    pub fn new(url: &str, prefix: &str) -> Result<RedisStore, redis::RedisError> {
        Ok(RedisStore {
            conn: connect_lazy(url)?,
            prefix: prefix.trim_end_matches(':').to_string(),
            admit: Arc::new(redis::Script::new(&format!("{LUA_NOW}{LUA_ADMIT}"))),
            record: Arc::new(redis::Script::new(&format!("{LUA_NOW}{LUA_RECORD}"))),
        })
    }

    /// The connection the breakers use; the rate limiters of the process
    /// share it (`crate::limiter`).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The Redis key of `api`'s breaker.
    pub fn key(&self, api: &str) -> String {
        format!("{}:breaker:{api}", self.prefix)
    }

    /// `now`: milliseconds since the epoch, or `None` for the Redis
    /// server's clock.
    pub async fn admit(
        &self,
        api: &str,
        policy: &Policy,
        now: Option<u64>,
    ) -> Result<Admission, redis::RedisError> {
        let mut conn = self.conn.clone();
        let mut call = self.admit.key(self.key(api));
        call.arg(now.map_or(-1, |n| n as i64))
            .arg(policy.open_ms())
            .arg(policy.half_open_wait_ms())
            .arg(policy.ttl_ms());
        let answer: Vec<i64> = call.invoke_async(&mut conn).await?;
        Ok(match answer.as_slice() {
            [1, ..] => Admission::Probe,
            [2, ms, ..] => Admission::Refuse {
                retry_in: Duration::from_millis((*ms).max(1) as u64),
            },
            _ => Admission::Call,
        })
    }

    pub async fn record(
        &self,
        api: &str,
        policy: &Policy,
        now: Option<u64>,
        outage: bool,
    ) -> Result<Transition, redis::RedisError> {
        let mut conn = self.conn.clone();
        let mut call = self.record.key(self.key(api));
        call.arg(now.map_or(-1, |n| n as i64))
            .arg(if outage { "1" } else { "0" })
            .arg(policy.failures)
            .arg(policy.window_ms())
            .arg(policy.open_ms())
            .arg(policy.ttl_ms());
        let answer: Vec<i64> = call.invoke_async(&mut conn).await?;
        Ok(match answer.first() {
            Some(1) => Transition::Opened,
            Some(2) => Transition::Reopened,
            Some(3) => Transition::Closed,
            _ => Transition::None,
        })
    }

    /// The state of `api`'s breaker as Redis holds it.
    pub async fn state(&self, api: &str) -> Result<State, redis::RedisError> {
        let mut conn = self.conn.clone();
        let (f, ws, ou, pu): (Option<u32>, Option<u64>, Option<u64>, Option<u64>) =
            redis::cmd("HMGET")
                .arg(self.key(api))
                .arg("f")
                .arg("ws")
                .arg("ou")
                .arg("pu")
                .query_async(&mut conn)
                .await?;
        Ok(State {
            failures: f.unwrap_or(0),
            window_start: ws.unwrap_or(0),
            open_until: ou.unwrap_or(0),
            probe_until: pu.unwrap_or(0),
        })
    }

    /// Removes `api`'s breaker state.
    pub async fn clear(&self, api: &str) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(self.key(api))
            .query_async::<()>(&mut conn)
            .await
    }
}

/// Every breaker of this process: the shared Redis state, the local
/// fallback, and the metrics. Cheap to clone.
#[derive(Clone)]
pub struct Breakers {
    inner: Arc<Inner>,
}

struct Inner {
    policy: Policy,
    redis: Option<RedisStore>,
    local: MemoryStore,
    /// Whether Redis answers; local state is used while it does not.
    link: RedisLink,
    metrics: Metrics,
}

impl Breakers {
    /// Breakers whose state is shared through `redis`, or kept in this
    /// process only when `redis` is `None`.
    pub fn new(policy: Policy, redis: Option<RedisStore>, metrics: Metrics) -> Breakers {
        Breakers {
            inner: Arc::new(Inner {
                policy,
                redis,
                local: MemoryStore::default(),
                link: RedisLink::new(
                    "circuit breakers",
                    "this process keeps its own breaker state",
                ),
                metrics,
            }),
        }
    }

    /// From `[breaker]` and `[redis]`.
    pub fn from_settings(settings: &Settings, metrics: Metrics) -> anyhow::Result<Breakers> {
        let redis = RedisStore::new(&settings.redis.url, &settings.redis.prefix)
            .map_err(|e| anyhow::anyhow!("redis.url cannot be used: {e}"))?;
        Ok(Breakers::new(
            Policy::from_settings(&settings.breaker),
            Some(redis),
            metrics,
        ))
    }

    pub fn policy(&self) -> Policy {
        self.inner.policy
    }

    /// The shared store, if there is one.
    pub fn redis(&self) -> Option<&RedisStore> {
        self.inner.redis.as_ref()
    }

    /// Where the breakers report their state, refusals and rate-limit waits.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// This process's fallback state.
    pub fn local(&self) -> &MemoryStore {
        &self.inner.local
    }

    /// The breaker of `name` (`easypost`, `shopify:shop`); `api` names the
    /// adapter in the errors it returns.
    pub fn get(&self, name: &str, api: &'static str) -> Breaker {
        Breaker {
            breakers: self.clone(),
            name: name.to_string(),
            api,
        }
    }

    /// `inner`, calling through the breaker `shopify:<code>` (or
    /// `<kind>:<code>`).
    pub fn channel(
        &self,
        kind: &'static str,
        code: &str,
        inner: Arc<dyn ChannelApi>,
    ) -> Arc<dyn ChannelApi> {
        Arc::new(BreakerChannel {
            inner,
            breaker: self.get(&format!("{kind}:{code}"), kind),
        })
    }

    /// `inner`, calling through the breaker `name` (`easypost`).
    pub fn carrier(&self, name: &'static str, inner: Arc<dyn CarrierApi>) -> Arc<dyn CarrierApi> {
        Arc::new(BreakerCarrier {
            inner,
            breaker: self.get(name, name),
        })
    }

    async fn admit(&self, name: &str) -> Admission {
        let policy = self.inner.policy;
        let mut admission = None;
        if let Some(redis) = &self.inner.redis {
            admission = self
                .inner
                .link
                .call(redis.admit(name, &policy, None))
                .await
                .0;
        }
        let admission =
            admission.unwrap_or_else(|| self.inner.local.admit(name, &policy, now_ms()));
        let metrics = &self.inner.metrics;
        match admission {
            Admission::Call => metrics.set_breaker_open(name, false),
            Admission::Probe => {
                metrics.set_breaker_open(name, true);
                tracing::info!(api = name, "circuit breaker half-open: probing the API");
            }
            Admission::Refuse { .. } => {
                metrics.set_breaker_open(name, true);
                metrics.breaker_rejected(name);
            }
        }
        admission
    }

    async fn record(&self, name: &str, outage: bool) -> Transition {
        let policy = self.inner.policy;
        let mut transition = None;
        if let Some(redis) = &self.inner.redis {
            transition = self
                .inner
                .link
                .call(redis.record(name, &policy, None, outage))
                .await
                .0;
        }
        let transition =
            transition.unwrap_or_else(|| self.inner.local.record(name, &policy, now_ms(), outage));
        let metrics = &self.inner.metrics;
        match transition {
            Transition::None => {}
            Transition::Opened => {
                metrics.set_breaker_open(name, true);
                tracing::warn!(
                    api = name,
                    failures = policy.failures,
                    open_secs = policy.open.as_secs_f64(),
                    "circuit breaker opened: the API is not called until the cool-down is over"
                );
            }
            Transition::Reopened => {
                metrics.set_breaker_open(name, true);
                tracing::warn!(
                    api = name,
                    open_secs = policy.open.as_secs_f64(),
                    "circuit breaker probe failed: open for another cool-down"
                );
            }
            Transition::Closed => {
                metrics.set_breaker_open(name, false);
                tracing::info!(api = name, "circuit breaker closed: the API answers again");
            }
        }
        transition
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One API's breaker.
#[derive(Clone)]
pub struct Breaker {
    breakers: Breakers,
    name: String,
    api: &'static str,
}

impl Breaker {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `call` if the breaker lets it through and reports its result;
    /// otherwise returns a [`ErrorClass::CircuitOpen`] error without
    /// calling.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        if let Admission::Refuse { retry_in } = self.breakers.admit(&self.name).await {
            return Err(ApiError::new(
                self.api,
                ErrorClass::CircuitOpen { retry_in },
                format!(
                    "circuit breaker {} is open; not called (may close in {} ms)",
                    self.name,
                    retry_in.as_millis()
                ),
            ));
        }
        let result = call().await;
        if let Err(e) = &result
            && crate::limiter::refused_by_limiter(e)
        {
            // Our own rate limiter held the call back before any request
            // went out: the API said nothing, so the breaker learns nothing
            // (and the limiter counted the wait).
            return result;
        }
        let outage = match &result {
            Ok(_) => false,
            Err(e) => {
                if matches!(e.class, ErrorClass::RateLimited { .. }) {
                    self.breakers.inner.metrics.rate_limit_wait(&self.name);
                }
                e.class.is_outage(e.status)
            }
        };
        self.breakers.record(&self.name, outage).await;
        result
    }
}

/// A channel adapter behind its breaker.
pub struct BreakerChannel {
    inner: Arc<dyn ChannelApi>,
    breaker: Breaker,
}

#[async_trait]
impl ChannelApi for BreakerChannel {
    async fn orders_page(
        &self,
        updated_since: DateTime<Utc>,
        after: Option<&str>,
        page_size: u32,
    ) -> Result<OrdersPage, ApiError> {
        self.breaker
            .call(|| self.inner.orders_page(updated_since, after, page_size))
            .await
    }

    async fn create_fulfillment(
        &self,
        request: &FulfillmentRequest,
    ) -> Result<FulfillmentOutcome, ApiError> {
        self.breaker
            .call(|| self.inner.create_fulfillment(request))
            .await
    }

    async fn fulfillments(
        &self,
        order_external_id: &str,
    ) -> Result<Vec<ChannelFulfillment>, ApiError> {
        self.breaker
            .call(|| self.inner.fulfillments(order_external_id))
            .await
    }
}

/// A carrier adapter behind its breaker.
pub struct BreakerCarrier {
    inner: Arc<dyn CarrierApi>,
    breaker: Breaker,
}

#[async_trait]
impl CarrierApi for BreakerCarrier {
    async fn create_shipment(
        &self,
        request: &ShipmentRequest,
    ) -> Result<CarrierShipment, ApiError> {
        self.breaker
            .call(|| self.inner.create_shipment(request))
            .await
    }

    async fn get_shipment(&self, shipment_id: &str) -> Result<CarrierShipment, ApiError> {
        self.breaker
            .call(|| self.inner.get_shipment(shipment_id))
            .await
    }

    async fn buy(&self, shipment_id: &str, rate_id: &str) -> Result<BuyOutcome, ApiError> {
        self.breaker
            .call(|| self.inner.buy(shipment_id, rate_id))
            .await
    }

    async fn refund(&self, shipment_id: &str) -> Result<CarrierShipment, ApiError> {
        self.breaker.call(|| self.inner.refund(shipment_id)).await
    }

    async fn fetch_label(&self, label_url: &str) -> Result<Vec<u8>, ApiError> {
        self.breaker
            .call(|| self.inner.fetch_label(label_url))
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use std::sync::atomic::Ordering;

    const T0: u64 = 1_700_000_000_000;

    fn policy() -> Policy {
        Policy {
            failures: 3,
            window: Duration::from_secs(10),
            open: Duration::from_secs(30),
        }
    }

    /// Records `n` outages one second apart from `from`; returns the last
    /// transition and the time of the last one.
    fn fail(store: &MemoryStore, n: u32, from: u64) -> (Transition, u64) {
        let p = policy();
        let mut last = Transition::None;
        let mut t = from;
        for i in 0..n {
            t = from + u64::from(i) * 1_000;
            assert_eq!(store.admit("api", &p, t), Admission::Call);
            last = store.record("api", &p, t, true);
        }
        (last, t)
    }

    #[test]
    fn it_opens_after_the_configured_number_of_consecutive_outages_in_the_window() {
        let store = MemoryStore::default();
        let (t, _) = fail(&store, 2, T0);
        assert_eq!(t, Transition::None, "two outages leave it closed");
        assert_eq!(store.admit("api", &policy(), T0 + 2_500), Admission::Call);
        assert_eq!(
            store.record("api", &policy(), T0 + 2_500, true),
            Transition::Opened
        );
    }

    #[test]
    fn outages_further_apart_than_the_window_do_not_open_it() {
        let store = MemoryStore::default();
        let p = policy();
        // Every second outage falls outside the window of the one before
        // the previous: pairs, never three in one window.
        for i in 0..10 {
            let t = T0 + i * 6_000;
            assert_eq!(store.record("api", &p, t, true), Transition::None);
            assert_eq!(store.admit("api", &p, t), Admission::Call);
        }
        assert_eq!(store.state("api").open_until, 0);
    }

    #[test]
    fn an_answer_from_a_working_api_resets_the_count() {
        let store = MemoryStore::default();
        let p = policy();
        fail(&store, 2, T0);
        assert_eq!(store.record("api", &p, T0 + 2_000, false), Transition::None);
        let (t, _) = fail(&store, 2, T0 + 3_000);
        assert_eq!(t, Transition::None, "the count started over");
        assert_eq!(store.state("api").failures, 2);
    }

    #[test]
    fn while_open_every_call_is_refused_with_the_time_left() {
        let store = MemoryStore::default();
        let p = policy();
        let (_, opened) = fail(&store, 3, T0);
        for (after, left) in [(0, 30_000), (10_000, 20_000), (29_999, 1)] {
            assert_eq!(
                store.admit("api", &p, opened + after),
                Admission::Refuse {
                    retry_in: Duration::from_millis(left)
                }
            );
        }
        // Results of calls that went out before it opened change nothing.
        assert_eq!(store.record("api", &p, opened + 5, false), Transition::None);
        assert_eq!(store.state("api").open_until, opened + 30_000);
        // Other APIs are not affected.
        assert_eq!(store.admit("other", &p, opened + 1), Admission::Call);
    }

    #[test]
    fn after_the_cool_down_one_probe_goes_through_and_the_others_wait() {
        let store = MemoryStore::default();
        let p = policy();
        let (_, opened) = fail(&store, 3, T0);
        let half_open = opened + 30_000;
        assert_eq!(store.admit("api", &p, half_open), Admission::Probe);
        assert_eq!(
            store.admit("api", &p, half_open + 10),
            Admission::Refuse {
                retry_in: HALF_OPEN_WAIT
            }
        );
    }

    #[test]
    fn a_probe_that_works_closes_the_breaker() {
        let store = MemoryStore::default();
        let p = policy();
        let (_, opened) = fail(&store, 3, T0);
        let half_open = opened + 30_000;
        assert_eq!(store.admit("api", &p, half_open), Admission::Probe);
        assert_eq!(
            store.record("api", &p, half_open + 50, false),
            Transition::Closed
        );
        assert_eq!(store.admit("api", &p, half_open + 60), Admission::Call);
        assert_eq!(store.state("api"), State::default());
    }

    #[test]
    fn a_probe_that_fails_opens_it_for_another_full_cool_down() {
        let store = MemoryStore::default();
        let p = policy();
        let (_, opened) = fail(&store, 3, T0);
        let half_open = opened + 30_000;
        assert_eq!(store.admit("api", &p, half_open), Admission::Probe);
        assert_eq!(
            store.record("api", &p, half_open + 50, true),
            Transition::Reopened
        );
        assert_eq!(
            store.admit("api", &p, half_open + 50),
            Admission::Refuse {
                retry_in: Duration::from_secs(30)
            }
        );
    }

    #[test]
    fn a_probe_that_never_reports_back_is_replaced_after_the_cool_down() {
        let store = MemoryStore::default();
        let p = policy();
        let (_, opened) = fail(&store, 3, T0);
        let half_open = opened + 30_000;
        assert_eq!(store.admit("api", &p, half_open), Admission::Probe);
        assert!(matches!(
            store.admit("api", &p, half_open + 29_999),
            Admission::Refuse { .. }
        ));
        assert_eq!(store.admit("api", &p, half_open + 30_000), Admission::Probe);
    }

    /// A carrier that fails with the given class and counts its calls.
    struct Failing {
        calls: AtomicUsize,
        error: Mutex<Option<ApiError>>,
    }

    #[async_trait]
    impl CarrierApi for Failing {
        async fn create_shipment(&self, _: &ShipmentRequest) -> Result<CarrierShipment, ApiError> {
            unreachable!()
        }
        async fn get_shipment(&self, id: &str) -> Result<CarrierShipment, ApiError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match self.error.lock().unwrap().clone() {
                Some(e) => Err(e),
                None => Ok(CarrierShipment {
                    id: id.to_string(),
                    reference: None,
                    rates: Vec::new(),
                    postage: None,
                    refund_status: None,
                }),
            }
        }
        async fn buy(&self, _: &str, _: &str) -> Result<BuyOutcome, ApiError> {
            unreachable!()
        }
        async fn refund(&self, _: &str) -> Result<CarrierShipment, ApiError> {
            unreachable!()
        }
        async fn fetch_label(&self, _: &str) -> Result<Vec<u8>, ApiError> {
            unreachable!()
        }
    }

    fn failing(error: Option<ApiError>) -> (Arc<Failing>, Arc<dyn CarrierApi>, Breakers) {
        let fake = Arc::new(Failing {
            calls: AtomicUsize::new(0),
            error: Mutex::new(error),
        });
        let breakers = Breakers::new(policy(), None, Metrics::new());
        let wrapped = breakers.carrier("easypost", fake.clone());
        (fake, wrapped, breakers)
    }

    #[tokio::test]
    async fn an_open_breaker_answers_circuit_open_without_calling_the_api() {
        let down = ApiError::from_status("easypost", 503, None, "down");
        let (fake, carrier, breakers) = failing(Some(down));
        for _ in 0..3 {
            let e = carrier.get_shipment("shp_1").await.unwrap_err();
            assert_eq!(e.class, ErrorClass::Retryable);
        }
        assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
        for _ in 0..5 {
            let e = carrier.get_shipment("shp_1").await.unwrap_err();
            let ErrorClass::CircuitOpen { retry_in } = e.class else {
                panic!("expected circuit_open, got {e}");
            };
            assert!(retry_in <= Duration::from_secs(30) && retry_in > Duration::from_secs(25));
        }
        assert_eq!(fake.calls.load(Ordering::SeqCst), 3, "no call while open");
        let m = &breakers.inner.metrics;
        assert_eq!(m.breaker_open("easypost"), 1);
        assert_eq!(m.breaker_rejected_calls("easypost"), 5);
    }

    #[tokio::test]
    async fn refusals_and_rate_limits_never_open_the_breaker() {
        for error in [
            ApiError::from_status("easypost", 422, None, "bad address"),
            ApiError::from_status("easypost", 429, Some(Duration::from_secs(1)), "slow down"),
        ] {
            let (fake, carrier, breakers) = failing(Some(error.clone()));
            for _ in 0..10 {
                let e = carrier.get_shipment("shp_1").await.unwrap_err();
                assert_eq!(e.class, error.class);
            }
            assert_eq!(fake.calls.load(Ordering::SeqCst), 10, "{error}");
            assert_eq!(breakers.inner.metrics.breaker_open("easypost"), 0);
            let waits = breakers.inner.metrics.rate_limit_waits("easypost");
            let expected = if error.status == Some(429) { 10 } else { 0 };
            assert_eq!(waits, expected, "{error}");
        }
    }

    #[tokio::test]
    async fn a_probe_that_works_lets_every_call_through_again() {
        let down = ApiError::from_status("easypost", 500, None, "down");
        let (fake, carrier, breakers) = failing(Some(down));
        for _ in 0..3 {
            let _ = carrier.get_shipment("shp_1").await;
        }
        assert_eq!(breakers.inner.metrics.breaker_open("easypost"), 1);
        // Move the cool-down into the past, as if 30 s had gone by.
        {
            let mut states = breakers.inner.local.states.lock().unwrap();
            let s = states.get_mut("easypost").unwrap();
            s.open_until = now_ms() - 1;
        }
        *fake.error.lock().unwrap() = None;
        carrier
            .get_shipment("shp_1")
            .await
            .expect("the probe works");
        assert_eq!(breakers.inner.metrics.breaker_open("easypost"), 0);
        for _ in 0..3 {
            carrier.get_shipment("shp_1").await.unwrap();
        }
        assert_eq!(fake.calls.load(Ordering::SeqCst), 3 + 1 + 3);
    }
}
