//! Shopify Admin GraphQL channel adapter (API version 2025-01).
//!
//! Orders come from the `orders` connection, filtered with the search syntax
//! `updated_at:>='…'` and sorted by `UPDATED_AT` (oldest first), with cursor
//! pagination. Fulfillments go through `fulfillmentCreate`, addressed by
//! fulfillment order and fulfillment order line item; the ones an order
//! already has are read from `Order.fulfillments` with their tracking
//! numbers ([`ORDER_FULFILLMENTS_QUERY`]).
//!
//! Shopify rejects any single query whose *requested* cost exceeds 1000 points
//! (connections cost 2 plus `first` times the cost of one node, objects 1,
//! scalars 0, and nested connections multiply). The page query therefore asks
//! for only a few lines and fulfillment orders per order and clamps the page
//! size to stay within budget; an order that has more than that is fetched
//! again on its own with larger limits ([`ORDER_QUERY`]). The actual cost
//! charged is what was returned, so small pages of small orders stay cheap.
//!
//! Every failure is classified here: transport errors and HTTP statuses as
//! [`ApiError::from_transport`] and [`ApiError::from_status`] say, `THROTTLED`
//! GraphQL bodies as rate limited (with the wait computed from the throttle
//! status), `INTERNAL_SERVER_ERROR` as retryable and other GraphQL errors as
//! permanent. The access token travels only in a sensitive header and never
//! appears in messages or `Debug` output.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{
    ChannelApi, ChannelFulfillment, ChannelLine, ChannelOrder, FulfillmentOutcome,
    FulfillmentRequest, OrdersPage, RejectedOrder,
};
use crate::address::Address;
use crate::error::{ApiError, ErrorClass};

const API: &str = "shopify";
const API_VERSION: &str = "2025-01";

/// The most points Shopify lets a single query request.
const MAX_QUERY_COST: u32 = 1000;
/// Line items (and fulfillment order line items) per order in the page query.
const PAGE_LINES: u32 = 5;
/// Fulfillment orders per order in the page query.
const PAGE_FULFILLMENT_ORDERS: u32 = 2;
/// Requested cost of one order node in [`ORDERS_PAGE_QUERY`]: the order (1),
/// its shipping address (1), `shippingLines(first: 1)` (2 + 1),
/// `lineItems(first: 5)` (2 + 5) and `fulfillmentOrders(first: 2)` whose nodes
/// each cost 1 + `lineItems(first: 5)` of nodes costing 2 (the line and its
/// `lineItem`): 2 + 2 * (1 + 2 + 5 * 2).
const ORDER_NODE_COST: u32 =
    1 + 1 + (2 + 1) + (2 + PAGE_LINES) + (2 + PAGE_FULFILLMENT_ORDERS * (1 + 2 + PAGE_LINES * 2));
/// The largest `first` that keeps the page query within [`MAX_QUERY_COST`].
pub const MAX_PAGE_SIZE: u32 = (MAX_QUERY_COST - 2) / ORDER_NODE_COST;
/// Lines and fulfillment orders per order in the single-order queries.
const ORDER_LINES: u32 = 100;
const ORDER_FULFILLMENT_ORDERS: u32 = 3;
/// Requested cost of the fulfillment orders of one order, with their lines.
const ORDER_FULFILLMENT_ORDERS_COST: u32 = 2 + ORDER_FULFILLMENT_ORDERS * (1 + 2 + ORDER_LINES * 2);

/// Requested cost of [`ORDER_QUERY`]: the order, its address, shipping line,
/// lines and fulfillment orders.
const ORDER_QUERY_COST: u32 = 1 + 1 + (2 + 1) + (2 + ORDER_LINES) + ORDER_FULFILLMENT_ORDERS_COST;
/// Requested cost of [`ORDER_FULFILLMENT_ORDERS_QUERY`].
const ORDER_FULFILLMENT_ORDERS_QUERY_COST: u32 = 1 + ORDER_FULFILLMENT_ORDERS_COST;

/// Fulfillments asked for first, and then, when an order has that many,
/// all that one query may ask for.
const FULFILLMENTS_FIRST: u32 = 10;
const FULFILLMENTS_MAX: u32 = 160;
/// Tracking entries read per fulfillment (we push one).
const FULFILLMENT_TRACKING: u32 = 5;
/// Requested cost of [`ORDER_FULFILLMENTS_QUERY`] for `first` fulfillments:
/// the order, and per fulfillment the object and its tracking entries.
const fn order_fulfillments_cost(first: u32) -> u32 {
    1 + first * (1 + FULFILLMENT_TRACKING)
}

const _: () = assert!(2 + MAX_PAGE_SIZE * ORDER_NODE_COST <= MAX_QUERY_COST);
const _: () = assert!(FULFILLMENTS_FIRST < FULFILLMENTS_MAX);
const _: () = assert!(order_fulfillments_cost(FULFILLMENTS_MAX) <= MAX_QUERY_COST);
const _: () = assert!(ORDER_QUERY_COST <= MAX_QUERY_COST);
const _: () = assert!(ORDER_FULFILLMENT_ORDERS_QUERY_COST <= MAX_QUERY_COST);

const ORDERS_PAGE_QUERY: &str = r#"query OrdersPage($first: Int!, $after: String, $query: String) {
  orders(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {
    pageInfo { hasNextPage endCursor }
    nodes {
      id
      name
      createdAt
      updatedAt
      cancelledAt
      shippingAddress { name firstName lastName company address1 address2 city province provinceCode zip country countryCodeV2 phone latitude longitude }
      shippingLines(first: 1) { nodes { title code } }
      lineItems(first: 5) {
        pageInfo { hasNextPage }
        nodes { id sku name quantity currentQuantity requiresShipping }
      }
      fulfillmentOrders(first: 2) {
        pageInfo { hasNextPage }
        nodes {
          id
          status
          lineItems(first: 5) {
            pageInfo { hasNextPage }
            nodes { id totalQuantity remainingQuantity lineItem { id } }
          }
        }
      }
    }
  }
}"#;

