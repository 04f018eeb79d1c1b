//! The EasyPost-style carrier API over real HTTP.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use conveyor_sandbox::{ApiFaults, Faults, SandboxConfig};
use reqwest::Method;
use serde_json::{Value, json};

async fn buy(sandbox: &conveyor_sandbox::Sandbox, shipment: &Value, rate: &Value) -> (u16, Value) {
    let path = format!("/v2/shipments/{}/buy", shipment["id"].as_str().unwrap());
    easypost(
        sandbox,
        Method::POST,
        &path,
        Some(json!({ "rate": { "id": rate["id"] } })),
    )
    .await
}

fn cheapest(shipment: &Value) -> Value {
    shipment["rates"]
        .as_array()
        .unwrap()
        .iter()
        .min_by(|a, b| {
            let price = |r: &Value| r["rate"].as_str().unwrap().parse::<f64>().unwrap();
            price(a).total_cmp(&price(b))
        })
        .unwrap()
        .clone()
}

#[tokio::test]
async fn creating_a_shipment_returns_rates_from_at_least_three_carriers() {
    let sandbox = start(SandboxConfig::default()).await;
    let shipment = create_shipment(&sandbox, "pkg-1").await;
    assert!(shipment["id"].as_str().unwrap().starts_with("shp_"));
    assert_eq!(shipment["object"], "Shipment");
    assert_eq!(shipment["mode"], "test");
    assert_eq!(shipment["reference"], "pkg-1");
    assert_eq!(shipment["postage_label"], Value::Null);
    assert_eq!(shipment["tracking_code"], Value::Null);
    assert_eq!(shipment["selected_rate"], Value::Null);
    assert_eq!(shipment["messages"], json!([]));
    assert_eq!(shipment["to_address"]["object"], "Address");
    assert_eq!(shipment["parcel"]["weight"], 15.4);
    let rates = shipment["rates"].as_array().unwrap();
    let carriers: BTreeSet<&str> = rates
        .iter()
        .map(|r| r["carrier"].as_str().unwrap())
        .collect();
    let services: BTreeSet<&str> = rates
        .iter()
        .map(|r| r["service"].as_str().unwrap())
        .collect();
    assert!(carriers.len() >= 3, "{carriers:?}");
    assert!(services.len() >= 6, "{services:?}");
    for rate in rates {
        assert!(rate["id"].as_str().unwrap().starts_with("rate_"));
        assert_eq!(rate["object"], "Rate");
        assert_eq!(rate["shipment_id"], shipment["id"]);
        assert_eq!(rate["currency"], "USD");
        let price: f64 = rate["rate"].as_str().unwrap().parse().unwrap();
        let retail: f64 = rate["retail_rate"].as_str().unwrap().parse().unwrap();
        assert!(price > 0.0 && retail > price);
        assert!(rate["delivery_days"].as_u64().unwrap() >= 1);
        assert!(
            rate["carrier_account_id"]
                .as_str()
                .unwrap()
                .starts_with("ca_")
        );
    }
    let prices: BTreeSet<&str> = rates.iter().map(|r| r["rate"].as_str().unwrap()).collect();
    assert_eq!(prices.len(), rates.len(), "rates should differ");
    assert_eq!(sandbox.stats().shipments_created, 1);
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buying_twice_is_refused_with_postage_exists_and_counted() {
    let sandbox = start(SandboxConfig::default()).await;
    let shipment = create_shipment(&sandbox, "pkg-7").await;
    let rate = cheapest(&shipment);
    let (status, bought) = buy(&sandbox, &shipment, &rate).await;
    assert_eq!(status, 200, "{bought}");
    assert_eq!(bought["selected_rate"]["id"], rate["id"]);
    assert!(bought["tracking_code"].is_string());
    let label = &bought["postage_label"];
    assert_eq!(label["object"], "PostageLabel");
    assert!(label["id"].as_str().unwrap().starts_with("pl_"));
    assert_eq!(label["label_file_type"], "application/pdf");
    assert_eq!(label["label_size"], "4x6");
    assert!(
        label["label_url"]
            .as_str()
            .unwrap()
            .starts_with(&sandbox.base_url())
    );
    assert_eq!(label["label_pdf_url"], label["label_url"]);
    assert_eq!(bought["tracker"]["tracking_code"], bought["tracking_code"]);

    let other_rate = &shipment["rates"][1];
    let (status, refused) = buy(&sandbox, &shipment, other_rate).await;
    assert_eq!(status, 422);
    assert_eq!(
        refused,
        json!({ "error": { "code": "SHIPMENT.POSTAGE.EXISTS", "message": "Shipment already has postage.", "errors": [] } })
    );

    // Concurrent buys of a fresh shipment: exactly one label is sold.
    let fresh = create_shipment(&sandbox, "pkg-8").await;
    let rate_id = cheapest(&fresh)["id"].clone();
    let url = format!(
        "{}/v2/shipments/{}/buy",
        sandbox.base_url(),
        fresh["id"].as_str().unwrap()
    );
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let (url, rate_id) = (url.clone(), rate_id.clone());
            tokio::spawn(async move {
                client()
                    .post(url)
                    .basic_auth(CARRIER_KEY, Some(""))
                    .json(&json!({ "rate": { "id": rate_id } }))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for attempt in attempts {
        statuses.push(attempt.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 422).count(), 7);

    let stats = sandbox.stats();
    assert_eq!(stats.labels_sold, 2);
    assert_eq!(stats.duplicate_purchase_attempts, 8);
    assert_eq!(stats.labels_per_reference["pkg-7"], 1);
    assert_eq!(stats.labels_per_reference["pkg-8"], 1);
    assert!(stats.labels_per_shipment.values().all(|n| *n == 1));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn retrieving_shows_the_postage_and_works_by_reference() {
    let sandbox = start(SandboxConfig::default()).await;
    let shipment = create_shipment(&sandbox, "pkg-ref").await;
    let (_, bought) = buy(&sandbox, &shipment, &cheapest(&shipment)).await;
    let id = shipment["id"].as_str().unwrap();
    let (status, by_id) =
        easypost(&sandbox, Method::GET, &format!("/v2/shipments/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(by_id["tracking_code"], bought["tracking_code"]);
    assert_eq!(by_id["postage_label"]["id"], bought["postage_label"]["id"]);
    let tracker = client()
        .get(by_id["tracker"]["public_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(tracker.status(), 200);
    let (status, by_reference) =
        easypost(&sandbox, Method::GET, "/v2/shipments/pkg-ref", None).await;
    assert_eq!(status, 200);
    assert_eq!(by_reference["id"], shipment["id"]);
    let (status, missing) = easypost(&sandbox, Method::GET, "/v2/shipments/shp_nope", None).await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["code"], "NOT_FOUND");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_refund_is_submitted_once_and_a_second_refund_is_refused() {
    let sandbox = start(SandboxConfig::default()).await;
    let shipment = create_shipment(&sandbox, "pkg-r").await;
    let path = format!("/v2/shipments/{}/refund", shipment["id"].as_str().unwrap());
    let (status, body) = easypost(&sandbox, Method::POST, &path, Some(json!({}))).await;
    assert_eq!(status, 422, "no postage yet: {body}");
    buy(&sandbox, &shipment, &cheapest(&shipment)).await;
    let (status, refunded) = easypost(&sandbox, Method::POST, &path, Some(json!({}))).await;
    assert_eq!(status, 200);
    assert_eq!(refunded["refund_status"], "submitted");
    let (status, again) = easypost(&sandbox, Method::POST, &path, None).await;
    assert_eq!(status, 422);
    assert!(
        again["error"]["code"]
            .as_str()
            .unwrap()
            .starts_with("SHIPMENT.REFUND")
    );
    let stats = sandbox.stats();
    assert_eq!(stats.refunds, 1);
    assert_eq!(stats.labels_sold, 1);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn the_label_pdf_parses_with_lopdf_and_has_one_288_by_432_page() {
    let sandbox = start(SandboxConfig::default()).await;
    let shipment = create_shipment(&sandbox, "pkg-label").await;
    let (_, bought) = buy(&sandbox, &shipment, &cheapest(&shipment)).await;
    let url = bought["postage_label"]["label_url"].as_str().unwrap();
    let response = client().get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/pdf");
    let bytes = response.bytes().await.unwrap();
    let doc = lopdf::Document::load_mem(&bytes).unwrap();
    let pages = doc.get_pages();
    assert_eq!(pages.len(), 1);
    let page_id = *pages.values().next().unwrap();
    let page = doc.get_dictionary(page_id).unwrap();
    let media_box: Vec<f32> = page
        .get(b"MediaBox")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_float().unwrap())
        .collect();
    assert_eq!(media_box, vec![0.0, 0.0, 288.0, 432.0]);
    let text = doc.extract_text(&[1]).unwrap();
    for expected in [
        bought["tracking_code"].as_str().unwrap(),
        bought["selected_rate"]["carrier"].as_str().unwrap(),
        bought["selected_rate"]["service"].as_str().unwrap(),
        "pkg-label",
        "Elizabeth Swan",
    ] {
        assert!(text.contains(expected), "{expected:?} not in {text:?}");
    }
    let missing = client()
        .get(format!("{}/labels/pl_missing.pdf", sandbox.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn incomplete_shipments_and_undeliverable_addresses_get_easyposts_422s() {
    let sandbox = start(SandboxConfig::default()).await;
    let post = |body: Value| {
        let sandbox = &sandbox;
        async move { easypost(sandbox, Method::POST, "/v2/shipments", Some(body)).await }
    };
    let (status, body) = post(json!({ "shipment": {} })).await;
    assert_eq!(status, 422);
    assert_eq!(
        body,
        json!({ "error": { "code": "PARAMETER.REQUIRED", "message": "Missing required parameter.",
            "errors": [{ "field": "shipment", "message": "cannot be blank" }] } })
    );
    let mut no_to = shipment_body("x", "90277", 10.0);
    no_to["shipment"]
        .as_object_mut()
        .unwrap()
        .remove("to_address");
    let (status, body) = post(no_to).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("PARAMETER.REQUIRED"))
    );
    assert_eq!(body["error"]["errors"][0]["field"], "shipment.to_address");
    let mut no_parcel = shipment_body("x", "90277", 10.0);
    no_parcel["shipment"]
        .as_object_mut()
        .unwrap()
        .remove("parcel");
    assert_eq!(post(no_parcel).await.0, 422);
    let (status, body) = post(shipment_body("x", "90277", 0.0)).await;
    assert_eq!(status, 422);
    assert_eq!(
        body["error"]["errors"][0]["field"],
        "shipment.parcel.weight"
    );

    let (status, body) = post(shipment_body("x", "00000", 10.0)).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], "ADDRESS.VERIFY.FAILURE");
    let mut street = shipment_body("x", "90277", 10.0);
    street["shipment"]["to_address"]["street1"] = json!("1 Undeliverable Way");
    assert_eq!(
        post(street).await.1["error"]["code"],
        "ADDRESS.VERIFY.FAILURE"
    );

    let stats = sandbox.stats();
    assert_eq!(stats.shipments_created, 0);
    assert_eq!(stats.addresses_rejected, 2);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn an_unknown_rate_or_shipment_is_not_found() {
    let sandbox = start(SandboxConfig::default()).await;
    let shipment = create_shipment(&sandbox, "pkg-u").await;
    let (status, body) = buy(&sandbox, &shipment, &json!({ "id": "rate_unknown" })).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    let ghost = json!({ "id": "shp_ghost" });
    assert_eq!(buy(&sandbox, &ghost, &cheapest(&shipment)).await.0, 404);
    assert_eq!(sandbox.stats().labels_sold, 0);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_wrong_or_missing_carrier_key_gets_easyposts_401() {
    let sandbox = start(SandboxConfig::default()).await;
    let url = format!("{}/v2/shipments", sandbox.base_url());
    let body = shipment_body("x", "90277", 10.0);
    let wrong = client()
        .post(&url)
        .basic_auth("not-the-key", Some(""))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let error: Value = wrong.json().await.unwrap();
    assert_eq!(error["error"]["code"], "APIKEY.INACTIVE");
    assert_eq!(error["error"]["errors"], json!([]));
    let missing = client().post(&url).json(&body).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["error"]["code"], "APIKEY.REQUIRED");
    assert_eq!(sandbox.stats().shipments_created, 0);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_purchase_that_never_answers_still_sells_the_label() {
    let mut faults = Faults::default();
    faults.carrier.purchase_no_answer_rate = 1.0;
    faults.carrier.api.hang_ms = 1500;
    let sandbox = start(SandboxConfig {
        faults,
        ..SandboxConfig::default()
    })
    .await;
    let shipment = create_shipment(&sandbox, "pkg-t").await;
    let rate = cheapest(&shipment);
    let id = shipment["id"].as_str().unwrap();
    let result = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .post(format!("{}/v2/shipments/{id}/buy", sandbox.base_url()))
        .basic_auth(CARRIER_KEY, Some(""))
        .json(&json!({ "rate": { "id": rate["id"] } }))
        .send()
        .await;
    assert!(result.is_err_and(|e| e.is_timeout()));
    let (_, found) = easypost(&sandbox, Method::GET, &format!("/v2/shipments/{id}"), None).await;
    assert!(found["postage_label"]["label_url"].is_string());
    let stats = sandbox.stats();
    assert_eq!(
        (stats.labels_sold, stats.faults.carrier.purchase_no_answer),
        (1, 1)
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn injected_faults_answer_in_each_apis_shape() {
    let sandbox = start(SandboxConfig::default()).await;
    sandbox.set_faults(Faults::everywhere(ApiFaults {
        server_error_rate: 1.0,
        ..ApiFaults::default()
    }));
    let (status, body) = easypost(&sandbox, Method::GET, "/v2/shipments/shp_x", None).await;
    assert_eq!(status, 500);
    assert_eq!(body["error"]["code"], "INTERNAL_SERVER_ERROR");
    let shopify = client()
        .post(graphql_url(&sandbox))
        .header("X-Shopify-Access-Token", SHOP_TOKEN)
        .json(&json!({ "query": "{ orders(first: 1) { nodes { id } } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(shopify.status(), 503);

    // Faults can also be changed over HTTP.
    let post = client()
        .post(format!("{}/_sandbox/faults", sandbox.base_url()))
        .json(&json!({ "channel": { "rate_limit_rate": 1.0 }, "carrier": { "rate_limit_rate": 1.0 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 200);
    let limited = client()
        .post(format!("{}/v2/shipments", sandbox.base_url()))
        .basic_auth(CARRIER_KEY, Some(""))
        .json(&shipment_body("x", "90277", 1.0))
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "1");
    let throttled = client()
        .post(graphql_url(&sandbox))
        .header("X-Shopify-Access-Token", SHOP_TOKEN)
        .json(&json!({ "query": "{ orders(first: 1) { nodes { id } } }" }))
        .send()
        .await
        .unwrap();
    assert!([200, 429].contains(&throttled.status().as_u16()));
    assert_eq!(throttled.headers()["retry-after"], "1");
    let body: Value = throttled.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "THROTTLED");
    let stats = sandbox.stats();
    assert_eq!(stats.injected_faults, 4);
    assert_eq!(
        (
            stats.faults.channel.server_error,
            stats.faults.channel.rate_limited
        ),
        (1, 1)
    );
    assert_eq!(
        (
            stats.faults.carrier.server_error,
            stats.faults.carrier.rate_limited
        ),
        (1, 1)
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_one_call_buy_sells_the_named_service_at_creation() {
    let sandbox = start(SandboxConfig::default()).await;
    let mut body = shipment_body("pkg-one", "10001", 20.0);
    body["shipment"]["carrier"] = json!("UPS");
    body["shipment"]["service"] = json!("Ground");
    let (status, shipment) = easypost(&sandbox, Method::POST, "/v2/shipments", Some(body)).await;
    assert_eq!(status, 201, "{shipment}");
    assert_eq!(shipment["selected_rate"]["carrier"], "UPS");
    assert!(
        shipment["tracking_code"]
            .as_str()
            .unwrap()
            .starts_with("1Z")
    );
    assert_eq!(sandbox.stats().labels_per_reference["pkg-one"], 1);
    sandbox.shutdown().await;
}
