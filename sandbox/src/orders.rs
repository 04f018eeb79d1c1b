//! The shop's data: seeded order generation, the in-memory order store, Shopify's
//! order search (`updated_at:>=...`), sorting, and the rules of `fulfillmentCreate`
//! (what may be fulfilled, what it changes). Rendering into Shopify's JSON shape is
//! here too, as "full" objects carrying every field the served schema declares; the
//! GraphQL layer projects them onto each request's selection.

use std::collections::HashMap;

use chrono::{DateTime, Duration, SecondsFormat, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::geo::{CITIES, City};
use crate::stats::Stats;

// Numeric id ranges per resource, so gids look like Shopify's and never collide.
const ORDER_ID_BASE: u64 = 5_100_000_000;
const LINE_ITEM_ID_BASE: u64 = 13_600_000_000;
const FULFILLMENT_ORDER_ID_BASE: u64 = 6_300_000_000;
const FO_LINE_ITEM_ID_BASE: u64 = 14_200_000_000;
const FULFILLMENT_ID_BASE: u64 = 4_700_000_000;
const SHIPPING_LINE_ID_BASE: u64 = 4_200_000_000;
const ADDRESS_ID_BASE: u64 = 7_700_000_000;
const FIRST_ORDER_NUMBER: u64 = 1001;

const FIRST_NAMES: &[&str] = &[
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Elijah", "Sophia", "James", "Mia", "Lucas", "Amelia",
    "Mateo", "Harper", "Ethan", "Camila", "Aiden", "Priya", "Wei", "Fatima", "Diego",
];
const LAST_NAMES: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Nguyen",
    "Patel",
    "Kim",
    "Lee",
    "Walker",
    "Hall",
    "Young",
    "Allen",
    "Chen",
    "Lopez",
];
const STREETS: &[&str] = &[
    "Main St",
    "Oak Ave",
    "Maple St",
    "Cedar Ln",
    "Pine St",
    "Elm St",
    "Washington Ave",
    "Lake Dr",
    "Park Ave",
    "Hill Rd",
    "2nd St",
    "Market St",
    "Sunset Blvd",
    "River Rd",
    "Broadway",
];

/// Shipping methods offered at checkout: (title and code, price in cents, weight
/// out of 100). Most orders ship Standard.
const SHIPPING_METHODS: &[(&str, u64, u32)] = &[
    ("Standard", 599, 80),
    ("Express", 1499, 15),
    ("Overnight", 2999, 5),
];

/// Timestamps are whole seconds, as Shopify renders them.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn gid(kind: &str, id: u64) -> String {
    format!("gid://shopify/{kind}/{id}")
}

/// The numeric id at the end of a gid of the given kind, if it is one.
pub fn parse_gid(gid: &str, kind: &str) -> Option<u64> {
    let rest = gid.strip_prefix("gid://shopify/")?.strip_prefix(kind)?;
    let rest = rest.strip_prefix('/')?;
    let digits = rest.split(['?', '/']).next()?;
    digits.parse().ok()
}

fn money(cents: u64) -> Value {
    let amount = format!("{}.{:02}", cents / 100, cents % 100);
    let one = json!({ "amount": amount, "currencyCode": "USD" });
    json!({ "shopMoney": one, "presentmentMoney": one })
}

/// Deterministic price for a SKU (FNV-1a of the SKU), so the same catalog always
/// prices the same way regardless of seed.
fn unit_price_cents(sku: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sku.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    500 + hash % 8500
}

#[derive(Debug, Clone)]
pub struct Address {
    pub first_name: String,
    pub last_name: String,
    pub address1: String,
    pub address2: Option<String>,
    pub city: City,
    pub phone: String,
}

