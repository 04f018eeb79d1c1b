//! The Shopify-style Admin GraphQL endpoint (`POST /admin/api/2025-01/graphql.json`):
//! authentication by `X-Shopify-Access-Token`, the root resolvers (`orders`,
//! `order`, `fulfillmentOrder`, `fulfillment`, `node`, `nodes`, and the
//! `fulfillmentCreate` mutation), and Shopify's cost-based throttling with its
//! `extensions.cost` block on every executed response.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use apollo_compiler::resolvers::{FieldError, ObjectValue, ResolveInfo, ResolvedValue};
use apollo_compiler::response::JsonValue;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::App;
use crate::faults::Api;
use crate::graphql::{
    Connection, CostMeter, GraphQlRequest, JsonObject, PageArgs, ResponseBody, decode_cursor,
    encode_cursor,
};
use crate::orders::{FulfillmentInput, Shop, SortKey, parse_search};
use crate::stats::Stats;

/// Shopify's GraphQL rate limits (the leaky bucket of the Advanced plan by default).
#[derive(Debug, Clone, PartialEq)]
pub struct ShopifyLimits {
    /// Largest `requestedQueryCost` accepted for one query (`MAX_COST_EXCEEDED` above).
    pub max_query_cost: u32,
    /// Bucket size (`throttleStatus.maximumAvailable`).
    pub bucket_size: f64,
    /// Points restored per second (`throttleStatus.restoreRate`).
    pub restore_rate: f64,
    /// When false, costs are still computed and reported, but nothing is refused
    /// for lack of points (`MAX_COST_EXCEEDED` still applies).
    pub enforce_throttle: bool,
}

impl ShopifyLimits {
    /// No single-query limit and no throttling (costs are still reported), for
    /// tests that are not about rate limits.
    pub fn unlimited() -> Self {
        Self {
            max_query_cost: u32::MAX,
            enforce_throttle: false,
            ..Self::default()
        }
    }
}

impl Default for ShopifyLimits {
    fn default() -> Self {
        Self {
            max_query_cost: 1000,
            bucket_size: 2000.0,
            restore_rate: 100.0,
            enforce_throttle: true,
        }
    }
}

/// The leaky bucket of query cost points.
#[derive(Debug)]
pub struct CostBucket {
    available: f64,
    refilled_at: Instant,
}

impl CostBucket {
    pub fn full(limits: &ShopifyLimits) -> Self {
        Self {
            available: limits.bucket_size,
            refilled_at: Instant::now(),
        }
    }

    fn refill(&mut self, limits: &ShopifyLimits) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled_at).as_secs_f64();
        self.available = (self.available + elapsed * limits.restore_rate).min(limits.bucket_size);
        self.refilled_at = now;
    }

    fn throttle_status(&self, limits: &ShopifyLimits) -> Value {
        json!({
            "maximumAvailable": limits.bucket_size,
            "currentlyAvailable": self.available.floor() as i64,
            "restoreRate": limits.restore_rate,
        })
    }
}

