//! One rate limit per external API, shared by the whole fleet through Redis.
//!
//! A channel's limit (`[limits.shop] rate_per_sec = 2, burst = 40`) is the
//! channel's, not each worker's: every worker takes its slots from one
//! schedule in Redis. The schedule is a GCRA (generic cell rate algorithm):
//! one number per API, the *theoretical arrival time* (TAT) of the next
//! request at the sustained rate. A request at `now` is admitted at
//! `max(TAT, now) + interval - burst x interval`, and moves the TAT on by
//! one interval; after a quiet spell `burst` requests go at once, then one
//! every `interval` (= 1 / rate). Over any stretch of time `t` the API
//! receives at most `burst + t x rate` requests from the whole fleet.
//!
//! [`Limiter::acquire`] takes the next slot in one Lua script (atomic across
//! the fleet, timed by the Redis server's clock):
//!
//! * a slot at most `[limiter] max_wait_ms` away is reserved and waited for
//!   in the call;
//! * a later slot is not reserved, and the call fails with
//!   [`ErrorClass::RateLimited`] and the wait as `retry_after`, so that the
//!   runner sends the job back to the queue until then without spending an
//!   attempt.
//!
//! When Redis cannot be reached, each process limits every API on its own
//! to its share of the rate (`rate / expected_workers`, the burst likewise,
//! at least one request), says so once in its log and in
//! `conveyor_rate_limiter_fallback{api}`, and tries Redis again after a
//! backoff (1 s, doubling up to 30 s) until it answers. No job fails because
//! Redis is down.
//!
//! Adapters are wrapped where they are built ([`Limiters::channel`],
//! [`Limiters::carrier`]), inside their circuit breaker: a call the open
//! breaker refuses takes no slot.
//!
//! ```
//! use std::time::Duration;
//! use conveyor_jobs::limiter::{Decision, Gcra};
//!
//! // 5 requests/s, bursts of 2, from an empty schedule at t = 0 (µs).
//! let gcra = Gcra::new(5.0, 2).unwrap();
//! let max_wait = Duration::from_secs(1);
//! let (first, tat) = gcra.take(0, 0, max_wait);
//! assert_eq!(first, Decision::Go { wait: Duration::ZERO });
//! let (second, tat) = gcra.take(tat.unwrap(), 0, max_wait);
//! assert_eq!(second, Decision::Go { wait: Duration::ZERO });
//! // The burst is spent: the third waits one interval (200 ms).
//! let (third, _) = gcra.take(tat.unwrap(), 0, max_wait);
//! assert_eq!(third, Decision::Go { wait: Duration::from_millis(200) });
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;

use crate::carrier::{BuyOutcome, CarrierApi, CarrierShipment, ShipmentRequest};
use crate::channel::{
    ChannelApi, ChannelFulfillment, FulfillmentOutcome, FulfillmentRequest, OrdersPage,
};
use crate::error::{ApiError, ErrorClass};
use crate::metrics::Metrics;
use crate::redis_link::{Change, RedisLink};
use crate::settings::{CARRIER_LIMIT, RateLimit, Settings};

/// The `code` of an [`ApiError`] the limiter returns: the call was held
/// back here and never reached the API.
pub const REFUSED_CODE: &str = "conveyor.rate_limiter";

/// Whether `e` is the limiter's own refusal rather than an answer of the
/// API.
pub fn refused_by_limiter(e: &ApiError) -> bool {
    e.status.is_none() && e.code.as_deref() == Some(REFUSED_CODE)
}

/// A rate limit as the GCRA needs it, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Time between two requests at the sustained rate: 1 / rate, rounded
    /// up so that the limit is never exceeded by rounding.
    pub interval_us: u64,
    /// Requests that may go at once after a quiet spell (at least 1).
    pub burst: u32,
}

/// What a limiter says about a call about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A slot is reserved: call after `wait`.
    Go { wait: Duration },
    /// The next free slot is further away than the longest wait: nothing
    /// is reserved; ask again in `retry_after`.
    Refuse { retry_after: Duration },
}

