//! Injected faults, per API: each knob's share measured over many requests
//! (the draws are seeded, so these numbers are the same on every run), each
//! counted in `/_sandbox/stats`, and the faults changeable while running.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use conveyor_sandbox::{ApiFaults, Faults, Sandbox, SandboxConfig, ShopifyLimits};
use reqwest::Method;
use serde_json::{Value, json};

const ORDERS_PAGE: &str = "{ orders(first: 5) { nodes { id } } }";

/// Asserts that `hits` of `n` is within 0.07 of `share`.
fn assert_share(what: &str, hits: u64, n: u64, share: f64) {
    let measured = hits as f64 / n as f64;
    assert!(
        (measured - share).abs() < 0.07,
        "{what}: {hits} of {n} ({measured:.3}), expected about {share}"
    );
}

async fn start_with(faults: Faults, orders: usize) -> Sandbox {
    start(SandboxConfig {
        orders,
        faults,
        shopify_limits: ShopifyLimits::unlimited(),
        ..SandboxConfig::default()
    })
    .await
}

/// Posts a GraphQL query; returns the status, the `Retry-After` header and
/// the raw body.
async fn raw_gql(sandbox: &Sandbox, query: &str) -> (u16, Option<String>, String) {
    let response = client()
        .post(graphql_url(sandbox))
        .header("X-Shopify-Access-Token", SHOP_TOKEN)
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, response.text().await.unwrap())
}

async fn raw_carrier(
    sandbox: &Sandbox,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Option<String>, String) {
    let mut request = client()
        .request(method, format!("{}{path}", sandbox.base_url()))
        .basic_auth(CARRIER_KEY, Some(""));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, response.text().await.unwrap())
}