#[derive(Debug, Clone)]
pub struct LineItem {
    pub id: u64,
    pub sku: Option<String>,
    pub name: String,
    pub quantity: u32,
    pub unit_price_cents: u64,
    /// A malformed line (fault injection): its quantities are served negative.
    pub garbage_quantity: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoStatus {
    Open,
    InProgress,
    Closed,
}

impl FoStatus {
    fn as_str(self) -> &'static str {
        match self {
            FoStatus::Open => "OPEN",
            FoStatus::InProgress => "IN_PROGRESS",
            FoStatus::Closed => "CLOSED",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FoLine {
    pub id: u64,
    /// Index into the order's `lines`.
    pub line: usize,
    pub total: u32,
    pub remaining: u32,
}

#[derive(Debug, Clone)]
pub struct FulfillmentOrder {
    pub id: u64,
    pub status: FoStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub lines: Vec<FoLine>,
}

#[derive(Debug, Clone)]
pub struct Tracking {
    pub company: Option<String>,
    pub number: Option<String>,
    pub url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Fulfillment {
    pub id: u64,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub total_quantity: u32,
    pub tracking: Vec<Tracking>,
}

#[derive(Debug, Clone)]
pub struct Order {
    pub id: u64,
    pub number: u64,
    pub email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// `None` models a malformed order (fault injection): no shipping address.
    pub address: Option<Address>,
    pub shipping_method: usize,
    pub lines: Vec<LineItem>,
    pub fulfillment_orders: Vec<FulfillmentOrder>,
    pub fulfillments: Vec<Fulfillment>,
}

impl Order {
    pub fn gid(&self) -> String {
        gid("Order", self.id)
    }

    pub fn name(&self) -> String {
        format!("#{}", self.number)
    }

    fn remaining_of_line(&self, line: usize) -> u32 {
        self.fulfillment_orders
            .iter()
            .flat_map(|fo| &fo.lines)
            .filter(|l| l.line == line)
            .map(|l| l.remaining)
            .sum()
    }

    fn display_fulfillment_status(&self) -> &'static str {
        let ordered: u32 = self.lines.iter().map(|l| l.quantity).sum();
        let remaining: u32 = (0..self.lines.len())
            .map(|i| self.remaining_of_line(i))
            .sum();
        if remaining == 0 && ordered > 0 {
            "FULFILLED"
        } else if remaining < ordered {
            "PARTIALLY_FULFILLED"
        } else {
            "UNFULFILLED"
        }
    }

    fn line_json(&self, index: usize) -> Value {
        let line = &self.lines[index];
        let unfulfilled = self.remaining_of_line(index);
        let quantity = if line.garbage_quantity {
            -i64::from(line.quantity)
        } else {
            i64::from(line.quantity)
        };
        json!({
            "__typename": "LineItem",
            "id": gid("LineItem", line.id),
            "sku": line.sku,
            "name": line.name,
            "title": line.name,
            "variantTitle": null,
            "vendor": "Conveyor Sandbox",
            "quantity": quantity,
            "currentQuantity": quantity,
            "unfulfilledQuantity": unfulfilled,
            "fulfillableQuantity": unfulfilled,
            "nonFulfillableQuantity": 0,
            "refundableQuantity": line.quantity,
            "requiresShipping": true,
            "isGiftCard": false,
            "taxable": true,
            "originalUnitPriceSet": money(line.unit_price_cents),
            "originalTotalSet": money(line.unit_price_cents * u64::from(line.quantity)),
        })
    }

    pub fn fulfillment_order_json(&self, fo: &FulfillmentOrder) -> Value {
        let lines: Vec<Value> = fo
            .lines
            .iter()
            .map(|l| {
                let line = &self.lines[l.line];
                json!({
                    "__typename": "FulfillmentOrderLineItem",
                    "id": gid("FulfillmentOrderLineItem", l.id),
                    "totalQuantity": l.total,
                    "remainingQuantity": l.remaining,
                    "sku": line.sku,
                    "productTitle": line.name,
                    "variantTitle": null,
                    "requiresShipping": true,
                    "lineItem": self.line_json(l.line),
                })
            })
            .collect();
        json!({
            "__typename": "FulfillmentOrder",
            "id": gid("FulfillmentOrder", fo.id),
            "status": fo.status.as_str(),
            "requestStatus": "UNSUBMITTED",
            "createdAt": format_time(fo.created_at),
            "updatedAt": format_time(fo.updated_at),
            "fulfillAt": format_time(fo.created_at),
            "orderId": self.gid(),
            "orderName": self.name(),
            "orderProcessedAt": format_time(self.created_at),
            "lineItems": lines,
        })
    }

    pub fn fulfillment_json(&self, f: &Fulfillment) -> Value {
        let tracking: Vec<Value> = f
            .tracking
            .iter()
            .map(|t| json!({ "company": t.company, "number": t.number, "url": t.url }))
            .collect();
        json!({
            "__typename": "Fulfillment",
            "id": gid("Fulfillment", f.id),
            "legacyResourceId": f.id.to_string(),
            "name": f.name,
            "status": "SUCCESS",
            "displayStatus": "FULFILLED",
            "createdAt": format_time(f.created_at),
            "updatedAt": format_time(f.created_at),
            "deliveredAt": null,
            "inTransitAt": null,
            "estimatedDeliveryAt": null,
            "requiresShipping": true,
            "totalQuantity": f.total_quantity,
            "trackingInfo": tracking,
        })
    }

    fn address_json(&self) -> Value {
        let Some(a) = &self.address else {
            return Value::Null;
        };
        json!({
            "__typename": "MailingAddress",
            "id": format!("gid://shopify/MailingAddress/{}?model_name=Address", ADDRESS_ID_BASE + self.number),
            "name": format!("{} {}", a.first_name, a.last_name),
            "firstName": a.first_name,
            "lastName": a.last_name,
            "company": null,
            "address1": a.address1,
            "address2": a.address2,
            "city": a.city.name,
            "province": a.city.province,
            "provinceCode": a.city.province_code,
            "zip": a.city.zip,
            "country": "United States",
            "countryCodeV2": "US",
            "phone": a.phone,
            "latitude": a.city.latitude,
            "longitude": a.city.longitude,
            "coordinatesValidated": true,
            "formattedArea": format!("{} {}, United States", a.city.name, a.city.province_code),
        })
    }

    /// The order as a full Shopify `Order` object (every field the schema serves).
    pub fn to_json(&self) -> Value {
        let (method, shipping_cents, _) = SHIPPING_METHODS[self.shipping_method];
        let shipping_line = json!({
            "__typename": "ShippingLine",
            "id": gid("ShippingLine", SHIPPING_LINE_ID_BASE + self.number),
            "title": method,
            "code": method,
            "source": "shopify",
            "carrierIdentifier": null,
            "custom": false,
            "isRemoved": false,
            "originalPriceSet": money(shipping_cents),
            "discountedPriceSet": money(shipping_cents),
        });
        let items: u32 = self.lines.iter().map(|l| l.quantity).sum();
        let subtotal: u64 = self
            .lines
            .iter()
            .map(|l| l.unit_price_cents * u64::from(l.quantity))
            .sum();
        let cancelled = self.cancelled_at.map(format_time);
        let fully_fulfilled = self.display_fulfillment_status() == "FULFILLED";
        let closed_at = self
            .cancelled_at
            .or(fully_fulfilled.then_some(self.updated_at));
        json!({
            "__typename": "Order",
            "id": self.gid(),
            "legacyResourceId": self.id.to_string(),
            "name": self.name(),
            "email": self.email,
            "phone": null,
            "createdAt": format_time(self.created_at),
            "updatedAt": format_time(self.updated_at),
            "processedAt": format_time(self.created_at),
            "cancelledAt": cancelled,
            "cancelReason": self.cancelled_at.map(|_| "CUSTOMER"),
            "closed": closed_at.is_some(),
            "closedAt": closed_at.map(format_time),
            "confirmed": true,
            "test": false,
            "currencyCode": "USD",
            "displayFinancialStatus": if self.cancelled_at.is_some() { "REFUNDED" } else { "PAID" },
            "displayFulfillmentStatus": self.display_fulfillment_status(),
            "note": null,
            "tags": [],
            "sourceName": "web",
            "subtotalLineItemsQuantity": items,
            "currentSubtotalLineItemsQuantity": items,
            "subtotalPriceSet": money(subtotal),
            "totalShippingPriceSet": money(shipping_cents),
            "totalPriceSet": money(subtotal + shipping_cents),
            "currentTotalPriceSet": money(subtotal + shipping_cents),
            "shippingAddress": self.address_json(),
            "shippingLine": shipping_line,
            "shippingLines": [shipping_line],
            "lineItems": (0..self.lines.len()).map(|i| self.line_json(i)).collect::<Vec<_>>(),
            "fulfillmentOrders": self
                .fulfillment_orders
                .iter()
                .map(|fo| self.fulfillment_order_json(fo))
                .collect::<Vec<_>>(),
            "fulfillments": self
                .fulfillments
                .iter()
                .map(|f| self.fulfillment_json(f))
                .collect::<Vec<_>>(),
        })
    }
}

/// `OrderSortKeys` the sandbox distinguishes; the others sort like `ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    UpdatedAt,
    CreatedAt,
    Id,
}

impl SortKey {
    pub fn parse(key: Option<&str>) -> Self {
        match key {
            None | Some("UPDATED_AT") => SortKey::UpdatedAt,
            // Orders are processed when they are created in the sandbox.
            Some("CREATED_AT" | "PROCESSED_AT") => SortKey::CreatedAt,
            Some(_) => SortKey::Id,
        }
    }