impl Gcra {
    /// `None` when `rate_per_sec` is not a positive number: no limit.
    pub fn new(rate_per_sec: f64, burst: u32) -> Option<Gcra> {
        if !(rate_per_sec.is_finite() && rate_per_sec > 0.0) {
            return None;
        }
        let interval_us = (1e6 / rate_per_sec).ceil().clamp(1.0, 1e15) as u64;
        Some(Gcra {
            interval_us,
            burst: burst.max(1),
        })
    }

    pub fn from_limit(limit: RateLimit) -> Option<Gcra> {
        Gcra::new(limit.rate_per_sec, limit.burst)
    }

    /// How far ahead of the sustained schedule a request may go.
    pub fn tolerance_us(&self) -> u64 {
        self.interval_us.saturating_mul(u64::from(self.burst))
    }

    /// One of `workers` equal shares: the rate divided by `workers`, and the
    /// burst too (at least one request).
    pub fn share(&self, workers: u32) -> Gcra {
        let n = workers.max(1);
        Gcra {
            interval_us: self.interval_us.saturating_mul(u64::from(n)),
            burst: (self.burst / n).max(1),
        }
    }

    /// Takes the slot of a request made at `now` on the schedule whose
    /// theoretical arrival time is `tat` (0: empty), unless it is more than
    /// `max_wait` away. Returns the decision and, when a slot was reserved,
    /// the new TAT. Times in microseconds; the Redis script does the same.
    pub fn take(&self, tat: u64, now: u64, max_wait: Duration) -> (Decision, Option<u64>) {
        let new_tat = tat.max(now).saturating_add(self.interval_us);
        let wait = new_tat
            .saturating_sub(self.tolerance_us())
            .saturating_sub(now);
        if wait > max_wait.as_micros() as u64 {
            (
                Decision::Refuse {
                    retry_after: Duration::from_micros(wait),
                },
                None,
            )
        } else {
            (
                Decision::Go {
                    wait: Duration::from_micros(wait),
                },
                Some(new_tat),
            )
        }
    }
}

/// Schedules in this process's memory: the fallback when Redis cannot be
/// reached, and the reference the Redis script follows.
#[derive(Debug, Default)]
pub struct MemoryLimiter {
    tats: Mutex<HashMap<String, u64>>,
}

impl MemoryLimiter {
    /// [`Gcra::take`] on the schedule of `name`; `now` in microseconds.
    pub fn take(&self, name: &str, gcra: &Gcra, now: u64, max_wait: Duration) -> Decision {
        // A std Mutex: held for a few arithmetic steps, never across an await.
        let mut tats = self.tats.lock().unwrap_or_else(|p| p.into_inner());
        let tat = tats.get(name).copied().unwrap_or(0);
        let (decision, new_tat) = gcra.take(tat, now, max_wait);
        if let Some(t) = new_tat {
            tats.insert(name.to_string(), t);
        }
        decision
    }
}

/// [`Gcra::take`] in Lua. KEYS: the schedule. ARGV: now (µs, or -1 for the
/// Redis server's clock), interval (µs), tolerance (µs), longest wait (µs).
/// Returns {1, wait} when a slot was reserved, {0, retry_after} when not.
/// The key expires once its TAT has passed: an empty schedule is the same
/// as one whose TAT is in the past.
const LUA_TAKE: &str = r#"
local now = tonumber(ARGV[1])
if now == nil or now < 0 then
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local interval, tolerance, max_wait = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - tolerance - now
if wait < 0 then wait = 0 end
if wait > max_wait then return {0, wait} end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, wait}
"#;

