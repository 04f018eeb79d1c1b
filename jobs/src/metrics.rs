//! Prometheus metrics for the worker and the scheduler.
//!
//! Counters and histograms are updated as jobs run; gauges that describe the
//! database (queue depth by state, orders by state, open dead letters) are
//! read from Postgres when `/metrics` is scraped, so every process reports
//! the same truth.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use sqlx::PgPool;

use crate::error::JobError;
use crate::queue::Queue;
use crate::retry::Deferral;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    jobs: IntCounterVec,
    job_seconds: HistogramVec,
    dead_letters: IntCounterVec,
    queue_depth: IntGaugeVec,
    orders: IntGaugeVec,
    open_dead_letters: IntGaugeVec,
    breaker_open: IntGaugeVec,
    breaker_rejected: IntCounterVec,
    rate_limit_waits: IntCounterVec,
    limiter_fallback: IntGaugeVec,
    deferrals: IntCounterVec,
    scheduler_leader: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let jobs = IntCounterVec::new(
            Opts::new("conveyor_jobs_total", "Jobs run, by queue and outcome"),
            &["queue", "outcome"],
        )
        .expect("valid metric");
        let job_seconds = HistogramVec::new(
            HistogramOpts::new("conveyor_job_duration_seconds", "Job run time, by queue").buckets(
                vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
            ),
            &["queue"],
        )
        .expect("valid metric");
        let dead_letters = IntCounterVec::new(
            Opts::new(
                "conveyor_dead_letters_total",
                "Jobs dead-lettered by this process, by queue",
            ),
            &["queue"],
        )
        .expect("valid metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "conveyor_queue_jobs",
                "Jobs in the queue, by queue and state",
            ),
            &["queue", "state"],
        )
        .expect("valid metric");
        let orders = IntGaugeVec::new(Opts::new("conveyor_orders", "Orders by state"), &["state"])
            .expect("valid metric");
        let open_dead_letters = IntGaugeVec::new(
            Opts::new(
                "conveyor_dead_letters_open",
                "Dead letters waiting for review, by queue",
            ),
            &["queue"],
        )
        .expect("valid metric");
        let breaker_open = IntGaugeVec::new(
            Opts::new(
                "conveyor_breaker_open",
                "1 while the API's circuit breaker is open or half-open (as this process last saw it), 0 while closed",
            ),
            &["api"],
        )
        .expect("valid metric");
        let breaker_rejected = IntCounterVec::new(
            Opts::new(
                "conveyor_breaker_rejected_calls_total",
                "Calls not made because the API's circuit breaker was open, by API",
            ),
            &["api"],
        )
        .expect("valid metric");
        let rate_limit_waits = IntCounterVec::new(
            Opts::new(
                "conveyor_rate_limit_waits_total",
                "Waits for an API: answers asking to slow down (429, throttled) and calls the fleet's rate limiter held back or deferred, by API",
            ),
            &["api"],
        )
        .expect("valid metric");
        let limiter_fallback = IntGaugeVec::new(
            Opts::new(
                "conveyor_rate_limiter_fallback",
                "1 while Redis cannot be reached and this process limits the API to its own share of the rate, 0 while the fleet shares the limit in Redis",
            ),
            &["api"],
        )
        .expect("valid metric");
        let deferrals = IntCounterVec::new(
            Opts::new(
                "conveyor_job_deferrals_total",
                "Job runs rescheduled without spending an attempt, by queue and reason (rate_limited, circuit_open)",
            ),
            &["queue", "reason"],
        )
        .expect("valid metric");
        let scheduler_leader = IntGauge::new(
            "conveyor_scheduler_leader",
            "1 while this scheduler holds the leadership, else 0",
        )
        .expect("valid metric");
        for c in [
            Box::new(jobs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(job_seconds.clone()),
            Box::new(dead_letters.clone()),
            Box::new(queue_depth.clone()),
            Box::new(orders.clone()),
            Box::new(open_dead_letters.clone()),
            Box::new(breaker_open.clone()),
            Box::new(breaker_rejected.clone()),
            Box::new(rate_limit_waits.clone()),
            Box::new(limiter_fallback.clone()),
            Box::new(deferrals.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Metrics {
            registry,
            jobs,
            job_seconds,
            dead_letters,
            queue_depth,
            orders,
            open_dead_letters,
            breaker_open,
            breaker_rejected,
            rate_limit_waits,
            limiter_fallback,
            deferrals,
            scheduler_leader,
        }
    }

    /// The scheduler's leadership gauge (`conveyor_scheduler_leader`).
    /// Registered on first use, so that only schedulers export it.
    pub fn scheduler_leader(&self) -> IntGauge {
        // A second registration is refused; the first one stands.
        let _ = self
            .registry
            .register(Box::new(self.scheduler_leader.clone()));
        self.scheduler_leader.clone()
    }

    pub fn observe_job(&self, queue: Queue, result: Result<(), &JobError>, took: Duration) {
        let outcome = match result {
            Ok(()) => "ok",
            Err(e) => e.class.as_str(),
        };
        self.jobs.with_label_values(&[queue.name(), outcome]).inc();
        self.job_seconds
            .with_label_values(&[queue.name()])
            .observe(took.as_secs_f64());
    }

    pub fn dead_lettered(&self, queue: Queue) {
        self.dead_letters.with_label_values(&[queue.name()]).inc();
    }

    /// The breaker of `api` as this process saw it last.
    pub fn set_breaker_open(&self, api: &str, open: bool) {
        self.breaker_open
            .with_label_values(&[api])
            .set(i64::from(open));
    }

    /// 1 if this process last saw the breaker of `api` open or half-open.
    pub fn breaker_open(&self, api: &str) -> i64 {
        self.breaker_open.with_label_values(&[api]).get()
    }

    pub fn breaker_rejected(&self, api: &str) {
        self.breaker_rejected.with_label_values(&[api]).inc();
    }

    /// Calls to `api` this process did not make because its breaker was open.
    pub fn breaker_rejected_calls(&self, api: &str) -> u64 {
        self.breaker_rejected.with_label_values(&[api]).get()
    }

    pub fn rate_limit_wait(&self, api: &str) {
        self.rate_limit_waits.with_label_values(&[api]).inc();
    }

    pub fn rate_limit_waits(&self, api: &str) -> u64 {
        self.rate_limit_waits.with_label_values(&[api]).get()
    }

    /// Whether this process limits `api` on its own share (Redis down).
    pub fn set_limiter_fallback(&self, api: &str, fallback: bool) {
        self.limiter_fallback
            .with_label_values(&[api])
            .set(i64::from(fallback));
    }

    /// 1 while this process limits `api` on its own share of the rate.
    pub fn limiter_fallback(&self, api: &str) -> i64 {
        self.limiter_fallback.with_label_values(&[api]).get()
    }

    pub fn deferred(&self, queue: Queue, reason: Deferral) {
        self.deferrals
            .with_label_values(&[queue.name(), reason.as_str()])
            .inc();
    }

    /// Runs of `queue` this process rescheduled for `reason`.
    pub fn deferrals(&self, queue: Queue, reason: Deferral) -> u64 {
        self.deferrals
            .with_label_values(&[queue.name(), reason.as_str()])
            .get()
    }

    /// Refreshes the database gauges and renders the text exposition.
    pub async fn render(&self, pool: &PgPool) -> String {
        let stats = crate::stats::collect(pool).await;
        match stats {
            Ok(stats) => {
                self.queue_depth.reset();
                for (queue, states) in &stats.jobs {
                    for (state, n) in states {
                        self.queue_depth
                            .with_label_values(&[queue.as_str(), state.as_str()])
                            .set(*n);
                    }
                }
                self.orders.reset();
                for (state, n) in &stats.orders {
                    self.orders.with_label_values(&[state.as_str()]).set(*n);
                }
                self.open_dead_letters.reset();
                for (queue, n) in &stats.dead_letters {
                    self.open_dead_letters
                        .with_label_values(&[queue.as_str()])
                        .set(*n);
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: database gauges not refreshed"),
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
