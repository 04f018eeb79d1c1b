//! Errors, classified where they are first understood.
//!
//! Every call to a channel or carrier API returns an [`ApiError`] that already
//! says what kind of failure it is ([`ErrorClass`]); job handlers return a
//! [`JobError`] that carries the same class, and the one place that maps a job
//! result onto the queue (`crate::runner`) decides from the class alone whether
//! the job is retried later, dead-lettered now, or reconciled first.
//!
//! ```
//! use conveyor_jobs::error::{ErrorClass, JobError, Classify};
//! let parsed: Result<u32, std::num::ParseIntError> = "x".parse();
//! let err: JobError = parsed.permanent().unwrap_err();
//! assert_eq!(err.class, ErrorClass::Permanent);
//! ```

use std::fmt;
use std::time::Duration;

/// What kind of failure an error is, and therefore what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Timeouts, connection errors, 5xx, database hiccups: try again later
    /// with backoff, until the job's attempts run out.
    Retryable,
    /// 429 or a throttled body: wait (at least) this long; not a failure of
    /// the job itself.
    RateLimited { retry_after: Option<Duration> },
    /// Validation errors, other 4xx, bad input: retrying cannot help.
    Permanent,
    /// The request may or may not have taken effect (a purchase that timed
    /// out after it was sent): reconcile with the remote side before retrying.
    UnknownOutcome,
    /// The API's circuit breaker is open, so the call was not made: try
    /// again once it may have closed (in `retry_in`). Not a failure of the
    /// job, and not an attempt.
    CircuitOpen { retry_in: Duration },
}

impl ErrorClass {
    /// Stable lower-case name, used in dead letters, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::RateLimited { .. } => "rate_limited",
            ErrorClass::Permanent => "permanent",
            ErrorClass::UnknownOutcome => "unknown_outcome",
            ErrorClass::CircuitOpen { .. } => "circuit_open",
        }
    }

    /// Whether the failure says the API itself is in trouble (down,
    /// overloaded, unreachable, too slow): what a circuit breaker counts.
    /// An answer that refuses the request (other 4xx) or asks us to slow
    /// down (429) comes from an API that works.
    pub fn is_outage(self, status: Option<u16>) -> bool {
        match self {
            // 409 and 425 say "try again", not "down".
            ErrorClass::Retryable => !matches!(status, Some(409 | 425)),
            // A call that timed out after it was sent.
            ErrorClass::UnknownOutcome => true,
            ErrorClass::RateLimited { .. }
            | ErrorClass::Permanent
            | ErrorClass::CircuitOpen { .. } => false,
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed call to an external API, classified by the adapter.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{api}: {message}")]
pub struct ApiError {
    /// Which API: "shopify", "easypost", ...
    pub api: &'static str,
    pub class: ErrorClass,
    /// HTTP status, when there was a response.
    pub status: Option<u16>,
    /// The API's own error code when it gives one (`SHIPMENT.POSTAGE.EXISTS`).
    pub code: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn new(api: &'static str, class: ErrorClass, message: impl Into<String>) -> Self {
        ApiError {
            api,
            class,
            status: None,
            code: None,
            message: message.into(),
        }
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Classifies a transport-level reqwest error. A request that timed out
    /// after it was sent is `unknown_outcome` when the call was not safe to
    /// repeat (`idempotent == false`), since the remote side may have acted.
    pub fn from_transport(api: &'static str, err: &reqwest::Error, idempotent: bool) -> Self {
        let sent = !err.is_connect() && !err.is_builder();
        let class = if err.is_timeout() && sent && !idempotent {
            ErrorClass::UnknownOutcome
        } else if err.is_builder() {
            ErrorClass::Permanent
        } else {
            ErrorClass::Retryable
        };
        // reqwest's Display includes the URL, which never carries secrets
        // here (tokens travel in headers), so it is safe to keep.
        ApiError::new(api, class, format!("transport error: {err}"))
    }

    /// Classifies an HTTP status the way DESIGN.md describes: 429 is rate
    /// limiting, 5xx and 408 are retryable, 409 "try again" is retryable, the
    /// other 4xx are permanent.
    pub fn from_status(
        api: &'static str,
        status: u16,
        retry_after: Option<Duration>,
        message: impl Into<String>,
    ) -> Self {
        let class = match status {
            429 => ErrorClass::RateLimited { retry_after },
            408 | 409 | 425 => ErrorClass::Retryable,
            500..=599 => ErrorClass::Retryable,
            _ => ErrorClass::Permanent,
        };
        ApiError::new(api, class, message).with_status(status)
    }
}

/// The error a job handler returns.
#[derive(Debug, thiserror::Error)]
#[error("{class}: {message}")]
pub struct JobError {
    pub class: ErrorClass,
    pub message: String,
}

impl JobError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        JobError {
            class,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        JobError::new(ErrorClass::Permanent, message)
    }

    pub fn retryable(message: impl Into<String>) -> Self {
        JobError::new(ErrorClass::Retryable, message)
    }
}

impl From<ApiError> for JobError {
    fn from(e: ApiError) -> Self {
        JobError::new(e.class, e.to_string())
    }
}

impl From<sqlx::Error> for JobError {
    /// Database errors are retryable, except those that say the data itself
    /// is wrong (a violated constraint will be violated again).
    fn from(e: sqlx::Error) -> Self {
        let class = match &e {
            sqlx::Error::Database(db)
                if db.is_check_violation() || db.is_foreign_key_violation() =>
            {
                ErrorClass::Permanent
            }
            sqlx::Error::RowNotFound
            | sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_) => ErrorClass::Permanent,
            _ => ErrorClass::Retryable,
        };
        JobError::new(class, format!("database: {e}"))
    }
}

/// Classification at the call site: `parse(..).permanent()?`,
/// `client.buy(..).await.retryable()?`.
pub trait Classify<T> {
    fn permanent(self) -> Result<T, JobError>;
    fn retryable(self) -> Result<T, JobError>;
}

impl<T, E: fmt::Display> Classify<T> for Result<T, E> {
    fn permanent(self) -> Result<T, JobError> {
        self.map_err(|e| JobError::permanent(e.to_string()))
    }

    fn retryable(self) -> Result<T, JobError> {
        self.map_err(|e| JobError::retryable(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_the_design_says() {
        let c = |s| ApiError::from_status("t", s, None, "m").class;
        assert_eq!(c(429), ErrorClass::RateLimited { retry_after: None });
        assert_eq!(c(503), ErrorClass::Retryable);
        assert_eq!(c(500), ErrorClass::Retryable);
        assert_eq!(c(409), ErrorClass::Retryable);
        assert_eq!(c(422), ErrorClass::Permanent);
        assert_eq!(c(401), ErrorClass::Permanent);
        assert_eq!(c(404), ErrorClass::Permanent);
    }

    #[test]
    fn only_server_errors_timeouts_and_lost_connections_count_as_outages() {
        let outage = |s: u16| {
            let e = ApiError::from_status("t", s, None, "m");
            e.class.is_outage(e.status)
        };
        assert!(outage(500));
        assert!(outage(503));
        assert!(outage(408));
        assert!(!outage(409), "409 asks to try again");
        assert!(!outage(429), "rate limiting is not an outage");
        assert!(!outage(422));
        assert!(!outage(401));
        assert!(ErrorClass::Retryable.is_outage(None), "connection errors");
        assert!(ErrorClass::UnknownOutcome.is_outage(None), "timeouts");
        let open = ErrorClass::CircuitOpen {
            retry_in: Duration::from_secs(1),
        };
        assert!(!open.is_outage(None));
    }
}
