//! The Shopify adapter against a local server answering in Shopify's format:
//! request shape, order parsing and how every failure is classified.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{Reply, Server, serve};
use conveyor_jobs::channel::shopify::{MAX_PAGE_SIZE, ShopifyClient};
use conveyor_jobs::channel::{
    ChannelApi, ChannelFulfillment, FulfillmentLine, FulfillmentOutcome, FulfillmentRequest,
};
use conveyor_jobs::error::{ApiError, ErrorClass};
use secrecy::SecretString;
use serde_json::{Value, json};

const TOKEN: &str = "shpat_0123456789abcdef0123456789abcdef";
const ENDPOINT: &str = "/admin/api/2025-01/graphql.json";

fn client(server: &Server, timeout: Duration) -> ShopifyClient {
    ShopifyClient::new(&server.base_url, SecretString::from(TOKEN), timeout).unwrap()
}

fn since() -> DateTime<Utc> {
    "2025-01-02T03:04:05Z".parse().unwrap()
}

fn order_node(n: u32) -> Value {
    json!({
        "id": format!("gid://shopify/Order/{n}"),
        "name": format!("#{}", 1000 + n),
        "createdAt": "2025-01-02T03:04:05Z",
        "updatedAt": format!("2025-01-02T04:00:{n:02}Z"),
        "cancelledAt": null,
        "shippingAddress": {
            "name": "Grace Hopper", "firstName": "Grace", "lastName": "Hopper",
            "company": "Navy", "address1": "1 Main St", "address2": "Apt 2",
            "city": "Arlington", "province": "Virginia", "provinceCode": "VA",
            "zip": "22201", "country": "United States", "countryCodeV2": "US",
            "phone": "+15555550100", "latitude": null, "longitude": null
        },
        "shippingLines": { "nodes": [{ "title": "Express", "code": "EXP" }] },
        "lineItems": {
            "pageInfo": { "hasNextPage": false },
            "nodes": [{ "id": format!("gid://shopify/LineItem/{n}1"), "sku": "SKU-A",
                "name": "Widget", "quantity": 3, "currentQuantity": 3, "requiresShipping": true }]
        },
        "fulfillmentOrders": {
            "pageInfo": { "hasNextPage": false },
            "nodes": [{ "id": format!("gid://shopify/FulfillmentOrder/{n}"), "status": "OPEN",
                "lineItems": { "pageInfo": { "hasNextPage": false }, "nodes": [{
                    "id": format!("gid://shopify/FulfillmentOrderLineItem/{n}1"),
                    "totalQuantity": 3, "remainingQuantity": 3,
                    "lineItem": { "id": format!("gid://shopify/LineItem/{n}1") } }] } }]
        }
    })
}

fn page(nodes: Vec<Value>, next: Option<&str>) -> Reply {
    Reply::json(
        200,
        json!({
            "data": { "orders": {
                "pageInfo": { "hasNextPage": next.is_some(), "endCursor": next },
                "nodes": nodes
            } },
            "extensions": { "cost": { "requestedQueryCost": 962, "actualQueryCost": 40,
                "throttleStatus": { "maximumAvailable": 2000.0, "currentlyAvailable": 1960, "restoreRate": 100.0 } } }
        }),
    )
}

async fn orders_error(reply: Reply) -> ApiError {
    let server = serve(vec![reply]).await;
    client(&server, Duration::from_secs(5))
        .orders_page(since(), None, 10)
        .await
        .expect_err("the call should fail")
}

fn fulfillment_request(with_refs: bool) -> FulfillmentRequest {
    let reference = |fo: &str, li: &str| {
        with_refs.then(|| json!({ "fulfillmentOrderId": fo, "fulfillmentOrderLineItemId": li }))
    };
    FulfillmentRequest {
        order_external_id: "gid://shopify/Order/1".into(),
        lines: vec![
            FulfillmentLine {
                line_external_id: "gid://shopify/LineItem/11".into(),
                fulfillment_ref: reference(
                    "gid://shopify/FulfillmentOrder/1",
                    "gid://shopify/FulfillmentOrderLineItem/11",
                ),
                quantity: 2,
            },
            FulfillmentLine {
                line_external_id: "gid://shopify/LineItem/12".into(),
                fulfillment_ref: reference(
                    "gid://shopify/FulfillmentOrder/2",
                    "gid://shopify/FulfillmentOrderLineItem/12",
                ),
                quantity: 1,
            },
            FulfillmentLine {
                line_external_id: "gid://shopify/LineItem/13".into(),
                fulfillment_ref: reference(
                    "gid://shopify/FulfillmentOrder/1",
                    "gid://shopify/FulfillmentOrderLineItem/13",
                ),
                quantity: 1,
            },
        ],
        carrier: "USPS".into(),
        tracking_number: "9400100208303109505657".into(),
        tracking_url: Some(
            "https://tools.usps.com/go/TrackConfirmAction?tLabels=9400100208303109505657".into(),
        ),
        notify_customer: true,
    }
}

