//! The EasyPost adapter against a local server answering with EasyPost's
//! wire format (partly replayed from recorded exchanges): request shape,
//! purchase outcomes and how every failure is classified.

mod common;

use std::time::Duration;

use common::{Reply, Server, base64, cassette, serve};
use conveyor_jobs::address::Address;
use conveyor_jobs::carrier::easypost::EasyPostClient;
use conveyor_jobs::carrier::{BuyOutcome, CarrierApi, Parcel, ShipmentRequest};
use conveyor_jobs::error::ErrorClass;
use secrecy::SecretString;
use serde_json::{Value, json};

const KEY: &str = "EZTK0123456789abcdef0123456789abcdef";

fn client(server: &Server, timeout: Duration) -> EasyPostClient {
    EasyPostClient::new(&server.base_url, SecretString::from(KEY), timeout).unwrap()
}

fn request() -> ShipmentRequest {
    ShipmentRequest {
        reference: "pkg_01JABCDEF".into(),
        from: Address {
            name: "Conveyor Warehouse".into(),
            company: Some("Conveyor".into()),
            street1: "388 Townsend St".into(),
            street2: Some("Apt 20".into()),
            city: "San Francisco".into(),
            state: "CA".into(),
            zip: "94107".into(),
            country: "US".into(),
            phone: Some("5555555555".into()),
            ..Address::default()
        },
        to: Address {
            name: "Elizabeth Swan".into(),
            street1: "179 N Harbor Dr".into(),
            city: "Redondo Beach".into(),
            state: "CA".into(),
            zip: "90277".into(),
            country: "US".into(),
            latitude: Some(33.84),
            longitude: Some(-118.39),
            ..Address::default()
        },
        parcel: Parcel {
            length_in: 10.0,
            width_in: 8.0,
            height_in: 4.0,
            weight_oz: 15.4,
        },
    }
}

/// The recorded answer of one exchange, replayed with its status.
fn recorded(name: &str, index: usize) -> Reply {
    let exchange = &cassette(name)[index];
    Reply::raw(
        exchange.status,
        "application/json; charset=utf-8",
        exchange.response_body.clone(),
    )
}

fn error(status: u16, code: &str, message: &str, errors: Value) -> Reply {
    Reply::json(
        status,
        json!({ "error": { "code": code, "message": message, "errors": errors } }),
    )
}

#[tokio::test]
async fn creating_a_shipment_sends_the_easypost_body_with_basic_auth() {
    let server = serve(vec![recorded("test_shipment_create", 0)]).await;
    let shipment = client(&server, Duration::from_secs(5))
        .create_shipment(&request())
        .await
        .unwrap();
    assert_eq!(shipment.id, "shp_4f5381cd729d48c2adc4d2d801d655e2");
    assert_eq!(shipment.rates.len(), 3);
    assert_eq!(shipment.rates[0].amount_cents, 3415);

    let sent = server.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method, "POST");
    assert_eq!(sent[0].path, "/v2/shipments");
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Basic {}", base64(format!("{KEY}:").as_bytes())))
    );
    assert_eq!(
        sent[0].json(),
        json!({ "shipment": {
            "to_address": { "name": "Elizabeth Swan", "street1": "179 N Harbor Dr",
                "city": "Redondo Beach", "state": "CA", "zip": "90277", "country": "US" },
            "from_address": { "name": "Conveyor Warehouse", "company": "Conveyor",
                "street1": "388 Townsend St", "street2": "Apt 20", "city": "San Francisco",
                "state": "CA", "zip": "94107", "country": "US", "phone": "5555555555" },
            "parcel": { "length": 10.0, "width": 8.0, "height": 4.0, "weight": 15.4 },
            "reference": "pkg_01JABCDEF",
            "options": { "label_format": "PDF" }
        } })
    );
}

