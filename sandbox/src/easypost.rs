//! The EasyPost-style carrier API (v2): create a shipment and get rates from three
//! carriers, retrieve it, buy one rate (exactly once: a second buy is refused with
//! `SHIPMENT.POSTAGE.EXISTS` and counted), refund it, and fetch the label PDF.
//! Bodies and errors follow EasyPost's recorded responses; rates are priced from
//! parcel weight and the distance between ZIP codes, with seeded per-service
//! factors so that different seeds rank carriers differently.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use crate::App;
use crate::faults::Api;
use crate::geo::{distance_miles, zip_location, zone_for_miles};
use crate::label::{LabelInfo, render_label};
use crate::orders::format_time;
use crate::stats::Stats;

/// A service a carrier sells: fixed transit days and a price model in cents.
struct Service {
    carrier: &'static str,
    service: &'static str,
    days: u32,
    base_cents: f64,
    per_extra_lb_cents: f64,
    per_zone_cents: f64,
}

const fn service(
    carrier: &'static str,
    service: &'static str,
    days: u32,
    base_cents: f64,
    per_extra_lb_cents: f64,
    per_zone_cents: f64,
) -> Service {
    Service {
        carrier,
        service,
        days,
        base_cents,
        per_extra_lb_cents,
        per_zone_cents,
    }
}

/// Every shipment is offered all of these (service names as EasyPost spells them).
const SERVICES: &[Service] = &[
    service("USPS", "GroundAdvantage", 5, 450.0, 55.0, 35.0),
    service("USPS", "Priority", 3, 780.0, 95.0, 60.0),
    service("USPS", "Express", 1, 2650.0, 180.0, 140.0),
    service("UPS", "Ground", 5, 950.0, 70.0, 45.0),
    service("UPS", "2ndDayAir", 2, 1850.0, 210.0, 120.0),
    service("UPS", "NextDayAir", 1, 3450.0, 320.0, 210.0),
    service("FedEx", "FEDEX_GROUND", 4, 920.0, 68.0, 48.0),
    service("FedEx", "FEDEX_2_DAY", 2, 1790.0, 200.0, 115.0),
    service("FedEx", "STANDARD_OVERNIGHT", 1, 3690.0, 330.0, 220.0),
];

/// Carrier account ids are stable per carrier, like a real account's.
fn carrier_account_id(carrier: &str) -> String {
    let mut hash: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for byte in carrier.bytes() {
        hash ^= u128::from(byte);
        hash = hash.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    format!("ca_{hash:032x}")
}

#[derive(Debug, Clone)]
struct Postage {
    rate_index: usize,
    tracking_code: String,
    label_id: String,
    label_url: String,
    tracker_id: String,
    tracker_url: String,
    bought_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct Shipment {
    id: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    reference: Option<String>,
    to_address: Value,
    from_address: Value,
    parcel: Value,
    options: Value,
    rates: Vec<Value>,
    usps_zone: u8,
    postage: Option<Postage>,
    refund_status: Option<&'static str>,
}

/// All carrier-side state.
pub struct Carrier {
    shipments: HashMap<String, Shipment>,
    /// Shipment ids per reference, in creation order (retrieve by reference).
    by_reference: HashMap<String, Vec<String>>,
    /// Postage label id to shipment id (label downloads).
    labels: HashMap<String, String>,
    /// Tracking code to shipment id (tracker pages).
    tracking: HashMap<String, String>,
    rng: StdRng,
    /// Per-service price factor drawn from the seed.
    price_factors: Vec<f64>,
}

impl Carrier {
    pub fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6361_7272_6965_7221);
        let price_factors = SERVICES
            .iter()
            .map(|_| rng.random_range(0.85..1.15))
            .collect();
        Self {
            shipments: HashMap::new(),
            by_reference: HashMap::new(),
            labels: HashMap::new(),
            tracking: HashMap::new(),
            rng,
            price_factors,
        }
    }

    fn object_id(&mut self, prefix: &str) -> String {
        format!("{prefix}_{:032x}", self.rng.random::<u128>())
    }

    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.rng.random_range(0..10u8)))
            .collect()
    }

    fn tracking_code(&mut self, carrier: &str) -> String {
        match carrier {
            "UPS" => {
                const ALNUM: &[u8] = b"0123456789ABCDEFGHJKLMNPRSTUVWXYZ";
                let shipper: String = (0..6)
                    .map(|_| char::from(ALNUM[self.rng.random_range(0..ALNUM.len())]))
                    .collect();
                format!("1Z{shipper}03{}", self.digits(8))
            }
            "FedEx" => self.digits(12),
            _ => format!("94001{}", self.digits(17)),
        }
    }
}

