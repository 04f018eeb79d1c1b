//! Configuration, layered: built-in defaults, then a TOML file, then
//! `CONVEYOR_SECTION__KEY` environment variables (`CONVEYOR_DATABASE__URL`).
//!
//! Tokens and API keys are [`SecretString`]s: they cannot be printed by
//! accident, and `Debug` of the whole settings shows `[REDACTED]`.
//!
//! ```
//! let s = conveyor_jobs::settings::Settings::load(None).unwrap();
//! assert_eq!(s.database.url, "postgres://postgres@127.0.0.1:5432/conveyor");
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::channel::ChannelKind;
use crate::packing::BoxSpec;
use crate::queue::Queue;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub worker: WorkerSettings,
    pub scheduler: SchedulerSettings,
    pub pipeline: PipelineSettings,
    #[serde(default)]
    pub channels: Vec<ChannelSettings>,
    pub carrier: CarrierSettings,
    /// Per-queue overrides: `[queues.purchase] concurrency = 4`; whatever a
    /// queue's table leaves out keeps that queue's default
    /// ([`Settings::queue`]).
    #[serde(default)]
    pub queues: BTreeMap<Queue, QueueConfig>,
    /// The circuit breaker in front of every external API.
    pub breaker: BreakerSettings,
    /// How long finished jobs are kept ([`crate::retention`]).
    #[serde(default)]
    pub retention: RetentionSettings,
    /// The ops HTTP API on the worker's port.
    #[serde(default)]
    pub ops: OpsSettings,
    /// How the fleet's rate limits wait and fall back (`[limiter]`).
    pub limiter: LimiterSettings,
    /// One rate limit per external API, shared by the whole fleet:
    /// `[limits.<channel code>]` and `[limits.carrier]`
    /// ([`Settings::channel_limit`], [`Settings::carrier_limit`]).
    #[serde(default)]
    pub limits: BTreeMap<String, LimitConfig>,
}

/// The dead-letter review API served next to `/metrics`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OpsSettings {
    /// Bearer token that the ops API's routes require
    /// (`CONVEYOR_OPS__TOKEN`). Without one, the routes that change anything
    /// (retry, discard) are off and the others answer without a token.
    #[serde(default)]
    pub token: Option<SecretString>,
}

/// What the leading scheduler prunes from `apalis.jobs`, and how often.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Finished jobs (`Done`, and dead ones whose dead letter was reviewed)
    /// are deleted this many seconds after they finished (or were
    /// reviewed). Default: seven days.
    pub done_after_secs: u64,
    /// Seconds between two pruning passes.
    pub interval_secs: u64,
    /// Rows deleted per statement, so that no pass holds locks for long.
    pub batch_size: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            done_after_secs: 7 * 24 * 3600,
            interval_secs: 600,
            batch_size: 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    pub url: String,
    /// Every key Conveyor writes starts with `{prefix}:`, so that several
    /// fleets (or tests) can share one Redis.
    pub prefix: String,
}

/// When the circuit breaker of an external API opens, and for how long.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive outage failures (5xx, timeouts, connection errors) that
    /// open the breaker ...
    pub failures: u32,
    /// ... when they all fall within this many seconds.
    pub window_secs: u64,
    /// How long an open breaker refuses calls before it lets one probe
    /// through.
    pub open_secs: u64,
}

/// How every rate limit waits, and what it does without Redis.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct LimiterSettings {
    /// A call whose slot is at most this far away waits for it in the
    /// call; a later slot sends the job back to the queue (rate limited,
    /// no attempt spent) until about then.
    pub max_wait_ms: u64,
    /// Workers the fleet is expected to run. While Redis cannot be
    /// reached, each worker limits every API to this share of its rate (and
    /// of its burst), so that the fleet as a whole stays near the limit.
    pub expected_workers: u32,
}

/// A `[limits.<name>]` table.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Sustained requests per second for the whole fleet (fractions allowed:
    /// 0.0167 is one a minute). 0 means no limit.
    pub rate_per_sec: f64,
    /// Requests that may go at once after a quiet spell. Default: one
    /// second's worth of the rate, at least 1.
    pub burst: Option<u32>,
}