const INVALID_TOKEN: &str =
    "[API] Invalid API key or access token (unrecognized login or wrong password)";

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `POST /admin/api/2025-01/graphql.json`
pub async fn graphql(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    app.delay(Api::Channel).await;
    let token = headers
        .get("x-shopify-access-token")
        .and_then(|v| v.to_str().ok());
    if token != Some(app.config.shop_token.as_str()) {
        return json_response(StatusCode::UNAUTHORIZED, json!({ "errors": INVALID_TOKEN }));
    }
    let is_raw_graphql = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/graphql"));
    let request = if is_raw_graphql {
        String::from_utf8(body.to_vec())
            .ok()
            .map(|query| GraphQlRequest {
                query,
                variables: None,
                operation_name: None,
            })
    } else {
        serde_json::from_slice::<GraphQlRequest>(&body).ok()
    };
    let Some(request) = request else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({ "errors": { "query": "Required parameter missing or invalid" } }),
        );
    };
    if let Some(refusal) = app.refusal(Api::Channel) {
        return app.shopify_refusal(refusal).await;
    }
    let (body, executed_query) = execute(&app, &request);
    // Only pages are malformed: a mutation's answer is left alone.
    let body = if executed_query {
        app.maybe_malform(Api::Channel, body)
    } else {
        body
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn throttled_body(code: &str, message: String, extra: Value, cost: Value) -> Value {
    let mut extensions = json!({ "code": code });
    if let (Some(target), Some(extra)) = (extensions.as_object_mut(), extra.as_object()) {
        target.extend(extra.clone());
    }
    json!({
        "errors": [{ "message": message, "extensions": extensions }],
        "extensions": { "cost": cost },
    })
}

/// Validates, prices, throttles and runs one request; returns the response body
/// and whether a query was executed.
fn execute(app: &App, request: &GraphQlRequest) -> (String, bool) {
    let prepared = match app.graphql.prepare(request) {
        Ok(prepared) => prepared,
        Err(errors) => return (json!({ "errors": errors }).to_string(), false),
    };
    let limits = &app.config.shopify_limits;
    let requested = prepared.requested_cost;

    let mut guard = app.world();
    let world = &mut *guard;
    world.bucket.refill(limits);
    if requested > limits.max_query_cost {
        world.stats.throttled_requests += 1;
        let cost = json!({
            "requestedQueryCost": requested,
            "actualQueryCost": null,
            "throttleStatus": world.bucket.throttle_status(limits),
        });
        let message = format!(
            "Query cost is {requested}, which exceeds the single query max cost limit ({}).\n\n\
             See https://shopify.dev/concepts/about-apis/rate-limits for more information on how the\n\
             cost of a query is calculated.\n\n\
             To query larger amounts of data with fewer limits, bulk operations should be used instead.\n\
             See https://shopify.dev/tutorials/perform-bulk-operations-with-admin-api for usage details.\n",
            limits.max_query_cost
        );
        let extra = json!({ "cost": requested, "maxCost": limits.max_query_cost });
        return (
            throttled_body("MAX_COST_EXCEEDED", message, extra, cost).to_string(),
            false,
        );
    }
    if limits.enforce_throttle && f64::from(requested) > world.bucket.available {
        world.stats.throttled_requests += 1;
        let cost = json!({
            "requestedQueryCost": requested,
            "actualQueryCost": null,
            "throttleStatus": world.bucket.throttle_status(limits),
        });
        let extra = json!({ "documentation": "https://shopify.dev/api/usage/rate-limits" });
        return (
            throttled_body("THROTTLED", "Throttled".to_owned(), extra, cost).to_string(),
            false,
        );
    }

    for field in &prepared.root_fields {
        world.stats.count_request(format!("graphql {field}"));
    }
    let meter = CostMeter::default();
    let response = if prepared.is_mutation {
        let root = MutationRoot {
            shop: RefCell::new(&mut world.shop),
            stats: RefCell::new(&mut world.stats),
            meter: &meter,
        };
        app.graphql.execute(&prepared, &root)
    } else {
        let root = QueryRoot {
            shop: &world.shop,
            meter: &meter,
            served: RefCell::default(),
        };
        let response = app.graphql.execute(&prepared, &root);
        let served = root.served.into_inner();
        app.change_after_fetch(world, &served);
        response
    };
    // Mutations cost a flat 10 points in Shopify's model, whatever they return.
    let actual = if prepared.is_mutation {
        requested
    } else {
        meter.total()
    };
    world.bucket.available = (world.bucket.available - f64::from(actual)).max(0.0);
    world.stats.query_cost += u64::from(actual);
    let cost = json!({
        "requestedQueryCost": requested,
        "actualQueryCost": actual,
        "throttleStatus": world.bucket.throttle_status(limits),
    });
    // Rendering the body needs nothing from the shared state.
    drop(guard);
    let extensions = json!({ "cost": cost });
    let body = match response {
        Ok(response) => serde_json::to_string(&ResponseBody {
            errors: &response.errors,
            data: response.data.as_ref(),
            extensions,
        })
        .unwrap_or_default(),
        Err(error) => json!({ "errors": [error], "extensions": extensions }).to_string(),
    };
    (body, !prepared.is_mutation)
}

fn string_arg<'a>(info: &'a ResolveInfo<'a>, name: &str) -> Option<&'a str> {
    info.arguments().get(name).and_then(JsonValue::as_str)
}

fn field_error(message: impl Into<String>) -> FieldError {
    FieldError {
        message: message.into(),
    }
}

struct QueryRoot<'a> {
    shop: &'a Shop,
    meter: &'a CostMeter,
    /// Ids of the orders served in pages of `orders`, for the edits and
    /// cancellations after import.
    served: RefCell<Vec<u64>>,
}

