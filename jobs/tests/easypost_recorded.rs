//! The EasyPost adapter's parsers against real recorded EasyPost exchanges
//! (`shared/api/easypost-recorded/*.yaml`, VCR cassettes).

mod common;

use common::{Exchange, all_cassettes, cassette};
use conveyor_jobs::carrier::CarrierShipment;
use conveyor_jobs::carrier::easypost::{parse_error, parse_shipment};
use conveyor_jobs::error::ErrorClass;
use serde_json::Value;

fn body(exchange: &Exchange) -> Value {
    serde_json::from_str(&exchange.response_body).expect("recorded body is JSON")
}

fn shipment(exchange: &Exchange) -> CarrierShipment {
    parse_shipment(&body(exchange))
        .unwrap_or_else(|e| panic!("{} {} does not parse: {e}", exchange.method, exchange.uri))
}

/// Cents from a decimal string, independently of the adapter: "34.15" -> 3415.
fn cents(decimal: &str) -> i64 {
    let (whole, frac) = decimal.split_once('.').unwrap_or((decimal, ""));
    let frac = format!("{frac:0<2}");
    assert!(
        frac[2..].chars().all(|c| c == '0'),
        "{decimal} has sub-cent digits"
    );
    whole.parse::<i64>().unwrap() * 100 + frac[..2].parse::<i64>().unwrap()
}

#[test]
fn every_recorded_shipment_response_parses_with_all_its_rates() {
    let mut shipments = 0;
    for (name, exchanges) in all_cassettes() {
        for exchange in exchanges {
            let json = body(&exchange);
            if json.get("object").and_then(Value::as_str) != Some("Shipment") {
                continue;
            }
            shipments += 1;
            let parsed = shipment(&exchange);
            assert_eq!(parsed.id, json["id"].as_str().unwrap(), "{name}");
            let recorded = json["rates"].as_array().unwrap();
            assert!(!parsed.rates.is_empty(), "{name}: no rates");
            assert_eq!(parsed.rates.len(), recorded.len(), "{name}");
            for (quote, rate) in parsed.rates.iter().zip(recorded) {
                assert_eq!(quote.rate_id, rate["id"].as_str().unwrap());
                assert_eq!(quote.carrier, rate["carrier"].as_str().unwrap());
                assert_eq!(quote.service, rate["service"].as_str().unwrap());
                assert_eq!(quote.currency, rate["currency"].as_str().unwrap());
                assert_eq!(quote.amount_cents, cents(rate["rate"].as_str().unwrap()));
                assert!(!quote.carrier.is_empty() && !quote.service.is_empty());
            }
        }
    }
    // create, buy (x2), retrieve (x2), refund (x2), regenerate (create).
    assert_eq!(shipments, 8);
}

#[test]
fn the_recorded_create_response_has_three_usps_rates_in_exact_cents() {
    let exchanges = cassette("test_shipment_create");
    assert_eq!(exchanges[0].method, "POST");
    assert!(exchanges[0].uri.ends_with("/v2/shipments"));
    assert_eq!(exchanges[0].status, 201);
    let s = shipment(&exchanges[0]);
    assert_eq!(s.id, "shp_4f5381cd729d48c2adc4d2d801d655e2");
    assert_eq!(s.reference.as_deref(), Some("123"));
    assert_eq!(s.postage, None);
    assert_eq!(s.refund_status, None);
    type Row<'a> = (&'a str, &'a str, &'a str, i64, &'a str, Option<u32>);
    let summary: Vec<Row> = s
        .rates
        .iter()
        .map(|q| {
            (
                q.rate_id.as_str(),
                q.carrier.as_str(),
                q.service.as_str(),
                q.amount_cents,
                q.currency.as_str(),
                q.delivery_days,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "rate_c8501931eb2b4c1fb25e1af7f3286bf4",
                "USPS",
                "Express",
                3415,
                "USD",
                Some(1)
            ),
            (
                "rate_e10ea4fea5ba4d98a1a4135fe54737d7",
                "USPS",
                "Priority",
                742,
                "USD",
                Some(2)
            ),
            (
                "rate_96763f5dc32548538c44e7c479243e38",
                "USPS",
                "GroundAdvantage",
                607,
                "USD",
                Some(3)
            ),
        ]
    );
}

