//! Fault injection, set separately for the channel (the Shopify-style API) and
//! the carrier (the EasyPost-style API).
//!
//! Every API request first waits the API's latency, then may be answered by an
//! injected fault instead of being handled: a 5xx, a "slow down" (429 with
//! `Retry-After`), or a hang (the request is held for `hang_ms`, longer than any
//! sane client timeout, then answered 504). A handled request's answer may still
//! be malformed (a truncated body or one that is not JSON at all). The channel
//! also generates malformed orders and edits or cancels orders right after a
//! client first saw them; the carrier also sells labels and then never answers.
//!
//! Each API draws from its own RNG seeded from the sandbox seed, so the same
//! seed and the same sequence of requests give the same faults, and faults on
//! one API do not shift the other's. Every injected fault is counted in
//! [`crate::Stats::faults`].
//!
//! ```
//! use conveyor_sandbox::{ApiFaults, Faults};
//! // Every tenth carrier call fails with a 5xx; the channel is healthy.
//! let mut faults = Faults::default();
//! faults.carrier.api.server_error_rate = 0.1;
//! assert_eq!(faults.channel, Default::default());
//! // The same knobs on both APIs at once.
//! let outage = Faults::everywhere(ApiFaults { server_error_rate: 1.0, ..ApiFaults::default() });
//! assert_eq!(outage.channel.api.server_error_rate, 1.0);
//! ```

use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::stats::FaultCounts;

/// Knobs both APIs have. Rates are probabilities in `0.0..=1.0` (clamped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiFaults {
    /// Delay added to every request of this API, in milliseconds.
    pub latency_ms: u64,
    /// Share of requests answered with a 5xx before doing anything
    /// (Shopify: 503 `{"errors": ...}`; EasyPost: 500 with its error body).
    pub server_error_rate: f64,
    /// Share of requests answered "slow down" before doing anything, with a
    /// `Retry-After` header (EasyPost: 429 `RATE_LIMITED`; Shopify: a
    /// `THROTTLED` GraphQL body, half of the time with HTTP 200 as its GraphQL
    /// API answers, half with HTTP 429 as its edge does).
    pub rate_limit_rate: f64,
    /// The `Retry-After` of those answers, in seconds.
    pub retry_after_secs: u64,
    /// Share of requests held for `hang_ms` before anything is done, then
    /// answered 504: the client times out first.
    pub hang_rate: f64,
    /// How long a hanging request (and a purchase that never answers) is held.
    pub hang_ms: u64,
    /// Share of handled requests whose answer is malformed: truncated JSON or a
    /// body that is not JSON. The work is done (a label bought, an order
    /// fulfilled); only the answer is lost. On the channel, only queries
    /// (pages of orders) are malformed, never mutations.
    pub malformed_rate: f64,
}

impl Default for ApiFaults {
    fn default() -> Self {
        ApiFaults {
            latency_ms: 0,
            server_error_rate: 0.0,
            rate_limit_rate: 0.0,
            retry_after_secs: 1,
            hang_rate: 0.0,
            hang_ms: 30_000,
            malformed_rate: 0.0,
        }
    }
}

/// The channel's (Shopify's) faults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelFaults {
    #[serde(flatten)]
    pub api: ApiFaults,
    /// Share of orders created malformed: no shipping address, a line without a
    /// SKU, or a line with a negative quantity. Applies to orders created after
    /// the change.
    pub malformed_order_rate: f64,
    /// Share of orders edited right after a client first fetched them in a
    /// page of `orders`: a line's quantity, the shipping address or the lines
    /// change, and `updatedAt` moves.
    pub edit_rate: f64,
    /// Share of orders cancelled right after a client first fetched them:
    /// `cancelledAt` is set and `updatedAt` moves.
    pub cancel_rate: f64,
}

/// The carrier's (EasyPost's) faults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CarrierFaults {
    #[serde(flatten)]
    pub api: ApiFaults,
    /// Share of label purchases that sell the label and never answer: the
    /// request is held for `hang_ms`, then answered 504 without the label.
    pub purchase_no_answer_rate: f64,
}

/// Every injected fault, per API. `GET`/`POST /_sandbox/faults` read and
/// replace it as JSON: `{"channel": {"server_error_rate": 0.1, "edit_rate":
/// 0.02}, "carrier": {"hang_rate": 0.01}}`; a field left out is off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    pub channel: ChannelFaults,
    pub carrier: CarrierFaults,
}

