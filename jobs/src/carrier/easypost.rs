//! EasyPost-style carrier adapter (EasyPost API v2).
//!
//! HTTP Basic auth with the API key as the user name and an empty password,
//! JSON bodies: `POST /v2/shipments` creates a shipment with its rates,
//! `GET /v2/shipments/{id}` looks one up, `POST /v2/shipments/{id}/buy` buys
//! one of its rates and `POST /v2/shipments/{id}/refund` asks for a refund.
//!
//! Buying is the one call that is not safe to repeat: a buy that timed out
//! after it was sent, or that was answered with something unreadable, is
//! `unknown_outcome`, and the purchase job looks the shipment up before it
//! tries again. A buy refused with `SHIPMENT.POSTAGE.EXISTS` is
//! [`BuyOutcome::PostageExists`], not an error. The API key never appears in
//! messages or `Debug` output.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

use super::{BuyOutcome, CarrierApi, CarrierShipment, Postage, ShipmentRequest};
use crate::address::Address;
use crate::error::{ApiError, ErrorClass};
use crate::rate_choice::Quote;

const API: &str = "easypost";

/// The error code EasyPost answers a buy with when the shipment already has
/// postage.
pub const POSTAGE_EXISTS: &str = "SHIPMENT.POSTAGE.EXISTS";

/// An EasyPost account's API.
pub struct EasyPostClient {
    http: reqwest::Client,
    base: url::Url,
    api_key: SecretString,
}

impl fmt::Debug for EasyPostClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EasyPostClient")
            .field("base", &self.base.as_str())
            .field("api_key", &"[REDACTED]")
            .finish()
    }
}

impl EasyPostClient {
    /// `base_url` e.g. "https://api.easypost.com" or "http://127.0.0.1:8090"; paths are `/v2/...`.
    pub fn new(base_url: &str, api_key: SecretString, timeout: Duration) -> Result<Self, ApiError> {
        let invalid = |why: String| ApiError::new(API, ErrorClass::Permanent, why);
        let base = url::Url::parse(base_url)
            .map_err(|e| invalid(format!("invalid EasyPost base URL {base_url:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(invalid(format!(
                "invalid EasyPost base URL {base_url:?}: not an http(s) URL"
            )));
        }
        if api_key.expose_secret().is_empty() {
            return Err(invalid("the EasyPost API key is empty".to_string()));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("conveyor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(EasyPostClient {
            http,
            base,
            api_key,
        })
    }

    /// `{base}/v2/{segments...}`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> url::Url {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("v2").extend(segments);
        }
        url
    }

    /// Sends one call and returns the JSON it answered with, or the
    /// classified failure.
    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<Value>,
        idempotent: bool,
    ) -> Result<Value, ApiError> {
        let mut request = self
            .http
            .request(method, self.url(segments))
            .basic_auth(self.api_key.expose_secret(), Some(""));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.redact(ApiError::from_transport(API, &e, idempotent)))?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.redact(ApiError::from_transport(API, &e, idempotent)))?;
        if !(200..300).contains(&status) {
            return Err(self.redact(parse_error(status, &bytes, retry_after)));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            // A success we cannot read (truncated, or a proxy's page): a
            // read is simply tried again; for a call that is not safe to
            // repeat the remote side did act, so reconcile before anything
            // else.
            let class = if idempotent {
                ErrorClass::Retryable
            } else {
                ErrorClass::UnknownOutcome
            };
            self.redact(
                ApiError::new(
                    API,
                    class,
                    format!(
                        "HTTP {status} response is not JSON ({e}): {}",
                        excerpt(&bytes)
                    ),
                )
                .with_status(status),
            )
        })
    }

    /// Defence in depth: no message leaves this adapter with the key in it,
    /// even if a server echoed it back.
    fn redact(&self, mut err: ApiError) -> ApiError {
        let key = self.api_key.expose_secret();
        if !key.is_empty() && err.message.contains(key) {
            err.message = err.message.replace(key, "[REDACTED]");
        }
        err
    }

    fn same_origin(&self, url: &url::Url) -> bool {
        url.origin() == self.base.origin()
    }
}