/// EasyPost's error body: `{"error": {"code", "message", "errors"}}`.
pub fn error_response(status: StatusCode, code: &str, message: &str, errors: Value) -> Response {
    let body = json!({ "error": { "code": code, "message": message, "errors": errors } });
    json_response(status, &body)
}

/// An EasyPost error not yet rendered (small enough to travel in a `Result`).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: &'static str,
    errors: Value,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: &'static str, errors: Value) -> Self {
        Self {
            status,
            code,
            message,
            errors,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self.status, self.code, self.message, self.errors)
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn not_found(errors: Value) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "The requested resource could not be found.",
        errors,
    )
}

fn required(field: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "PARAMETER.REQUIRED",
        "Missing required parameter.",
        json!([{ "field": field, "message": "cannot be blank" }]),
    )
}

/// Checks HTTP Basic auth with the key as user name (EasyPost's scheme; a Bearer
/// token is accepted too, as EasyPost does).
fn check_auth(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let key = header.and_then(|h| {
        if let Some(encoded) = h.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            Some(decoded.split(':').next().unwrap_or_default().to_owned())
        } else {
            h.strip_prefix("Bearer ").map(|k| k.trim().to_owned())
        }
    });
    match key {
        Some(key) if key == app.config.carrier_key => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "APIKEY.INACTIVE",
            "This api key is no longer active. Please use a different api key or reactivate this key.",
            json!([]),
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "APIKEY.REQUIRED",
            "API key required.",
            json!([]),
        )),
    }
}

/// Common prelude of every carrier API call: latency, auth, injected faults.
/// `Some` is the answer to send instead of handling the call.
async fn prelude(app: &App, headers: &HeaderMap) -> Option<Response> {
    app.delay(Api::Carrier).await;
    if let Err(error) = check_auth(app, headers) {
        return Some(error.into_response());
    }
    let refusal = app.refusal(Api::Carrier)?;
    Some(app.easypost_refusal(refusal).await)
}

/// What a proxy in front of the API answers when the API took too long.
pub fn gateway_timeout() -> Response {
    error_response(
        StatusCode::GATEWAY_TIMEOUT,
        "GATEWAY_TIMEOUT",
        "The server did not answer in time.",
        json!([]),
    )
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "The request could not be understood by the server due to malformed syntax.",
            json!([]),
        )
    })
}