/// The order's fulfillment orders, each line with `remaining` units left.
fn fulfillment_orders(remaining: u64) -> Reply {
    let line = |li: u32| {
        json!({ "id": format!("gid://shopify/FulfillmentOrderLineItem/{li}"), "totalQuantity": 2,
            "remainingQuantity": remaining, "lineItem": { "id": format!("gid://shopify/LineItem/{li}") } })
    };
    let status = if remaining == 0 { "CLOSED" } else { "OPEN" };
    Reply::json(
        200,
        json!({ "data": { "order": { "id": "gid://shopify/Order/1", "fulfillmentOrders": {
            "pageInfo": { "hasNextPage": false },
            "nodes": [
                { "id": "gid://shopify/FulfillmentOrder/1", "status": status, "lineItems": {
                    "pageInfo": { "hasNextPage": false }, "nodes": [line(11), line(13)] } },
                { "id": "gid://shopify/FulfillmentOrder/2", "status": status, "lineItems": {
                    "pageInfo": { "hasNextPage": false }, "nodes": [line(12)] } }
            ] } } } }),
    )
}

fn user_errors(messages: &[&str]) -> Reply {
    let errors: Vec<Value> = messages
        .iter()
        .map(|m| json!({ "field": ["fulfillment"], "message": m }))
        .collect();
    Reply::json(
        200,
        json!({ "data": { "fulfillmentCreate": { "fulfillment": null, "userErrors": errors } } }),
    )
}

fn created() -> Reply {
    Reply::json(
        200,
        json!({ "data": { "fulfillmentCreate": {
            "fulfillment": { "id": "gid://shopify/Fulfillment/77", "status": "SUCCESS" },
            "userErrors": [] } } }),
    )
}

#[tokio::test]
async fn the_orders_query_asks_for_orders_updated_since_the_instant_oldest_first() {
    let server = serve(vec![page(vec![order_node(1)], Some("cursor-2"))]).await;
    let page = client(&server, Duration::from_secs(5))
        .orders_page(since(), Some("cursor-1"), 250)
        .await
        .unwrap();
    assert_eq!(page.next_page.as_deref(), Some("cursor-2"));
    assert_eq!(page.orders.len(), 1);
    assert!(page.rejected.is_empty());

    let sent = server.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method, "POST");
    assert_eq!(sent[0].path, ENDPOINT);
    assert_eq!(
        sent[0].header("x-shopify-access-token").as_deref(),
        Some(TOKEN)
    );
    let body = sent[0].json();
    assert!(
        body["query"]
            .as_str()
            .unwrap()
            .contains("sortKey: UPDATED_AT")
    );
    assert_eq!(
        body["variables"],
        json!({
            "first": MAX_PAGE_SIZE,
            "after": "cursor-1",
            "query": "updated_at:>='2025-01-02T03:04:05Z'",
        })
    );
}

#[tokio::test]
async fn an_order_is_parsed_into_the_channel_shape_with_its_fulfillment_reference() {
    let server = serve(vec![page(vec![order_node(4)], None)]).await;
    let page = client(&server, Duration::from_secs(5))
        .orders_page(since(), None, 10)
        .await
        .unwrap();
    assert_eq!(page.next_page, None);
    let order = &page.orders[0];
    assert_eq!(order.external_id, "gid://shopify/Order/4");
    assert_eq!(order.name, "#1004");
    assert_eq!(
        order.updated_at,
        "2025-01-02T04:00:04Z".parse::<DateTime<Utc>>().unwrap()
    );
    assert_eq!(order.cancelled_at, None);
    assert_eq!(order.shipping_title, "Express");
    assert_eq!(order.ship_to.name, "Grace Hopper");
    assert_eq!(order.ship_to.company.as_deref(), Some("Navy"));
    assert_eq!(order.ship_to.street1, "1 Main St");
    assert_eq!(order.ship_to.street2.as_deref(), Some("Apt 2"));
    assert_eq!(order.ship_to.state, "VA");
    assert_eq!(order.ship_to.zip, "22201");
    assert_eq!(order.ship_to.country, "US");
    assert_eq!(order.ship_to.phone.as_deref(), Some("+15555550100"));
    assert_eq!(order.lines.len(), 1);
    assert_eq!(order.lines[0].external_id, "gid://shopify/LineItem/41");
    assert_eq!(order.lines[0].sku, "SKU-A");
    assert_eq!(order.lines[0].quantity, 3);
    assert_eq!(
        order.lines[0].fulfillment_ref,
        Some(json!({
            "fulfillmentOrderId": "gid://shopify/FulfillmentOrder/4",
            "fulfillmentOrderLineItemId": "gid://shopify/FulfillmentOrderLineItem/41",
        }))
    );
    assert_eq!(order.raw, order_node(4));
}