/// Schedules in Redis, shared by every worker that uses the same Redis and
/// prefix.
#[derive(Clone)]
pub struct RedisLimiter {
    conn: ConnectionManager,
    prefix: String,
    take: Arc<redis::Script>,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisLimiter {
    /// Schedules under `{prefix}:limiter:` on `conn` (see
    /// [`crate::breaker::connect_lazy`]).
    pub fn new(conn: ConnectionManager, prefix: &str) -> RedisLimiter {
        RedisLimiter {
            conn,
            prefix: prefix.trim_end_matches(':').to_string(),
            take: Arc::new(redis::Script::new(LUA_TAKE)),
        }
    }

    /// The Redis key of `name`'s schedule.
    pub fn key(&self, name: &str) -> String {
        format!("{}:limiter:{name}", self.prefix)
    }

    /// [`Gcra::take`] on the shared schedule of `name`. `now`: microseconds
    /// since the epoch, or `None` for the Redis server's clock.
    pub async fn take(
        &self,
        name: &str,
        gcra: &Gcra,
        now: Option<u64>,
        max_wait: Duration,
    ) -> Result<Decision, redis::RedisError> {
        let mut conn = self.conn.clone();
        let mut call = self.take.key(self.key(name));
        call.arg(now.map_or(-1, |n| n as i64))
            .arg(gcra.interval_us)
            .arg(gcra.tolerance_us())
            .arg(max_wait.as_micros() as u64);
        let answer: Vec<i64> = call.invoke_async(&mut conn).await?;
        let micros =
            |i: usize| Duration::from_micros(answer.get(i).copied().unwrap_or(0).max(0) as u64);
        Ok(match answer.first() {
            Some(1) => Decision::Go { wait: micros(1) },
            _ => Decision::Refuse {
                retry_after: micros(1),
            },
        })
    }

    /// Removes `name`'s schedule.
    pub async fn clear(&self, name: &str) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(self.key(name))
            .query_async::<()>(&mut conn)
            .await
    }
}

/// Every rate limiter of this process: the shared schedules in Redis, the
/// local fallback, and the metrics. Cheap to clone.
#[derive(Clone)]
pub struct Limiters {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Option<RedisLimiter>,
    local: MemoryLimiter,
    max_wait: Duration,
    expected_workers: u32,
    link: RedisLink,
    /// Every limit handed out, for the fallback gauge.
    names: Mutex<BTreeSet<String>>,
    metrics: Metrics,
}

impl Limiters {
    /// Limiters whose schedules are shared through `redis`, or kept in this
    /// process only when `redis` is `None`. A call waits at most
    /// `max_wait` for its slot; without Redis each limit is cut to one of
    /// `expected_workers` shares.
    pub fn new(
        redis: Option<RedisLimiter>,
        max_wait: Duration,
        expected_workers: u32,
        metrics: Metrics,
    ) -> Limiters {
        Limiters {
            inner: Arc::new(Inner {
                redis,
                local: MemoryLimiter::default(),
                max_wait,
                expected_workers: expected_workers.max(1),
                link: RedisLink::new(
                    "rate limiters",
                    "this process limits every API to its share of the rate (rate / expected_workers)",
                ),
                names: Mutex::new(BTreeSet::new()),
                metrics,
            }),
        }
    }

    /// From `[limiter]` and `[redis]`, on the connection `conn` (the one
    /// the circuit breakers use). Refuses a channel coded like the
    /// carrier's table, and warns about `[limits]` tables that name no
    /// configured API.
    pub fn from_settings(
        settings: &Settings,
        conn: Option<ConnectionManager>,
        metrics: Metrics,
    ) -> anyhow::Result<Limiters> {
        if settings.channels.iter().any(|c| c.code == CARRIER_LIMIT) {
            anyhow::bail!(
                "a channel may not be coded {CARRIER_LIMIT:?}: [limits.{CARRIER_LIMIT}] is the carrier's rate limit"
            );
        }
        for name in settings.limits.keys() {
            if name != CARRIER_LIMIT && !settings.channels.iter().any(|c| &c.code == name) {
                tracing::warn!(
                    table = %format!("limits.{name}"),
                    "rate limit for no configured channel (nor the carrier): ignored"
                );
            }
        }
        Ok(Limiters::new(
            conn.map(|c| RedisLimiter::new(c, &settings.redis.prefix)),
            Duration::from_millis(settings.limiter.max_wait_ms),
            settings.limiter.expected_workers,
            metrics,
        ))
    }