/// One API's rate limit, defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub rate_per_sec: f64,
    pub burst: u32,
}

impl RateLimit {
    /// `None` when the table asks for no limit (a rate of 0, or not a
    /// number).
    pub fn from_config(c: &LimitConfig) -> Option<RateLimit> {
        if !(c.rate_per_sec.is_finite() && c.rate_per_sec > 0.0) {
            return None;
        }
        let burst = c
            .burst
            .unwrap_or_else(|| c.rate_per_sec.ceil().min(f64::from(u32::MAX)) as u32);
        Some(RateLimit {
            rate_per_sec: c.rate_per_sec,
            burst: burst.max(1),
        })
    }

    /// The limit a channel of `kind` gets without a `[limits.<code>]`
    /// table: the API's published per-request limit where it has one
    /// (Amazon SP-API getOrders: one request a minute, bursts of 20), none
    /// where the API limits by other means that the adapter already
    /// follows (Shopify Admin GraphQL's query cost, answered as `THROTTLED`
    /// with the time to wait).
    pub fn default_for(kind: ChannelKind) -> Option<RateLimit> {
        match kind {
            ChannelKind::Amazon => Some(RateLimit {
                rate_per_sec: 0.0167,
                burst: 20,
            }),
            ChannelKind::Shopify | ChannelKind::Ebay => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    /// Prefix of the worker's name; host, pid and start time are appended so
    /// that a restarted worker never inherits a dead one's lease.
    pub name_prefix: String,
    pub heartbeat_secs: u64,
    /// Missed heartbeats before another worker re-enqueues this one's jobs.
    pub missed_heartbeats: usize,
    /// Poll interval on top of LISTEN/NOTIFY, for delayed and retried jobs.
    pub poll_interval_ms: u64,
    pub batch_size: usize,
    /// How long SIGTERM waits for in-flight jobs before exiting.
    pub shutdown_deadline_secs: u64,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerSettings {
    /// Seconds between two imports of the same channel.
    pub tick_secs: u64,
    /// Orders updated this long before the cursor are fetched again, so that
    /// an order written while the previous import ran is never missed.
    pub overlap_secs: u64,
    pub page_size: u32,
    /// Seconds between a follower's tries for the leadership (and the most
    /// a leader waits between two checks of its election connection).
    pub election_secs: u64,
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PipelineSettings {
    /// No package's contents plus box may weigh more than this.
    pub package_weight_cap_g: u32,
    /// Boxes to pack into; empty means [`crate::packing::default_boxes`].
    #[serde(default)]
    pub boxes: Vec<BoxSpec>,
}

impl PipelineSettings {
    pub fn boxes(&self) -> Vec<BoxSpec> {
        if self.boxes.is_empty() {
            crate::packing::default_boxes()
        } else {
            self.boxes.clone()
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChannelSettings {
    /// Conveyor's name for the channel (`shop`); lower case, digits, `-`, `_`.
    pub code: String,
    pub kind: ChannelKind,
    pub base_url: String,
    pub token: SecretString,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CarrierSettings {
    pub base_url: String,
    pub api_key: SecretString,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// A queue's table in the settings file: every key may be left out.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    pub concurrency: Option<usize>,
    pub max_attempts: Option<i32>,
    pub backoff_base_ms: Option<u64>,
    pub backoff_cap_secs: Option<u64>,
}

/// A queue's settings, defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// Jobs of this queue one worker runs at once.
    pub concurrency: usize,
    /// Runs a job may spend on retryable failures before it is
    /// dead-lettered. Rate-limited runs and runs refused by an open circuit
    /// breaker do not count.
    pub max_attempts: i32,
    /// The first retry waits up to this long; each further one up to twice
    /// as long as the one before ...
    pub backoff_base_ms: u64,
    /// ... but never more than this.
    pub backoff_cap_secs: u64,
}

impl QueueSettings {
    /// The built-in settings of `queue`. Jobs that only touch the database
    /// (reserve, split, render) give up sooner; jobs that wait on a carrier
    /// or a channel (purchase, commit) keep trying for longer, since an
    /// order that is paid for should not stop at a few hours of outage.
    pub fn default_for(queue: Queue) -> QueueSettings {
        let (concurrency, max_attempts, backoff_base_ms, backoff_cap_secs) = match queue {
            // A new import is enqueued every tick anyway.
            Queue::Import => (2, 8, 1_000, 60),
            Queue::Reserve | Queue::Split | Queue::Render => (8, 10, 500, 120),
            Queue::Rate => (16, 12, 1_000, 300),
            Queue::Purchase => (16, 15, 2_000, 600),
            Queue::Commit => (16, 20, 2_000, 900),
            // Refunds labels: retried as patiently as a purchase.
            Queue::Cancel => (4, 15, 2_000, 600),
        };
        QueueSettings {
            concurrency,
            max_attempts,
            backoff_base_ms,
            backoff_cap_secs,
        }
    }
}

impl Settings {
    /// Defaults, then `file` (if given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, config::ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder
            .add_source(
                config::Environment::with_prefix("CONVEYOR")
                    .prefix_separator("_")
                    .separator("__"),
            )
            .build()?
            .try_deserialize()
    }

    /// The settings of one queue: its `[queues.<name>]` table over the
    /// queue's defaults ([`QueueSettings::default_for`]).
    pub fn queue(&self, queue: Queue) -> QueueSettings {
        let d = QueueSettings::default_for(queue);
        let Some(c) = self.queues.get(&queue) else {
            return d;
        };
        QueueSettings {
            concurrency: c.concurrency.unwrap_or(d.concurrency),
            max_attempts: c.max_attempts.unwrap_or(d.max_attempts),
            backoff_base_ms: c.backoff_base_ms.unwrap_or(d.backoff_base_ms),
            backoff_cap_secs: c.backoff_cap_secs.unwrap_or(d.backoff_cap_secs),
        }
    }

    /// The rate limit of channel `code`: its `[limits.<code>]` table, else
    /// the default of its kind ([`RateLimit::default_for`]). `None`: no
    /// limit of our own.
    pub fn channel_limit(&self, code: &str, kind: ChannelKind) -> Option<RateLimit> {
        match self.limits.get(code) {
            Some(c) => RateLimit::from_config(c),
            None => RateLimit::default_for(kind),
        }
    }

    /// The carrier's rate limit (`[limits.carrier]`); none by default, the
    /// adapter waits out the carrier's own 429s.
    pub fn carrier_limit(&self) -> Option<RateLimit> {
        self.limits
            .get(CARRIER_LIMIT)
            .and_then(RateLimit::from_config)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.worker.heartbeat_secs.max(1))
    }
}

/// The `[limits]` table of the carrier; no channel may use this code.
pub const CARRIER_LIMIT: &str = "carrier";

/// The built-in defaults: a local PostgreSQL, Redis and sandbox.
pub const DEFAULTS: &str = r#"
[database]
url = "postgres://postgres@127.0.0.1:5432/conveyor"
max_connections = 20

[redis]
url = "redis://127.0.0.1:6379"
prefix = "conveyor"

[breaker]
failures = 5
window_secs = 30
open_secs = 30

[limiter]
max_wait_ms = 2000
expected_workers = 3

[worker]
name_prefix = "conveyor-worker"
heartbeat_secs = 5
missed_heartbeats = 3
poll_interval_ms = 100
batch_size = 20
shutdown_deadline_secs = 30
listen = "127.0.0.1:9464"

[scheduler]
tick_secs = 10
overlap_secs = 15
page_size = 100
election_secs = 2
listen = "127.0.0.1:9465"

[pipeline]
package_weight_cap_g = 18000

[retention]
done_after_secs = 604800
interval_secs = 600
batch_size = 1000

[carrier]
base_url = "http://127.0.0.1:8090"
api_key = "sandbox-carrier-key"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(toml: &str) -> Settings {
        config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }

    #[test]
    fn a_queue_table_overrides_only_the_keys_it_names() {
        let s = from_toml("[queues.purchase]\nmax_attempts = 3\nbackoff_cap_secs = 7\n");
        let purchase = s.queue(Queue::Purchase);
        let defaults = QueueSettings::default_for(Queue::Purchase);
        assert_eq!(purchase.max_attempts, 3);
        assert_eq!(purchase.backoff_cap_secs, 7);
        assert_eq!(purchase.concurrency, defaults.concurrency);
        assert_eq!(purchase.backoff_base_ms, defaults.backoff_base_ms);
        assert_eq!(
            s.queue(Queue::Rate),
            QueueSettings::default_for(Queue::Rate)
        );
    }

    #[test]
    fn every_queue_has_a_usable_default() {
        for queue in Queue::ALL {
            let q = QueueSettings::default_for(queue);
            assert!(q.concurrency >= 1, "{queue}");
            assert!(q.max_attempts >= 2, "{queue}");
            assert!(q.backoff_base_ms >= 100, "{queue}");
            assert!(q.backoff_cap_secs * 1000 >= q.backoff_base_ms, "{queue}");
        }
    }

    #[test]
    fn retention_defaults_to_a_week_and_takes_overrides() {
        let s = from_toml("");
        assert_eq!(s.retention, RetentionSettings::default());
        assert_eq!(s.retention.done_after_secs, 604_800);
        let s = from_toml("[retention]\ndone_after_secs = 60\ninterval_secs = 5\n");
        assert_eq!(
            (
                s.retention.done_after_secs,
                s.retention.interval_secs,
                s.retention.batch_size
            ),
            (60, 5, 1000)
        );
    }

    #[test]
    fn the_breaker_and_redis_prefix_have_defaults() {
        let s = from_toml("");
        assert_eq!(
            s.breaker,
            BreakerSettings {
                failures: 5,
                window_secs: 30,
                open_secs: 30
            }
        );
        assert_eq!(s.redis.prefix, "conveyor");
    }

    #[test]
    fn limits_come_from_their_tables_else_from_the_channel_kind() {
        let s = from_toml(
            "[limits.shop]\nrate_per_sec = 5.0\nburst = 10\n\n\
             [limits.slow]\nrate_per_sec = 0.5\n\n\
             [limits.off]\nrate_per_sec = 0\n\n\
             [limits.carrier]\nrate_per_sec = 20\nburst = 40\n",
        );
        assert_eq!(
            s.channel_limit("shop", ChannelKind::Shopify),
            Some(RateLimit {
                rate_per_sec: 5.0,
                burst: 10
            })
        );
        // No burst given: one second's worth, at least one request.
        assert_eq!(
            s.channel_limit("slow", ChannelKind::Shopify),
            Some(RateLimit {
                rate_per_sec: 0.5,
                burst: 1
            })
        );
        // A rate of 0 turns the kind's default off.
        assert_eq!(s.channel_limit("off", ChannelKind::Amazon), None);
        // Without a table, the kind decides.
        assert_eq!(s.channel_limit("other", ChannelKind::Shopify), None);
        assert_eq!(
            s.channel_limit("other", ChannelKind::Amazon),
            Some(RateLimit {
                rate_per_sec: 0.0167,
                burst: 20
            })
        );
        assert_eq!(
            s.carrier_limit(),
            Some(RateLimit {
                rate_per_sec: 20.0,
                burst: 40
            })
        );
        let defaults = from_toml("");
        assert_eq!(defaults.carrier_limit(), None);
        assert_eq!(
            defaults.limiter,
            LimiterSettings {
                max_wait_ms: 2000,
                expected_workers: 3
            }
        );
    }

    #[test]
    fn an_unknown_key_in_a_queue_table_is_refused() {
        let err = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::from_str(
                "[queues.rate]\nmax_attempt = 3\n",
                config::FileFormat::Toml,
            ))
            .build()
            .unwrap()
            .try_deserialize::<Settings>();
        assert!(err.is_err());
    }
}