/// A number sent as JSON number or numeric string (EasyPost accepts both).
fn number(value: Option<&Value>) -> Option<f64> {
    match value? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn address_json(id: String, input: &Map<String, Value>, now: DateTime<Utc>) -> Value {
    let time = now.to_rfc3339_opts(SecondsFormat::Secs, false);
    let field = |k: &str| input.get(k).cloned().unwrap_or(Value::Null);
    json!({
        "id": id,
        "object": "Address",
        "created_at": time,
        "updated_at": time,
        "name": field("name"),
        "company": field("company"),
        "street1": field("street1"),
        "street2": field("street2"),
        "city": field("city"),
        "state": field("state"),
        "zip": field("zip"),
        "country": input.get("country").cloned().unwrap_or_else(|| json!("US")),
        "phone": field("phone"),
        "email": field("email"),
        "mode": "test",
        "carrier_facility": null,
        "residential": field("residential"),
        "federal_tax_id": null,
        "state_tax_id": null,
        "verifications": {},
    })
}

fn money(cents: f64) -> String {
    format!("{:.2}", cents.round() / 100.0)
}

/// Why a shipment cannot be created.
fn undeliverable(to: &Map<String, Value>) -> bool {
    let zip = to.get("zip").and_then(Value::as_str).unwrap_or_default();
    let street = |k: &str| {
        to.get(k)
            .and_then(Value::as_str)
            .is_some_and(|s| s.to_ascii_uppercase().contains("UNDELIVERABLE"))
    };
    zip.trim() == "00000" || street("street1") || street("street2")
}

fn shipment_json(shipment: &Shipment) -> Value {
    let selected = shipment
        .postage
        .as_ref()
        .and_then(|p| shipment.rates.get(p.rate_index).cloned());
    let carrier = selected
        .as_ref()
        .and_then(|r| r.get("carrier").cloned())
        .unwrap_or(Value::Null);
    let postage_label = shipment.postage.as_ref().map(|p| {
        let bought = format_time(p.bought_at);
        json!({
            "object": "PostageLabel",
            "id": p.label_id,
            "created_at": bought,
            "updated_at": bought,
            "date_advance": 0,
            "integrated_form": "none",
            "label_date": bought,
            "label_resolution": 300,
            "label_size": "4x6",
            "label_type": "default",
            "label_file_type": "application/pdf",
            "label_url": p.label_url,
            "label_pdf_url": p.label_url,
            "label_zpl_url": null,
            "label_epl2_url": null,
            "label_file": null,
        })
    });
    let tracker = shipment.postage.as_ref().map(|p| {
        let bought = format_time(p.bought_at);
        json!({
            "id": p.tracker_id,
            "object": "Tracker",
            "mode": "test",
            "tracking_code": p.tracking_code,
            "status": "unknown",
            "status_detail": "unknown",
            "created_at": bought,
            "updated_at": bought,
            "signed_by": null,
            "weight": null,
            "est_delivery_date": null,
            "shipment_id": shipment.id,
            "carrier": carrier,
            "tracking_details": [],
            "fees": [],
            "carrier_detail": null,
            "public_url": p.tracker_url,
        })
    });
    let fees = match &selected {
        Some(rate) => {
            let amount = rate
                .get("rate")
                .and_then(Value::as_str)
                .and_then(|r| r.parse::<f64>().ok())
                .unwrap_or_default();
            let refunded = shipment.refund_status.is_some();
            json!([
                { "object": "Fee", "type": "LabelFee", "amount": "0.00000", "charged": true, "refunded": false },
                { "object": "Fee", "type": "PostageFee", "amount": format!("{amount:.5}"), "charged": true, "refunded": refunded },
            ])
        }
        None => json!([]),
    };
    json!({
        "id": shipment.id,
        "object": "Shipment",
        "created_at": format_time(shipment.created_at),
        "updated_at": format_time(shipment.updated_at),
        "is_return": false,
        "messages": [],
        "mode": "test",
        "options": shipment.options,
        "reference": shipment.reference,
        "status": "unknown",
        "tracking_code": shipment.postage.as_ref().map(|p| p.tracking_code.clone()),
        "batch_id": null,
        "batch_status": null,
        "batch_message": null,
        "customs_info": null,
        "from_address": shipment.from_address,
        "insurance": null,
        "order_id": null,
        "parcel": shipment.parcel,
        "postage_label": postage_label,
        "rates": shipment.rates,
        "refund_status": shipment.refund_status,
        "scan_form": null,
        "selected_rate": selected,
        "tracker": tracker,
        "to_address": shipment.to_address,
        "usps_zone": shipment.usps_zone,
        "return_address": shipment.from_address,
        "buyer_address": shipment.to_address,
        "forms": [],
        "fees": fees,
    })
}

/// Buys a rate on a shipment that has no postage yet, counting the label sold.
fn buy_rate(
    carrier: &mut Carrier,
    stats: &mut Stats,
    shipment_id: &str,
    rate_index: usize,
    base_url: &str,
) -> Option<Value> {
    let carrier_name = carrier
        .shipments
        .get(shipment_id)?
        .rates
        .get(rate_index)?
        .get("carrier")
        .and_then(Value::as_str)
        .unwrap_or("USPS")
        .to_owned();
    let tracking_code = carrier.tracking_code(&carrier_name);
    let label_id = carrier.object_id("pl");
    let tracker_id = carrier.object_id("trk");
    let now = Utc::now();
    let postage = Postage {
        rate_index,
        label_url: format!("{base_url}/labels/{label_id}.pdf"),
        tracker_url: format!("{base_url}/track/{tracking_code}"),
        tracking_code: tracking_code.clone(),
        label_id: label_id.clone(),
        tracker_id,
        bought_at: now,
    };
    carrier.labels.insert(label_id, shipment_id.to_owned());
    carrier
        .tracking
        .insert(tracking_code, shipment_id.to_owned());
    let shipment = carrier.shipments.get_mut(shipment_id)?;
    shipment.postage = Some(postage);
    shipment.updated_at = now;
    stats.labels_sold += 1;
    *stats
        .labels_per_shipment
        .entry(shipment.id.clone())
        .or_default() += 1;
    if let Some(reference) = &shipment.reference {
        *stats
            .labels_per_reference
            .entry(reference.clone())
            .or_default() += 1;
    }
    Some(shipment_json(shipment))
}

/// `POST /v2/shipments`
pub async fn create(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(response) = prelude(&app, &headers).await {
        return response;
    }
    let body = match parse_body(&body) {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let Some(input) = body
        .get("shipment")
        .and_then(Value::as_object)
        .filter(|s| !s.is_empty())
    else {
        return required("shipment").into_response();
    };
    let base_url = app.public_base_url(&headers);
    let mut world = app.world();
    let world = &mut *world;
    match create_shipment(&mut world.carrier, &mut world.stats, input, &base_url) {
        Ok(shipment) => json_response(StatusCode::CREATED, &shipment),
        Err(error) => error.into_response(),
    }
}

fn create_shipment(
    carrier: &mut Carrier,
    stats: &mut Stats,
    input: &Map<String, Value>,
    base_url: &str,
) -> Result<Value, ApiError> {
    let object = |key: &str| {
        input
            .get(key)
            .and_then(Value::as_object)
            .filter(|o| !o.is_empty())
    };
    let Some(to) = object("to_address") else {
        return Err(required("shipment.to_address"));
    };
    let Some(from) = object("from_address") else {
        return Err(required("shipment.from_address"));
    };
    let Some(parcel) = object("parcel") else {
        return Err(required("shipment.parcel"));
    };
    let Some(weight) = number(parcel.get("weight")) else {
        return Err(required("shipment.parcel.weight"));
    };
    if !weight.is_finite() || weight <= 0.0 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "PARAMETER.INVALID",
            "Invalid parameter value.",
            json!([{ "field": "shipment.parcel.weight", "message": "must be greater than 0" }]),
        ));
    }
    if undeliverable(to) {
        stats.addresses_rejected += 1;
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ADDRESS.VERIFY.FAILURE",
            "Unable to verify address.",
            json!([{
                "code": "E.ADDRESS.NOT_FOUND",
                "field": "address",
                "message": "Address not found",
                "suggestion": null,
            }]),
        ));
    }

    let now = Utc::now();
    let id = carrier.object_id("shp");
    let to_id = carrier.object_id("adr");
    let from_id = carrier.object_id("adr");
    let to_address = address_json(to_id, to, now);
    let from_address = address_json(from_id, from, now);
    let dimension = |k: &str| number(parcel.get(k));
    let parcel_json = json!({
        "id": carrier.object_id("prcl"),
        "object": "Parcel",
        "created_at": format_time(now),
        "updated_at": format_time(now),
        "length": dimension("length"),
        "width": dimension("width"),
        "height": dimension("height"),
        "predefined_package": parcel.get("predefined_package").cloned().unwrap_or(Value::Null),
        "weight": weight,
        "mode": "test",
    });
    let mut options = input
        .get("options")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    options.entry("currency").or_insert_with(|| json!("USD"));
    options
        .entry("payment")
        .or_insert_with(|| json!({ "type": "SENDER" }));
    options.entry("date_advance").or_insert_with(|| json!(0));

    let zip = |a: &Map<String, Value>| a.get("zip").and_then(Value::as_str).and_then(zip_location);
    // Unknown or foreign ZIP codes price as the farthest zone.
    let zone = match (zip(from), zip(to)) {
        (Some(a), Some(b)) => zone_for_miles(distance_miles(a, b)),
        _ => 8,
    };
    let extra_lbs = ((weight / 16.0).ceil() - 1.0).max(0.0);
    let created = format_time(now);
    let mut rates = Vec::with_capacity(SERVICES.len());
    for (index, s) in SERVICES.iter().enumerate() {
        let cents = (s.base_cents
            + s.per_extra_lb_cents * extra_lbs
            + s.per_zone_cents * f64::from(zone - 1))
            * carrier.price_factors[index];
        let delivery = now + Duration::days(i64::from(s.days));
        rates.push(json!({
            "id": carrier.object_id("rate"),
            "object": "Rate",
            "created_at": created,
            "updated_at": created,
            "mode": "test",
            "service": s.service,
            "carrier": s.carrier,
            "rate": money(cents),
            "currency": "USD",
            "retail_rate": money(cents * 1.3),
            "retail_currency": "USD",
            "list_rate": money(cents * 1.12),
            "list_currency": "USD",
            "billing_type": "easypost",
            "delivery_days": s.days,
            "delivery_date": format_time(delivery),
            "delivery_date_guaranteed": false,
            "est_delivery_days": s.days,
            "shipment_id": id,
            "carrier_account_id": carrier_account_id(s.carrier),
        }));
    }
    let reference = text(&Value::Object(input.clone()), "reference");
    let shipment = Shipment {
        id: id.clone(),
        created_at: now,
        updated_at: now,
        reference: reference.clone(),
        to_address,
        from_address,
        parcel: parcel_json,
        options: Value::Object(options),
        rates,
        usps_zone: zone,
        postage: None,
        refund_status: None,
    };
    // One-call buy: `carrier` and `service` on the shipment buy that rate at once.
    let one_call = text(&Value::Object(input.clone()), "carrier")
        .zip(text(&Value::Object(input.clone()), "service"));
    let one_call_rate = match &one_call {
        Some((c, s)) => {
            let found = shipment.rates.iter().position(|r| {
                r["carrier"]
                    .as_str()
                    .is_some_and(|x| x.eq_ignore_ascii_case(c))
                    && r["service"]
                        .as_str()
                        .is_some_and(|x| x.eq_ignore_ascii_case(s))
            });
            match found {
                Some(index) => Some(index),
                None => {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "SHIPMENT.POSTAGE.FAILURE",
                        "No rate matches the requested carrier and service.",
                        json!([]),
                    ));
                }
            }
        }
        None => None,
    };
    carrier.shipments.insert(id.clone(), shipment);
    if let Some(reference) = reference {
        carrier
            .by_reference
            .entry(reference)
            .or_default()
            .push(id.clone());
    }
    stats.shipments_created += 1;
    tracing::debug!(shipment = %id, zone, "shipment created");
    if let Some(index) = one_call_rate {
        return buy_rate(carrier, stats, &id, index, base_url).ok_or_else(|| not_found(json!([])));
    }
    carrier
        .shipments
        .get(&id)
        .map(shipment_json)
        .ok_or_else(|| not_found(json!([])))
}