#[async_trait]
impl CarrierApi for EasyPostClient {
    async fn create_shipment(
        &self,
        request: &ShipmentRequest,
    ) -> Result<CarrierShipment, ApiError> {
        let body = json!({
            "shipment": {
                "to_address": address_json(&request.to),
                "from_address": address_json(&request.from),
                "parcel": {
                    "length": request.parcel.length_in,
                    "width": request.parcel.width_in,
                    "height": request.parcel.height_in,
                    "weight": request.parcel.weight_oz,
                },
                "reference": request.reference,
                "options": { "label_format": "PDF" },
            }
        });
        let answer = self
            .call(Method::POST, &["shipments"], Some(body), true)
            .await?;
        parse_shipment(&answer)
    }

    async fn get_shipment(&self, shipment_id: &str) -> Result<CarrierShipment, ApiError> {
        let answer = self
            .call(Method::GET, &["shipments", shipment_id], None, true)
            .await?;
        parse_shipment(&answer)
    }

    async fn buy(&self, shipment_id: &str, rate_id: &str) -> Result<BuyOutcome, ApiError> {
        let body = json!({ "rate": { "id": rate_id } });
        let answer = match self
            .call(
                Method::POST,
                &["shipments", shipment_id, "buy"],
                Some(body),
                false,
            )
            .await
        {
            Ok(answer) => answer,
            Err(e) if e.code.as_deref() == Some(POSTAGE_EXISTS) => {
                return Ok(BuyOutcome::PostageExists);
            }
            Err(e) => return Err(e),
        };
        let unknown = |why: String| {
            ApiError::new(
                API,
                ErrorClass::UnknownOutcome,
                format!(
                    "the carrier accepted the purchase for shipment {shipment_id} but {why}; \
                     look the shipment up before buying again"
                ),
            )
        };
        let shipment = parse_shipment(&answer)
            .map_err(|e| unknown(format!("its answer could not be read ({})", e.message)))?;
        if shipment.postage.is_none() {
            return Err(unknown("its answer carries no postage".to_string()));
        }
        Ok(BuyOutcome::Bought(Box::new(shipment)))
    }

    async fn refund(&self, shipment_id: &str) -> Result<CarrierShipment, ApiError> {
        let answer = self
            .call(
                Method::POST,
                &["shipments", shipment_id, "refund"],
                Some(json!({})),
                true,
            )
            .await?;
        parse_shipment(&answer)
    }

    async fn fetch_label(&self, label_url: &str) -> Result<Vec<u8>, ApiError> {
        let url = url::Url::parse(label_url)
            .or_else(|_| self.base.join(label_url))
            .map_err(|e| {
                ApiError::new(
                    API,
                    ErrorClass::Permanent,
                    format!("invalid label URL {label_url:?}: {e}"),
                )
            })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ApiError::new(
                API,
                ErrorClass::Permanent,
                format!("invalid label URL {label_url:?}: not http(s)"),
            ));
        }
        let mut request = self.http.get(url.clone());
        // Labels usually live on a file host; the key only goes to the API's
        // own origin.
        if self.same_origin(&url) {
            request = request.basic_auth(self.api_key.expose_secret(), Some(""));
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.redact(ApiError::from_transport(API, &e, true)))?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("no content type")
            .to_string();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.redact(ApiError::from_transport(API, &e, true)))?;
        if !(200..300).contains(&status) {
            return Err(ApiError::from_status(
                API,
                status,
                retry_after,
                format!("label download failed with HTTP {status}"),
            ));
        }
        if !bytes.starts_with(b"%PDF") {
            return Err(ApiError::new(
                API,
                ErrorClass::Permanent,
                format!("label is not a PDF ({content_type}, {} bytes)", bytes.len()),
            )
            .with_status(status));
        }
        Ok(bytes.to_vec())
    }
}

fn address_json(a: &Address) -> Value {
    let mut out = Map::new();
    let mut put = |key: &str, value: Option<&str>| {
        if let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) {
            out.insert(key.to_string(), json!(v));
        }
    };
    put("name", Some(a.name.as_str()));
    put("company", a.company.as_deref());
    put("street1", Some(a.street1.as_str()));
    put("street2", a.street2.as_deref());
    put("city", Some(a.city.as_str()));
    put("state", Some(a.state.as_str()));
    put("zip", Some(a.zip.as_str()));
    put("country", Some(a.country.as_str()));
    put("phone", a.phone.as_deref());
    Value::Object(out)
}