#[tokio::test]
async fn server_errors_hit_only_the_api_they_are_set_on_at_their_share() {
    let mut faults = Faults::default();
    faults.channel.api.server_error_rate = 0.3;
    faults.carrier.api.server_error_rate = 0.1;
    let sandbox = start_with(faults, 5).await;
    let n = 400;
    let (mut channel, mut carrier) = (0, 0);
    for _ in 0..n {
        let (status, _, _) = raw_gql(&sandbox, ORDERS_PAGE).await;
        assert!(status == 200 || status == 503, "{status}");
        channel += u64::from(status == 503);
        let (status, _, _) = raw_carrier(&sandbox, Method::GET, "/v2/shipments/shp_x", None).await;
        assert!(status == 404 || status == 500, "{status}");
        carrier += u64::from(status == 500);
    }
    assert_share("channel 503s", channel, n, 0.3);
    assert_share("carrier 500s", carrier, n, 0.1);
    let stats = sandbox.stats();
    assert_eq!(stats.faults.channel.server_error, channel);
    assert_eq!(stats.faults.carrier.server_error, carrier);
    assert_eq!(stats.injected_faults, channel + carrier);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn rate_limits_carry_retry_after_and_shopify_answers_with_a_throttled_body() {
    let mut faults = Faults::default();
    faults.channel.api.rate_limit_rate = 0.25;
    faults.channel.api.retry_after_secs = 3;
    faults.carrier.api.rate_limit_rate = 0.25;
    let sandbox = start_with(faults, 5).await;
    let n = 400;
    let (mut channel, mut channel_429, mut carrier) = (0, 0, 0);
    for _ in 0..n {
        let (status, retry_after, body) = raw_gql(&sandbox, ORDERS_PAGE).await;
        let body: Value = serde_json::from_str(&body).unwrap();
        if body["errors"][0]["extensions"]["code"] == "THROTTLED" {
            channel += 1;
            channel_429 += u64::from(status == 429);
            assert!(status == 200 || status == 429, "{status}");
            assert_eq!(retry_after.as_deref(), Some("3"));
            assert_eq!(
                body["extensions"]["cost"]["throttleStatus"]["currentlyAvailable"],
                0
            );
        } else {
            assert_eq!(status, 200);
            assert!(body["data"]["orders"].is_object(), "{body}");
        }
        let (status, retry_after, body) =
            raw_carrier(&sandbox, Method::GET, "/v2/shipments/shp_x", None).await;
        if status == 429 {
            carrier += 1;
            assert_eq!(retry_after.as_deref(), Some("1"));
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["error"]["code"], "RATE_LIMITED");
        }
    }
    assert_share("channel throttled", channel, n, 0.25);
    // Both of Shopify's shapes occur: HTTP 200 and HTTP 429.
    assert!(
        channel_429 > 0 && channel_429 < channel,
        "{channel_429} of {channel}"
    );
    assert_share("carrier 429s", carrier, n, 0.25);
    let stats = sandbox.stats();
    assert_eq!(stats.faults.channel.rate_limited, channel);
    assert_eq!(stats.faults.carrier.rate_limited, carrier);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn hanging_requests_are_held_for_hang_ms_then_answered_504() {
    let mut faults = Faults::default();
    faults.channel.api.hang_rate = 0.2;
    faults.channel.api.hang_ms = 3000;
    faults.carrier.api.hang_rate = 0.2;
    faults.carrier.api.hang_ms = 3000;
    let sandbox = start_with(faults, 5).await;
    let n = 200;
    let timed = |request: reqwest::RequestBuilder| async move {
        let started = std::time::Instant::now();
        let status = request.send().await.unwrap().status().as_u16();
        (status, started.elapsed())
    };
    let channel = (0..n).map(|_| {
        timed(
            client()
                .post(graphql_url(&sandbox))
                .header("X-Shopify-Access-Token", SHOP_TOKEN)
                .json(&json!({ "query": ORDERS_PAGE })),
        )
    });
    let carrier = (0..n).map(|_| {
        timed(
            client()
                .get(format!("{}/v2/shipments/shp_x", sandbox.base_url()))
                .basic_auth(CARRIER_KEY, Some("")),
        )
    });
    let held = |results: Vec<(u16, Duration)>, normal: u16| {
        let mut held = 0;
        for (status, took) in results {
            if status == 504 {
                assert!(took >= Duration::from_millis(3000), "{took:?}");
                held += 1;
            } else {
                assert_eq!(status, normal);
            }
        }
        held
    };
    let channel_held = held(futures_join_all(channel).await, 200);
    let carrier_held = held(futures_join_all(carrier).await, 404);
    assert_share("channel hangs", channel_held, n, 0.2);
    assert_share("carrier hangs", carrier_held, n, 0.2);
    let stats = sandbox.stats();
    assert_eq!(stats.faults.channel.hang, channel_held);
    assert_eq!(stats.faults.carrier.hang, carrier_held);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_hang_outlasts_the_client_timeout_and_ends_when_the_sandbox_stops() {
    let mut faults = Faults::default();
    faults.channel.api.hang_rate = 1.0;
    let sandbox = start_with(faults, 1).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let result = impatient
        .post(graphql_url(&sandbox))
        .header("X-Shopify-Access-Token", SHOP_TOKEN)
        .json(&json!({ "query": ORDERS_PAGE }))
        .send()
        .await;
    assert!(result.is_err_and(|e| e.is_timeout()));
    // A patient client is still held (30 s by default) when the sandbox stops.
    let patient = tokio::spawn(
        client()
            .post(graphql_url(&sandbox))
            .header("X-Shopify-Access-Token", SHOP_TOKEN)
            .json(&json!({ "query": ORDERS_PAGE }))
            .send(),
    );
    while sandbox.stats().faults.channel.hang < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = std::time::Instant::now();
    sandbox.shutdown().await;
    assert!(stopping.elapsed() < Duration::from_secs(4));
    assert!(patient.await.unwrap().is_ok_and(|r| r.status() == 504));
}

/// Runs the futures concurrently and collects their results in order.
async fn futures_join_all<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        results.push(handle.await.unwrap());
    }
    results
}