impl QueryRoot<'_> {
    fn object<'b>(&'b self, type_name: &str, value: Option<Value>) -> ResolvedValue<'b> {
        ResolvedValue::nullable_object(
            value.map(|v| JsonObject::new(type_name, Cow::Owned(v), self.meter)),
        )
    }

    fn orders<'b>(&'b self, info: &'b ResolveInfo<'b>) -> Result<ResolvedValue<'b>, FieldError> {
        let args = PageArgs::from_arguments(info.arguments())?;
        let terms = string_arg(info, "query")
            .map(parse_search)
            .unwrap_or_default();
        let key = SortKey::parse(string_arg(info, "sortKey"));
        let found = self.shop.search(&terms, key, args.reverse);
        // Cursors carry the sort value and id of an order, so a page boundary
        // survives orders being added or updated between requests.
        let position = |cursor: &str| -> Result<(i64, u64), FieldError> {
            let value = decode_cursor(cursor).ok_or_else(|| field_error("Invalid cursor."))?;
            let last_value = value.get("last_value").and_then(Value::as_i64);
            let last_id = value.get("last_id").and_then(Value::as_u64);
            last_value
                .zip(last_id)
                .ok_or_else(|| field_error("Invalid cursor."))
        };
        let sort_tuple = |o: &&crate::orders::Order| (key.value(o), o.id);
        let after_start = match &args.after {
            Some(cursor) => {
                let bound = position(cursor)?;
                found.partition_point(|o| {
                    if args.reverse {
                        sort_tuple(o) >= bound
                    } else {
                        sort_tuple(o) <= bound
                    }
                })
            }
            None => 0,
        };
        let before_end = match &args.before {
            Some(cursor) => {
                let bound = position(cursor)?;
                found.partition_point(|o| {
                    if args.reverse {
                        sort_tuple(o) > bound
                    } else {
                        sort_tuple(o) < bound
                    }
                })
            }
            None => found.len(),
        };
        let (start, end) = args.window(found.len(), after_start, before_end);
        self.served
            .borrow_mut()
            .extend(found[start..end].iter().map(|o| o.id));
        let page = found[start..end]
            .iter()
            .map(|order| {
                let cursor =
                    encode_cursor(&json!({ "last_id": order.id, "last_value": key.value(order) }));
                (cursor, Cow::Owned(order.to_json()))
            })
            .collect();
        let connection = Connection::from_page(
            info.schema(),
            "OrderConnection",
            page,
            start > 0,
            end < found.len(),
            self.meter,
        );
        Ok(ResolvedValue::object(connection))
    }
}

impl ObjectValue for QueryRoot<'_> {
    fn type_name(&self) -> &str {
        "QueryRoot"
    }

    fn resolve_field<'b>(
        &'b self,
        info: &'b ResolveInfo<'b>,
    ) -> Result<ResolvedValue<'b>, FieldError> {
        let id = string_arg(info, "id").unwrap_or_default();
        match info.field_name() {
            "orders" => self.orders(info),
            "order" => Ok(self.object("Order", self.shop.order_by_gid(id).map(|o| o.to_json()))),
            "fulfillmentOrder" => {
                Ok(self.object("FulfillmentOrder", self.shop.fulfillment_order_json(id)))
            }
            "fulfillment" => Ok(self.object("Fulfillment", self.shop.fulfillment_json(id))),
            "node" => Ok(self.object("Node", self.shop.node_json(id))),
            "nodes" => {
                let ids: Vec<&str> = info
                    .arguments()
                    .get("ids")
                    .and_then(JsonValue::as_array)
                    .map(|ids| ids.iter().filter_map(JsonValue::as_str).collect())
                    .unwrap_or_default();
                let nodes: Vec<ResolvedValue<'b>> = ids
                    .into_iter()
                    .map(|id| self.object("Node", self.shop.node_json(id)))
                    .collect();
                Ok(ResolvedValue::list(nodes))
            }
            _ => Err(self.unknown_field_error(info)),
        }
    }
}

/// The mutation root borrows the shop mutably; `RefCell` because resolvers only get
/// `&self`, and execution is single-threaded inside one locked request.
struct MutationRoot<'a> {
    shop: RefCell<&'a mut Shop>,
    stats: RefCell<&'a mut Stats>,
    meter: &'a CostMeter,
}

