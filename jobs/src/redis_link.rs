//! What a process knows about its Redis, for the fleet state kept there
//! (circuit breakers, rate limiters): every call is bounded by
//! [`REDIS_WAIT`]; after a failure Redis is left alone for a backoff (1 s,
//! doubling up to 30 s) while the caller uses its local fallback; the
//! outage and the recovery are logged once each.
//!
//! ```
//! # async fn f() {
//! use conveyor_jobs::redis_link::{Change, RedisLink};
//! let link = RedisLink::new("rate limiters", "this process keeps its own state");
//! let (answer, change) = link.call(async { Ok::<u32, std::io::Error>(7) }).await;
//! assert_eq!(answer, Some(7));
//! assert_eq!(change, None);
//! # }
//! ```

use std::fmt::Display;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest a call to Redis may take before the local fallback is used.
pub const REDIS_WAIT: Duration = Duration::from_millis(250);
/// The first wait before Redis is tried again after a failure ...
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// ... doubling with each failure in a row, up to this.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Redis went down or came back with this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Down,
    Up,
}

#[derive(Debug, Default)]
struct State {
    down: bool,
    /// Failed tries in a row, for the backoff.
    failures: u32,
    /// While down: Redis is not tried before this instant.
    retry_at: Option<Instant>,
}

/// One user's view of Redis (`what`: "circuit breakers", "rate limiters").
#[derive(Debug)]
pub struct RedisLink {
    what: &'static str,
    /// What the user does meanwhile, for the log line.
    fallback: &'static str,
    state: Mutex<State>,
}

/// The wait after `failures` failed tries of Redis in a row.
pub fn retry_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX)
}

impl RedisLink {
    pub fn new(what: &'static str, fallback: &'static str) -> RedisLink {
        RedisLink {
            what,
            fallback,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether Redis failed and has not answered since.
    pub fn is_down(&self) -> bool {
        self.lock().down
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `call` unless Redis failed recently and its backoff is not over;
    /// `None` when Redis was not tried, failed or took longer than
    /// [`REDIS_WAIT`]. Also says whether Redis went down or came back.
    pub async fn call<T, E: Display>(
        &self,
        call: impl Future<Output = Result<T, E>>,
    ) -> (Option<T>, Option<Change>) {
        if self.lock().retry_at.is_some_and(|t| Instant::now() < t) {
            return (None, None);
        }
        match tokio::time::timeout(REDIS_WAIT, call).await {
            Ok(Ok(answer)) => (Some(answer), self.answered()),
            Ok(Err(e)) => (None, self.failed(&e.to_string())),
            Err(_) => (None, self.failed("no answer in time")),
        }
    }

    fn answered(&self) -> Option<Change> {
        let was_down = std::mem::take(&mut *self.lock()).down;
        if !was_down {
            return None;
        }
        tracing::info!(
            "{}: Redis answers again; the fleet shares this state again",
            self.what
        );
        Some(Change::Up)
    }

    fn failed(&self, error: &str) -> Option<Change> {
        let (went_down, retry_in) = {
            let mut state = self.lock();
            let now = Instant::now();
            // Calls already on their way when Redis failed count as the
            // same try.
            if state.retry_at.is_some_and(|t| now < t) {
                return None;
            }
            state.failures = state.failures.saturating_add(1);
            let retry_in = retry_backoff(state.failures);
            state.retry_at = Some(now + retry_in);
            let went_down = !state.down;
            state.down = true;
            (went_down, retry_in)
        };
        let retry_in_ms = retry_in.as_millis() as u64;
        if went_down {
            tracing::warn!(
                error,
                retry_in_ms,
                "{}: Redis cannot be reached; {} until it can",
                self.what,
                self.fallback
            );
            Some(Change::Down)
        } else {
            tracing::debug!(
                error,
                retry_in_ms,
                "{}: Redis still cannot be reached",
                self.what
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        assert_eq!(retry_backoff(1), Duration::from_secs(1));
        assert_eq!(retry_backoff(2), Duration::from_secs(2));
        assert_eq!(retry_backoff(5), Duration::from_secs(16));
        assert_eq!(retry_backoff(6), RETRY_MAX);
        assert_eq!(retry_backoff(u32::MAX), RETRY_MAX);
    }

    #[tokio::test]
    async fn a_failure_goes_down_once_skips_redis_for_the_backoff_and_an_answer_comes_back_up() {
        let link = RedisLink::new("test", "local state");
        let (a, change) = link.call(async { Err::<u8, _>("refused") }).await;
        assert_eq!((a, change), (None, Some(Change::Down)));
        assert!(link.is_down());
        // Within the backoff Redis is not called at all.
        let (a, change) = link
            .call(async { panic!("Redis was called during its backoff") as Result<u8, &str> })
            .await;
        assert_eq!((a, change), (None, None));
        // Once the backoff is over, an answer brings it back.
        link.lock().retry_at = Some(Instant::now());
        let (a, change) = link.call(async { Ok::<u8, &str>(3) }).await;
        assert_eq!((a, change), (Some(3), Some(Change::Up)));
        assert!(!link.is_down());
    }

    #[tokio::test]
    async fn a_call_slower_than_the_wait_counts_as_a_failure() {
        let link = RedisLink::new("test", "local state");
        let slow = async {
            tokio::time::sleep(REDIS_WAIT * 4).await;
            Ok::<u8, &str>(1)
        };
        assert_eq!(link.call(slow).await, (None, Some(Change::Down)));
    }
}