    /// The value an order sorts by (ties broken by id).
    pub fn value(self, order: &Order) -> i64 {
        match self {
            SortKey::UpdatedAt => order.updated_at.timestamp(),
            SortKey::CreatedAt => order.created_at.timestamp(),
            SortKey::Id => order.id as i64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SearchField {
    UpdatedAt,
    CreatedAt,
    Id,
}

/// One understood term of a Shopify search query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchTerm {
    field: SearchField,
    comparison: Comparison,
    value: i64,
}

/// Parses Shopify search syntax as far as the sandbox needs: space-separated
/// (implicitly ANDed) terms `updated_at:`, `created_at:` and `id:`, each with an
/// optional `>`, `>=`, `<`, `<=` and a value that may be quoted. Times are RFC 3339
/// or a bare date (midnight UTC). Everything else (`AND`, unknown fields, values that
/// do not parse) is ignored, as Shopify ignores unknown search terms.
pub fn parse_search(query: &str) -> Vec<SearchTerm> {
    tokenize(query)
        .into_iter()
        .filter_map(|token| parse_term(&token))
        .collect()
}

fn tokenize(query: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in query.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => current.push(c),
            (None, '\'' | '"') => quote = Some(c),
            (None, c) if c.is_whitespace() => {
                if !current.is_empty() {
                    tokens.push(std::mem::take(&mut current));
                }
            }
            (None, c) => current.push(c),
        }
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

fn parse_term(token: &str) -> Option<SearchTerm> {
    let (name, rest) = token.split_once(':')?;
    let field = match name.to_ascii_lowercase().as_str() {
        "updated_at" => SearchField::UpdatedAt,
        "created_at" | "processed_at" => SearchField::CreatedAt,
        "id" => SearchField::Id,
        _ => return None,
    };
    let (comparison, value) = if let Some(v) = rest.strip_prefix(">=") {
        (Comparison::Ge, v)
    } else if let Some(v) = rest.strip_prefix("<=") {
        (Comparison::Le, v)
    } else if let Some(v) = rest.strip_prefix('>') {
        (Comparison::Gt, v)
    } else if let Some(v) = rest.strip_prefix('<') {
        (Comparison::Lt, v)
    } else {
        (Comparison::Eq, rest)
    };
    let value = value.trim_matches(|c| c == '\'' || c == '"');
    let value = match field {
        SearchField::Id => value.parse().ok()?,
        _ => parse_search_time(value)?.timestamp(),
    };
    Some(SearchTerm {
        field,
        comparison,
        value,
    })
}

fn parse_search_time(value: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Some(t.with_timezone(&Utc));
    }
    let date = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()?;
    Some(Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?))
}

impl SearchTerm {
    pub fn matches(&self, order: &Order) -> bool {
        let actual = match self.field {
            SearchField::UpdatedAt => order.updated_at.timestamp(),
            SearchField::CreatedAt => order.created_at.timestamp(),
            SearchField::Id => order.id as i64,
        };
        match self.comparison {
            Comparison::Lt => actual < self.value,
            Comparison::Le => actual <= self.value,
            Comparison::Eq => actual == self.value,
            Comparison::Ge => actual >= self.value,
            Comparison::Gt => actual > self.value,
        }
    }
}

/// What `fulfillmentCreate` receives (the coerced `FulfillmentInput`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FulfillmentInput {
    pub line_items_by_fulfillment_order: Vec<FulfillmentOrderLineItemsInput>,
    #[serde(default)]
    pub tracking_info: Option<TrackingInput>,
    // `notifyCustomer` and `originAddress` are accepted and ignored: the sandbox
    // sends no e-mail and has no locations.
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FulfillmentOrderLineItemsInput {
    pub fulfillment_order_id: String,
    #[serde(default)]
    pub fulfillment_order_line_items: Option<Vec<FulfillmentOrderLineItemInput>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FulfillmentOrderLineItemInput {
    pub id: String,
    pub quantity: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TrackingInput {
    #[serde(default)]
    pub company: Option<String>,
    #[serde(default)]
    pub number: Option<String>,
    #[serde(default)]
    pub numbers: Option<Vec<String>>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

/// A refused `fulfillmentCreate`: Shopify's `UserError` plus whether it counts as
/// an attempt to fulfil more than remained.
#[derive(Debug, Clone, PartialEq)]
pub struct UserError {
    pub field: Vec<String>,
    pub message: String,
    pub over_fulfillment: bool,
}

impl UserError {
    fn new(message: impl Into<String>, over_fulfillment: bool) -> Self {
        Self {
            field: vec!["fulfillment".to_owned()],
            message: message.into(),
            over_fulfillment,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({ "__typename": "UserError", "field": self.field, "message": self.message })
    }
}

/// The Shopify message for quantities that are not available.
pub const INVALID_QUANTITY: &str = "Invalid fulfillment order line item quantity requested.";

/// Knobs of order generation that tests and the CLI may turn.
#[derive(Debug, Clone)]
pub struct Generation {
    pub seed: u64,
    pub catalog: Vec<(String, String)>,
    /// Fraction (0..=1) of orders generated malformed: no shipping address, a
    /// line without a SKU, or a line with a negative quantity. Drawn from a
    /// separate RNG so that changing it does not change the other orders.
    pub malformed_rate: f64,
}

/// All orders of the shop, in creation order (index = number - 1001).
pub struct Shop {
    orders: Vec<Order>,
    fulfillment_orders: HashMap<u64, (usize, usize)>,
    fulfillments: HashMap<u64, (usize, usize)>,
    rng: StdRng,
    malformed_rng: StdRng,
    generation: Generation,
    next_line_id: u64,
    next_fo_line_id: u64,
    next_fulfillment_id: u64,
    /// Latest `updatedAt` issued, so that timestamps never go backwards.
    last_time: DateTime<Utc>,
}

impl Shop {
    pub fn new(generation: Generation) -> Self {
        let rng = StdRng::seed_from_u64(generation.seed);
        // A different stream for malformation so that turning it on keeps the rest.
        let malformed_rng = StdRng::seed_from_u64(generation.seed ^ 0x6d61_6c66_6f72_6d65);
        Self {
            orders: Vec::new(),
            fulfillment_orders: HashMap::new(),
            fulfillments: HashMap::new(),
            rng,
            malformed_rng,
            generation,
            next_line_id: LINE_ITEM_ID_BASE + 1,
            next_fo_line_id: FO_LINE_ITEM_ID_BASE + 1,
            next_fulfillment_id: FULFILLMENT_ID_BASE + 1,
            last_time: DateTime::<Utc>::MIN_UTC,
        }
    }

    #[cfg(test)]
    pub fn orders(&self) -> &[Order] {
        &self.orders
    }

    /// The time of a change to order `index`: now, but always after the
    /// order's current `updatedAt`, so that every change is a newer version.
    fn change_time(&mut self, index: usize) -> DateTime<Utc> {
        let now = self
            .now()
            .max(self.orders[index].updated_at + Duration::seconds(1));
        self.last_time = now;
        now
    }

    /// Share of orders created malformed from now on.
    pub fn set_malformed_rate(&mut self, rate: f64) {
        self.generation.malformed_rate = rate;
    }

    /// A timestamp for a change happening now: never earlier than the last one.
    pub fn now(&mut self) -> DateTime<Utc> {
        let now = Utc::now();
        let now = now - Duration::nanoseconds(i64::from(now.timestamp_subsec_nanos()));
        self.last_time = self.last_time.max(now);
        self.last_time
    }

    /// Creates a backlog of `n` orders whose timestamps are spread over the past
    /// hour (at least one second apart, so ordering by `updatedAt` is strict),
    /// the last one now.
    pub fn create_backlog(&mut self, n: usize, stats: &mut Stats) {
        if n == 0 {
            return;
        }
        let now = self.now();
        let step = (3600 / n as i64).max(1);
        for i in 0..n {
            let at = now - Duration::seconds(step * (n - 1 - i) as i64);
            self.create_order(at, stats);
        }
    }

    /// Creates `n` orders now.
    pub fn create_now(&mut self, n: usize, stats: &mut Stats) {
        for _ in 0..n {
            let at = self.now();
            self.create_order(at, stats);
        }
    }

    fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
        &items[rng.random_range(0..items.len())]
    }

    fn create_order(&mut self, at: DateTime<Utc>, stats: &mut Stats) {
        let number = FIRST_ORDER_NUMBER + self.orders.len() as u64;
        let id = ORDER_ID_BASE + number;
        let rng = &mut self.rng;
        let first_name = (*Self::pick(rng, FIRST_NAMES)).to_owned();
        let last_name = (*Self::pick(rng, LAST_NAMES)).to_owned();
        let city = *Self::pick(rng, CITIES);
        let address1 = format!(
            "{} {}",
            rng.random_range(1..=9999),
            Self::pick(rng, STREETS)
        );
        let address2 = rng
            .random_bool(0.25)
            .then(|| format!("Apt {}", rng.random_range(1..=40)));
        // 555-01xx numbers are reserved for fiction.
        let phone = format!("+1 555-01{:02}", rng.random_range(0..100));
        let roll = rng.random_range(0..100);
        let mut cumulative = 0;
        let shipping_method = SHIPPING_METHODS
            .iter()
            .position(|&(_, _, weight)| {
                cumulative += weight;
                roll < cumulative
            })
            .unwrap_or(0);

        let catalog = &self.generation.catalog;
        let line_count = rng.random_range(1..=4usize).min(catalog.len().max(1));
        let mut chosen: Vec<usize> = Vec::with_capacity(line_count);
        while chosen.len() < line_count && !catalog.is_empty() {
            let index = rng.random_range(0..catalog.len());
            if !chosen.contains(&index) {
                chosen.push(index);
            }
        }
        let mut lines = Vec::with_capacity(chosen.len());
        let mut fo_lines = Vec::with_capacity(chosen.len());
        for (position, index) in chosen.into_iter().enumerate() {
            let (sku, name) = &catalog[index];
            let quantity = rng.random_range(1..=3u32);
            let line_id = self.next_line_id;
            self.next_line_id += 1;
            lines.push(LineItem {
                id: line_id,
                sku: Some(sku.clone()),
                name: name.clone(),
                quantity,
                unit_price_cents: unit_price_cents(sku),
                garbage_quantity: false,
            });
            fo_lines.push(FoLine {
                id: self.next_fo_line_id,
                line: position,
                total: quantity,
                remaining: quantity,
            });
            self.next_fo_line_id += 1;
            stats
                .ordered_per_line
                .insert(gid("LineItem", line_id), quantity);
        }

        let mut address = Some(Address {
            first_name: first_name.clone(),
            last_name: last_name.clone(),
            address1,
            address2,
            city,
            phone,
        });
        let rate = self.generation.malformed_rate;
        if crate::faults::roll(&mut self.malformed_rng, rate) {
            match self.malformed_rng.random_range(0..3) {
                _ if lines.is_empty() => address = None,
                0 => address = None,
                1 => lines[0].sku = None,
                _ => lines[0].garbage_quantity = true,
            }
            stats.faults.channel.malformed_order += 1;
        }

        let fo = FulfillmentOrder {
            id: FULFILLMENT_ORDER_ID_BASE + number,
            status: FoStatus::Open,
            created_at: at,
            updated_at: at,
            lines: fo_lines,
        };
        let order_index = self.orders.len();
        self.fulfillment_orders.insert(fo.id, (order_index, 0));
        self.orders.push(Order {
            id,
            number,
            email: Some(format!(
                "{}.{}.{number}@example.com",
                first_name.to_ascii_lowercase(),
                last_name.to_ascii_lowercase()
            )),
            created_at: at,
            updated_at: at,
            cancelled_at: None,
            address,
            shipping_method,
            lines,
            fulfillment_orders: vec![fo],
            fulfillments: Vec::new(),
        });
        self.last_time = self.last_time.max(at);
        stats.orders_created += 1;
    }

    pub fn order_by_gid(&self, gid: &str) -> Option<&Order> {
        let id = parse_gid(gid, "Order")?;
        let index = id.checked_sub(ORDER_ID_BASE + FIRST_ORDER_NUMBER)?;
        self.orders.get(usize::try_from(index).ok()?)
    }

    fn order_index_by_gid(&self, gid: &str) -> Option<usize> {
        let id = parse_gid(gid, "Order")?;
        let index = usize::try_from(id.checked_sub(ORDER_ID_BASE + FIRST_ORDER_NUMBER)?).ok()?;
        (index < self.orders.len()).then_some(index)
    }

    pub fn fulfillment_order_json(&self, gid: &str) -> Option<Value> {
        let id = parse_gid(gid, "FulfillmentOrder")?;
        let &(order, fo) = self.fulfillment_orders.get(&id)?;
        let order = &self.orders[order];
        Some(order.fulfillment_order_json(&order.fulfillment_orders[fo]))
    }

    pub fn fulfillment_json(&self, gid: &str) -> Option<Value> {
        let id = parse_gid(gid, "Fulfillment")?;
        let &(order, f) = self.fulfillments.get(&id)?;
        let order = &self.orders[order];
        Some(order.fulfillment_json(&order.fulfillments[f]))
    }

    /// Any served `Node` by gid (for `node(id:)` / `nodes(ids:)`).
    pub fn node_json(&self, gid: &str) -> Option<Value> {
        if let Some(order) = self.order_by_gid(gid) {
            return Some(order.to_json());
        }
        self.fulfillment_order_json(gid)
            .or_else(|| self.fulfillment_json(gid))
    }

    /// Orders matching the search terms, sorted by `key` then id (descending when
    /// `reverse`).
    pub fn search(&self, terms: &[SearchTerm], key: SortKey, reverse: bool) -> Vec<&Order> {
        let mut found: Vec<&Order> = self
            .orders
            .iter()
            .filter(|o| terms.iter().all(|t| t.matches(o)))
            .collect();
        found.sort_by_key(|o| (key.value(o), o.id));
        if reverse {
            found.reverse();
        }
        found
    }

    /// Applies `fulfillmentCreate`. On success returns the new fulfillment as JSON;
    /// on refusal nothing changes.
    pub fn fulfill(
        &mut self,
        input: &FulfillmentInput,
        stats: &mut Stats,
    ) -> Result<Value, UserError> {
        let result = self.fulfill_inner(input, stats);
        if let Err(error) = &result
            && error.over_fulfillment
        {
            stats.over_fulfillment_attempts += 1;
        }
        result
    }

    fn fulfill_inner(
        &mut self,
        input: &FulfillmentInput,
        stats: &mut Stats,
    ) -> Result<Value, UserError> {
        if input.line_items_by_fulfillment_order.is_empty() {
            return Err(UserError {
                field: vec![
                    "fulfillment".to_owned(),
                    "lineItemsByFulfillmentOrder".to_owned(),
                ],
                message: "Line items by fulfillment order can't be blank.".to_owned(),
                over_fulfillment: false,
            });
        }
        // Plan first, apply after: a refused request must leave everything as it was.
        let mut order_index: Option<usize> = None;
        let mut plan: Vec<(usize, usize, u32)> = Vec::new(); // (fo, fo line, quantity)
        for group in &input.line_items_by_fulfillment_order {
            let location = parse_gid(&group.fulfillment_order_id, "FulfillmentOrder")
                .and_then(|id| self.fulfillment_orders.get(&id).copied());
            let Some((order, fo_index)) = location else {
                return Err(UserError::new("Fulfillment order does not exist.", false));
            };
            if order_index.is_some_and(|o| o != order) {
                return Err(UserError::new(
                    "All fulfillment orders must belong to the same order.",
                    false,
                ));
            }
            order_index = Some(order);
            let fo = &self.orders[order].fulfillment_orders[fo_index];
            if fo.status == FoStatus::Closed {
                return Err(UserError::new(
                    format!(
                        "Fulfillment order {} has an unfulfillable status= closed.",
                        fo.id
                    ),
                    true,
                ));
            }
            match &group.fulfillment_order_line_items {
                None => {
                    for (line_index, line) in fo.lines.iter().enumerate() {
                        if line.remaining > 0 {
                            plan.push((fo_index, line_index, line.remaining));
                        }
                    }
                }
                Some(items) => {
                    for item in items {
                        let line_index = parse_gid(&item.id, "FulfillmentOrderLineItem")
                            .and_then(|id| fo.lines.iter().position(|l| l.id == id));
                        let Some(line_index) = line_index else {
                            return Err(UserError::new(
                                "Fulfillment order line item does not exist.",
                                false,
                            ));
                        };
                        let already: u32 = plan
                            .iter()
                            .filter(|(f, l, _)| *f == fo_index && *l == line_index)
                            .map(|(_, _, q)| q)
                            .sum();
                        let available = i64::from(fo.lines[line_index].remaining - already);
                        if item.quantity <= 0 || item.quantity > available {
                            return Err(UserError::new(INVALID_QUANTITY, true));
                        }
                        plan.push((fo_index, line_index, item.quantity as u32));
                    }
                }
            }
        }
        let Some(order_index) = order_index else {
            return Err(UserError::new("Fulfillment order does not exist.", false));
        };
        if plan.is_empty() {
            return Err(UserError::new(INVALID_QUANTITY, true));
        }

        let now = self.now();
        let fulfillment_id = self.next_fulfillment_id;
        self.next_fulfillment_id += 1;
        let order = &mut self.orders[order_index];
        let mut total = 0;
        for &(fo_index, line_index, quantity) in &plan {
            let fo = &mut order.fulfillment_orders[fo_index];
            let line = &mut fo.lines[line_index];
            line.remaining -= quantity;
            total += quantity;
            let line_gid = gid("LineItem", order.lines[line.line].id);
            *stats.fulfilled_per_line.entry(line_gid).or_default() += quantity;
        }
        for (fo_index, fo) in order.fulfillment_orders.iter_mut().enumerate() {
            if plan.iter().any(|&(f, _, _)| f == fo_index) {
                fo.updated_at = now;
                fo.status = if fo.lines.iter().all(|l| l.remaining == 0) {
                    FoStatus::Closed
                } else {
                    FoStatus::InProgress
                };
            }
        }
        order.updated_at = now;
        let tracking = input.tracking_info.clone().unwrap_or_default();
        let mut numbers: Vec<Option<String>> = match (&tracking.number, &tracking.numbers) {
            (Some(n), _) => vec![Some(n.clone())],
            (None, Some(ns)) if !ns.is_empty() => ns.iter().cloned().map(Some).collect(),
            _ => vec![None],
        };
        let urls: Vec<Option<String>> = match (&tracking.url, &tracking.urls) {
            (Some(u), _) => vec![Some(u.clone())],
            (None, Some(us)) => us.iter().cloned().map(Some).collect(),
            _ => Vec::new(),
        };
        let has_tracking = tracking.company.is_some() || numbers[0].is_some() || !urls.is_empty();
        let tracking = if has_tracking {
            numbers
                .drain(..)
                .enumerate()
                .map(|(i, number)| Tracking {
                    company: tracking.company.clone(),
                    number,
                    url: urls.get(i).cloned().flatten(),
                })
                .collect()
        } else {
            Vec::new()
        };
        for number in tracking.iter().filter_map(|t| t.number.as_ref()) {
            *stats
                .fulfillments_per_tracking_number
                .entry(number.clone())
                .or_default() += 1;
        }
        let fulfillment = Fulfillment {
            id: fulfillment_id,
            name: format!("{}-F{}", order.name(), order.fulfillments.len() + 1),
            created_at: now,
            total_quantity: total,
            tracking,
        };
        let json = order.fulfillment_json(&fulfillment);
        order.fulfillments.push(fulfillment);
        self.fulfillments.insert(
            fulfillment_id,
            (order_index, self.orders[order_index].fulfillments.len() - 1),
        );
        stats.fulfillments_created += 1;
        Ok(json)
    }

    /// Cancels an order as a merchant would: it gets `cancelledAt`, is closed, its
    /// fulfillment orders close, and `updatedAt` moves so importers see the change.
    /// Returns false for an unknown or already cancelled order.
    pub fn cancel(&mut self, order_gid: &str, stats: &mut Stats) -> bool {
        let Some(index) = self.order_index_by_gid(order_gid) else {
            return false;
        };
        if self.orders[index].cancelled_at.is_some() {
            return false;
        }
        let now = self.change_time(index);
        let order = &mut self.orders[index];
        order.cancelled_at = Some(now);
        order.updated_at = now;
        for fo in &mut order.fulfillment_orders {
            fo.status = FoStatus::Closed;
            fo.updated_at = now;
        }
        stats.orders_cancelled += 1;
        true
    }

    /// Edits an order after the fact: the first line that is not fully fulfilled
    /// gets one more unit, and `updatedAt` moves. Returns false when the order is
    /// unknown, cancelled, or has nothing left to edit.
    pub fn edit(&mut self, order_gid: &str, stats: &mut Stats) -> bool {
        let Some(index) = self.order_index_by_gid(order_gid) else {
            return false;
        };
        if self.orders[index].cancelled_at.is_some() {
            return false;
        }
        let now = self.change_time(index);
        let order = &mut self.orders[index];
        let Some((fo_index, line_index)) = order
            .fulfillment_orders
            .iter()
            .enumerate()
            .filter(|(_, fo)| fo.status != FoStatus::Closed)
            .find_map(|(f, fo)| {
                fo.lines
                    .iter()
                    .position(|l| l.remaining > 0)
                    .map(|l| (f, l))
            })
        else {
            return false;
        };
        let fo = &mut order.fulfillment_orders[fo_index];
        let fo_line = &mut fo.lines[line_index];
        fo_line.total += 1;
        fo_line.remaining += 1;
        fo.updated_at = now;
        let line = &mut order.lines[fo_line.line];
        line.quantity += 1;
        stats
            .ordered_per_line
            .insert(gid("LineItem", line.id), line.quantity);
        order.updated_at = now;
        stats.orders_edited += 1;
        true
    }

    /// Edits an order in the way `kind` says, drawing new values from `rng`.
    /// An edit that does not apply to the order (an address change on a
    /// fulfilled order, a new line when no other SKU exists) falls back to a
    /// quantity change. Returns false when nothing could be edited.
    pub fn edit_as(
        &mut self,
        order_gid: &str,
        kind: Edit,
        rng: &mut StdRng,
        stats: &mut Stats,
    ) -> bool {
        let Some(index) = self.order_index_by_gid(order_gid) else {
            return false;
        };
        let order = &self.orders[index];
        let untouched = order.cancelled_at.is_none() && order.fulfillments.is_empty();
        let open_fo = order
            .fulfillment_orders
            .iter()
            .position(|fo| fo.status != FoStatus::Closed);
        match (kind, untouched, open_fo) {
            (Edit::Address, true, _) if order.address.is_some() => {
                let now = self.change_time(index);
                let order = &mut self.orders[index];
                if let Some(address) = &mut order.address {
                    address.address1 = format!(
                        "{} {}",
                        rng.random_range(1..=9999),
                        Self::pick(rng, STREETS)
                    );
                    address.city = *Self::pick(rng, CITIES);
                }
                order.updated_at = now;
                stats.orders_edited += 1;
                true
            }
            (Edit::AddLine, true, Some(fo_index)) => {
                let catalog = &self.generation.catalog;
                let present: Vec<&str> = order
                    .lines
                    .iter()
                    .filter_map(|l| l.sku.as_deref())
                    .collect();
                let candidates: Vec<usize> = (0..catalog.len())
                    .filter(|&i| !present.contains(&catalog[i].0.as_str()))
                    .collect();
                if candidates.is_empty() {
                    return self.edit(order_gid, stats);
                }
                let (sku, name) = catalog[*Self::pick(rng, &candidates)].clone();
                let quantity = rng.random_range(1..=2u32);
                let now = self.change_time(index);
                let (line_id, fo_line_id) = (self.next_line_id, self.next_fo_line_id);
                self.next_line_id += 1;
                self.next_fo_line_id += 1;
                let order = &mut self.orders[index];
                order.lines.push(LineItem {
                    id: line_id,
                    unit_price_cents: unit_price_cents(&sku),
                    sku: Some(sku),
                    name,
                    quantity,
                    garbage_quantity: false,
                });
                let fo = &mut order.fulfillment_orders[fo_index];
                fo.lines.push(FoLine {
                    id: fo_line_id,
                    line: order.lines.len() - 1,
                    total: quantity,
                    remaining: quantity,
                });
                fo.updated_at = now;
                order.updated_at = now;
                stats
                    .ordered_per_line
                    .insert(gid("LineItem", line_id), quantity);
                stats.orders_edited += 1;
                true
            }
            _ => self.edit(order_gid, stats),
        }
    }
}

/// How an order is edited after import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// One more unit on the first open line.
    Quantity,
    /// Another street address and city.
    Address,
    /// A new line with a SKU the order did not have.
    AddLine,
}

impl Edit {
    pub fn pick(rng: &mut StdRng) -> Edit {
        match rng.random_range(0..3) {
            0 => Edit::Quantity,
            1 => Edit::Address,
            _ => Edit::AddLine,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::default_catalog;

    fn shop(seed: u64, n: usize) -> (Shop, Stats) {
        let mut stats = Stats::default();
        let mut shop = Shop::new(Generation {
            seed,
            catalog: default_catalog(),
            malformed_rate: 0.0,
        });
        shop.create_backlog(n, &mut stats);
        (shop, stats)
    }

    #[test]
    fn gids_parse_back_to_their_numbers() {
        assert_eq!(parse_gid("gid://shopify/Order/42", "Order"), Some(42));
        assert_eq!(
            parse_gid(
                "gid://shopify/MailingAddress/7?model_name=Address",
                "MailingAddress"
            ),
            Some(7)
        );
        assert_eq!(parse_gid("gid://shopify/Order/42", "LineItem"), None);
        assert_eq!(parse_gid("gid://shopify/OrderX/42", "Order"), None);
    }

    #[test]
    fn a_backlog_has_strictly_increasing_update_times_ending_now() {
        let (shop, stats) = shop(1, 50);
        assert_eq!(stats.orders_created, 50);
        let times: Vec<_> = shop.orders().iter().map(|o| o.updated_at).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
        assert!(Utc::now() - *times.last().unwrap() < Duration::seconds(5));
        assert!(Utc::now() - times[0] <= Duration::seconds(3600));
    }

    #[test]
    fn orders_have_one_to_four_lines_of_one_to_three_units() {
        let (shop, _) = shop(2, 200);
        for order in shop.orders() {
            assert!((1..=4).contains(&order.lines.len()));
            assert!(order.lines.iter().all(|l| (1..=3).contains(&l.quantity)));
        }
    }

    #[test]
    fn search_understands_comparisons_quotes_and_ignores_unknown_terms() {
        let terms = parse_search(
            "updated_at:>='2025-01-01T00:00:00Z' status:open AND created_at:<2026-01-01",
        );
        assert_eq!(terms.len(), 2);
        assert_eq!(terms[0].comparison, Comparison::Ge);
        assert_eq!(terms[1].comparison, Comparison::Lt);
        assert_eq!(
            terms[1].value,
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
                .unwrap()
                .timestamp()
        );
        assert!(parse_search("updated_at:>garbage").is_empty());
    }

    #[test]
    fn over_fulfilment_is_refused_and_changes_nothing() {
        let (mut shop, mut stats) = shop(3, 1);
        let order = &shop.orders()[0];
        let fo = &order.fulfillment_orders[0];
        let line = &fo.lines[0];
        let input = FulfillmentInput {
            line_items_by_fulfillment_order: vec![FulfillmentOrderLineItemsInput {
                fulfillment_order_id: gid("FulfillmentOrder", fo.id),
                fulfillment_order_line_items: Some(vec![FulfillmentOrderLineItemInput {
                    id: gid("FulfillmentOrderLineItem", line.id),
                    quantity: i64::from(line.total) + 1,
                }]),
            }],
            tracking_info: None,
        };
        let error = shop.fulfill(&input, &mut stats).unwrap_err();
        assert_eq!(error.message, INVALID_QUANTITY);
        assert_eq!(stats.over_fulfillment_attempts, 1);
        assert!(stats.fulfilled_per_line.is_empty());
        assert_eq!(
            shop.orders()[0].fulfillment_orders[0].lines[0].remaining,
            shop.orders()[0].fulfillment_orders[0].lines[0].total
        );
    }

    #[test]
    fn fulfilling_everything_closes_the_fulfillment_order_and_a_second_try_is_refused() {
        let (mut shop, mut stats) = shop(4, 1);
        let fo_gid = gid(
            "FulfillmentOrder",
            shop.orders()[0].fulfillment_orders[0].id,
        );
        let input = FulfillmentInput {
            line_items_by_fulfillment_order: vec![FulfillmentOrderLineItemsInput {
                fulfillment_order_id: fo_gid,
                fulfillment_order_line_items: None,
            }],
            tracking_info: Some(TrackingInput {
                company: Some("USPS".into()),
                number: Some("9400".into()),
                ..TrackingInput::default()
            }),
        };
        let fulfillment = shop.fulfill(&input, &mut stats).unwrap();
        assert_eq!(fulfillment["trackingInfo"][0]["number"], "9400");
        let order = &shop.orders()[0];
        assert_eq!(order.fulfillment_orders[0].status, FoStatus::Closed);
        assert_eq!(order.to_json()["displayFulfillmentStatus"], "FULFILLED");
        assert_eq!(stats.fulfilled_per_line, stats.ordered_per_line);
        assert_eq!(stats.fulfillments_per_tracking_number["9400"], 1);
        let error = shop.fulfill(&input, &mut stats).unwrap_err();
        assert!(error.message.contains("unfulfillable status= closed"));
        assert_eq!(stats.fulfillments_per_tracking_number["9400"], 1);
        assert_eq!(stats.over_fulfillment_attempts, 1);
        assert_eq!(stats.fulfillments_created, 1);
    }

    #[test]
    fn cancelling_and_editing_move_updated_at_and_are_visible() {
        let (mut shop, mut stats) = shop(5, 2);
        let first = shop.orders()[0].gid();
        let second = shop.orders()[1].gid();
        let before = shop.orders()[0].updated_at;
        assert!(shop.cancel(&first, &mut stats));
        assert!(!shop.cancel(&first, &mut stats));
        assert!(shop.orders()[0].updated_at >= before);
        assert!(shop.orders()[0].to_json()["cancelledAt"].is_string());
        let quantity = shop.orders()[1].lines[0].quantity;
        assert!(shop.edit(&second, &mut stats));
        assert_eq!(shop.orders()[1].lines[0].quantity, quantity + 1);
        assert_eq!(stats.orders_cancelled, 1);
        assert_eq!(stats.orders_edited, 1);
    }
}