/// A string field, `None` when absent, null or blank.
fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Parses an EasyPost Shipment JSON object (as in the recorded exchanges) into a CarrierShipment.
///
/// A rate that cannot be read is left out (and logged) rather than failing
/// the shipment: the other rates are still good.
pub fn parse_shipment(body: &Value) -> Result<CarrierShipment, ApiError> {
    let bad = |why: &str| {
        ApiError::new(
            API,
            ErrorClass::Permanent,
            format!("unexpected shipment in the carrier's answer: {why}"),
        )
    };
    if !body.is_object() {
        return Err(bad("not a JSON object"));
    }
    if let Some(object) = body.get("object").and_then(Value::as_str)
        && object != "Shipment"
    {
        return Err(bad(&format!("object is {object:?}, not \"Shipment\"")));
    }
    let id = text(body, "id").ok_or_else(|| bad("no id"))?;
    let rates = match body.get("rates") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|r| match parse_rate(r) {
                Ok(q) => Some(q),
                Err(why) => {
                    tracing::warn!(api = API, shipment = id, "rate left out: {why}");
                    None
                }
            })
            .collect(),
        Some(_) => return Err(bad("rates is not a list")),
    };
    let postage = match body.get("postage_label") {
        None | Some(Value::Null) => None,
        Some(label) => {
            let label_url = text(label, "label_pdf_url")
                .or_else(|| text(label, "label_url"))
                .ok_or_else(|| bad("postage_label has no label_pdf_url or label_url"))?;
            let tracking_code = text(body, "tracking_code")
                .ok_or_else(|| bad("postage without a tracking_code"))?;
            let selected = body.get("selected_rate").filter(|r| r.is_object());
            let selected_text = |key: &str| selected.and_then(|r| text(r, key)).map(str::to_string);
            Some(Postage {
                tracking_code: tracking_code.to_string(),
                label_url: label_url.to_string(),
                rate_id: selected_text("id"),
                carrier: selected_text("carrier"),
                service: selected_text("service"),
            })
        }
    };
    Ok(CarrierShipment {
        id: id.to_string(),
        reference: text(body, "reference").map(str::to_string),
        rates,
        postage,
        refund_status: text(body, "refund_status").map(str::to_string),
    })
}

fn parse_rate(r: &Value) -> Result<Quote, String> {
    let field = |key: &str| text(r, key).ok_or_else(|| format!("rate has no {key}"));
    let rate_id = field("id")?;
    let amount = match r.get("rate") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(format!("rate {rate_id} has no amount")),
    };
    let amount_cents = cents(&amount)
        .ok_or_else(|| format!("rate {rate_id} has an unreadable amount {amount:?}"))?;
    let days = |key: &str| {
        r.get(key)
            .and_then(Value::as_u64)
            .and_then(|d| u32::try_from(d).ok())
    };
    Ok(Quote {
        rate_id: rate_id.to_string(),
        carrier: field("carrier")?.to_string(),
        service: field("service")?.to_string(),
        amount_cents,
        currency: field("currency")?.to_string(),
        delivery_days: days("delivery_days").or_else(|| days("est_delivery_days")),
    })
}

/// A non-negative decimal string ("7.58", "6.07000", "12") in cents, exactly;
/// digits past the cent round half up.
fn cents(s: &str) -> Option<i64> {
    let s = s.trim();
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
        return None;
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let f = frac.as_bytes();
    let digit = |i: usize| f.get(i).map_or(0, |b| i64::from(b - b'0'));
    let round_up = i64::from(digit(2) >= 5);
    whole
        .checked_mul(100)?
        .checked_add(digit(0) * 10 + digit(1) + round_up)
}

