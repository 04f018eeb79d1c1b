//! What the sandbox counts, so that tests can prove Conveyor's promises from the
//! outside: no label bought twice (`labels_per_reference`), nothing fulfilled beyond
//! what was ordered (`fulfilled_per_line` against `ordered_per_line`), no package
//! fulfilled twice (`fulfillments_per_tracking_number`), and how hard
//! each endpoint was hit (`requests`). Served as JSON by `GET /_sandbox/stats`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Counters kept by the sandbox. Every field defaults so that a client built against
/// this version still deserializes a newer sandbox's stats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Orders generated (backlog, over time and `add_orders`).
    pub orders_created: u64,
    /// Orders cancelled through the sandbox control API.
    pub orders_cancelled: u64,
    /// Orders edited (a line's quantity raised) through the sandbox control API.
    pub orders_edited: u64,
    /// Labels sold in total (one per successful buy, refunds do not subtract).
    pub labels_sold: u64,
    /// Labels sold per carrier shipment id (`shp_...`).
    pub labels_per_shipment: BTreeMap<String, u32>,
    /// Labels sold per shipment `reference` (Conveyor sends its package id there).
    /// Shipments created without a reference are not listed.
    pub labels_per_reference: BTreeMap<String, u32>,
    /// Buys refused because the shipment already had postage.
    pub duplicate_purchase_attempts: u64,
    /// Refunds accepted.
    pub refunds: u64,
    /// Carrier shipments created.
    pub shipments_created: u64,
    /// Shipments refused because the destination address was rejected.
    pub addresses_rejected: u64,
    /// Successful `fulfillmentCreate` calls.
    pub fulfillments_created: u64,
    /// Fulfillments created per tracking number (Conveyor pushes one package,
    /// with its own tracking number, per fulfillment). Fulfillments without a
    /// tracking number are not listed.
    pub fulfillments_per_tracking_number: BTreeMap<String, u32>,
    /// Quantity fulfilled per LineItem gid.
    pub fulfilled_per_line: BTreeMap<String, u32>,
    /// Quantity ordered per LineItem gid.
    pub ordered_per_line: BTreeMap<String, u32>,
    /// `fulfillmentCreate` calls refused because they asked for more than remained
    /// (including a fulfillment order that was already closed).
    pub over_fulfillment_attempts: u64,
    /// GraphQL requests refused with `THROTTLED` or `MAX_COST_EXCEEDED`.
    pub throttled_requests: u64,
    /// Query-cost points spent by the GraphQL requests served (their
    /// `actualQueryCost`), whether or not the throttle is enforced.
    pub query_cost: u64,
    /// Faults injected in total, of every kind on both APIs.
    pub injected_faults: u64,
    /// Faults injected per API and kind.
    pub faults: InjectedFaults,
    /// Requests per endpoint: `"<METHOD> <route>"` for every HTTP route (for example
    /// `"POST /v2/shipments/{id}/buy"`), plus `"graphql <rootField>"` per GraphQL
    /// root field executed (for example `"graphql orders"`).
    pub requests: BTreeMap<String, u64>,
    /// Channel API requests (Shopify Admin GraphQL) received, per Unix second:
    /// how fast a fleet really called the channel.
    pub channel_requests_per_second: BTreeMap<u64, u64>,
    /// Carrier API requests (EasyPost `/v2/...`; label files are not API
    /// calls) received, per Unix second.
    pub carrier_requests_per_second: BTreeMap<u64, u64>,
}

/// Which external API a request went to, for the per-second counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Channel,
    Carrier,
}

impl Stats {
    pub(crate) fn count_request(&mut self, key: String) {
        *self.requests.entry(key).or_default() += 1;
    }

    /// Counts one request to `api` received in Unix second `second`.
    pub(crate) fn count_api_second(&mut self, api: Api, second: u64) {
        let series = match api {
            Api::Channel => &mut self.channel_requests_per_second,
            Api::Carrier => &mut self.carrier_requests_per_second,
        };
        *series.entry(second).or_default() += 1;
    }
}

/// Injected faults per API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InjectedFaults {
    /// The Shopify-style API.
    pub channel: FaultCounts,
    /// The EasyPost-style API.
    pub carrier: FaultCounts,
}

/// Injected faults of one API, per kind (see [`crate::Faults`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultCounts {
    /// Requests delayed by the configured latency.
    pub delayed: u64,
    /// Requests answered with an injected 5xx.
    pub server_error: u64,
    /// Requests answered with an injected 429 or `THROTTLED`.
    pub rate_limited: u64,
    /// Requests held past the client's timeout.
    pub hang: u64,
    /// Answers malformed (truncated or not JSON).
    pub malformed: u64,
    /// Orders created malformed (channel).
    pub malformed_order: u64,
    /// Orders edited after a client first fetched them (channel).
    pub edited: u64,
    /// Orders cancelled after a client first fetched them (channel).
    pub cancelled: u64,
    /// Purchases that sold a label and never answered (carrier).
    pub purchase_no_answer: u64,
}

impl FaultCounts {
    /// Faults of every kind, latency not included.
    pub fn total(&self) -> u64 {
        self.server_error
            + self.rate_limited
            + self.hang
            + self.malformed
            + self.malformed_order
            + self.edited
            + self.cancelled
            + self.purchase_no_answer
    }
}