#[tokio::test]
async fn the_client_replays_the_recorded_purchase_exchange() {
    let server = serve(vec![
        recorded("test_shipment_buy", 0),
        recorded("test_shipment_buy", 1),
    ])
    .await;
    let client = client(&server, Duration::from_secs(5));
    let shipment = client.create_shipment(&request()).await.unwrap();
    let cheapest = shipment
        .rates
        .iter()
        .min_by_key(|q| q.amount_cents)
        .unwrap()
        .clone();
    assert_eq!(cheapest.rate_id, "rate_4d1f36fa716c4b1292cacbdf19227c2d");
    let BuyOutcome::Bought(bought) = client.buy(&shipment.id, &cheapest.rate_id).await.unwrap()
    else {
        panic!("the purchase should succeed")
    };
    let postage = bought.postage.unwrap();
    assert_eq!(postage.tracking_code, "9400100208303109505657");
    assert_eq!(postage.rate_id.as_deref(), Some(cheapest.rate_id.as_str()));

    let sent = server.received();
    let recorded_buy = &cassette("test_shipment_buy")[1];
    assert_eq!(sent[1].method, recorded_buy.method);
    assert!(
        recorded_buy.uri.ends_with(&sent[1].path),
        "{}",
        sent[1].path
    );
    assert_eq!(
        sent[1].json(),
        serde_json::from_str::<Value>(&recorded_buy.request_body).unwrap()
    );
}

#[tokio::test]
async fn a_shipment_is_looked_up_and_refunded_at_its_own_path() {
    let server = serve(vec![
        recorded("test_shipment_retrieve", 1),
        recorded("test_shipment_refund", 1),
    ])
    .await;
    let client = client(&server, Duration::from_secs(5));
    let found = client
        .get_shipment("shp_8412b33c1ad042049c1f2db46077cad2")
        .await
        .unwrap();
    assert_eq!(found.id, "shp_8412b33c1ad042049c1f2db46077cad2");
    let refunded = client
        .refund("shp_700d2963c43b4847883c955eeb846b13")
        .await
        .unwrap();
    assert_eq!(refunded.refund_status.as_deref(), Some("submitted"));
    let sent = server.received();
    assert_eq!(sent[0].method, "GET");
    assert_eq!(
        sent[0].path,
        "/v2/shipments/shp_8412b33c1ad042049c1f2db46077cad2"
    );
    assert_eq!(sent[1].method, "POST");
    assert_eq!(
        sent[1].path,
        "/v2/shipments/shp_700d2963c43b4847883c955eeb846b13/refund"
    );
}

#[tokio::test]
async fn a_buy_that_never_answers_within_the_timeout_has_an_unknown_outcome() {
    let server = serve(vec![
        recorded("test_shipment_buy", 1).after(Duration::from_secs(10)),
    ])
    .await;
    let err = client(&server, Duration::from_millis(300))
        .buy(
            "shp_16578f588f9546ec914afd2474e24ff5",
            "rate_4d1f36fa716c4b1292cacbdf19227c2d",
        )
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::UnknownOutcome, "{err}");
    assert_eq!(server.received().len(), 1, "the buy was sent");
}

#[tokio::test]
async fn a_lookup_that_times_out_is_retryable() {
    let server = serve(vec![
        recorded("test_shipment_retrieve", 1).after(Duration::from_secs(10)),
    ])
    .await;
    let err = client(&server, Duration::from_millis(300))
        .get_shipment("shp_8412b33c1ad042049c1f2db46077cad2")
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Retryable, "{err}");
}

#[tokio::test]
async fn buying_a_shipment_that_already_has_postage_reports_postage_exists() {
    let server = serve(vec![error(
        422,
        "SHIPMENT.POSTAGE.EXISTS",
        "The shipment already has postage.",
        json!([]),
    )])
    .await;
    let outcome = client(&server, Duration::from_secs(5))
        .buy(
            "shp_16578f588f9546ec914afd2474e24ff5",
            "rate_4d1f36fa716c4b1292cacbdf19227c2d",
        )
        .await
        .unwrap();
    assert_eq!(outcome, BuyOutcome::PostageExists);
}

#[tokio::test]
async fn a_buy_answered_without_postage_has_an_unknown_outcome() {
    // The shipment as created: a 200 that carries no postage.
    let created = cassette("test_shipment_buy")[0].response_body.clone();
    let server = serve(vec![Reply::raw(200, "application/json", created)]).await;
    let err = client(&server, Duration::from_secs(5))
        .buy(
            "shp_16578f588f9546ec914afd2474e24ff5",
            "rate_4d1f36fa716c4b1292cacbdf19227c2d",
        )
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::UnknownOutcome, "{err}");
}