    /// The limiter `name` (`shopify:shop`, `easypost`: the breaker's names);
    /// `api` names the adapter in the errors it returns.
    pub fn get(&self, name: &str, api: &'static str, gcra: Gcra) -> Limiter {
        self.inner
            .names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string());
        let fallback = self.inner.link.is_down();
        self.inner.metrics.set_limiter_fallback(name, fallback);
        Limiter {
            limiters: self.clone(),
            name: name.to_string(),
            api,
            local: gcra.share(self.inner.expected_workers),
            fleet: gcra,
        }
    }

    /// `inner` behind the limit `<kind>:<code>`, or `inner` itself when
    /// there is no limit.
    pub fn channel(
        &self,
        kind: &'static str,
        code: &str,
        limit: Option<RateLimit>,
        inner: Arc<dyn ChannelApi>,
    ) -> Arc<dyn ChannelApi> {
        match limit.and_then(Gcra::from_limit) {
            Some(gcra) => Arc::new(LimitedChannel {
                inner,
                limiter: self.get(&format!("{kind}:{code}"), kind, gcra),
            }),
            None => inner,
        }
    }

    /// `inner` behind the limit `name` (`easypost`), or `inner` itself when
    /// there is no limit.
    pub fn carrier(
        &self,
        name: &'static str,
        limit: Option<RateLimit>,
        inner: Arc<dyn CarrierApi>,
    ) -> Arc<dyn CarrierApi> {
        match limit.and_then(Gcra::from_limit) {
            Some(gcra) => Arc::new(LimitedCarrier {
                inner,
                limiter: self.get(name, name, gcra),
            }),
            None => inner,
        }
    }

    /// The shared store, if there is one.
    pub fn redis(&self) -> Option<&RedisLimiter> {
        self.inner.redis.as_ref()
    }

    /// Where the limiters count waits and report the fallback.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Whether this process is limiting on its own shares (Redis down).
    pub fn in_fallback(&self) -> bool {
        self.inner.link.is_down()
    }

    fn set_fallback_gauges(&self, fallback: bool) {
        let names = self.inner.names.lock().unwrap_or_else(|p| p.into_inner());
        for name in names.iter() {
            self.inner.metrics.set_limiter_fallback(name, fallback);
        }
    }

    async fn take(&self, name: &str, fleet: &Gcra, local: &Gcra) -> Decision {
        let max_wait = self.inner.max_wait;
        if let Some(redis) = &self.inner.redis {
            let (decision, change) = self
                .inner
                .link
                .call(redis.take(name, fleet, None, max_wait))
                .await;
            if let Some(change) = change {
                self.set_fallback_gauges(change == Change::Down);
            }
            if let Some(decision) = decision {
                return decision;
            }
        }
        self.inner.local.take(name, local, now_us(), max_wait)
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One API's rate limit.
#[derive(Clone)]
pub struct Limiter {
    limiters: Limiters,
    name: String,
    api: &'static str,
    /// The fleet's limit, kept in Redis.
    fleet: Gcra,
    /// This process's share, used while Redis cannot be reached.
    local: Gcra,
}

impl Limiter {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for this API's next slot when it is near (returns how long it
    /// waited); when it is further than `[limiter] max_wait_ms`, takes
    /// nothing and returns a [`ErrorClass::RateLimited`] error with the
    /// wait as `retry_after`. Every wait or refusal counts in
    /// `conveyor_rate_limit_waits_total`.
    pub async fn acquire(&self) -> Result<Duration, ApiError> {
        let metrics = &self.limiters.inner.metrics;
        match self
            .limiters
            .take(&self.name, &self.fleet, &self.local)
            .await
        {
            Decision::Go { wait } => {
                if !wait.is_zero() {
                    metrics.rate_limit_wait(&self.name);
                    tokio::time::sleep(wait).await;
                }
                Ok(wait)
            }
            Decision::Refuse { retry_after } => {
                metrics.rate_limit_wait(&self.name);
                Err(ApiError::new(
                    self.api,
                    ErrorClass::RateLimited {
                        retry_after: Some(retry_after),
                    },
                    format!(
                        "rate limit {}: next slot in {} ms; not called",
                        self.name,
                        retry_after.as_millis()
                    ),
                )
                .with_code(REFUSED_CODE))
            }
        }
    }
}

/// A channel adapter behind its rate limit.
pub struct LimitedChannel {
    inner: Arc<dyn ChannelApi>,
    limiter: Limiter,
}

#[async_trait]
impl ChannelApi for LimitedChannel {
    async fn orders_page(
        &self,
        updated_since: DateTime<Utc>,
        after: Option<&str>,
        page_size: u32,
    ) -> Result<OrdersPage, ApiError> {
        self.limiter.acquire().await?;
        self.inner
            .orders_page(updated_since, after, page_size)
            .await
    }

    async fn create_fulfillment(
        &self,
        request: &FulfillmentRequest,
    ) -> Result<FulfillmentOutcome, ApiError> {
        self.limiter.acquire().await?;
        self.inner.create_fulfillment(request).await
    }

    async fn fulfillments(
        &self,
        order_external_id: &str,
    ) -> Result<Vec<ChannelFulfillment>, ApiError> {
        self.limiter.acquire().await?;
        self.inner.fulfillments(order_external_id).await
    }
}

/// A carrier adapter behind its rate limit. Label files are not API calls
/// (the carrier serves them from its file storage) and take no slot.
pub struct LimitedCarrier {
    inner: Arc<dyn CarrierApi>,
    limiter: Limiter,
}

#[async_trait]
impl CarrierApi for LimitedCarrier {
    async fn create_shipment(
        &self,
        request: &ShipmentRequest,
    ) -> Result<CarrierShipment, ApiError> {
        self.limiter.acquire().await?;
        self.inner.create_shipment(request).await
    }

    async fn get_shipment(&self, shipment_id: &str) -> Result<CarrierShipment, ApiError> {
        self.limiter.acquire().await?;
        self.inner.get_shipment(shipment_id).await
    }

    async fn buy(&self, shipment_id: &str, rate_id: &str) -> Result<BuyOutcome, ApiError> {
        self.limiter.acquire().await?;
        self.inner.buy(shipment_id, rate_id).await
    }

    async fn refund(&self, shipment_id: &str) -> Result<CarrierShipment, ApiError> {
        self.limiter.acquire().await?;
        self.inner.refund(shipment_id).await
    }

    async fn fetch_label(&self, label_url: &str) -> Result<Vec<u8>, ApiError> {
        self.inner.fetch_label(label_url).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000_000;
    const SEC: u64 = 1_000_000;

    /// Admission times (µs) of `n` requests all made at `at`, each waiting
    /// for its slot (no refusal).
    fn admitted(gcra: &Gcra, store: &MemoryLimiter, n: usize, at: u64) -> Vec<u64> {
        (0..n)
            .map(
                |_| match store.take("api", gcra, at, Duration::from_secs(3600)) {
                    Decision::Go { wait } => at + wait.as_micros() as u64,
                    Decision::Refuse { .. } => panic!("refused with a long max wait"),
                },
            )
            .collect()
    }

    /// The most admissions in any window `[t, t + len)`.
    fn busiest(times: &[u64], len: u64) -> usize {
        times
            .iter()
            .map(|start| {
                times
                    .iter()
                    .filter(|t| **t >= *start && **t < start + len)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn the_interval_is_one_over_the_rate_rounded_up() {
        assert_eq!(Gcra::new(5.0, 5).unwrap().interval_us, 200_000);
        assert_eq!(Gcra::new(3.0, 1).unwrap().interval_us, 333_334);
        // Amazon's getOrders: one a minute, about.
        assert_eq!(Gcra::new(0.0167, 20).unwrap().interval_us, 59_880_240);
        assert_eq!(Gcra::new(2.0, 0).unwrap().burst, 1, "at least one");
        assert_eq!(Gcra::new(0.0, 5), None);
        assert_eq!(Gcra::new(-1.0, 5), None);
        assert_eq!(Gcra::new(f64::NAN, 5), None);
    }

    #[test]
    fn a_quiet_api_takes_a_burst_at_once_then_one_request_per_interval() {
        let gcra = Gcra::new(5.0, 5).unwrap();
        let store = MemoryLimiter::default();
        let times = admitted(&gcra, &store, 12, T0);
        let waits: Vec<u64> = times.iter().map(|t| (t - T0) / 1_000).collect();
        assert_eq!(waits, [0, 0, 0, 0, 0, 200, 400, 600, 800, 1000, 1200, 1400]);
    }

    #[test]
    fn no_window_of_a_second_gets_more_than_rate_plus_burst() {
        for (rate, burst) in [(5.0, 5), (2.0, 40), (10.0, 1), (0.5, 3)] {
            let gcra = Gcra::new(rate, burst).unwrap();
            let store = MemoryLimiter::default();
            // Requests arriving in clumps, with quiet spells between them.
            let mut times = Vec::new();
            for clump in 0..6 {
                let at = T0 + clump * 7 * SEC / 2;
                times.extend(admitted(&gcra, &store, 3 * burst as usize + 7, at));
            }
            times.sort_unstable();
            let most = busiest(&times, SEC);
            assert!(
                most as f64 <= rate + f64::from(burst),
                "{rate}/s burst {burst}: {most} in one second"
            );
            // Over a long stretch the rate is the sustained one.
            let span = (times[times.len() - 1] - times[0]) as f64 / SEC as f64;
            assert!(times.len() as f64 <= f64::from(burst) + span * rate + 1.0);
        }
    }

    #[test]
    fn a_slot_further_than_the_longest_wait_is_refused_and_not_taken() {
        let gcra = Gcra::new(5.0, 2).unwrap();
        let store = MemoryLimiter::default();
        let max_wait = Duration::from_millis(500);
        let mut decisions = Vec::new();
        for _ in 0..6 {
            decisions.push(store.take("api", &gcra, T0, max_wait));
        }
        let ms = Duration::from_millis;
        assert_eq!(
            decisions,
            [
                Decision::Go { wait: ms(0) },
                Decision::Go { wait: ms(0) },
                Decision::Go { wait: ms(200) },
                Decision::Go { wait: ms(400) },
                Decision::Refuse {
                    retry_after: ms(600)
                },
                Decision::Refuse {
                    retry_after: ms(600)
                },
            ]
        );
        // The refusals reserved nothing: 200 ms later the next slot is 400 ms away.
        assert_eq!(
            store.take("api", &gcra, T0 + 200_000, max_wait),
            Decision::Go { wait: ms(400) }
        );
        // Other APIs have their own schedule.
        assert_eq!(
            store.take("other", &gcra, T0, max_wait),
            Decision::Go { wait: ms(0) }
        );
    }

    #[test]
    fn after_a_quiet_spell_the_burst_is_back_but_no_more() {
        let gcra = Gcra::new(5.0, 3).unwrap();
        let store = MemoryLimiter::default();
        admitted(&gcra, &store, 20, T0);
        // The last slot was at T0 + 3.4 s; ten seconds later, all quiet.
        let later = T0 + 14 * SEC;
        let times = admitted(&gcra, &store, 5, later);
        let waits: Vec<u64> = times.iter().map(|t| (t - later) / 1_000).collect();
        assert_eq!(waits, [0, 0, 0, 200, 400]);
    }

    #[test]
    fn a_workers_share_divides_the_rate_and_the_burst() {
        let gcra = Gcra::new(5.0, 5).unwrap();
        assert_eq!(
            gcra.share(3),
            Gcra {
                interval_us: 600_000,
                burst: 1
            }
        );
        assert_eq!(gcra.share(1), gcra);
        assert_eq!(gcra.share(0), gcra);
        let shopify = Gcra::new(2.0, 40).unwrap().share(4);
        assert_eq!(shopify.interval_us, 2_000_000);
        assert_eq!(shopify.burst, 10);
    }

    #[tokio::test]
    async fn a_refused_call_is_rate_limited_and_never_reaches_the_api() {
        let limiters = Limiters::new(None, Duration::from_millis(100), 1, Metrics::new());
        let limiter = limiters.get("easypost", "easypost", Gcra::new(1.0, 1).unwrap());
        assert_eq!(limiter.acquire().await.unwrap(), Duration::ZERO);
        let e = limiter.acquire().await.unwrap_err();
        let ErrorClass::RateLimited {
            retry_after: Some(wait),
        } = e.class
        else {
            panic!("expected rate_limited, got {e}");
        };
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert!(refused_by_limiter(&e));
        let from_api = ApiError::from_status("easypost", 429, None, "slow down");
        assert!(!refused_by_limiter(&from_api));
        assert_eq!(limiters.inner.metrics.rate_limit_waits("easypost"), 1);
    }
}
