//! The Shopify-style Admin GraphQL API over real HTTP.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use apollo_compiler::schema::ExtendedType;
use apollo_compiler::{ExecutableDocument, Schema};
use common::*;
use conveyor_sandbox::{SCHEMA_SDL, SandboxConfig, ShopifyLimits};
use serde::Deserialize;
use serde_json::{Value, json};

fn config(orders: usize) -> SandboxConfig {
    SandboxConfig {
        orders,
        shopify_limits: ShopifyLimits::unlimited(),
        ..SandboxConfig::default()
    }
}

fn ids(orders: &[Value]) -> Vec<String> {
    orders
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn paginating_with_first_and_after_returns_every_order_exactly_once() {
    let sandbox = start(config(95)).await;
    let orders = all_orders(&sandbox, 10, None).await;
    let unique: BTreeSet<String> = ids(&orders).into_iter().collect();
    assert_eq!(orders.len(), 95);
    assert_eq!(unique.len(), 95);
    // Sorted by updatedAt ascending.
    let times: Vec<&str> = orders
        .iter()
        .map(|o| o["updatedAt"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));

    // The updated_at filter (quoted and unquoted) returns exactly the later orders.
    let since = times[40];
    let expected: BTreeSet<String> = orders
        .iter()
        .filter(|o| o["updatedAt"].as_str().unwrap() >= since)
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    for query in [
        format!("updated_at:>={since}"),
        format!("updated_at:>='{since}'"),
    ] {
        let filtered = all_orders(&sandbox, 7, Some(&query)).await;
        assert_eq!(filtered.len(), expected.len(), "{query}");
        assert_eq!(
            ids(&filtered).into_iter().collect::<BTreeSet<_>>(),
            expected
        );
    }
    let before = all_orders(&sandbox, 50, Some(&format!("updated_at:<{since}"))).await;
    assert_eq!(before.len() + expected.len(), 95);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn orders_created_while_paginating_are_still_returned_exactly_once() {
    let sandbox = start(config(30)).await;
    let first = gql(&sandbox, ORDERS_QUERY, json!({ "first": 10 })).await;
    let mut seen = ids(&first["data"]["orders"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .collect::<Vec<_>>());
    sandbox.add_orders(5);
    let mut after = first["data"]["orders"]["pageInfo"]["endCursor"].clone();
    loop {
        let page = gql(
            &sandbox,
            ORDERS_QUERY,
            json!({ "first": 10, "after": after }),
        )
        .await;
        let connection = &page["data"]["orders"];
        for edge in connection["edges"].as_array().unwrap() {
            seen.push(edge["node"]["id"].as_str().unwrap().to_owned());
        }
        if !connection["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            break;
        }
        after = connection["pageInfo"]["endCursor"].clone();
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(seen.len(), 35);
    assert_eq!(unique.len(), 35);
    assert_eq!(sandbox.stats().orders_created, 35);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn sort_keys_and_reverse_change_the_order() {
    let sandbox = start(config(12)).await;
    let query = r#"query($key: OrderSortKeys, $reverse: Boolean) {
        orders(first: 50, sortKey: $key, reverse: $reverse) { nodes { legacyResourceId } } }"#;
    let numbers = |body: Value| -> Vec<u64> {
        body["data"]["orders"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["legacyResourceId"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    let ascending = numbers(gql(&sandbox, query, json!({ "key": "ID" })).await);
    let descending = numbers(gql(&sandbox, query, json!({ "key": "ID", "reverse": true })).await);
    assert_eq!(ascending.len(), 12);
    assert!(ascending.windows(2).all(|w| w[0] < w[1]));
    let mut reversed = ascending.clone();
    reversed.reverse();
    assert_eq!(descending, reversed);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn the_response_contains_only_the_selected_fields_and_aliases_work() {
    let sandbox = start(config(3)).await;
    let query = r#"
        query {
          orders(first: 2) {
            edges { node { ...OrderBits number: name __typename } }
            pageInfo { hasNextPage }
          }
        }
        fragment OrderBits on Order {
          id
          ... on Order { address: shippingAddress { city } }
          items: lineItems(first: 1) { nodes { sku } }
        }
    "#;
    let body = gql(&sandbox, query, json!({})).await;
    assert!(body.get("errors").is_none(), "{body}");
    let orders = &body["data"]["orders"];
    let keys = |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(orders), ["edges", "pageInfo"].map(String::from).into());
    assert_eq!(
        keys(&orders["pageInfo"]),
        ["hasNextPage"].map(String::from).into()
    );
    let edges = orders["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 2);
    let node = &edges[0]["node"];
    assert_eq!(
        keys(node),
        ["id", "address", "items", "number", "__typename"]
            .map(String::from)
            .into()
    );
    assert_eq!(node["__typename"], "Order");
    assert!(node["number"].as_str().unwrap().starts_with('#'));
    assert_eq!(keys(&node["address"]), ["city"].map(String::from).into());
    assert_eq!(keys(&node["items"]), ["nodes"].map(String::from).into());
    assert_eq!(
        keys(&node["items"]["nodes"][0]),
        ["sku"].map(String::from).into()
    );
    // Shopify's cost block is there.
    let cost = &body["extensions"]["cost"];
    assert!(cost["requestedQueryCost"].as_u64().unwrap() > 0);
    assert!(cost["actualQueryCost"].as_u64().unwrap() > 0);
    assert_eq!(cost["throttleStatus"]["maximumAvailable"], 2000.0);
    assert_eq!(cost["throttleStatus"]["restoreRate"], 100.0);
    assert!(cost["throttleStatus"]["currentlyAvailable"].is_number());
    sandbox.shutdown().await;
}

#[tokio::test]
async fn response_fields_come_in_the_order_they_were_selected() {
    let sandbox = start(config(1)).await;
    let text = client()
        .post(graphql_url(&sandbox))
        .header("X-Shopify-Access-Token", SHOP_TOKEN)
        .json(
            &json!({ "query": "{ orders(first: 1) { nodes { updatedAt zeta: name email id } } }" }),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = |key: &str| {
        text.find(&format!("\"{key}\":"))
            .unwrap_or_else(|| panic!("{key} in {text}"))
    };
    assert!(at("updatedAt") < at("zeta") && at("zeta") < at("email") && at("email") < at("id"));
    assert!(at("data") < at("extensions"));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn unknown_fields_and_oversized_pages_are_graphql_errors_without_data() {
    let sandbox = start(config(1)).await;
    let body = gql(
        &sandbox,
        "{ orders(first: 1) { nodes { id nope } } }",
        json!({}),
    )
    .await;
    assert!(body.get("data").is_none(), "{body}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "undefinedField");
    assert_eq!(
        body["errors"][0]["message"],
        "Field 'nope' doesn't exist on type 'Order'"
    );
    assert!(body["errors"][0]["locations"][0]["line"].is_number());

    let body = gql(
        &sandbox,
        "{ orders(first: 251) { nodes { id } } }",
        json!({}),
    )
    .await;
    assert!(body.get("data").is_none(), "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("250")
    );

    let body = gql(&sandbox, "{ orders { nodes { id } } }", json!({})).await;
    assert_eq!(
        body["errors"][0]["message"],
        "you must provide one of first or last"
    );

    let body = gql(&sandbox, "{ orders(first: 1) { nodes { id } ", json!({})).await;
    assert!(body["errors"][0]["message"].is_string(), "{body}");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_wrong_shop_token_gets_shopifys_401() {
    let sandbox = start(config(1)).await;
    for token in [Some("wrong"), None] {
        let mut request = client()
            .post(graphql_url(&sandbox))
            .json(&json!({ "query": "{ orders(first: 1) { nodes { id } } }" }));
        if let Some(token) = token {
            request = request.header("X-Shopify-Access-Token", token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({ "errors": "[API] Invalid API key or access token (unrecognized login or wrong password)" })
        );
    }
    sandbox.shutdown().await;
}

async fn first_fulfillment_order(sandbox: &conveyor_sandbox::Sandbox) -> (Value, Value) {
    let body = gql(sandbox, ORDERS_QUERY, json!({ "first": 1 })).await;
    let order = body["data"]["orders"]["edges"][0]["node"].clone();
    let fo = order["fulfillmentOrders"]["nodes"][0].clone();
    (order, fo)
}

#[tokio::test]
async fn fulfillment_create_decrements_remaining_and_refuses_over_fulfilment() {
    let sandbox = start(config(1)).await;
    let (order, fo) = first_fulfillment_order(&sandbox).await;
    let line = &fo["lineItems"]["nodes"][0];
    let total = line["totalQuantity"].as_i64().unwrap();
    let line_gid = line["lineItem"]["id"].as_str().unwrap().to_owned();

    // Fulfil one unit of the first line.
    let one = json!({ "fulfillment": {
        "lineItemsByFulfillmentOrder": [{
            "fulfillmentOrderId": fo["id"],
            "fulfillmentOrderLineItems": [{ "id": line["id"], "quantity": 1 }],
        }],
        "trackingInfo": { "company": "USPS", "number": "9400100000000000000001", "url": "https://tools.usps.com/t" },
        "notifyCustomer": false,
    }});
    let body = gql(&sandbox, FULFILLMENT_CREATE, one).await;
    assert!(body.get("errors").is_none(), "{body}");
    let payload = &body["data"]["fulfillmentCreate"];
    assert_eq!(payload["userErrors"], json!([]), "{body}");
    assert!(
        payload["fulfillment"]["id"]
            .as_str()
            .unwrap()
            .starts_with("gid://shopify/Fulfillment/")
    );
    assert_eq!(payload["fulfillment"]["status"], "SUCCESS");
    assert_eq!(
        payload["fulfillment"]["trackingInfo"],
        json!([{ "company": "USPS", "number": "9400100000000000000001", "url": "https://tools.usps.com/t" }])
    );
    assert_eq!(body["extensions"]["cost"]["requestedQueryCost"], 10);
    let (_, fo_after) = first_fulfillment_order(&sandbox).await;
    assert_eq!(
        fo_after["lineItems"]["nodes"][0]["remainingQuantity"]
            .as_i64()
            .unwrap(),
        total - 1
    );
    assert_eq!(sandbox.stats().fulfilled_per_line[&line_gid], 1);

    // Asking for more than remains is refused and changes nothing.
    let too_many = json!({ "fulfillment": { "lineItemsByFulfillmentOrder": [{
        "fulfillmentOrderId": fo["id"],
        "fulfillmentOrderLineItems": [{ "id": line["id"], "quantity": total }],
    }]}});
    let body = gql(&sandbox, FULFILLMENT_CREATE, too_many).await;
    assert!(body.get("errors").is_none(), "{body}");
    let payload = &body["data"]["fulfillmentCreate"];
    assert_eq!(payload["fulfillment"], Value::Null);
    assert_eq!(
        payload["userErrors"],
        json!([{ "field": ["fulfillment"], "message": "Invalid fulfillment order line item quantity requested." }])
    );
    let stats = sandbox.stats();
    assert_eq!(stats.over_fulfillment_attempts, 1);
    assert_eq!(stats.fulfilled_per_line[&line_gid], 1);

    // Omitting the line items fulfils everything left and closes the order.
    let rest = json!({ "fulfillment": { "lineItemsByFulfillmentOrder": [{ "fulfillmentOrderId": fo["id"] }] } });
    let body = gql(&sandbox, FULFILLMENT_CREATE, rest.clone()).await;
    assert_eq!(body["data"]["fulfillmentCreate"]["userErrors"], json!([]));
    let (order_after, fo_after) = first_fulfillment_order(&sandbox).await;
    assert_eq!(fo_after["status"], "CLOSED");
    assert_eq!(order_after["displayFulfillmentStatus"], "FULFILLED");
    let stats = sandbox.stats();
    for line in order["lineItems"]["nodes"].as_array().unwrap() {
        let gid = line["id"].as_str().unwrap();
        assert_eq!(stats.fulfilled_per_line[gid], stats.ordered_per_line[gid]);
        assert_eq!(
            i64::from(stats.ordered_per_line[gid]),
            line["quantity"].as_i64().unwrap()
        );
    }
    assert_eq!(stats.fulfillments_created, 2);

    // Fulfilling a closed fulfillment order again is refused like Shopify does.
    let body = gql(&sandbox, FULFILLMENT_CREATE, rest).await;
    let message = body["data"]["fulfillmentCreate"]["userErrors"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.ends_with("has an unfulfillable status= closed."),
        "{message}"
    );
    assert_eq!(sandbox.stats().over_fulfillment_attempts, 2);
    sandbox.shutdown().await;
}

fn strip_times(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for key in [
                "createdAt",
                "updatedAt",
                "processedAt",
                "orderProcessedAt",
                "fulfillAt",
            ] {
                map.remove(key);
            }
            map.values_mut().for_each(strip_times);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_times),
        _ => {}
    }
}

#[tokio::test]
async fn the_same_seed_gives_the_same_orders() {
    let fetch = |seed: u64| async move {
        let sandbox = start(SandboxConfig { seed, ..config(20) }).await;
        let mut orders = all_orders(&sandbox, 10, None).await;
        sandbox.shutdown().await;
        orders.iter_mut().for_each(strip_times);
        orders
    };
    let a = fetch(7).await;
    let b = fetch(7).await;
    let c = fetch(8).await;
    assert_eq!(a.len(), 20);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

// What an adapter would deserialize; every order served must fit it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct Order {
    id: String,
    legacy_resource_id: String,
    name: String,
    created_at: chrono::DateTime<chrono::FixedOffset>,
    updated_at: chrono::DateTime<chrono::FixedOffset>,
    cancelled_at: Option<chrono::DateTime<chrono::FixedOffset>>,
    display_fulfillment_status: String,
    email: Option<String>,
    currency_code: String,
    tags: Vec<String>,
    shipping_address: Option<MailingAddress>,
    shipping_lines: Nodes<ShippingLine>,
    line_items: Nodes<LineItem>,
    fulfillment_orders: Nodes<FulfillmentOrder>,
}

#[derive(Debug, Deserialize)]
struct Nodes<T> {
    nodes: Vec<T>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct MailingAddress {
    name: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    address1: Option<String>,
    address2: Option<String>,
    city: Option<String>,
    province: Option<String>,
    province_code: Option<String>,
    zip: Option<String>,
    country: Option<String>,
    country_code_v2: Option<String>,
    phone: Option<String>,
    latitude: Option<f64>,
    longitude: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct ShippingLine {
    title: String,
    code: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct LineItem {
    id: String,
    sku: Option<String>,
    name: String,
    quantity: u32,
    current_quantity: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct FulfillmentOrder {
    id: String,
    status: String,
    line_items: Nodes<FulfillmentOrderLineItem>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct FulfillmentOrderLineItem {
    id: String,
    total_quantity: u32,
    remaining_quantity: u32,
    line_item: LineItemRef,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct LineItemRef {
    id: String,
    sku: Option<String>,
}

#[tokio::test]
async fn every_served_order_deserializes_with_a_broad_selection() {
    let sandbox = start(config(60)).await;
    let orders = all_orders(&sandbox, 13, None).await;
    assert_eq!(orders.len(), 60);
    let shipping_titles = ["Standard", "Express", "Overnight"];
    let mut titles = BTreeMap::<String, usize>::new();
    for raw in orders {
        let order: Order =
            serde_json::from_value(raw.clone()).unwrap_or_else(|e| panic!("{e}: {raw}"));
        assert!(order.id.starts_with("gid://shopify/Order/"));
        assert!(order.name.starts_with('#'));
        assert_eq!(order.currency_code, "USD");
        assert_eq!(order.display_fulfillment_status, "UNFULFILLED");
        let address = order.shipping_address.unwrap();
        assert_eq!(address.country_code_v2.as_deref(), Some("US"));
        assert!(address.latitude.is_some() && address.zip.is_some());
        let line = &order.shipping_lines.nodes[0];
        assert!(shipping_titles.contains(&line.title.as_str()));
        assert_eq!(line.code.as_deref(), Some(line.title.as_str()));
        *titles.entry(line.title.clone()).or_default() += 1;
        assert!((1..=4).contains(&order.line_items.nodes.len()));
        let fo = &order.fulfillment_orders.nodes[0];
        assert_eq!(fo.status, "OPEN");
        for (line, fo_line) in order.line_items.nodes.iter().zip(&fo.line_items.nodes) {
            assert!((1..=3).contains(&line.quantity));
            assert_eq!(fo_line.line_item.id, line.id);
            assert_eq!(fo_line.remaining_quantity, line.quantity);
            assert!(line.sku.as_deref().unwrap().starts_with("SKU-"));
        }
    }
    assert!(
        titles["Standard"] > titles.values().sum::<usize>() / 2,
        "{titles:?}"
    );
    sandbox.shutdown().await;
}

fn real_schema() -> apollo_compiler::validation::Valid<Schema> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/api/shopify-admin-2025-01.graphql");
    let sdl = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    Schema::parse_and_validate(sdl, &path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_representative_documents_validate_against_the_real_shopify_schema() {
    let schema = real_schema();
    for document in [ORDERS_QUERY, FULFILLMENT_CREATE] {
        ExecutableDocument::parse_and_validate(&schema, document, "document.graphql")
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn the_sandbox_schema_is_a_subset_of_the_real_shopify_schema() {
    let real = real_schema();
    let ours = Schema::parse_and_validate(SCHEMA_SDL, "sandbox.graphql").unwrap();
    let mut problems = Vec::new();
    for (name, ty) in &ours.types {
        if ty.is_built_in() {
            continue;
        }
        let Some(theirs) = real.types.get(name) else {
            problems.push(format!("type {name} is not in the real schema"));
            continue;
        };
        match (ty, theirs) {
            (ExtendedType::Object(a), ExtendedType::Object(b)) => {
                for interface in &a.implements_interfaces {
                    if !b.implements_interfaces.contains(interface) {
                        problems.push(format!("{name} does not implement {}", interface.name));
                    }
                }
                compare_fields(name, &a.fields, &b.fields, &mut problems);
            }
            (ExtendedType::Interface(a), ExtendedType::Interface(b)) => {
                compare_fields(name, &a.fields, &b.fields, &mut problems);
            }
            (ExtendedType::Enum(a), ExtendedType::Enum(b)) => {
                for value in a.values.keys() {
                    if !b.values.contains_key(value) {
                        problems.push(format!("{name}.{value} is not a real enum value"));
                    }
                }
            }
            (ExtendedType::InputObject(a), ExtendedType::InputObject(b)) => {
                for (field, def) in &a.fields {
                    match b.fields.get(field) {
                        Some(real) if real.ty == def.ty => {}
                        Some(real) => {
                            problems.push(format!("{name}.{field}: {} vs {}", def.ty, real.ty))
                        }
                        None => problems.push(format!("{name}.{field} is not a real input field")),
                    }
                }
            }
            (ExtendedType::Scalar(_), ExtendedType::Scalar(_)) => {}
            _ => problems.push(format!("{name} is a different kind of type")),
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

fn compare_fields(
    type_name: &str,
    ours: &apollo_compiler::collections::IndexMap<
        apollo_compiler::Name,
        apollo_compiler::schema::Component<apollo_compiler::schema::FieldDefinition>,
    >,
    theirs: &apollo_compiler::collections::IndexMap<
        apollo_compiler::Name,
        apollo_compiler::schema::Component<apollo_compiler::schema::FieldDefinition>,
    >,
    problems: &mut Vec<String>,
) {
    for (field, def) in ours {
        let Some(real) = theirs.get(field) else {
            problems.push(format!("{type_name}.{field} is not a real field"));
            continue;
        };
        if real.ty != def.ty {
            problems.push(format!(
                "{type_name}.{field}: {} vs real {}",
                def.ty, real.ty
            ));
        }
        for argument in &def.arguments {
            match real.argument_by_name(&argument.name) {
                Some(r) if r.ty == argument.ty => {}
                Some(r) => problems.push(format!(
                    "{type_name}.{field}({}): {} vs real {}",
                    argument.name, argument.ty, r.ty
                )),
                None => problems.push(format!(
                    "{type_name}.{field}({}) is not real",
                    argument.name
                )),
            }
        }
    }
}

#[tokio::test]
async fn queries_are_throttled_when_the_cost_bucket_runs_dry() {
    let sandbox = start(SandboxConfig {
        orders: 5,
        shopify_limits: ShopifyLimits {
            bucket_size: 30.0,
            restore_rate: 0.5,
            ..ShopifyLimits::default()
        },
        ..SandboxConfig::default()
    })
    .await;
    let query = "{ orders(first: 5) { nodes { id } } }"; // requested 2 + 5 = 7
    let mut throttled = None;
    for _ in 0..10 {
        let body = gql(&sandbox, query, json!({})).await;
        if body.get("errors").is_some() {
            throttled = Some(body);
            break;
        }
        assert_eq!(body["extensions"]["cost"]["requestedQueryCost"], 7);
        assert_eq!(body["extensions"]["cost"]["actualQueryCost"], 7);
    }
    let body = throttled.expect("never throttled");
    assert_eq!(body["errors"][0]["extensions"]["code"], "THROTTLED");
    assert!(body.get("data").is_none());
    assert!(
        body["extensions"]["cost"]["throttleStatus"]["currentlyAvailable"]
            .as_f64()
            .unwrap()
            < 7.0
    );

    let big = "{ orders(first: 250) { nodes { id lineItems(first: 250) { nodes { sku } } } } }";
    let body = gql(&sandbox, big, json!({})).await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "MAX_COST_EXCEEDED");
    assert!(sandbox.stats().throttled_requests >= 2);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn cancelled_and_edited_orders_move_to_the_end_of_an_updated_at_query() {
    let sandbox = start(config(10)).await;
    let orders = all_orders(&sandbox, 10, None).await;
    let last = orders.last().unwrap()["updatedAt"]
        .as_str()
        .unwrap()
        .to_owned();
    let first_id = orders[0]["id"].as_str().unwrap().to_owned();
    let second_id = orders[1]["legacyResourceId"].as_str().unwrap().to_owned();
    assert!(sandbox.cancel_order(&first_id));
    assert!(sandbox.edit_order(&second_id));
    let changed = all_orders(&sandbox, 10, Some(&format!("updated_at:>={last}"))).await;
    let changed_ids = ids(&changed);
    assert!(changed_ids.contains(&first_id));
    let cancelled = changed
        .iter()
        .find(|o| o["id"] == first_id.as_str())
        .unwrap();
    assert!(cancelled["cancelledAt"].is_string());
    assert_eq!(
        cancelled["fulfillmentOrders"]["nodes"][0]["status"],
        "CLOSED"
    );
    let edited = changed
        .iter()
        .find(|o| o["legacyResourceId"] == second_id.as_str())
        .unwrap();
    let before = orders[1]["lineItems"]["nodes"][0]["quantity"]
        .as_i64()
        .unwrap();
    assert_eq!(
        edited["lineItems"]["nodes"][0]["quantity"]
            .as_i64()
            .unwrap(),
        before + 1
    );
    let stats = sandbox.stats();
    assert_eq!((stats.orders_cancelled, stats.orders_edited), (1, 1));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn single_objects_can_be_fetched_by_id_and_through_node() {
    let sandbox = start(config(2)).await;
    let orders = all_orders(&sandbox, 2, None).await;
    let id = orders[1]["id"].as_str().unwrap();
    let fo_id = orders[1]["fulfillmentOrders"]["nodes"][0]["id"]
        .as_str()
        .unwrap();
    let body = gql(
        &sandbox,
        r#"query($id: ID!, $fo: ID!) {
            order(id: $id) { name }
            node(id: $fo) { __typename ... on FulfillmentOrder { status orderId } }
            missing: order(id: "gid://shopify/Order/1") { name }
        }"#,
        json!({ "id": id, "fo": fo_id }),
    )
    .await;
    assert!(body.get("errors").is_none(), "{body}");
    assert_eq!(body["data"]["order"]["name"], orders[1]["name"]);
    assert_eq!(body["data"]["node"]["__typename"], "FulfillmentOrder");
    assert_eq!(body["data"]["node"]["orderId"], id);
    assert_eq!(body["data"]["missing"], Value::Null);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn an_orders_fulfillments_are_read_back_with_their_tracking_numbers() {
    let sandbox = start(config(1)).await;
    let (order, fo) = first_fulfillment_order(&sandbox).await;
    let line = &fo["lineItems"]["nodes"][0];
    let query = "query OrderFulfillments($id: ID!, $first: Int!) {
  order(id: $id) {
    id
    fulfillments(first: $first) {
      id
      status
      trackingInfo(first: 5) { number }
    }
  }
}";
    let body = gql(&sandbox, query, json!({ "id": order["id"], "first": 10 })).await;
    assert_eq!(body["data"]["order"]["fulfillments"], json!([]), "{body}");
    assert_eq!(body["extensions"]["cost"]["requestedQueryCost"], 61);

    let one = json!({ "fulfillment": {
        "lineItemsByFulfillmentOrder": [{
            "fulfillmentOrderId": fo["id"],
            "fulfillmentOrderLineItems": [{ "id": line["id"], "quantity": 1 }],
        }],
        "trackingInfo": { "company": "USPS", "number": "9400100000000000000042" },
    }});
    let created = gql(&sandbox, FULFILLMENT_CREATE, one).await;
    let id = created["data"]["fulfillmentCreate"]["fulfillment"]["id"].clone();
    assert!(id.is_string(), "{created}");

    let body = gql(&sandbox, query, json!({ "id": order["id"], "first": 10 })).await;
    assert_eq!(
        body["data"]["order"]["fulfillments"],
        json!([{ "id": id, "status": "SUCCESS", "trackingInfo": [{ "number": "9400100000000000000042" }] }])
    );
    let stats = sandbox.stats();
    assert_eq!(
        stats.fulfillments_per_tracking_number,
        BTreeMap::from([("9400100000000000000042".to_owned(), 1)])
    );
    sandbox.shutdown().await;
}