/// `GET /v2/shipments/{id}`: by id, or by the reference given at creation (the
/// latest shipment with it), as EasyPost lets references stand in for ids.
pub async fn retrieve(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(response) = prelude(&app, &headers).await {
        return response;
    }
    let world = app.world();
    let carrier = &world.carrier;
    let shipment = carrier.shipments.get(&id).or_else(|| {
        carrier
            .by_reference
            .get(&id)
            .and_then(|ids| ids.last())
            .and_then(|latest| carrier.shipments.get(latest))
    });
    match shipment {
        Some(shipment) => json_response(StatusCode::OK, &shipment_json(shipment)),
        None => not_found(json!([])).into_response(),
    }
}

/// `POST /v2/shipments/{id}/buy` with `{"rate": {"id": "rate_..."}}`.
pub async fn buy(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(response) = prelude(&app, &headers).await {
        return response;
    }
    let body = match parse_body(&body) {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let rate_id = match body.get("rate") {
        Some(Value::String(id)) => Some(id.clone()),
        Some(rate) => text(rate, "id"),
        None => None,
    };
    let base_url = app.public_base_url(&headers);
    let (response, no_answer) = {
        let mut world = app.world();
        let world = &mut *world;
        let Some(shipment) = world.carrier.shipments.get(&id) else {
            return not_found(json!([])).into_response();
        };
        let Some(rate_id) = rate_id else {
            return required("rate").into_response();
        };
        if shipment.postage.is_some() {
            world.stats.duplicate_purchase_attempts += 1;
            tracing::warn!(shipment = %id, "refused a second purchase of the same shipment");
            return error_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                "SHIPMENT.POSTAGE.EXISTS",
                "Shipment already has postage.",
                json!([]),
            );
        }
        let Some(index) = shipment
            .rates
            .iter()
            .position(|r| r["id"].as_str() == Some(rate_id.as_str()))
        else {
            return not_found(json!([format!(
                "Rate {rate_id} was not found on shipment {id}."
            )]))
            .into_response();
        };
        let Some(bought) = buy_rate(&mut world.carrier, &mut world.stats, &id, index, &base_url)
        else {
            return not_found(json!([])).into_response();
        };
        // The label is sold either way; a purchase that never answers is
        // exactly the unknown outcome Conveyor must reconcile.
        let no_answer = app.purchase_no_answer(world);
        (json_response(StatusCode::OK, &bought), no_answer)
    };
    if let Some(hold) = no_answer {
        tracing::info!(shipment = %id, ?hold, "purchase succeeded; not answering on purpose");
        app.hold(hold).await;
        return gateway_timeout();
    }
    response
}