#[tokio::test]
async fn latency_is_added_per_api() {
    let mut faults = Faults::default();
    faults.channel.api.latency_ms = 300;
    let sandbox = start_with(faults, 1).await;
    let started = std::time::Instant::now();
    raw_gql(&sandbox, ORDERS_PAGE).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    raw_carrier(&sandbox, Method::GET, "/v2/shipments/shp_x", None).await;
    let stats = sandbox.stats();
    assert_eq!(
        (stats.faults.channel.delayed, stats.faults.carrier.delayed),
        (1, 0)
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn malformed_pages_do_not_parse_and_mutations_are_never_malformed() {
    let mut faults = Faults::default();
    faults.channel.api.malformed_rate = 0.3;
    let sandbox = start_with(faults, 20).await;
    let n = 400;
    let mut malformed = 0;
    for _ in 0..n {
        let (status, _, body) = raw_gql(&sandbox, ORDERS_PAGE).await;
        assert_eq!(status, 200);
        malformed += u64::from(serde_json::from_str::<Value>(&body).is_err());
    }
    assert_share("malformed pages", malformed, n, 0.3);
    assert_eq!(sandbox.stats().faults.channel.malformed, malformed);

    // A mutation's answer stays whole (the fulfillment is created and said so).
    let orders = gql_all_orders_tolerant(&sandbox).await;
    let fo = orders[0]["fulfillmentOrders"]["nodes"][0]["id"].clone();
    let malformed = sandbox.stats().faults.channel.malformed;
    for _ in 0..20 {
        let (status, _, body) = raw_gql_with(
            &sandbox,
            FULFILLMENT_CREATE,
            json!({ "fulfillment": { "lineItemsByFulfillmentOrder": [{ "fulfillmentOrderId": fo }] } }),
        )
        .await;
        assert_eq!(status, 200);
        serde_json::from_str::<Value>(&body).expect("a mutation answer is JSON");
    }
    assert_eq!(sandbox.stats().faults.channel.malformed, malformed);
    sandbox.shutdown().await;
}

async fn raw_gql_with(
    sandbox: &Sandbox,
    query: &str,
    variables: Value,
) -> (u16, Option<String>, String) {
    let response = client()
        .post(graphql_url(sandbox))
        .header("X-Shopify-Access-Token", SHOP_TOKEN)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, None, response.text().await.unwrap())
}

/// Every order, asking again for a page that came back malformed.
async fn gql_all_orders_tolerant(sandbox: &Sandbox) -> Vec<Value> {
    let mut after: Option<String> = None;
    let mut orders = Vec::new();
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts < 500, "too many malformed pages");
        let (_, _, body) = raw_gql_with(
            sandbox,
            ORDERS_QUERY,
            json!({ "first": 50, "after": after }),
        )
        .await;
        let Ok(body) = serde_json::from_str::<Value>(&body) else {
            continue;
        };
        let connection = &body["data"]["orders"];
        for edge in connection["edges"].as_array().unwrap() {
            orders.push(edge["node"].clone());
        }
        if !connection["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            return orders;
        }
        after = connection["pageInfo"]["endCursor"]
            .as_str()
            .map(str::to_owned);
    }
}