#[tokio::test]
async fn a_malformed_order_among_good_ones_is_rejected_alone() {
    let mut broken = order_node(2);
    broken["shippingAddress"] = Value::Null;
    let mut no_sku = order_node(3);
    no_sku["lineItems"]["nodes"][0]["sku"] = json!("");
    let server = serve(vec![page(
        vec![order_node(1), broken.clone(), no_sku.clone(), order_node(4)],
        None,
    )])
    .await;
    let page = client(&server, Duration::from_secs(5))
        .orders_page(since(), None, 10)
        .await
        .unwrap();
    let ids: Vec<&str> = page.orders.iter().map(|o| o.external_id.as_str()).collect();
    assert_eq!(ids, ["gid://shopify/Order/1", "gid://shopify/Order/4"]);
    assert_eq!(page.rejected.len(), 2);
    let first = &page.rejected[0];
    assert_eq!(first.external_id.as_deref(), Some("gid://shopify/Order/2"));
    assert_eq!(first.reason, "the order has no shipping address");
    assert_eq!(first.raw, broken);
    assert_eq!(
        first.updated_at,
        Some("2025-01-02T04:00:02Z".parse::<DateTime<Utc>>().unwrap())
    );
    let second = &page.rejected[1];
    assert!(second.reason.contains("has no SKU"), "{}", second.reason);
    assert_eq!(second.raw, no_sku);
}

#[tokio::test]
async fn an_order_cut_short_by_the_page_query_is_fetched_whole() {
    let mut short = order_node(5);
    short["lineItems"]["pageInfo"]["hasNextPage"] = json!(true);
    let mut whole = order_node(5);
    let lines: Vec<Value> = (1..=7)
        .map(|i| {
            json!({ "id": format!("gid://shopify/LineItem/5{i}"), "sku": format!("SKU-{i}"),
                "name": "Widget", "quantity": 1, "currentQuantity": 1, "requiresShipping": true })
        })
        .collect();
    whole["lineItems"]["nodes"] = Value::Array(lines);
    let server = serve(vec![
        page(vec![short, order_node(6)], None),
        Reply::json(200, json!({ "data": { "order": whole.clone() } })),
    ])
    .await;
    let page = client(&server, Duration::from_secs(5))
        .orders_page(since(), None, 10)
        .await
        .unwrap();
    assert!(page.rejected.is_empty(), "{:?}", page.rejected);
    assert_eq!(page.orders.len(), 2);
    assert_eq!(page.orders[0].lines.len(), 7);
    assert_eq!(page.orders[0].raw, whole);
    let sent = server.received();
    assert_eq!(sent.len(), 2);
    let follow_up = sent[1].json();
    assert!(
        follow_up["query"]
            .as_str()
            .unwrap()
            .starts_with("query Order(")
    );
    assert_eq!(
        follow_up["variables"],
        json!({ "id": "gid://shopify/Order/5" })
    );
}

#[tokio::test]
async fn an_order_too_large_for_the_follow_up_or_gone_is_rejected_with_the_reason() {
    let mut short = order_node(7);
    short["fulfillmentOrders"]["pageInfo"]["hasNextPage"] = json!(true);
    let mut gone = order_node(8);
    gone["lineItems"]["pageInfo"]["hasNextPage"] = json!(true);
    let server = serve(vec![
        page(vec![short.clone(), gone.clone()], None),
        Reply::json(200, json!({ "data": { "order": short.clone() } })),
        Reply::json(200, json!({ "data": { "order": null } })),
    ])
    .await;
    let page = client(&server, Duration::from_secs(5))
        .orders_page(since(), None, 10)
        .await
        .unwrap();
    assert!(page.orders.is_empty());
    assert_eq!(page.rejected.len(), 2);
    assert!(
        page.rejected[0]
            .reason
            .contains("more than one query can read"),
        "{}",
        page.rejected[0].reason
    );
    assert_eq!(page.rejected[0].raw, short);
    assert!(page.rejected[1].reason.contains("disappeared"));
    assert_eq!(
        page.rejected[1].external_id.as_deref(),
        Some("gid://shopify/Order/8")
    );
}