impl Faults {
    /// The same API knobs on both APIs, nothing else.
    pub fn everywhere(api: ApiFaults) -> Faults {
        Faults {
            channel: ChannelFaults {
                api: api.clone(),
                ..ChannelFaults::default()
            },
            carrier: CarrierFaults {
                api,
                ..CarrierFaults::default()
            },
        }
    }
}

/// Which API a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Channel,
    Carrier,
}

/// A fault that answers a request instead of handling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    ServerError,
    /// `Retry-After` in seconds; `http_429` false means Shopify's own HTTP 200
    /// `THROTTLED` answer.
    RateLimited {
        retry_after_secs: u64,
        http_429: bool,
    },
    /// Hold the request this long, then answer 504.
    Hang(Duration),
}

/// `true` with probability `rate` (clamped); draws nothing when it is zero, so
/// that a knob left off does not shift the others' draws.
pub(crate) fn roll(rng: &mut StdRng, rate: f64) -> bool {
    let rate = if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    };
    rate > 0.0 && rng.random_bool(rate)
}

impl ApiFaults {
    /// Decides whether a request is refused, counting the refusal.
    pub(crate) fn refusal(
        &self,
        api: Api,
        rng: &mut StdRng,
        counts: &mut FaultCounts,
    ) -> Option<Refusal> {
        let refusal = if roll(rng, self.server_error_rate) {
            counts.server_error += 1;
            Refusal::ServerError
        } else if roll(rng, self.rate_limit_rate) {
            counts.rate_limited += 1;
            Refusal::RateLimited {
                retry_after_secs: self.retry_after_secs,
                http_429: api == Api::Carrier || rng.random_bool(0.5),
            }
        } else if roll(rng, self.hang_rate) {
            counts.hang += 1;
            Refusal::Hang(Duration::from_millis(self.hang_ms))
        } else {
            return None;
        };
        Some(refusal)
    }
}

/// A malformed version of `body`: half of the time cut short somewhere in its
/// first three quarters, half of the time an HTML error page (not JSON at all).
pub(crate) fn malform(body: &str, rng: &mut StdRng) -> String {
    if body.len() > 4 && rng.random_bool(0.5) {
        let mut cut = rng.random_range(1..=body.len() * 3 / 4);
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body[..cut].to_owned()
    } else {
        "<html><head><title>502 Bad Gateway</title></head><body>upstream error</body></html>"
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_knob_left_off_draws_nothing() {
        let mut a = StdRng::seed_from_u64(1);
        let mut b = StdRng::seed_from_u64(1);
        assert!(!roll(&mut a, 0.0));
        assert!(!roll(&mut a, f64::NAN));
        assert_eq!(a.random::<u64>(), b.random::<u64>());
    }

    #[test]
    fn malformed_bodies_never_parse() {
        let mut rng = StdRng::seed_from_u64(3);
        let body = serde_json::json!({ "data": { "orders": { "nodes": [1, 2, 3] } } }).to_string();
        for _ in 0..200 {
            let bad = malform(&body, &mut rng);
            assert!(
                serde_json::from_str::<serde_json::Value>(&bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn faults_read_from_json_per_api_with_the_rest_off() {
        let faults: Faults = serde_json::from_value(serde_json::json!({
            "channel": { "server_error_rate": 0.1, "edit_rate": 0.02, "latency_ms": 200 },
            "carrier": { "purchase_no_answer_rate": 0.5, "hang_ms": 1000 },
        }))
        .unwrap();
        assert_eq!(faults.channel.api.server_error_rate, 0.1);
        assert_eq!(faults.channel.api.latency_ms, 200);
        assert_eq!(faults.channel.edit_rate, 0.02);
        assert_eq!(faults.channel.api.retry_after_secs, 1);
        assert_eq!(faults.carrier.purchase_no_answer_rate, 0.5);
        assert_eq!(faults.carrier.api.hang_ms, 1000);
        assert_eq!(faults.carrier.api.server_error_rate, 0.0);
        let round_trip: Faults =
            serde_json::from_str(&serde_json::to_string(&faults).unwrap()).unwrap();
        assert_eq!(round_trip, faults);
    }
}
