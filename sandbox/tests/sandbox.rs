//! The sandbox as a whole: stats, health, latency, catalog, order generation over
//! time, and control endpoints.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use conveyor_sandbox::{ApiFaults, Faults, SandboxConfig, ShopifyLimits, Stats, read_catalog_csv};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn the_stats_endpoint_serves_the_same_data_as_the_library_and_health_is_ok() {
    let sandbox = start(SandboxConfig {
        orders: 4,
        ..SandboxConfig::default()
    })
    .await;
    let health = client()
        .get(format!("{}/healthz", sandbox.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    create_shipment(&sandbox, "pkg-s").await;
    gql(&sandbox, "{ orders(first: 2) { nodes { id } } }", json!({})).await;
    let over_http: Stats = client()
        .get(format!("{}/_sandbox/stats", sandbox.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Requests are counted as they arrive, so the stats request counted itself.
    let direct = sandbox.stats();
    assert_eq!(over_http, direct);
    assert_eq!(direct.requests["GET /_sandbox/stats"], 1);
    assert_eq!(over_http.orders_created, 4);
    assert_eq!(over_http.shipments_created, 1);
    assert_eq!(over_http.requests["POST /v2/shipments"], 1);
    assert_eq!(
        over_http.requests["POST /admin/api/2025-01/graphql.json"],
        1
    );
    assert_eq!(over_http.requests["graphql orders"], 1);
    assert_eq!(over_http.requests["GET /healthz"], 1);
    assert_eq!(over_http.ordered_per_line.len(), {
        let orders = all_orders(&sandbox, 4, None).await;
        orders
            .iter()
            .map(|o| o["lineItems"]["nodes"].as_array().unwrap().len())
            .sum::<usize>()
    });
    sandbox.shutdown().await;
}

#[tokio::test]
async fn latency_delays_every_api_response() {
    let sandbox = start(SandboxConfig {
        faults: Faults::everywhere(ApiFaults {
            latency_ms: 200,
            ..ApiFaults::default()
        }),
        ..SandboxConfig::default()
    })
    .await;
    let started = Instant::now();
    gql(&sandbox, "{ orders(first: 1) { nodes { id } } }", json!({})).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    let started = Instant::now();
    easypost(&sandbox, Method::GET, "/v2/shipments/shp_x", None).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_catalog_csv_limits_the_skus_of_generated_orders() {
    let path = std::env::temp_dir().join(format!("sandbox-catalog-{}.csv", std::process::id()));
    std::fs::write(
        &path,
        "sku,name,weight_g\nMUG-BLUE,Blue mug,350\nTEE-M,\"Tee, medium\",180\nCAP-1,Cap,90\n",
    )
    .unwrap();
    let catalog = read_catalog_csv(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(catalog[1], ("TEE-M".to_owned(), "Tee, medium".to_owned()));
    let sandbox = start(SandboxConfig {
        orders: 25,
        catalog: catalog.clone(),
        shopify_limits: ShopifyLimits::unlimited(),
        ..SandboxConfig::default()
    })
    .await;
    let allowed: BTreeSet<&str> = catalog.iter().map(|(sku, _)| sku.as_str()).collect();
    let orders = all_orders(&sandbox, 25, None).await;
    let mut used = BTreeSet::new();
    for order in &orders {
        for line in order["lineItems"]["nodes"].as_array().unwrap() {
            let sku = line["sku"].as_str().unwrap().to_owned();
            assert!(allowed.contains(sku.as_str()), "{sku}");
            let name = catalog.iter().find(|(s, _)| *s == sku).unwrap().1.clone();
            assert_eq!(line["name"], name.as_str());
            used.insert(sku);
        }
    }
    assert_eq!(used.len(), 3);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn orders_per_minute_keeps_creating_orders_until_shutdown() {
    let sandbox = start(SandboxConfig {
        orders_per_minute: 1200.0, // one every 50 ms
        ..SandboxConfig::default()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let created = sandbox.stats().orders_created;
    assert!((4..=20).contains(&created), "{created}");
    let stats_before = sandbox.stats();
    sandbox.add_orders(2);
    assert!(sandbox.stats().orders_created >= stats_before.orders_created + 2);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn control_endpoints_add_cancel_and_edit_orders() {
    let sandbox = start(SandboxConfig {
        orders: 1,
        ..SandboxConfig::default()
    })
    .await;
    let base = sandbox.base_url();
    let added: serde_json::Value = client()
        .post(format!("{base}/_sandbox/orders"))
        .json(&json!({ "count": 3 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(added["orders_created"], 4);
    let orders = all_orders(&sandbox, 4, None).await;
    let id = orders[0]["legacyResourceId"].as_str().unwrap();
    let cancel = client()
        .post(format!("{base}/_sandbox/orders/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 204);
    let again = client()
        .post(format!("{base}/_sandbox/orders/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    let other = orders[1]["legacyResourceId"].as_str().unwrap();
    let edit = client()
        .post(format!("{base}/_sandbox/orders/{other}/edit"))
        .send()
        .await
        .unwrap();
    assert_eq!(edit.status(), 204);
    let stats = sandbox.stats();
    assert_eq!((stats.orders_cancelled, stats.orders_edited), (1, 1));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn malformed_orders_lack_an_address_or_a_sku_or_have_a_negative_quantity() {
    let mut faults = Faults::default();
    faults.channel.malformed_order_rate = 1.0;
    let sandbox = start(SandboxConfig {
        orders: 40,
        faults,
        shopify_limits: ShopifyLimits::unlimited(),
        ..SandboxConfig::default()
    })
    .await;
    let orders = all_orders(&sandbox, 20, None).await;
    let mut kinds = BTreeSet::new();
    for order in &orders {
        let first_line = &order["lineItems"]["nodes"][0];
        let kind = if order["shippingAddress"].is_null() {
            "no address"
        } else if first_line["sku"].is_null() {
            "no sku"
        } else if first_line["quantity"].as_i64().unwrap() < 0 {
            "negative quantity"
        } else {
            panic!("a well-formed order: {order}");
        };
        kinds.insert(kind);
    }
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert_eq!(sandbox.stats().faults.channel.malformed_order, 40);
    sandbox.shutdown().await;
}