/// `POST /v2/shipments/{id}/refund`
pub async fn refund(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(response) = prelude(&app, &headers).await {
        return response;
    }
    let mut world = app.world();
    let world = &mut *world;
    let Some(shipment) = world.carrier.shipments.get_mut(&id) else {
        return not_found(json!([])).into_response();
    };
    if shipment.postage.is_none() {
        return error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            "SHIPMENT.REFUND.UNAVAILABLE",
            "Shipment has no postage to refund.",
            json!([]),
        );
    }
    if shipment.refund_status.is_some() {
        return error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            "SHIPMENT.REFUND.ALREADY_SUBMITTED",
            "A refund has already been submitted for this shipment.",
            json!([]),
        );
    }
    shipment.refund_status = Some("submitted");
    shipment.updated_at = Utc::now();
    world.stats.refunds += 1;
    json_response(StatusCode::OK, &shipment_json(shipment))
}

/// `GET /labels/{label_id}.pdf`: public, like EasyPost's label file URLs.
pub async fn label(State(app): State<Arc<App>>, Path(file): Path<String>) -> Response {
    app.delay(Api::Carrier).await;
    let label_id = file.strip_suffix(".pdf").unwrap_or(&file);
    let info = {
        let world = app.world();
        let carrier = &world.carrier;
        carrier
            .labels
            .get(label_id)
            .and_then(|shipment_id| carrier.shipments.get(shipment_id))
            .and_then(label_info)
    };
    let Some(info) = info else {
        return (StatusCode::NOT_FOUND, "label not found").into_response();
    };
    match render_label(&info) {
        Ok(pdf) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/pdf")],
            pdf,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "rendering a label failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "label rendering failed").into_response()
        }
    }
}