#[tokio::test]
async fn a_429_with_retry_after_is_rate_limited_for_that_long() {
    let err = orders_error(
        Reply::json(
            429,
            json!({ "errors": "Exceeded 2 calls per second for api client." }),
        )
        .header("Retry-After", "3"),
    )
    .await;
    assert_eq!(
        err.class,
        ErrorClass::RateLimited {
            retry_after: Some(Duration::from_secs(3))
        }
    );
    assert_eq!(err.status, Some(429));
}

#[tokio::test]
async fn a_throttled_graphql_body_is_rate_limited_until_the_bucket_refills() {
    let err = orders_error(Reply::json(
        200,
        json!({
            "errors": [{ "message": "Throttled", "extensions": {
                "code": "THROTTLED",
                "documentation": "https://shopify.dev/api/usage/rate-limits" } }],
            "extensions": { "cost": { "requestedQueryCost": 962, "actualQueryCost": null,
                "throttleStatus": { "maximumAvailable": 2000.0, "currentlyAvailable": 712, "restoreRate": 100.0 } } }
        }),
    ))
    .await;
    assert_eq!(
        err.class,
        ErrorClass::RateLimited {
            retry_after: Some(Duration::from_millis(2500))
        }
    );
    assert_eq!(err.code.as_deref(), Some("THROTTLED"));
}

#[tokio::test]
async fn a_throttled_body_without_cost_is_rate_limited_without_a_wait() {
    let err = orders_error(Reply::json(
        200,
        json!({ "errors": [{ "message": "Throttled", "extensions": { "code": "THROTTLED" } }] }),
    ))
    .await;
    assert_eq!(err.class, ErrorClass::RateLimited { retry_after: None });
}

#[tokio::test]
async fn a_503_is_retryable() {
    let err = orders_error(Reply::raw(
        503,
        "text/html",
        "<html><body>Service Unavailable</body></html>",
    ))
    .await;
    assert_eq!(err.class, ErrorClass::Retryable);
    assert_eq!(err.status, Some(503));
    assert!(err.message.contains("not JSON"), "{}", err.message);
}

#[tokio::test]
async fn a_401_is_permanent_and_says_the_credentials_were_refused() {
    let err = orders_error(Reply::json(
        401,
        json!({ "errors": "[API] Invalid API key or access token (unrecognized login or wrong password)" }),
    ))
    .await;
    assert_eq!(err.class, ErrorClass::Permanent);
    assert_eq!(err.status, Some(401));
    assert!(
        err.message.contains("refused the credentials"),
        "{}",
        err.message
    );
    assert!(err.message.contains("Invalid API key"), "{}", err.message);
    assert!(!err.to_string().contains(TOKEN));
}

#[tokio::test]
async fn a_403_that_echoes_the_token_is_permanent_and_the_token_is_redacted() {
    let err = orders_error(Reply::json(
        403,
        json!({ "errors": format!("token {TOKEN} lacks the read_orders scope") }),
    ))
    .await;
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains("refused the credentials"),
        "{}",
        err.message
    );
    assert!(!err.to_string().contains(TOKEN), "{err}");
    assert!(!format!("{err:?}").contains(TOKEN));
}

#[tokio::test]
async fn access_denied_is_permanent_and_an_internal_server_error_is_retryable() {
    let denied = orders_error(Reply::json(
        200,
        json!({ "errors": [{ "message": "Access denied for orders field.",
            "extensions": { "code": "ACCESS_DENIED" } }], "data": null }),
    ))
    .await;
    assert_eq!(denied.class, ErrorClass::Permanent);
    assert_eq!(denied.code.as_deref(), Some("ACCESS_DENIED"));
    assert!(denied.message.contains("Access denied for orders field."));

    let internal = orders_error(Reply::json(
        200,
        json!({ "errors": [{ "message": "Internal error. Looks like something went wrong on our end.",
            "extensions": { "code": "INTERNAL_SERVER_ERROR" } }] }),
    ))
    .await;
    assert_eq!(internal.class, ErrorClass::Retryable);
}