impl ObjectValue for MutationRoot<'_> {
    fn type_name(&self) -> &str {
        "Mutation"
    }

    fn resolve_field<'b>(
        &'b self,
        info: &'b ResolveInfo<'b>,
    ) -> Result<ResolvedValue<'b>, FieldError> {
        match info.field_name() {
            "fulfillmentCreate" => {
                let raw = info
                    .arguments()
                    .get("fulfillment")
                    .map(|v| serde_json::to_value(v).unwrap_or(Value::Null))
                    .unwrap_or(Value::Null);
                let input: FulfillmentInput = serde_json::from_value(raw)
                    .map_err(|e| field_error(format!("invalid FulfillmentInput: {e}")))?;
                let result = self
                    .shop
                    .borrow_mut()
                    .fulfill(&input, &mut self.stats.borrow_mut());
                let payload = match result {
                    Ok(fulfillment) => json!({ "fulfillment": fulfillment, "userErrors": [] }),
                    Err(error) => {
                        tracing::info!(message = %error.message, "fulfillmentCreate refused");
                        json!({ "fulfillment": null, "userErrors": [error.to_json()] })
                    }
                };
                Ok(ResolvedValue::object(JsonObject::new(
                    "FulfillmentCreatePayload",
                    Cow::Owned(payload),
                    self.meter,
                )))
            }
            _ => Err(self.unknown_field_error(info)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::default_catalog;
    use crate::graphql::{GraphQl, object_fields};
    use crate::orders::{FulfillmentOrderLineItemsInput, Generation, TrackingInput};
    use apollo_compiler::schema::ExtendedType;
    use std::collections::HashMap;

    /// Walks a full JSON object and reports every schema field it lacks.
    fn missing_fields(
        gql: &GraphQl,
        fields: &HashMap<String, Vec<String>>,
        ty: &str,
        value: &Value,
        missing: &mut Vec<String>,
    ) {
        let schema = gql.schema_for_tests();
        let ty = value
            .get("__typename")
            .and_then(Value::as_str)
            .unwrap_or(ty);
        let Some(declared) = fields.get(ty) else {
            return;
        };
        for field in declared {
            let Some(raw) = value.get(field) else {
                missing.push(format!("{ty}.{field}"));
                continue;
            };
            let Ok(definition) = schema.type_field(ty, field) else {
                continue;
            };
            let inner = definition.ty.inner_named_type().as_str();
            if !matches!(schema.types.get(inner), Some(ExtendedType::Object(_))) {
                continue;
            }
            let node_type = if inner.ends_with("Connection") {
                schema
                    .type_field(inner, "nodes")
                    .map(|d| d.ty.inner_named_type().to_string())
                    .unwrap_or_default()
            } else {
                inner.to_owned()
            };
            match raw {
                Value::Array(items) => {
                    assert!(
                        !items.is_empty()
                            || !inner.ends_with("Connection")
                            || field == "fulfillments",
                        "{ty}.{field} is empty, so its fields go unchecked"
                    );
                    for item in items {
                        missing_fields(gql, fields, &node_type, item, missing);
                    }
                }
                Value::Object(_) => missing_fields(gql, fields, &node_type, raw, missing),
                _ => {}
            }
        }
    }

    #[test]
    fn every_object_the_shop_serves_carries_every_field_of_the_schema() {
        let gql = GraphQl::new().unwrap();
        let fields = object_fields(gql.schema_for_tests());
        let mut stats = Stats::default();
        let mut shop = Shop::new(Generation {
            seed: 9,
            catalog: default_catalog(),
            malformed_rate: 0.0,
        });
        shop.create_backlog(3, &mut stats);
        let order = shop.orders()[0].to_json();
        let fo_id = order["fulfillmentOrders"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let input = FulfillmentInput {
            line_items_by_fulfillment_order: vec![FulfillmentOrderLineItemsInput {
                fulfillment_order_id: fo_id,
                fulfillment_order_line_items: None,
            }],
            tracking_info: Some(TrackingInput {
                company: Some("UPS".into()),
                number: Some("1Z".into()),
                url: Some("https://example.com/t".into()),
                ..TrackingInput::default()
            }),
        };
        let fulfillment = shop.fulfill(&input, &mut stats).unwrap();
        let mut missing = Vec::new();
        missing_fields(
            &gql,
            &fields,
            "Order",
            &shop.orders()[0].to_json(),
            &mut missing,
        );
        missing_fields(&gql, &fields, "Fulfillment", &fulfillment, &mut missing);
        let payload = json!({
            "fulfillment": fulfillment,
            "userErrors": [{ "__typename": "UserError", "field": ["fulfillment"], "message": "x" }],
        });
        missing_fields(
            &gql,
            &fields,
            "FulfillmentCreatePayload",
            &payload,
            &mut missing,
        );
        assert!(missing.is_empty(), "missing: {missing:?}");
    }
}
