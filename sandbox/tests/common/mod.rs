//! Helpers shared by the integration tests: start a sandbox on port 0 and talk to
//! it over real HTTP the way Conveyor's adapters do.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use conveyor_sandbox::{Sandbox, SandboxConfig};
use serde_json::{Value, json};

pub const SHOP_TOKEN: &str = "sandbox-shop-token";
pub const CARRIER_KEY: &str = "sandbox-carrier-key";

pub async fn start(config: SandboxConfig) -> Sandbox {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Sandbox::start(config, listener).await.unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub fn graphql_url(sandbox: &Sandbox) -> String {
    format!("{}/admin/api/2025-01/graphql.json", sandbox.base_url())
}

/// Posts a GraphQL request with the right token and returns the JSON body
/// (asserting HTTP 200).
pub async fn gql(sandbox: &Sandbox, query: &str, variables: Value) -> Value {
    let response = client()
        .post(graphql_url(sandbox))
        .header("X-Shopify-Access-Token", SHOP_TOKEN)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// An EasyPost-style call with HTTP Basic auth (key as user, no password).
pub async fn easypost(
    sandbox: &Sandbox,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client()
        .request(method, format!("{}{path}", sandbox.base_url()))
        .basic_auth(CARRIER_KEY, Some(""));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

pub fn shipment_body(reference: &str, to_zip: &str, weight: f64) -> Value {
    json!({ "shipment": {
        "to_address": {
            "name": "Elizabeth Swan", "street1": "179 N Harbor Dr", "city": "Redondo Beach",
            "state": "CA", "zip": to_zip, "country": "US", "phone": "5555550100",
        },
        "from_address": {
            "name": "Conveyor Warehouse", "street1": "388 Townsend St", "city": "San Francisco",
            "state": "CA", "zip": "94107", "country": "US",
        },
        "parcel": { "length": 10, "width": 8, "height": 4, "weight": weight },
        "reference": reference,
        "options": { "label_format": "PDF" },
    }})
}

pub async fn create_shipment(sandbox: &Sandbox, reference: &str) -> Value {
    let (status, shipment) = easypost(
        sandbox,
        reqwest::Method::POST,
        "/v2/shipments",
        Some(shipment_body(reference, "90277", 15.4)),
    )
    .await;
    assert_eq!(status, 201, "{shipment}");
    shipment
}

/// The documents an adapter would send; they are also validated against the real
/// Shopify SDL in `shopify.rs`.
pub const ORDERS_QUERY: &str = r#"
query Orders($first: Int!, $after: String, $query: String) {
  orders(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {
    pageInfo { hasNextPage endCursor hasPreviousPage startCursor }
    edges {
      cursor
      node {
        id
        legacyResourceId
        name
        createdAt
        updatedAt
        cancelledAt
        displayFulfillmentStatus
        email
        currencyCode
        tags
        shippingAddress {
          name firstName lastName address1 address2 city province provinceCode
          zip country countryCodeV2 phone latitude longitude
        }
        shippingLines(first: 5) { nodes { title code } }
        lineItems(first: 10) { nodes { id sku name quantity currentQuantity } }
        fulfillmentOrders(first: 2) {
          nodes {
            id
            status
            lineItems(first: 10) {
              nodes { id totalQuantity remainingQuantity lineItem { id sku } }
            }
          }
        }
      }
    }
  }
}
"#;

pub const FULFILLMENT_CREATE: &str = r#"
mutation FulfillmentCreate($fulfillment: FulfillmentInput!, $message: String) {
  fulfillmentCreate(fulfillment: $fulfillment, message: $message) {
    fulfillment {
      id
      status
      createdAt
      trackingInfo { company number url }
    }
    userErrors { field message }
  }
}
"#;

/// Pages through every order matching `query` with `first`/`after`.
pub async fn all_orders(sandbox: &Sandbox, page_size: i64, query: Option<&str>) -> Vec<Value> {
    let mut after: Option<String> = None;
    let mut orders = Vec::new();
    loop {
        let body = gql(
            sandbox,
            ORDERS_QUERY,
            json!({ "first": page_size, "after": after, "query": query }),
        )
        .await;
        assert!(body.get("errors").is_none(), "{body}");
        let connection = &body["data"]["orders"];
        for edge in connection["edges"].as_array().unwrap() {
            orders.push(edge["node"].clone());
        }
        if !connection["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            break;
        }
        after = connection["pageInfo"]["endCursor"]
            .as_str()
            .map(str::to_owned);
        assert!(after.is_some());
    }
    orders
}
