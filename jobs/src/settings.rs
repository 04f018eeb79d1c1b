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
    /// Per-queue overrides: `[queues.purchase] concurrency = 4`.
    #[serde(default)]
    pub queues: BTreeMap<Queue, QueueSettings>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    pub url: String,
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

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
pub struct QueueSettings {
    pub concurrency: usize,
    pub max_attempts: i32,
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

    /// The settings of one queue, defaults filled in.
    pub fn queue(&self, queue: Queue) -> QueueSettings {
        self.queues.get(&queue).copied().unwrap_or(QueueSettings {
            concurrency: match queue {
                Queue::Import => 2,
                Queue::Rate | Queue::Purchase | Queue::Commit => 16,
                _ => 8,
            },
            max_attempts: crate::queue::DEFAULT_MAX_ATTEMPTS,
        })
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.worker.heartbeat_secs.max(1))
    }
}

/// The built-in defaults: a local PostgreSQL, Redis and sandbox.
pub const DEFAULTS: &str = r#"
[database]
url = "postgres://postgres@127.0.0.1:5432/conveyor"
max_connections = 20

[redis]
url = "redis://127.0.0.1:6379"

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
listen = "127.0.0.1:9465"

[pipeline]
package_weight_cap_g = 18000

[carrier]
base_url = "http://127.0.0.1:8090"
api_key = "sandbox-carrier-key"
"#;