/// One order with room for its lines and fulfillment orders, for the orders
/// whose page node was cut short. Requested cost: 1 + 1 + 3 + (2 + 100) +
/// (2 + 3 * (1 + 2 + 100 * 2)) = 718.
const ORDER_QUERY: &str = r#"query Order($id: ID!) {
  order(id: $id) {
    id
    name
    createdAt
    updatedAt
    cancelledAt
    shippingAddress { name firstName lastName company address1 address2 city province provinceCode zip country countryCodeV2 phone latitude longitude }
    shippingLines(first: 1) { nodes { title code } }
    lineItems(first: 100) {
      pageInfo { hasNextPage }
      nodes { id sku name quantity currentQuantity requiresShipping }
    }
    fulfillmentOrders(first: 3) {
      pageInfo { hasNextPage }
      nodes {
        id
        status
        lineItems(first: 100) {
          pageInfo { hasNextPage }
          nodes { id totalQuantity remainingQuantity lineItem { id } }
        }
      }
    }
  }
}"#;

/// What is left to fulfil on an order, line by line. Requested cost:
/// 1 + 2 + 3 * (1 + 2 + 100 * 2) = 612.
const ORDER_FULFILLMENT_ORDERS_QUERY: &str = r#"query OrderFulfillmentOrders($id: ID!) {
  order(id: $id) {
    id
    fulfillmentOrders(first: 3) {
      pageInfo { hasNextPage }
      nodes {
        id
        status
        lineItems(first: 100) {
          pageInfo { hasNextPage }
          nodes { id totalQuantity remainingQuantity lineItem { id } }
        }
      }
    }
  }
}"#;

/// The fulfillments an order already holds, with their tracking numbers.
/// Requested cost: 1 + first * (1 + 5), at most 961.
const ORDER_FULFILLMENTS_QUERY: &str = r#"query OrderFulfillments($id: ID!, $first: Int!) {
  order(id: $id) {
    id
    fulfillments(first: $first) {
      id
      status
      trackingInfo(first: 5) { number }
    }
  }
}"#;

const FULFILLMENT_CREATE_MUTATION: &str = r#"mutation fulfillmentCreate($fulfillment: FulfillmentInput!) {
  fulfillmentCreate(fulfillment: $fulfillment) {
    fulfillment { id status }
    userErrors { field message }
  }
}"#;

static DOCUMENTS: [(&str, &str); 5] = [
    ("OrdersPage", ORDERS_PAGE_QUERY),
    ("Order", ORDER_QUERY),
    ("OrderFulfillmentOrders", ORDER_FULFILLMENT_ORDERS_QUERY),
    ("OrderFulfillments", ORDER_FULFILLMENTS_QUERY),
    ("fulfillmentCreate", FULFILLMENT_CREATE_MUTATION),
];

/// A Shopify shop's Admin GraphQL API.
pub struct ShopifyClient {
    http: reqwest::Client,
    endpoint: url::Url,
    token: SecretString,
}

impl fmt::Debug for ShopifyClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShopifyClient")
            .field("endpoint", &self.endpoint.as_str())
            .field("token", &"[REDACTED]")
            .finish()
    }
}