#[tokio::test]
async fn an_address_the_carrier_rejects_is_permanent_with_the_carriers_message() {
    let server = serve(vec![error(
        422,
        "ADDRESS.VERIFY.FAILURE",
        "Unable to verify address.",
        json!([{ "field": "address", "message": "Address not found" }]),
    )])
    .await;
    let err = client(&server, Duration::from_secs(5))
        .create_shipment(&request())
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert_eq!(err.status, Some(422));
    assert_eq!(err.code.as_deref(), Some("ADDRESS.VERIFY.FAILURE"));
    assert_eq!(
        err.message,
        "address rejected by the carrier: Unable to verify address. (address: Address not found)"
    );
}

#[tokio::test]
async fn a_recorded_validation_error_is_permanent() {
    let server = serve(vec![recorded("test_error", 0)]).await;
    let err = client(&server, Duration::from_secs(5))
        .create_shipment(&request())
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert_eq!(err.code.as_deref(), Some("PARAMETER.REQUIRED"));
}

#[tokio::test]
async fn a_429_is_rate_limited_for_the_retry_after_and_a_503_is_retryable() {
    let server = serve(vec![
        error(429, "RATE_LIMITED", "Rate limit exceeded.", json!([])).header("Retry-After", "7"),
        Reply::raw(503, "text/html", "<html>Service Unavailable</html>"),
    ])
    .await;
    let client = client(&server, Duration::from_secs(5));
    let limited = client.get_shipment("shp_1").await.unwrap_err();
    assert_eq!(
        limited.class,
        ErrorClass::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        }
    );
    assert_eq!(limited.code.as_deref(), Some("RATE_LIMITED"));
    let down = client.get_shipment("shp_1").await.unwrap_err();
    assert_eq!(down.class, ErrorClass::Retryable);
    assert_eq!(down.status, Some(503));
}

#[tokio::test]
async fn a_refused_api_key_is_permanent_and_never_echoed() {
    let server = serve(vec![error(
        401,
        "APIKEY.INACTIVE",
        &format!("API key {KEY} is inactive"),
        json!([]),
    )])
    .await;
    let client = client(&server, Duration::from_secs(5));
    let err = client.get_shipment("shp_1").await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains("refused the API key"),
        "{}",
        err.message
    );
    assert!(!err.to_string().contains(KEY), "{err}");
    let debug = format!("{client:?}");
    assert!(!debug.contains(KEY), "{debug}");
}

#[tokio::test]
async fn a_pdf_label_is_downloaded_and_anything_else_is_refused() {
    let pdf = b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n".to_vec();
    let server = serve(vec![
        Reply::raw(200, "application/pdf", pdf.clone()),
        Reply::raw(200, "image/png", b"\x89PNG\r\n\x1a\n....".to_vec()),
        Reply::raw(
            404,
            "application/xml",
            "<Error><Code>NoSuchKey</Code></Error>",
        ),
    ])
    .await;
    let client = client(&server, Duration::from_secs(5));
    let url = format!("{}/files/postage_label/label.pdf", server.base_url);
    assert_eq!(client.fetch_label(&url).await.unwrap(), pdf);
    let not_pdf = client.fetch_label(&url).await.unwrap_err();
    assert_eq!(not_pdf.class, ErrorClass::Permanent);
    assert!(
        not_pdf.message.contains("label is not a PDF"),
        "{}",
        not_pdf.message
    );
    let gone = client.fetch_label(&url).await.unwrap_err();
    assert_eq!(gone.class, ErrorClass::Permanent);
    assert_eq!(gone.status, Some(404));
    assert_eq!(server.received()[0].path, "/files/postage_label/label.pdf");
}

#[tokio::test]
async fn the_api_key_is_not_sent_to_a_label_host_on_another_origin() {
    let api = serve(vec![]).await;
    let files = serve(vec![Reply::raw(
        200,
        "application/pdf",
        b"%PDF-1.7\n".to_vec(),
    )])
    .await;
    let client = client(&api, Duration::from_secs(5));
    client
        .fetch_label(&format!("{}/label.pdf", files.base_url))
        .await
        .unwrap();
    assert_eq!(files.received()[0].header("authorization"), None);
}
