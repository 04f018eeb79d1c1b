//! Marketplace channels: the trait every channel adapter implements, and the
//! order shape they all produce.
//!
//! Channels differ in wire format (Shopify Admin GraphQL, Amazon SP-API, ...)
//! but the import and commit jobs only need two things from any of them: a
//! page of orders updated since an instant, a way to push a fulfillment with
//! its tracking number, and the fulfillments an order already has (so that a
//! push that happened but was never recorded is not made again). Adapters classify every failure
//! ([`crate::error::ApiError`]) where they first understand it.

pub mod shopify;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::error::ApiError;

/// Which marketplace API a channel speaks (`channel_kind` in the schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "channel_kind", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Shopify,
    Amazon,
    Ebay,
}

/// One order as the channel describes it, already parsed and validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelOrder {
    /// The channel's id for the order ("gid://shopify/Order/1").
    pub external_id: String,
    /// The human order number ("#1001").
    pub name: String,
    /// The channel's version of the order: newer wins.
    pub updated_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// The shipping method the customer chose, as the channel names it
    /// ("Standard", "Express").
    pub shipping_title: String,
    pub ship_to: Address,
    pub lines: Vec<ChannelLine>,
    /// The order exactly as the channel sent it.
    pub raw: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelLine {
    /// The channel's id for the line ("gid://shopify/LineItem/7").
    pub external_id: String,
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    /// Where the channel expects this line to be fulfilled from (for Shopify,
    /// the fulfillment order and its line item); opaque to everything but
    /// the adapter.
    pub fulfillment_ref: Option<serde_json::Value>,
}

/// An order the channel sent that could not be used, with the reason. It is
/// recorded as rejected and never blocks the rest of the page.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedOrder {
    pub external_id: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
    pub reason: String,
    pub raw: serde_json::Value,
}

#[derive(Debug, Clone, Default)]
pub struct OrdersPage {
    pub orders: Vec<ChannelOrder>,
    pub rejected: Vec<RejectedOrder>,
    /// Cursor for the next page, when there is one.
    pub next_page: Option<String>,
}

/// Units of one order line in one fulfillment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FulfillmentLine {
    pub line_external_id: String,
    pub fulfillment_ref: Option<serde_json::Value>,
    pub quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FulfillmentRequest {
    pub order_external_id: String,
    pub lines: Vec<FulfillmentLine>,
    pub carrier: String,
    pub tracking_number: String,
    pub tracking_url: Option<String>,
    pub notify_customer: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FulfillmentOutcome {
    Created {
        fulfillment_id: String,
    },
    /// The channel already holds this fulfillment (a retry after the push
    /// went through): done, not an error.
    AlreadyFulfilled,
}

/// A fulfillment the channel already holds for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelFulfillment {
    /// The channel's id for the fulfillment ("gid://shopify/Fulfillment/9").
    pub fulfillment_id: String,
    /// The tracking numbers it carries (one per package we push).
    pub tracking_numbers: Vec<String>,
}

#[async_trait]
pub trait ChannelApi: Send + Sync {
    /// Orders updated at or after `updated_since`, oldest first, one page.
    async fn orders_page(
        &self,
        updated_since: DateTime<Utc>,
        after: Option<&str>,
        page_size: u32,
    ) -> Result<OrdersPage, ApiError>;

    /// Pushes one fulfillment with its tracking number.
    async fn create_fulfillment(
        &self,
        request: &FulfillmentRequest,
    ) -> Result<FulfillmentOutcome, ApiError>;

    /// The fulfillments the channel already holds for an order (by its
    /// external id), with their tracking numbers: what an earlier push that
    /// was never recorded left behind. A read, safe to repeat.
    async fn fulfillments(
        &self,
        order_external_id: &str,
    ) -> Result<Vec<ChannelFulfillment>, ApiError>;
}