#[test]
fn the_recorded_buy_response_carries_postage_and_the_selected_rate() {
    let exchanges = cassette("test_shipment_buy");
    let buy = &exchanges[1];
    assert!(
        buy.uri
            .ends_with("/v2/shipments/shp_16578f588f9546ec914afd2474e24ff5/buy")
    );
    let request: Value = serde_json::from_str(&buy.request_body).unwrap();
    assert_eq!(
        request,
        serde_json::json!({ "rate": { "id": "rate_4d1f36fa716c4b1292cacbdf19227c2d" } })
    );
    let s = shipment(buy);
    assert_eq!(s.id, "shp_16578f588f9546ec914afd2474e24ff5");
    let postage = s.postage.expect("the bought shipment has postage");
    assert_eq!(postage.tracking_code, "9400100208303109505657");
    // The recorded purchase asked for PNG, so there is no label_pdf_url and
    // label_url is used.
    assert_eq!(
        postage.label_url,
        "https://easypost-files.s3.us-west-2.amazonaws.com/files/postage_label/20250307/e813a2cf6d079c4ea49714758be7711be0.png"
    );
    assert_eq!(
        postage.rate_id.as_deref(),
        Some("rate_4d1f36fa716c4b1292cacbdf19227c2d")
    );
    assert_eq!(postage.carrier.as_deref(), Some("USPS"));
    assert_eq!(postage.service.as_deref(), Some("GroundAdvantage"));
    // The shipment before the purchase had no postage.
    assert_eq!(shipment(&exchanges[0]).postage, None);
}

#[test]
fn the_recorded_retrieve_response_is_the_created_shipment() {
    let exchanges = cassette("test_shipment_retrieve");
    let (created, retrieved) = (shipment(&exchanges[0]), shipment(&exchanges[1]));
    assert_eq!(exchanges[1].method, "GET");
    assert!(
        exchanges[1]
            .uri
            .ends_with("/v2/shipments/shp_8412b33c1ad042049c1f2db46077cad2")
    );
    assert_eq!(retrieved.id, "shp_8412b33c1ad042049c1f2db46077cad2");
    assert_eq!(retrieved, created);
    assert_eq!(
        retrieved.rates[0].rate_id,
        "rate_0e488701dc6a4037bd8c91d8de68e17f"
    );
    assert_eq!(retrieved.rates[0].service, "Priority");
    assert_eq!(retrieved.rates[0].amount_cents, 742);
}

#[test]
fn the_recorded_refund_response_carries_the_refund_status() {
    let exchanges = cassette("test_shipment_refund");
    let refund = &exchanges[1];
    assert!(
        refund
            .uri
            .ends_with("/v2/shipments/shp_700d2963c43b4847883c955eeb846b13/refund")
    );
    let s = shipment(refund);
    assert_eq!(s.refund_status.as_deref(), Some("submitted"));
    assert_eq!(s.reference, None);
    let postage = s
        .postage
        .expect("a refunded shipment still shows its postage");
    assert_eq!(postage.tracking_code, "9400100208303109505688");
    assert_eq!(
        postage.rate_id.as_deref(),
        Some("rate_e3057ccdd9804995a358d91d4595bcf6")
    );
    // Before the refund there was none.
    assert_eq!(shipment(&exchanges[0]).refund_status, None);
}

#[test]
fn the_recorded_rerate_body_is_not_taken_for_a_shipment() {
    let exchanges = cassette("test_shipment_regenerate_rates");
    let err = parse_shipment(&body(&exchanges[1])).expect_err("a bare rates list has no id");
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(err.message.contains("no id"), "{}", err.message);
}

#[test]
fn the_recorded_missing_parameter_error_is_permanent_with_its_code_and_message() {
    let exchanges = cassette("test_error");
    let e = &exchanges[0];
    assert_eq!(e.status, 422);
    let err = parse_error(e.status, e.response_body.as_bytes(), None);
    assert_eq!(err.class, ErrorClass::Permanent);
    assert_eq!(err.status, Some(422));
    assert_eq!(err.api, "easypost");
    assert_eq!(err.code.as_deref(), Some("PARAMETER.REQUIRED"));
    assert!(
        err.message.contains("Missing required parameter."),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("shipment: cannot be blank"),
        "{}",
        err.message
    );
}

#[test]
fn the_recorded_not_found_error_in_the_alternative_format_is_permanent() {
    let exchanges = cassette("test_error_alternative_format");
    let e = &exchanges[0];
    assert_eq!(e.status, 404);
    let err = parse_error(e.status, e.response_body.as_bytes(), None);
    assert_eq!(err.class, ErrorClass::Permanent);
    assert_eq!(err.status, Some(404));
    assert_eq!(err.code.as_deref(), Some("NOT_FOUND"));
    assert!(
        err.message
            .contains("The requested resource could not be found."),
        "{}",
        err.message
    );
    assert!(
        err.message
            .contains("No eligible insurance found with provided tracking code."),
        "{}",
        err.message
    );
}