#[tokio::test]
async fn a_200_that_is_not_json_is_retried_and_one_not_of_the_expected_shape_is_permanent() {
    // A garbled answer (a proxy's page, a truncated body) is tried again.
    let err = orders_error(Reply::raw(200, "text/html", "<html>maintenance</html>")).await;
    assert_eq!(err.class, ErrorClass::Retryable);
    assert!(err.message.contains("not JSON"), "{}", err.message);

    let err = orders_error(Reply::json(200, json!({ "data": { "shop": {} } }))).await;
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains("data.orders is missing"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn an_orders_query_that_times_out_is_retryable() {
    let server = serve(vec![page(vec![], None).after(Duration::from_secs(10))]).await;
    let err = client(&server, Duration::from_millis(300))
        .orders_page(since(), None, 10)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Retryable, "{err}");
}

#[tokio::test]
async fn an_unreachable_shop_is_retryable() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = ShopifyClient::new(
        &format!("http://127.0.0.1:{port}"),
        SecretString::from(TOKEN),
        Duration::from_secs(2),
    )
    .unwrap();
    let err = client.orders_page(since(), None, 10).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Retryable, "{err}");
    assert!(!err.to_string().contains(TOKEN));
}

#[tokio::test]
async fn a_fulfillment_is_sent_grouped_by_fulfillment_order_with_its_tracking() {
    let server = serve(vec![created()]).await;
    let outcome = client(&server, Duration::from_secs(5))
        .create_fulfillment(&fulfillment_request(true))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        FulfillmentOutcome::Created {
            fulfillment_id: "gid://shopify/Fulfillment/77".into()
        }
    );
    let sent = server.received();
    assert_eq!(sent.len(), 1);
    let body = sent[0].json();
    assert!(
        body["query"]
            .as_str()
            .unwrap()
            .starts_with("mutation fulfillmentCreate($fulfillment: FulfillmentInput!)")
    );
    assert_eq!(
        body["variables"],
        json!({ "fulfillment": {
            "lineItemsByFulfillmentOrder": [
                { "fulfillmentOrderId": "gid://shopify/FulfillmentOrder/1", "fulfillmentOrderLineItems": [
                    { "id": "gid://shopify/FulfillmentOrderLineItem/11", "quantity": 2 },
                    { "id": "gid://shopify/FulfillmentOrderLineItem/13", "quantity": 1 } ] },
                { "fulfillmentOrderId": "gid://shopify/FulfillmentOrder/2", "fulfillmentOrderLineItems": [
                    { "id": "gid://shopify/FulfillmentOrderLineItem/12", "quantity": 1 } ] }
            ],
            "trackingInfo": {
                "company": "USPS",
                "number": "9400100208303109505657",
                "url": "https://tools.usps.com/go/TrackConfirmAction?tLabels=9400100208303109505657"
            },
            "notifyCustomer": true
        } })
    );
}

#[tokio::test]
async fn a_fulfillment_user_error_with_nothing_remaining_is_already_fulfilled() {
    let server = serve(vec![
        user_errors(&["Invalid fulfillment order line item quantity requested."]),
        fulfillment_orders(0),
    ])
    .await;
    let outcome = client(&server, Duration::from_secs(5))
        .create_fulfillment(&fulfillment_request(true))
        .await
        .unwrap();
    assert_eq!(outcome, FulfillmentOutcome::AlreadyFulfilled);
    let sent = server.received();
    assert_eq!(sent.len(), 2);
    let follow_up = sent[1].json();
    assert!(
        follow_up["query"]
            .as_str()
            .unwrap()
            .starts_with("query OrderFulfillmentOrders(")
    );
    assert_eq!(
        follow_up["variables"],
        json!({ "id": "gid://shopify/Order/1" })
    );
}

