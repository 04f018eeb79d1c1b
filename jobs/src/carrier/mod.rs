//! Carriers: the trait every carrier adapter implements.
//!
//! Rate shopping creates a carrier shipment (which carries the rates), the
//! purchase job buys one of its rates exactly once, and a cancellation may
//! refund it. The shipment id is recorded before anything is bought so that a
//! retry can always look the shipment up and adopt postage that exists.

pub mod easypost;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::error::ApiError;
use crate::rate_choice::Quote;

/// Parcel in the carrier's units (EasyPost: inches and ounces).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Parcel {
    pub length_in: f64,
    pub width_in: f64,
    pub height_in: f64,
    pub weight_oz: f64,
}

impl Parcel {
    pub fn from_metric(length_mm: u32, width_mm: u32, height_mm: u32, weight_g: u32) -> Parcel {
        let inch = |mm: u32| (f64::from(mm) / 25.4 * 10.0).ceil() / 10.0;
        Parcel {
            length_in: inch(length_mm),
            width_in: inch(width_mm),
            height_in: inch(height_mm),
            weight_oz: (f64::from(weight_g) / 28.349_523_125 * 10.0).ceil() / 10.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShipmentRequest {
    /// Conveyor's package id; the carrier keeps it as the shipment reference.
    pub reference: String,
    pub from: Address,
    pub to: Address,
    pub parcel: Parcel,
}

/// Postage bought for a shipment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Postage {
    pub tracking_code: String,
    pub label_url: String,
    pub rate_id: Option<String>,
    pub carrier: Option<String>,
    pub service: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CarrierShipment {
    pub id: String,
    pub reference: Option<String>,
    pub rates: Vec<Quote>,
    /// Present once postage was bought (by us, now or on an earlier attempt).
    pub postage: Option<Postage>,
    pub refund_status: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BuyOutcome {
    Bought(Box<CarrierShipment>),
    /// The carrier refused because the shipment already has postage: look it
    /// up and adopt it.
    PostageExists,
}

#[async_trait]
pub trait CarrierApi: Send + Sync {
    async fn create_shipment(&self, request: &ShipmentRequest)
    -> Result<CarrierShipment, ApiError>;
    async fn get_shipment(&self, shipment_id: &str) -> Result<CarrierShipment, ApiError>;
    async fn buy(&self, shipment_id: &str, rate_id: &str) -> Result<BuyOutcome, ApiError>;
    async fn refund(&self, shipment_id: &str) -> Result<CarrierShipment, ApiError>;
    /// Downloads the label document (PDF) the carrier made.
    async fn fetch_label(&self, label_url: &str) -> Result<Vec<u8>, ApiError>;
}