/// Parses an EasyPost error body ({"error": {"code", "message", "errors"}}) into an ApiError for the given HTTP status.
pub fn parse_error(status: u16, body: &[u8], retry_after: Option<Duration>) -> ApiError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .filter(|e| e.is_object());
    let Some(error) = error else {
        return ApiError::from_status(
            API,
            status,
            retry_after,
            format!(
                "HTTP {status} without an EasyPost error body: {}",
                excerpt(body)
            ),
        );
    };
    let code = text(error, "code");
    let message = text(error, "message").unwrap_or("(no message)");
    let details: Vec<String> = error
        .get("errors")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|e| match e {
                    Value::String(s) => Some(s.clone()),
                    Value::Object(_) => {
                        let m = text(e, "message");
                        match (text(e, "field"), m) {
                            (Some(f), Some(m)) => Some(format!("{f}: {m}")),
                            (None, Some(m)) => Some(m.to_string()),
                            (Some(f), None) => Some(f.to_string()),
                            (None, None) => None,
                        }
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let full = if details.is_empty() {
        message.to_string()
    } else {
        format!("{message} ({})", details.join("; "))
    };
    let about_address = code.is_some_and(|c| c.contains("ADDRESS"))
        || details
            .iter()
            .any(|d| d.to_ascii_lowercase().contains("address"));
    let text = match status {
        401 | 403 => format!("EasyPost refused the API key (HTTP {status}): {full}"),
        400..=499 if about_address => format!("address rejected by the carrier: {full}"),
        _ => match code {
            Some(code) => format!("HTTP {status} {code}: {full}"),
            None => format!("HTTP {status}: {full}"),
        },
    };
    let err = ApiError::from_status(API, status, retry_after, truncate(&text, 800));
    match code {
        Some(code) => err.with_code(code),
        None => err,
    }
}

/// Seconds (`"2"`, `"2.0"`) or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

fn excerpt(body: &[u8]) -> String {
    if body.is_empty() {
        return "(empty body)".to_string();
    }
    let text = String::from_utf8_lossy(body);
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    truncate(flat.trim(), 200)
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_amounts_become_exact_cents() {
        assert_eq!(cents("7.58"), Some(758));
        assert_eq!(cents("34.15"), Some(3415));
        assert_eq!(cents("6.07000"), Some(607));
        assert_eq!(cents("12"), Some(1200));
        assert_eq!(cents("0.5"), Some(50));
        assert_eq!(cents(".99"), Some(99));
        assert_eq!(cents("1.005"), Some(101));
        assert_eq!(cents("1.0049"), Some(100));
        // 0.1 + 0.2 style float errors cannot happen: 1234567.89 stays exact.
        assert_eq!(cents("1234567.89"), Some(123_456_789));
        for bad in ["", ".", "-1.00", "1,00", "abc", "1.2.3", "1e3"] {
            assert_eq!(cents(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_rate_without_delivery_days_falls_back_to_the_estimate() {
        let q = parse_rate(
            &json!({ "id": "rate_1", "carrier": "USPS", "service": "Priority",
            "rate": "7.58", "currency": "USD", "delivery_days": null, "est_delivery_days": 2 }),
        )
        .unwrap();
        assert_eq!(q.amount_cents, 758);
        assert_eq!(q.delivery_days, Some(2));
    }

    #[test]
    fn an_unreadable_rate_is_left_out_and_the_others_kept() {
        let s = parse_shipment(&json!({ "id": "shp_1", "object": "Shipment", "rates": [
            { "id": "rate_1", "carrier": "USPS", "service": "Priority", "rate": "n/a", "currency": "USD" },
            { "id": "rate_2", "carrier": "UPS", "service": "Ground", "rate": "9.10", "currency": "USD" },
        ]}))
        .unwrap();
        assert_eq!(s.rates.len(), 1);
        assert_eq!(s.rates[0].rate_id, "rate_2");
    }

    #[test]
    fn the_pdf_label_url_is_preferred() {
        let s = parse_shipment(&json!({ "id": "shp_1", "tracking_code": "9400",
            "postage_label": { "label_url": "https://x/l.png", "label_pdf_url": "https://x/l.pdf" },
            "selected_rate": { "id": "rate_1", "carrier": "USPS", "service": "Priority" } }))
        .unwrap();
        let p = s.postage.unwrap();
        assert_eq!(p.label_url, "https://x/l.pdf");
        assert_eq!(p.rate_id.as_deref(), Some("rate_1"));
    }

    #[test]
    fn address_errors_say_the_carrier_rejected_the_address() {
        let body = br#"{"error":{"code":"ADDRESS.VERIFY.FAILURE","message":"Unable to verify address.","errors":[{"field":"street1","message":"Address not found"}]}}"#;
        let e = parse_error(422, body, None);
        assert_eq!(e.class, ErrorClass::Permanent);
        assert_eq!(e.code.as_deref(), Some("ADDRESS.VERIFY.FAILURE"));
        assert!(
            e.message
                .starts_with("address rejected by the carrier: Unable to verify address."),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_body_that_is_not_an_error_is_classified_by_status() {
        let e = parse_error(502, b"<html>Bad Gateway</html>", None);
        assert_eq!(e.class, ErrorClass::Retryable);
        assert!(e.message.contains("Bad Gateway"));
        let e = parse_error(429, b"", Some(Duration::from_secs(3)));
        assert_eq!(
            e.class,
            ErrorClass::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            }
        );
    }
}