fn address_lines(address: &Value) -> Vec<String> {
    let get = |k: &str| address.get(k).and_then(Value::as_str).unwrap_or_default();
    let mut lines: Vec<String> = [get("name"), get("company"), get("street1"), get("street2")]
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    lines.push(
        format!("{} {} {}", get("city"), get("state"), get("zip"))
            .trim()
            .to_owned(),
    );
    lines
}

fn label_info(shipment: &Shipment) -> Option<LabelInfo> {
    let postage = shipment.postage.as_ref()?;
    let rate = shipment.rates.get(postage.rate_index)?;
    Some(LabelInfo {
        carrier: text(rate, "carrier").unwrap_or_default(),
        service: text(rate, "service").unwrap_or_default(),
        tracking_code: postage.tracking_code.clone(),
        reference: shipment.reference.clone(),
        shipment_id: shipment.id.clone(),
        ship_to: address_lines(&shipment.to_address),
        ship_from: address_lines(&shipment.from_address),
        weight_oz: number(shipment.parcel.get("weight")).unwrap_or_default(),
        label_date: format_time(postage.bought_at),
    })
}

/// `GET /track/{tracking_code}`: the tracker's `public_url`, a minimal status.
pub async fn track(State(app): State<Arc<App>>, Path(code): Path<String>) -> Response {
    let world = app.world();
    let carrier = &world.carrier;
    let Some(shipment) = carrier
        .tracking
        .get(&code)
        .and_then(|id| carrier.shipments.get(id))
    else {
        return (StatusCode::NOT_FOUND, "unknown tracking code").into_response();
    };
    let status = if shipment.refund_status.is_some() {
        "cancelled"
    } else {
        "pre_transit"
    };
    json_response(
        StatusCode::OK,
        &json!({ "tracking_code": code, "shipment_id": shipment.id, "status": status }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(to_zip: &str, weight: f64) -> Map<String, Value> {
        json!({
            "to_address": { "name": "A", "street1": "1 Main St", "city": "Boston", "state": "MA", "zip": to_zip, "country": "US" },
            "from_address": { "name": "W", "street1": "2 Oak Ave", "city": "Columbus", "state": "OH", "zip": "43215", "country": "US" },
            "parcel": { "length": 10, "width": 8, "height": 4, "weight": weight },
            "reference": "pkg-1",
        })
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn rates_are_deterministic_per_seed_and_grow_with_weight_and_distance() {
        let rates = |seed: u64, zip: &str, weight: f64| -> Vec<f64> {
            let mut carrier = Carrier::new(seed);
            let mut stats = Stats::default();
            let shipment =
                create_shipment(&mut carrier, &mut stats, &input(zip, weight), "http://x").unwrap();
            shipment["rates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["rate"].as_str().unwrap().parse().unwrap())
                .collect()
        };
        assert_eq!(rates(7, "02108", 16.0), rates(7, "02108", 16.0));
        assert_ne!(rates(7, "02108", 16.0), rates(8, "02108", 16.0));
        let near = rates(7, "43215", 16.0);
        let far = rates(7, "94103", 16.0);
        let heavy = rates(7, "43215", 80.0);
        for i in 0..SERVICES.len() {
            assert!(near[i] < far[i]);
            assert!(near[i] < heavy[i]);
        }
    }

    #[test]
    fn an_undeliverable_address_is_refused_and_counted() {
        let mut carrier = Carrier::new(1);
        let mut stats = Stats::default();
        assert!(
            create_shipment(&mut carrier, &mut stats, &input("00000", 8.0), "http://x").is_err()
        );
        assert_eq!(stats.addresses_rejected, 1);
        assert_eq!(stats.shipments_created, 0);
    }

    #[test]
    fn tracking_codes_look_like_each_carriers() {
        let mut carrier = Carrier::new(1);
        assert!(carrier.tracking_code("UPS").starts_with("1Z"));
        assert_eq!(carrier.tracking_code("UPS").len(), 18);
        assert_eq!(carrier.tracking_code("FedEx").len(), 12);
        assert_eq!(carrier.tracking_code("USPS").len(), 22);
    }
}
