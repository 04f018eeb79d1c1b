//! Choosing a carrier rate.

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Quote {
    pub rate_id: String,
    pub carrier: String,
    pub service: String,
    pub amount_cents: i64,
    pub currency: String,
    pub delivery_days: Option<u32>,
}