#[tokio::test]
async fn a_fulfillment_user_error_with_units_still_remaining_is_permanent() {
    let server = serve(vec![
        user_errors(&["Invalid fulfillment order line item quantity requested."]),
        fulfillment_orders(1),
    ])
    .await;
    let err = client(&server, Duration::from_secs(5))
        .create_fulfillment(&fulfillment_request(true))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message
            .contains("Invalid fulfillment order line item quantity requested."),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn any_other_fulfillment_user_error_is_permanent_without_a_follow_up() {
    let server = serve(vec![user_errors(&["Tracking company is not supported"])]).await;
    let err = client(&server, Duration::from_secs(5))
        .create_fulfillment(&fulfillment_request(true))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(err.message.contains("Tracking company is not supported"));
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn lines_without_a_fulfillment_reference_are_resolved_from_the_order() {
    let server = serve(vec![fulfillment_orders(2), created()]).await;
    let outcome = client(&server, Duration::from_secs(5))
        .create_fulfillment(&fulfillment_request(false))
        .await
        .unwrap();
    assert!(matches!(outcome, FulfillmentOutcome::Created { .. }));
    let sent = server.received();
    assert_eq!(sent.len(), 2);
    let groups = &sent[1].json()["variables"]["fulfillment"]["lineItemsByFulfillmentOrder"];
    assert_eq!(
        groups[0]["fulfillmentOrderId"],
        "gid://shopify/FulfillmentOrder/1"
    );
    assert_eq!(
        groups[0]["fulfillmentOrderLineItems"][0],
        json!({ "id": "gid://shopify/FulfillmentOrderLineItem/11", "quantity": 2 })
    );
    assert_eq!(
        groups[1]["fulfillmentOrderId"],
        "gid://shopify/FulfillmentOrder/2"
    );
}

#[tokio::test]
async fn a_fulfillment_that_times_out_has_an_unknown_outcome() {
    let server = serve(vec![created().after(Duration::from_secs(10))]).await;
    let err = client(&server, Duration::from_millis(300))
        .create_fulfillment(&fulfillment_request(true))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::UnknownOutcome, "{err}");
}

#[tokio::test]
async fn the_access_token_never_appears_in_debug_output() {
    let server = serve(vec![]).await;
    let client = client(&server, Duration::from_secs(1));
    let debug = format!("{client:?}");
    assert!(!debug.contains(TOKEN), "{debug}");
    assert!(debug.contains("REDACTED"));
}

#[test]
fn a_base_url_that_is_not_http_is_refused() {
    let err = ShopifyClient::new(
        "ftp://shop",
        SecretString::from(TOKEN),
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(!err.to_string().contains(TOKEN));
}

/// An order's fulfillments: `n` of them, fulfillment k carrying tracking
/// number `94000k`.
fn order_fulfillments(n: u32) -> Reply {
    let list: Vec<Value> = (1..=n)
        .map(|k| {
            json!({ "id": format!("gid://shopify/Fulfillment/{k}"), "status": "SUCCESS",
                "trackingInfo": [{ "number": format!("94000{k}") }] })
        })
        .collect();
    Reply::json(
        200,
        json!({ "data": { "order": { "id": "gid://shopify/Order/1", "fulfillments": list } } }),
    )
}

#[tokio::test]
async fn an_orders_fulfillments_are_read_with_their_tracking_numbers_in_one_query() {
    let server = serve(vec![order_fulfillments(2)]).await;
    let read = client(&server, Duration::from_secs(5))
        .fulfillments("gid://shopify/Order/1")
        .await
        .unwrap();
    assert_eq!(
        read,
        vec![
            ChannelFulfillment {
                fulfillment_id: "gid://shopify/Fulfillment/1".into(),
                tracking_numbers: vec!["940001".into()],
            },
            ChannelFulfillment {
                fulfillment_id: "gid://shopify/Fulfillment/2".into(),
                tracking_numbers: vec!["940002".into()],
            },
        ]
    );
    let sent = server.received();
    assert_eq!(sent.len(), 1);
    let body = sent[0].json();
    assert!(
        body["query"]
            .as_str()
            .unwrap()
            .starts_with("query OrderFulfillments($id: ID!, $first: Int!)")
    );
    assert_eq!(
        body["variables"],
        json!({ "id": "gid://shopify/Order/1", "first": 10 })
    );
}

#[tokio::test]
async fn an_order_with_as_many_fulfillments_as_asked_for_is_read_again_in_full() {
    let server = serve(vec![order_fulfillments(10), order_fulfillments(12)]).await;
    let read = client(&server, Duration::from_secs(5))
        .fulfillments("gid://shopify/Order/1")
        .await
        .unwrap();
    assert_eq!(read.len(), 12);
    assert_eq!(read[11].tracking_numbers, ["9400012"]);
    let sent = server.received();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].json()["variables"]["first"], 160);
}

#[tokio::test]
async fn fulfillments_of_an_unknown_order_are_a_permanent_error() {
    let server = serve(vec![Reply::json(200, json!({ "data": { "order": null } }))]).await;
    let err = client(&server, Duration::from_secs(5))
        .fulfillments("gid://shopify/Order/404")
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains("gid://shopify/Order/404"),
        "{}",
        err.message
    );
}