impl ShopifyClient {
    /// `base_url` is the shop's origin, e.g. "https://my-shop.myshopify.com" or "http://127.0.0.1:8090";
    /// requests go to `{base_url}/admin/api/2025-01/graphql.json` with header `X-Shopify-Access-Token`.
    pub fn new(
        base_url: &str,
        access_token: SecretString,
        timeout: Duration,
    ) -> Result<Self, ApiError> {
        let invalid = |why: String| ApiError::new(API, ErrorClass::Permanent, why);
        let base = url::Url::parse(base_url)
            .map_err(|e| invalid(format!("invalid Shopify base URL {base_url:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "invalid Shopify base URL {base_url:?}: not http(s)"
            )));
        }
        let endpoint = url::Url::parse(&format!(
            "{}/admin/api/{API_VERSION}/graphql.json",
            base.as_str().trim_end_matches('/')
        ))
        .map_err(|e| invalid(format!("invalid Shopify base URL {base_url:?}: {e}")))?;
        if access_token.expose_secret().is_empty()
            || HeaderValue::from_str(access_token.expose_secret()).is_err()
        {
            return Err(invalid(
                "the Shopify access token is empty or has characters not allowed in an HTTP header"
                    .to_string(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("conveyor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(ShopifyClient {
            http,
            endpoint,
            token: access_token,
        })
    }

    /// The GraphQL documents this client sends, for schema validation tests.
    pub fn documents() -> &'static [(&'static str, &'static str)] {
        &DOCUMENTS
    }

    /// Sends one GraphQL operation and returns its `data`, or the classified
    /// failure.
    async fn graphql(
        &self,
        document: &str,
        variables: Value,
        idempotent: bool,
    ) -> Result<Value, ApiError> {
        let mut token = HeaderValue::from_str(self.token.expose_secret()).map_err(|_| {
            ApiError::new(
                API,
                ErrorClass::Permanent,
                "the access token has characters not allowed in an HTTP header",
            )
        })?;
        token.set_sensitive(true);
        let response = self
            .http
            .post(self.endpoint.clone())
            .header("X-Shopify-Access-Token", token)
            .json(&json!({ "query": document, "variables": variables }))
            .send()
            .await
            .map_err(|e| self.redact(ApiError::from_transport(API, &e, idempotent)))?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let body = response
            .bytes()
            .await
            .map_err(|e| self.redact(ApiError::from_transport(API, &e, idempotent)))?;
        read_response(status, retry_after, &body).map_err(|e| self.redact(e))
    }

    /// Defence in depth: no message leaves this adapter with the token in it,
    /// even if a server echoed it back.
    fn redact(&self, mut err: ApiError) -> ApiError {
        let token = self.token.expose_secret();
        if !token.is_empty() && err.message.contains(token) {
            err.message = err.message.replace(token, "[REDACTED]");
        }
        err
    }

    /// The order again, alone, with room for up to 100 lines.
    async fn fetch_order(&self, id: &str) -> Result<Option<Value>, ApiError> {
        let data = self.graphql(ORDER_QUERY, json!({ "id": id }), true).await?;
        match data.get("order") {
            Some(Value::Null) | None => Ok(None),
            Some(order) => Ok(Some(order.clone())),
        }
    }

    /// The order's fulfillment order lines as they are now.
    async fn fulfillment_order_lines(&self, order_id: &str) -> Result<FoLines, ApiError> {
        let data = self
            .graphql(
                ORDER_FULFILLMENT_ORDERS_QUERY,
                json!({ "id": order_id }),
                true,
            )
            .await?;
        let order = data.get("order").filter(|o| !o.is_null()).ok_or_else(|| {
            ApiError::new(
                API,
                ErrorClass::Permanent,
                format!("order {order_id} was not found"),
            )
        })?;
        Ok(FoLines::parse(order))
    }

    /// Where each requested line goes: the fulfillment order line items, with
    /// lines that have nothing left to fulfil set apart.
    async fn targets(&self, request: &FulfillmentRequest) -> Result<Targets, ApiError> {
        let mut targets = Targets::default();
        let mut unresolved = Vec::new();
        for line in request.lines.iter().filter(|l| l.quantity > 0) {
            match line
                .fulfillment_ref
                .as_ref()
                .and_then(FulfillmentRef::parse)
            {
                Some(r) => targets.push(r, line.quantity, &line.line_external_id),
                None => unresolved.push(line),
            }
        }
        if !unresolved.is_empty() {
            let current = self
                .fulfillment_order_lines(&request.order_external_id)
                .await?;
            for line in unresolved {
                if let Some(r) = current.open_ref(&line.line_external_id) {
                    targets.push(r, line.quantity, &line.line_external_id);
                } else if current.knows(&line.line_external_id) {
                    targets.done.push(line.line_external_id.clone());
                } else {
                    return Err(ApiError::new(
                        API,
                        ErrorClass::Permanent,
                        format!(
                            "line {} of order {} is in none of the order's fulfillment orders",
                            line.line_external_id, request.order_external_id
                        ),
                    ));
                }
            }
        }
        Ok(targets)
    }
}

#[async_trait]
impl ChannelApi for ShopifyClient {
    async fn orders_page(
        &self,
        updated_since: DateTime<Utc>,
        after: Option<&str>,
        page_size: u32,
    ) -> Result<OrdersPage, ApiError> {
        let variables = json!({
            "first": page_size.clamp(1, MAX_PAGE_SIZE),
            "after": after,
            "query": updated_since_filter(updated_since),
        });
        let data = self.graphql(ORDERS_PAGE_QUERY, variables, true).await?;
        let (nodes, next_page) = read_orders_connection(&data)?;
        let mut page = OrdersPage {
            next_page,
            ..OrdersPage::default()
        };
        for node in nodes {
            match parse_order(node) {
                Ok(order) => page.orders.push(order),
                Err(Reject::Malformed(reason)) => page.rejected.push(rejected(node, reason)),
                Err(Reject::Truncated) => {
                    // Checked by parse_order: a truncated node has an id.
                    let id = node.get("id").and_then(Value::as_str).unwrap_or_default();
                    match self.fetch_order(id).await? {
                        None => page.rejected.push(rejected(
                            node,
                            "the order disappeared before its remaining lines could be read"
                                .to_string(),
                        )),
                        Some(full) => match parse_order(&full) {
                            Ok(order) => page.orders.push(order),
                            Err(Reject::Malformed(reason)) => {
                                page.rejected.push(rejected(&full, reason))
                            }
                            Err(Reject::Truncated) => page.rejected.push(rejected(
                                &full,
                                format!(
                                    "the order has more than {ORDER_LINES} lines (or fulfillment \
                                     order lines) or more than {ORDER_FULFILLMENT_ORDERS} \
                                     fulfillment orders, more than one query can read"
                                ),
                            )),
                        },
                    }
                }
            }
        }
        Ok(page)
    }

    async fn create_fulfillment(
        &self,
        request: &FulfillmentRequest,
    ) -> Result<FulfillmentOutcome, ApiError> {
        let targets = self.targets(request).await?;
        if targets.lines.is_empty() {
            if targets.done.is_empty() {
                return Err(ApiError::new(
                    API,
                    ErrorClass::Permanent,
                    format!(
                        "fulfillment for order {} has no units to fulfil",
                        request.order_external_id
                    ),
                ));
            }
            return Ok(FulfillmentOutcome::AlreadyFulfilled);
        }
        let mut tracking = serde_json::Map::new();
        tracking.insert("company".into(), json!(request.carrier));
        tracking.insert("number".into(), json!(request.tracking_number));
        if let Some(url) = &request.tracking_url {
            tracking.insert("url".into(), json!(url));
        }
        let variables = json!({
            "fulfillment": {
                "lineItemsByFulfillmentOrder": targets.by_fulfillment_order(),
                "trackingInfo": tracking,
                "notifyCustomer": request.notify_customer,
            }
        });
        let data = self
            .graphql(FULFILLMENT_CREATE_MUTATION, variables, false)
            .await?;
        let payload = data
            .get("fulfillmentCreate")
            .filter(|p| p.is_object())
            .ok_or_else(|| shape_error("data.fulfillmentCreate is missing"))?;
        let user_errors = user_errors(payload);
        if !user_errors.is_empty() {
            let messages = user_errors.join("; ");
            if user_errors.iter().any(|m| says_nothing_left(m)) {
                let current = self
                    .fulfillment_order_lines(&request.order_external_id)
                    .await?;
                let left: u64 = targets
                    .lines
                    .iter()
                    .map(|t| current.remaining_for_line(&t.line_external_id))
                    .sum();
                if left == 0 {
                    return Ok(FulfillmentOutcome::AlreadyFulfilled);
                }
                return Err(ApiError::new(
                    API,
                    ErrorClass::Permanent,
                    format!(
                        "fulfillment rejected for order {}: {messages} (yet {left} of the \
                         requested lines' units are still unfulfilled)",
                        request.order_external_id
                    ),
                )
                .with_code("USER_ERROR"));
            }
            return Err(ApiError::new(
                API,
                ErrorClass::Permanent,
                format!(
                    "fulfillment rejected for order {}: {messages}",
                    request.order_external_id
                ),
            )
            .with_code("USER_ERROR"));
        }
        let fulfillment_id = payload
            .get("fulfillment")
            .and_then(|f| f.get("id"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                shape_error("fulfillmentCreate returned neither a fulfillment nor userErrors")
            })?;
        Ok(FulfillmentOutcome::Created {
            fulfillment_id: fulfillment_id.to_string(),
        })
    }

