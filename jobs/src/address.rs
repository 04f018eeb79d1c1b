//! Postal addresses as Conveyor stores them and hands them to carriers.
//!
//! An [`Address`] is what a channel gave us for the ship-to (kept as JSON on
//! the order) or what ops loaded for a warehouse (the ship-from).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Address {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    pub street1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub street2: Option<String>,
    pub city: String,
    /// State or province code ("NY").
    pub state: String,
    pub zip: String,
    /// ISO 3166-1 alpha-2 ("US").
    pub country: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
}

impl Address {
    /// Coordinates, when the channel gave them.
    pub fn coordinates(&self) -> Option<(f64, f64)> {
        Some((self.latitude?, self.longitude?))
    }

    /// The address as printed on a slip, one line each.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![self.name.clone()];
        out.extend(self.company.clone());
        out.push(self.street1.clone());
        out.extend(self.street2.clone().filter(|s| !s.is_empty()));
        out.push(format!("{}, {} {}", self.city, self.state, self.zip));
        out.push(self.country.clone());
        out
    }
}