#[tokio::test]
async fn malformed_carrier_answers_lose_only_the_answer_not_the_work() {
    let mut faults = Faults::default();
    faults.carrier.api.malformed_rate = 0.3;
    let sandbox = start_with(faults, 0).await;
    let n = 300;
    let mut malformed = 0;
    for i in 0..n {
        let (status, _, body) = raw_carrier(
            &sandbox,
            Method::POST,
            "/v2/shipments",
            Some(shipment_body(&format!("pkg-{i}"), "90277", 10.0)),
        )
        .await;
        assert_eq!(status, 201);
        malformed += u64::from(serde_json::from_str::<Value>(&body).is_err());
    }
    assert_share("malformed carrier answers", malformed, n, 0.3);
    let stats = sandbox.stats();
    assert_eq!(stats.faults.carrier.malformed, malformed);
    assert_eq!(stats.shipments_created, n);
    assert_eq!(stats.faults.channel.malformed, 0);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn orders_are_edited_or_cancelled_once_right_after_their_first_fetch() {
    let mut faults = Faults::default();
    faults.channel.edit_rate = 0.25;
    faults.channel.cancel_rate = 0.1;
    let n = 400;
    let sandbox = start_with(faults, n).await;
    // Paging by updatedAt, an order changed after its fetch shows up again
    // later in the same pass; the first version is the one fetched before.
    let mut before = BTreeMap::<String, Value>::new();
    for order in all_orders(&sandbox, 50, None).await {
        before
            .entry(order["id"].as_str().unwrap().to_owned())
            .or_insert(order);
    }
    assert_eq!(before.len(), n);
    assert!(before.values().all(|o| o["cancelledAt"].is_null()));
    let stats = sandbox.stats();
    let (edited, cancelled) = (stats.faults.channel.edited, stats.faults.channel.cancelled);
    assert_share("cancelled", cancelled, n as u64, 0.1);
    assert_share("edited", edited, n as u64, 0.25 * 0.9);
    assert_eq!(stats.orders_edited, edited);
    assert_eq!(stats.orders_cancelled, cancelled);

    let after = all_orders(&sandbox, 50, None).await;
    let (mut moved, mut now_cancelled) = (0, 0);
    let mut kinds = BTreeMap::<&str, u64>::new();
    for order in &after {
        let old = &before[order["id"].as_str().unwrap()];
        if order["updatedAt"] == old["updatedAt"] {
            assert_eq!(order, old);
            continue;
        }
        moved += 1;
        assert!(order["updatedAt"].as_str() > old["updatedAt"].as_str());
        if !order["cancelledAt"].is_null() {
            now_cancelled += 1;
            continue;
        }
        let lines = |o: &Value| o["lineItems"]["nodes"].as_array().unwrap().clone();
        let kind = if lines(order).len() > lines(old).len() {
            "line added"
        } else if order["shippingAddress"] != old["shippingAddress"] {
            "address"
        } else if lines(order) != lines(old) {
            "quantity"
        } else {
            panic!("updatedAt moved with nothing changed: {order}");
        };
        *kinds.entry(kind).or_default() += 1;
    }
    assert_eq!(moved, edited + cancelled);
    assert_eq!(now_cancelled, cancelled);
    assert_eq!(kinds.len(), 3, "{kinds:?}");

    // Each order changes once: a third fetch changes nothing more.
    all_orders(&sandbox, 50, None).await;
    let again = sandbox.stats();
    assert_eq!(
        (again.faults.channel.edited, again.faults.channel.cancelled),
        (edited, cancelled)
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn purchases_that_never_answer_still_sell_every_label() {
    let mut faults = Faults::default();
    faults.carrier.purchase_no_answer_rate = 0.4;
    faults.carrier.api.hang_ms = 2000;
    let sandbox = start_with(faults, 0).await;
    let n = 100;
    let mut buys = Vec::new();
    for i in 0..n {
        let shipment = create_shipment(&sandbox, &format!("pkg-{i}")).await;
        let rate = shipment["rates"][0]["id"].clone();
        let url = format!(
            "{}/v2/shipments/{}/buy",
            sandbox.base_url(),
            shipment["id"].as_str().unwrap()
        );
        buys.push(
            client()
                .post(url)
                .basic_auth(CARRIER_KEY, Some(""))
                .json(&json!({ "rate": { "id": rate } }))
                .send(),
        );
    }
    let mut unanswered = 0;
    for response in futures_join_all(buys.into_iter()).await {
        let response = response.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        if status == 504 {
            // Held, then no label in the answer.
            assert_eq!(body["error"]["code"], "GATEWAY_TIMEOUT");
            unanswered += 1;
        } else {
            assert_eq!(status, 200);
            assert!(body["postage_label"]["label_url"].is_string());
        }
    }
    assert_share("unanswered purchases", unanswered, n, 0.4);
    let stats = sandbox.stats();
    assert_eq!(stats.faults.carrier.purchase_no_answer, unanswered);
    assert_eq!(stats.labels_sold, n);
    assert!(stats.labels_per_reference.values().all(|&k| k == 1));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn faults_switch_at_run_time_over_http_and_from_rust() {
    let sandbox = start_with(Faults::default(), 2).await;
    let url = format!("{}/_sandbox/faults", sandbox.base_url());
    let set: Value = client()
        .post(&url)
        .json(&json!({
            "channel": { "server_error_rate": 1.0, "edit_rate": 0.5 },
            "carrier": { "rate_limit_rate": 1.0, "retry_after_secs": 7 },
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let read: Value = client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(set, read);
    assert_eq!(read["channel"]["server_error_rate"], 1.0);
    assert_eq!(read["channel"]["hang_ms"], 30_000);
    let faults = sandbox.faults();
    assert_eq!(faults.channel.api.server_error_rate, 1.0);
    assert_eq!(faults.channel.edit_rate, 0.5);
    assert_eq!(faults.carrier.api.retry_after_secs, 7);
    assert_eq!(raw_gql(&sandbox, ORDERS_PAGE).await.0, 503);
    let (status, retry_after, _) =
        raw_carrier(&sandbox, Method::GET, "/v2/shipments/shp_x", None).await;
    assert_eq!((status, retry_after.as_deref()), (429, Some("7")));

    // `{}` switches everything off.
    let off = client().post(&url).json(&json!({})).send().await.unwrap();
    assert_eq!(off.status(), 200);
    assert_eq!(sandbox.faults(), Faults::default());
    assert_eq!(raw_gql(&sandbox, ORDERS_PAGE).await.0, 200);

    // And from Rust.
    sandbox.set_faults(Faults::everywhere(ApiFaults {
        server_error_rate: 1.0,
        ..ApiFaults::default()
    }));
    assert_eq!(raw_gql(&sandbox, ORDERS_PAGE).await.0, 503);
    sandbox.set_faults(Faults::default());
    assert_eq!(raw_gql(&sandbox, ORDERS_PAGE).await.0, 200);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn the_same_seed_and_requests_give_the_same_faults() {
    async fn run() -> Vec<u16> {
        let faults = Faults::everywhere(ApiFaults {
            server_error_rate: 0.2,
            rate_limit_rate: 0.2,
            ..ApiFaults::default()
        });
        let sandbox = start_with(faults, 3).await;
        let mut statuses = Vec::new();
        for _ in 0..50 {
            statuses.push(raw_gql(&sandbox, ORDERS_PAGE).await.0);
            statuses.push(
                raw_carrier(&sandbox, Method::GET, "/v2/shipments/shp_x", None)
                    .await
                    .0,
            );
        }
        sandbox.shutdown().await;
        statuses
    }
    let (first, second) = (run().await, run().await);
    assert_eq!(first, second);
    assert!(first.contains(&500) && first.contains(&429));
}