    async fn fulfillments(
        &self,
        order_external_id: &str,
    ) -> Result<Vec<ChannelFulfillment>, ApiError> {
        // Orders have a handful of fulfillments: ask for a few, and only
        // when that many came back, for as many as one query may.
        for first in [FULFILLMENTS_FIRST, FULFILLMENTS_MAX] {
            let variables = json!({ "id": order_external_id, "first": first });
            let data = self
                .graphql(ORDER_FULFILLMENTS_QUERY, variables, true)
                .await?;
            let order = data.get("order").filter(|o| !o.is_null()).ok_or_else(|| {
                ApiError::new(
                    API,
                    ErrorClass::Permanent,
                    format!("order {order_external_id} was not found"),
                )
            })?;
            let list = order
                .get("fulfillments")
                .and_then(Value::as_array)
                .ok_or_else(|| shape_error("data.order.fulfillments is missing"))?;
            if list.len() < first as usize {
                return Ok(parse_fulfillments(list));
            }
        }
        Err(ApiError::new(
            API,
            ErrorClass::Permanent,
            format!(
                "order {order_external_id} has {FULFILLMENTS_MAX} fulfillments or more, \
                 more than one query can read"
            ),
        ))
    }
}

/// The fulfillments that stand (not cancelled or failed), with the tracking
/// numbers they carry.
fn parse_fulfillments(list: &[Value]) -> Vec<ChannelFulfillment> {
    list.iter()
        .filter(|f| !matches!(text(f, "status"), Some("CANCELLED" | "ERROR" | "FAILURE")))
        .filter_map(|f| {
            Some(ChannelFulfillment {
                fulfillment_id: text(f, "id")?.to_string(),
                tracking_numbers: f
                    .get("trackingInfo")
                    .and_then(Value::as_array)
                    .map(|infos| {
                        infos
                            .iter()
                            .filter_map(|i| text(i, "number"))
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// `updated_at:>='2025-01-02T03:04:05Z'`. Whole seconds, rounded down, so the
/// filter never skips an order updated within the starting second.
fn updated_since_filter(since: DateTime<Utc>) -> String {
    format!(
        "updated_at:>='{}'",
        since.to_rfc3339_opts(SecondsFormat::Secs, true)
    )
}

/// Seconds (`"2"`, `"2.0"`) or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

fn shape_error(what: &str) -> ApiError {
    ApiError::new(
        API,
        ErrorClass::Permanent,
        format!("unexpected response shape: {what}"),
    )
}

/// Turns one HTTP answer into the GraphQL `data` object or a classified error.
fn read_response(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<Value, ApiError> {
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    if !(200..300).contains(&status) {
        let detail = match &parsed {
            Ok(v) => error_summary(v.get("errors").unwrap_or(v)),
            Err(_) => format!("body is not JSON: {}", excerpt(body)),
        };
        if status == 401 || status == 403 {
            return Err(ApiError::new(
                API,
                ErrorClass::Permanent,
                format!("Shopify refused the credentials (HTTP {status}): {detail}"),
            )
            .with_status(status));
        }
        return Err(ApiError::from_status(
            API,
            status,
            retry_after,
            format!("HTTP {status}: {detail}"),
        ));
    }
    // A success we cannot read (truncated, or a proxy's page) says nothing
    // about the request itself: tried again later. A mutation it answered
    // is safe to repeat: commit reads the order's fulfillments first.
    let body_json = parsed.map_err(|e| {
        ApiError::new(
            API,
            ErrorClass::Retryable,
            format!(
                "HTTP {status} response is not JSON ({e}): {}",
                excerpt(body)
            ),
        )
        .with_status(status)
    })?;
    if let Some(errors) = body_json.get("errors").filter(|e| has_errors(e)) {
        return Err(graphql_errors(errors, &body_json).with_status(status));
    }
    match body_json.get("data") {
        Some(data) if data.is_object() => Ok(data.clone()),
        _ => Err(shape_error("no `data` object in the response").with_status(status)),
    }
}

fn has_errors(errors: &Value) -> bool {
    match errors {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::String(s) => !s.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

/// Classifies top-level GraphQL `errors`.
fn graphql_errors(errors: &Value, body: &Value) -> ApiError {
    let codes: Vec<&str> = match errors {
        Value::Array(list) => list
            .iter()
            .filter_map(|e| e.pointer("/extensions/code").and_then(Value::as_str))
            .collect(),
        _ => Vec::new(),
    };
    let summary = error_summary(errors);
    if codes.contains(&"THROTTLED") {
        return ApiError::new(
            API,
            ErrorClass::RateLimited {
                retry_after: throttle_wait(body),
            },
            format!("throttled: {summary}"),
        )
        .with_code("THROTTLED");
    }
    let (class, code) = if codes.contains(&"INTERNAL_SERVER_ERROR") {
        (ErrorClass::Retryable, Some("INTERNAL_SERVER_ERROR"))
    } else {
        (ErrorClass::Permanent, codes.first().copied())
    };
    let err = ApiError::new(API, class, format!("GraphQL error: {summary}"));
    match code {
        Some(code) => err.with_code(code),
        None => err,
    }
}

/// How long until the bucket holds the query's requested cost again:
/// `(requestedQueryCost - currentlyAvailable) / restoreRate` seconds.
fn throttle_wait(body: &Value) -> Option<Duration> {
    let cost = body.pointer("/extensions/cost")?;
    let status = cost.get("throttleStatus")?;
    let available = status.get("currentlyAvailable")?.as_f64()?;
    let rate = status.get("restoreRate")?.as_f64()?;
    let requested = cost
        .get("requestedQueryCost")
        .or_else(|| status.get("requestedQueryCost"))?
        .as_f64()?;
    if !rate.is_finite() || rate <= 0.0 || !requested.is_finite() || !available.is_finite() {
        return None;
    }
    let deficit = requested - available;
    if deficit <= 0.0 {
        return Some(Duration::from_secs(1));
    }
    Some(Duration::from_millis(
        (deficit / rate * 1000.0).ceil() as u64
    ))
}

/// A short human summary of GraphQL or REST-style `errors`.
fn error_summary(errors: &Value) -> String {
    let text = match errors {
        Value::String(s) => s.clone(),
        Value::Array(list) => list
            .iter()
            .map(|e| {
                let message = e
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string());
                match e.pointer("/extensions/code").and_then(Value::as_str) {
                    Some(code) => format!("{code}: {message}"),
                    None => message,
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
        Value::Object(o) if o.is_empty() => "no error detail".to_string(),
        other => other.to_string(),
    };
    truncate(&text, 500)
}

fn excerpt(body: &[u8]) -> String {
    if body.is_empty() {
        return "(empty body)".to_string();
    }
    let text = String::from_utf8_lossy(body);
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    truncate(flat.trim(), 200)
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// `data.orders`: its nodes and the cursor of the next page.
fn read_orders_connection(data: &Value) -> Result<(&Vec<Value>, Option<String>), ApiError> {
    let orders = data
        .get("orders")
        .filter(|o| o.is_object())
        .ok_or_else(|| shape_error("data.orders is missing"))?;
    let nodes = orders
        .get("nodes")
        .and_then(Value::as_array)
        .ok_or_else(|| shape_error("data.orders.nodes is missing"))?;
    let page_info = orders
        .get("pageInfo")
        .ok_or_else(|| shape_error("data.orders.pageInfo is missing"))?;
    let has_next = page_info
        .get("hasNextPage")
        .and_then(Value::as_bool)
        .ok_or_else(|| shape_error("data.orders.pageInfo.hasNextPage is missing"))?;
    let next_page = if has_next {
        let cursor = page_info
            .get("endCursor")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| shape_error("hasNextPage is true but endCursor is missing"))?;
        Some(cursor.to_string())
    } else {
        None
    };
    Ok((nodes, next_page))
}

enum Reject {
    /// The node cannot be used; the reason says why.
    Malformed(String),
    /// The node is fine so far but some of its lines or fulfillment orders
    /// did not fit in the query.
    Truncated,
}

fn rejected(node: &Value, reason: String) -> RejectedOrder {
    RejectedOrder {
        external_id: node.get("id").and_then(Value::as_str).map(str::to_string),
        updated_at: node
            .get("updatedAt")
            .and_then(Value::as_str)
            .and_then(|s| parse_time(s).ok()),
        reason,
        raw: node.clone(),
    }
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc))
}

/// A string field, `None` when absent, null or blank.
fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn has_next_page(connection: Option<&Value>) -> bool {
    connection
        .and_then(|c| c.pointer("/pageInfo/hasNextPage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Parses one order node; every problem is a reason, never a panic or an
/// error for the whole page.
fn parse_order(node: &Value) -> Result<ChannelOrder, Reject> {
    let bad = |why: String| Reject::Malformed(why);
    if !node.is_object() {
        return Err(bad("the order node is not an object".into()));
    }
    let external_id = text(node, "id").ok_or_else(|| bad("the order has no id".into()))?;
    let name = text(node, "name").ok_or_else(|| bad("the order has no name".into()))?;
    let time = |key: &str, required: bool| -> Result<Option<DateTime<Utc>>, Reject> {
        match node.get(key) {
            None | Some(Value::Null) if !required => Ok(None),
            Some(Value::String(s)) => parse_time(s)
                .map(Some)
                .map_err(|e| bad(format!("{key} {s:?} is not an RFC 3339 time: {e}"))),
            _ => Err(bad(format!("{key} is missing or not a string"))),
        }
    };
    time("createdAt", true)?;
    let updated_at = time("updatedAt", true)?.ok_or_else(|| bad("updatedAt is missing".into()))?;
    let cancelled_at = time("cancelledAt", false)?;

    let ship_to = parse_address(node.get("shippingAddress").unwrap_or(&Value::Null))
        .map_err(Reject::Malformed)?;

    let shipping_title = node
        .pointer("/shippingLines/nodes")
        .and_then(Value::as_array)
        .and_then(|lines| lines.iter().find_map(|l| text(l, "title")))
        .unwrap_or_default()
        .to_string();

    let line_items = node.get("lineItems");
    let line_nodes = line_items
        .and_then(|l| l.get("nodes"))
        .and_then(Value::as_array)
        .ok_or_else(|| bad("lineItems.nodes is missing".into()))?;
    let fulfillment_orders = node.get("fulfillmentOrders");
    let fo_lines = FoLines::parse(node);

    let mut lines = Vec::new();
    for (i, item) in line_nodes.iter().enumerate() {
        let id = text(item, "id").ok_or_else(|| bad(format!("line {} has no id", i + 1)))?;
        let item_name = text(item, "name").unwrap_or_default();
        if item.get("requiresShipping").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let quantity = item.get("quantity").and_then(Value::as_i64);
        match quantity {
            Some(q) if q >= 1 => {}
            Some(q) => return Err(bad(format!("line {id} ({item_name}) has quantity {q}"))),
            None => return Err(bad(format!("line {id} ({item_name}) has no quantity"))),
        }
        let current = match item.get("currentQuantity") {
            None | Some(Value::Null) => quantity.unwrap_or_default(),
            Some(v) => v
                .as_i64()
                .filter(|q| *q >= 0)
                .ok_or_else(|| bad(format!("line {id} has an invalid currentQuantity {v}")))?,
        };
        if current == 0 {
            // Removed by an order edit or refunded before shipping.
            continue;
        }
        let sku =
            text(item, "sku").ok_or_else(|| bad(format!("line {id} ({item_name}) has no SKU")))?;
        let quantity = u32::try_from(current)
            .map_err(|_| bad(format!("line {id} has an impossible quantity {current}")))?;
        lines.push(ChannelLine {
            external_id: id.to_string(),
            sku: sku.to_string(),
            name: item_name.to_string(),
            quantity,
            fulfillment_ref: fo_lines.open_ref(id).map(|r| r.to_json()),
        });
    }
    if has_next_page(line_items) || has_next_page(fulfillment_orders) || fo_lines.truncated {
        return Err(Reject::Truncated);
    }
    if lines.is_empty() && cancelled_at.is_none() {
        return Err(bad("the order has no lines that need shipping".into()));
    }
    Ok(ChannelOrder {
        external_id: external_id.to_string(),
        name: name.to_string(),
        updated_at,
        cancelled_at,
        shipping_title,
        ship_to,
        lines,
        raw: node.clone(),
    })
}

fn parse_address(a: &Value) -> Result<Address, String> {
    if !a.is_object() {
        return Err("the order has no shipping address".into());
    }
    let name = text(a, "name").map(str::to_string).unwrap_or_else(|| {
        [text(a, "firstName"), text(a, "lastName")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ")
    });
    let company = text(a, "company").map(str::to_string);
    if name.is_empty() && company.is_none() {
        return Err("the shipping address has no name".into());
    }
    let street1 = text(a, "address1").ok_or("the shipping address has no address1")?;
    let city = text(a, "city").ok_or("the shipping address has no city")?;
    let country = text(a, "countryCodeV2").ok_or("the shipping address has no countryCodeV2")?;
    let coordinate = |key: &str| a.get(key).and_then(Value::as_f64);
    Ok(Address {
        name,
        company,
        street1: street1.to_string(),
        street2: text(a, "address2").map(str::to_string),
        city: city.to_string(),
        // Countries without provinces (and without postal codes) leave these empty.
        state: text(a, "provinceCode").unwrap_or_default().to_string(),
        zip: text(a, "zip").unwrap_or_default().to_string(),
        country: country.to_string(),
        phone: text(a, "phone").map(str::to_string),
        latitude: coordinate("latitude"),
        longitude: coordinate("longitude"),
    })
}

/// Where a line is fulfilled from: opaque to everything but this adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FulfillmentRef {
    fulfillment_order_id: String,
    line_item_id: String,
}

impl FulfillmentRef {
    fn parse(v: &Value) -> Option<FulfillmentRef> {
        Some(FulfillmentRef {
            fulfillment_order_id: text(v, "fulfillmentOrderId")?.to_string(),
            line_item_id: text(v, "fulfillmentOrderLineItemId")?.to_string(),
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "fulfillmentOrderId": self.fulfillment_order_id,
            "fulfillmentOrderLineItemId": self.line_item_id,
        })
    }
}

/// One fulfillment order line item.
#[derive(Debug, Clone)]
struct FoLine {
    fulfillment_order_id: String,
    status: String,
    id: String,
    /// The order's line item this is a part of.
    line_item_id: String,
    remaining: u64,
}

/// An order's fulfillment order lines, as far as they were read.
#[derive(Debug, Default)]
struct FoLines {
    lines: Vec<FoLine>,
    truncated: bool,
}

impl FoLines {
    /// Reads `fulfillmentOrders` from an order node, skipping entries that
    /// cannot be used (a line without a reference is resolved again when it
    /// is fulfilled).
    fn parse(order: &Value) -> FoLines {
        let mut out = FoLines::default();
        let Some(nodes) = order
            .pointer("/fulfillmentOrders/nodes")
            .and_then(Value::as_array)
        else {
            return out;
        };
        for fo in nodes {
            let (Some(fo_id), Some(status)) = (text(fo, "id"), text(fo, "status")) else {
                continue;
            };
            out.truncated |= has_next_page(fo.get("lineItems"));
            let Some(items) = fo.pointer("/lineItems/nodes").and_then(Value::as_array) else {
                continue;
            };
            for item in items {
                let (Some(id), Some(line_item_id), Some(remaining)) = (
                    text(item, "id"),
                    item.get("lineItem").and_then(|l| text(l, "id")),
                    item.get("remainingQuantity").and_then(Value::as_u64),
                ) else {
                    continue;
                };
                out.lines.push(FoLine {
                    fulfillment_order_id: fo_id.to_string(),
                    status: status.to_string(),
                    id: id.to_string(),
                    line_item_id: line_item_id.to_string(),
                    remaining,
                });
            }
        }
        out
    }

    fn is_fulfillable(status: &str) -> bool {
        matches!(status, "OPEN" | "IN_PROGRESS")
    }

    /// The open fulfillment order line of `line_item_id` with units left,
    /// preferring OPEN fulfillment orders, then the most units left.
    fn open_ref(&self, line_item_id: &str) -> Option<FulfillmentRef> {
        self.lines
            .iter()
            .filter(|l| {
                l.line_item_id == line_item_id && l.remaining > 0 && Self::is_fulfillable(&l.status)
            })
            .max_by_key(|l| (l.status == "OPEN", l.remaining))
            .map(|l| FulfillmentRef {
                fulfillment_order_id: l.fulfillment_order_id.clone(),
                line_item_id: l.id.clone(),
            })
    }

    fn knows(&self, line_item_id: &str) -> bool {
        self.lines.iter().any(|l| l.line_item_id == line_item_id)
    }

    /// Units of the order line still to fulfil, across the fulfillment orders
    /// that are not closed or cancelled.
    fn remaining_for_line(&self, line_item_id: &str) -> u64 {
        self.lines
            .iter()
            .filter(|l| {
                l.line_item_id == line_item_id
                    && !matches!(l.status.as_str(), "CLOSED" | "CANCELLED")
            })
            .map(|l| l.remaining)
            .sum()
    }
}

#[derive(Debug)]
struct Target {
    fulfillment_ref: FulfillmentRef,
    quantity: u32,
    line_external_id: String,
}

#[derive(Debug, Default)]
struct Targets {
    lines: Vec<Target>,
    /// Order lines that have nothing left to fulfil.
    done: Vec<String>,
}

impl Targets {
    fn push(&mut self, fulfillment_ref: FulfillmentRef, quantity: u32, line_external_id: &str) {
        self.lines.push(Target {
            fulfillment_ref,
            quantity,
            line_external_id: line_external_id.to_string(),
        });
    }

    /// `lineItemsByFulfillmentOrder`: one entry per fulfillment order, in the
    /// order first seen, each line item once with its units summed.
    fn by_fulfillment_order(&self) -> Value {
        let mut groups: Vec<(&str, Vec<(&str, u32)>)> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for t in &self.lines {
            let fo = t.fulfillment_ref.fulfillment_order_id.as_str();
            let i = *index.entry(fo).or_insert_with(|| {
                groups.push((fo, Vec::new()));
                groups.len() - 1
            });
            let items = &mut groups[i].1;
            let id = t.fulfillment_ref.line_item_id.as_str();
            match items.iter_mut().find(|(existing, _)| *existing == id) {
                Some((_, q)) => *q += t.quantity,
                None => items.push((id, t.quantity)),
            }
        }
        Value::Array(
            groups
                .into_iter()
                .map(|(fo, items)| {
                    json!({
                        "fulfillmentOrderId": fo,
                        "fulfillmentOrderLineItems": items
                            .into_iter()
                            .map(|(id, quantity)| json!({ "id": id, "quantity": quantity }))
                            .collect::<Vec<_>>(),
                    })
                })
                .collect(),
        )
    }
}

fn user_errors(payload: &Value) -> Vec<String> {
    payload
        .get("userErrors")
        .and_then(Value::as_array)
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    let message = e
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("(no message)");
                    match e.get("field").and_then(Value::as_array) {
                        Some(field) if !field.is_empty() => {
                            let path: Vec<&str> = field.iter().filter_map(Value::as_str).collect();
                            format!("{} ({})", message, path.join("."))
                        }
                        _ => message.to_string(),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A userError that may mean the units were fulfilled already (by an
/// earlier attempt of ours or by hand). Only a look at the fulfillment
/// orders decides.
fn says_nothing_left(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("fulfilled")
        || m.contains("invalid fulfillment order line item quantity")
        || m.contains("unfulfillable")
        || (m.contains("quantity")
            && (m.contains("available") || m.contains("exceed") || m.contains("remaining")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Value {
        json!({
            "id": "gid://shopify/Order/1",
            "name": "#1001",
            "createdAt": "2025-01-02T03:04:05Z",
            "updatedAt": "2025-01-02T04:00:00Z",
            "cancelledAt": null,
            "shippingAddress": {
                "name": "Ada Lovelace", "firstName": "Ada", "lastName": "Lovelace",
                "company": null, "address1": "1 Main St", "address2": "",
                "city": "Albany", "province": "New York", "provinceCode": "NY",
                "zip": "12207", "country": "United States", "countryCodeV2": "US",
                "phone": null, "latitude": 42.65, "longitude": -73.75
            },
            "shippingLines": { "nodes": [{ "title": "Standard", "code": "STD" }] },
            "lineItems": {
                "pageInfo": { "hasNextPage": false },
                "nodes": [
                    { "id": "gid://shopify/LineItem/7", "sku": "MUG-1", "name": "Mug",
                      "quantity": 2, "currentQuantity": 2, "requiresShipping": true }
                ]
            },
            "fulfillmentOrders": {
                "pageInfo": { "hasNextPage": false },
                "nodes": [
                    { "id": "gid://shopify/FulfillmentOrder/9", "status": "CLOSED",
                      "lineItems": { "pageInfo": { "hasNextPage": false }, "nodes": [
                        { "id": "gid://shopify/FulfillmentOrderLineItem/10", "totalQuantity": 2,
                          "remainingQuantity": 0, "lineItem": { "id": "gid://shopify/LineItem/7" } }
                      ] } },
                    { "id": "gid://shopify/FulfillmentOrder/11", "status": "OPEN",
                      "lineItems": { "pageInfo": { "hasNextPage": false }, "nodes": [
                        { "id": "gid://shopify/FulfillmentOrderLineItem/12", "totalQuantity": 2,
                          "remainingQuantity": 2, "lineItem": { "id": "gid://shopify/LineItem/7" } }
                      ] } }
                ]
            }
        })
    }

    fn reason(node: &Value) -> String {
        match parse_order(node) {
            Err(Reject::Malformed(r)) => r,
            Err(Reject::Truncated) => "truncated".into(),
            Ok(_) => "parsed".into(),
        }
    }

    #[test]
    fn a_good_node_parses_into_an_order_with_its_open_fulfillment_order_line() {
        let Ok(order) = parse_order(&node()) else {
            panic!("the node should parse")
        };
        assert_eq!(order.external_id, "gid://shopify/Order/1");
        assert_eq!(order.name, "#1001");
        assert_eq!(order.shipping_title, "Standard");
        assert_eq!(order.ship_to.state, "NY");
        assert_eq!(order.ship_to.country, "US");
        assert_eq!(order.ship_to.street1, "1 Main St");
        assert_eq!(order.ship_to.street2, None);
        assert_eq!(order.ship_to.coordinates(), Some((42.65, -73.75)));
        assert_eq!(order.lines.len(), 1);
        assert_eq!(order.lines[0].quantity, 2);
        assert_eq!(
            order.lines[0].fulfillment_ref,
            Some(json!({
                "fulfillmentOrderId": "gid://shopify/FulfillmentOrder/11",
                "fulfillmentOrderLineItemId": "gid://shopify/FulfillmentOrderLineItem/12",
            }))
        );
        assert_eq!(order.raw, node());
    }

    #[test]
    fn malformed_nodes_are_rejected_with_the_reason() {
        let mut n = node();
        n["id"] = Value::Null;
        assert_eq!(reason(&n), "the order has no id");

        let mut n = node();
        n["shippingAddress"] = Value::Null;
        assert_eq!(reason(&n), "the order has no shipping address");

        let mut n = node();
        n["lineItems"]["nodes"][0]["sku"] = Value::Null;
        assert!(reason(&n).contains("has no SKU"), "{}", reason(&n));

        let mut n = node();
        n["lineItems"]["nodes"][0]["quantity"] = json!(0);
        assert!(reason(&n).contains("quantity 0"), "{}", reason(&n));

        let mut n = node();
        n["updatedAt"] = json!("yesterday");
        assert!(reason(&n).contains("updatedAt"), "{}", reason(&n));
    }

    #[test]
    fn lines_that_need_no_shipping_or_were_removed_are_left_out() {
        let mut n = node();
        let lines = n["lineItems"]["nodes"].as_array_mut().unwrap();
        lines.push(
            json!({ "id": "gid://shopify/LineItem/8", "sku": null, "name": "Gift card",
            "quantity": 1, "currentQuantity": 1, "requiresShipping": false }),
        );
        lines.push(
            json!({ "id": "gid://shopify/LineItem/9", "sku": "X", "name": "Removed",
            "quantity": 1, "currentQuantity": 0, "requiresShipping": true }),
        );
        let Ok(order) = parse_order(&n) else {
            panic!("should parse")
        };
        assert_eq!(order.lines.len(), 1);
    }

    #[test]
    fn a_node_with_more_lines_than_the_query_read_is_truncated() {
        let mut n = node();
        n["lineItems"]["pageInfo"]["hasNextPage"] = json!(true);
        assert_eq!(reason(&n), "truncated");
    }

    #[test]
    fn the_documents_ask_for_the_sizes_their_cost_budget_assumes() {
        assert_eq!(ORDER_NODE_COST, 40);
        assert_eq!(MAX_PAGE_SIZE, 24);
        assert_eq!(ORDER_QUERY_COST, 718);
        assert_eq!(ORDER_FULFILLMENT_ORDERS_QUERY_COST, 612);
        let count = |doc: &str, needle: String| doc.matches(needle.as_str()).count();
        let page = ORDERS_PAGE_QUERY;
        assert_eq!(count(page, "shippingLines(first: 1)".into()), 1);
        assert_eq!(count(page, format!("lineItems(first: {PAGE_LINES})")), 2);
        assert_eq!(
            count(
                page,
                format!("fulfillmentOrders(first: {PAGE_FULFILLMENT_ORDERS})")
            ),
            1
        );
        let lines = format!("lineItems(first: {ORDER_LINES})");
        assert_eq!(count(ORDER_QUERY, lines.clone()), 2);
        assert_eq!(count(ORDER_FULFILLMENT_ORDERS_QUERY, lines), 1);
        for doc in [ORDER_QUERY, ORDER_FULFILLMENT_ORDERS_QUERY] {
            let fulfillment_orders =
                format!("fulfillmentOrders(first: {ORDER_FULFILLMENT_ORDERS})");
            assert_eq!(count(doc, fulfillment_orders), 1);
        }
        assert_eq!(count(ORDER_QUERY, "shippingLines(first: 1)".into()), 1);
        let tracking = format!("trackingInfo(first: {FULFILLMENT_TRACKING})");
        assert_eq!(count(ORDER_FULFILLMENTS_QUERY, tracking), 1);
        assert_eq!(order_fulfillments_cost(FULFILLMENTS_MAX), 961);
    }

    #[test]
    fn fulfillments_that_stand_are_read_with_their_tracking_numbers() {
        let list = json!([
            { "id": "gid://shopify/Fulfillment/1", "status": "SUCCESS",
              "trackingInfo": [{ "number": "9400111" }, { "number": "" }] },
            { "id": "gid://shopify/Fulfillment/2", "status": "CANCELLED",
              "trackingInfo": [{ "number": "9400222" }] },
            { "id": "gid://shopify/Fulfillment/3", "status": "OPEN", "trackingInfo": [] },
            { "status": "SUCCESS", "trackingInfo": [{ "number": "9400444" }] }
        ]);
        let read = parse_fulfillments(list.as_array().unwrap());
        assert_eq!(
            read,
            vec![
                ChannelFulfillment {
                    fulfillment_id: "gid://shopify/Fulfillment/1".into(),
                    tracking_numbers: vec!["9400111".into()],
                },
                ChannelFulfillment {
                    fulfillment_id: "gid://shopify/Fulfillment/3".into(),
                    tracking_numbers: vec![],
                },
            ]
        );
    }

    #[test]
    fn the_updated_at_filter_uses_whole_utc_seconds() {
        let t = parse_time("2025-03-04T05:06:07.890+02:00").unwrap();
        assert_eq!(
            updated_since_filter(t),
            "updated_at:>='2025-03-04T03:06:07Z'"
        );
    }

    #[test]
    fn the_throttle_wait_is_the_missing_points_over_the_restore_rate() {
        let body = json!({ "extensions": { "cost": { "requestedQueryCost": 752,
            "throttleStatus": { "maximumAvailable": 2000.0, "currentlyAvailable": 552, "restoreRate": 100.0 } } } });
        assert_eq!(throttle_wait(&body), Some(Duration::from_secs(2)));
        assert_eq!(throttle_wait(&json!({})), None);
    }

    #[test]
    fn user_errors_about_quantity_or_fulfilled_lines_are_candidates_for_already_fulfilled() {
        assert!(says_nothing_left(
            "Invalid fulfillment order line item quantity requested."
        ));
        assert!(says_nothing_left("Line item has already been fulfilled"));
        assert!(!says_nothing_left("Tracking number is invalid"));
    }

    #[test]
    fn lines_of_one_fulfillment_order_are_grouped_and_summed() {
        let mut t = Targets::default();
        let r = |fo: &str, li: &str| FulfillmentRef {
            fulfillment_order_id: fo.into(),
            line_item_id: li.into(),
        };
        t.push(r("fo1", "a"), 1, "l1");
        t.push(r("fo2", "b"), 2, "l2");
        t.push(r("fo1", "a"), 3, "l1");
        t.push(r("fo1", "c"), 1, "l3");
        assert_eq!(
            t.by_fulfillment_order(),
            json!([
                { "fulfillmentOrderId": "fo1", "fulfillmentOrderLineItems": [
                    { "id": "a", "quantity": 4 }, { "id": "c", "quantity": 1 } ] },
                { "fulfillmentOrderId": "fo2", "fulfillmentOrderLineItems": [
                    { "id": "b", "quantity": 2 } ] },
            ])
        );
    }

    #[test]
    fn retry_after_reads_seconds() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("2.0"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}
