//! Geography the sandbox needs: a fixed list of real US cities (with their real
//! coordinates and a downtown ZIP code) that generated orders ship to, and a way to
//! place any US ZIP code on the map so the carrier API can price by distance.
//!
//! The list is short on purpose: generated data stays plausible (a warehouse picker
//! in Conveyor can compute great-circle distances that mean something) without
//! shipping a ZIP database.

/// A US city that generated orders can ship to.
#[derive(Debug, Clone, Copy)]
pub struct City {
    pub name: &'static str,
    pub province: &'static str,
    pub province_code: &'static str,
    /// A real ZIP code in the city's downtown.
    pub zip: &'static str,
    pub latitude: f64,
    pub longitude: f64,
}

const fn city(
    name: &'static str,
    province: &'static str,
    province_code: &'static str,
    zip: &'static str,
    latitude: f64,
    longitude: f64,
) -> City {
    City {
        name,
        province,
        province_code,
        zip,
        latitude,
        longitude,
    }
}

/// Real US cities with their real coordinates.
pub const CITIES: &[City] = &[
    city("New York", "New York", "NY", "10001", 40.7128, -74.0060),
    city(
        "Los Angeles",
        "California",
        "CA",
        "90012",
        34.0522,
        -118.2437,
    ),
    city("Chicago", "Illinois", "IL", "60601", 41.8781, -87.6298),
    city("Houston", "Texas", "TX", "77002", 29.7604, -95.3698),
    city("Phoenix", "Arizona", "AZ", "85004", 33.4484, -112.0740),
    city(
        "Philadelphia",
        "Pennsylvania",
        "PA",
        "19107",
        39.9526,
        -75.1652,
    ),
    city("San Antonio", "Texas", "TX", "78205", 29.4241, -98.4936),
    city("San Diego", "California", "CA", "92101", 32.7157, -117.1611),
    city("Dallas", "Texas", "TX", "75201", 32.7767, -96.7970),
    city("San Jose", "California", "CA", "95113", 37.3382, -121.8863),
    city("Austin", "Texas", "TX", "78701", 30.2672, -97.7431),
    city("Jacksonville", "Florida", "FL", "32202", 30.3322, -81.6557),
    city("Columbus", "Ohio", "OH", "43215", 39.9612, -82.9988),
    city(
        "Charlotte",
        "North Carolina",
        "NC",
        "28202",
        35.2271,
        -80.8431,
    ),
    city("Indianapolis", "Indiana", "IN", "46204", 39.7684, -86.1581),
    city(
        "San Francisco",
        "California",
        "CA",
        "94103",
        37.7749,
        -122.4194,
    ),
    city("Seattle", "Washington", "WA", "98101", 47.6062, -122.3321),
    city("Denver", "Colorado", "CO", "80202", 39.7392, -104.9903),
    city(
        "Washington",
        "District of Columbia",
        "DC",
        "20001",
        38.9072,
        -77.0369,
    ),
    city("Boston", "Massachusetts", "MA", "02108", 42.3601, -71.0589),
    city("Nashville", "Tennessee", "TN", "37203", 36.1627, -86.7816),
    city("Portland", "Oregon", "OR", "97204", 45.5152, -122.6784),
    city("Las Vegas", "Nevada", "NV", "89101", 36.1699, -115.1398),
    city("Atlanta", "Georgia", "GA", "30303", 33.7490, -84.3880),
    city("Miami", "Florida", "FL", "33130", 25.7617, -80.1918),
    city("Minneapolis", "Minnesota", "MN", "55401", 44.9778, -93.2650),
    city("Detroit", "Michigan", "MI", "48226", 42.3314, -83.0458),
    city("Salt Lake City", "Utah", "UT", "84101", 40.7608, -111.8910),
];

/// Rough centroids of the ten US ZIP code regions (first digit), used for ZIP codes
/// that are not one of the cities above.
const ZIP_REGIONS: [(f64, f64); 10] = [
    (42.4, -71.4),  // 0: New England, NJ, PR
    (41.0, -75.5),  // 1: NY, PA, DE
    (37.0, -78.5),  // 2: DC, MD, VA, WV, NC, SC
    (31.5, -84.0),  // 3: AL, FL, GA, MS, TN
    (40.0, -84.5),  // 4: IN, KY, MI, OH
    (44.5, -93.5),  // 5: IA, MN, MT, ND, SD, WI
    (39.5, -93.0),  // 6: IL, KS, MO, NE
    (32.0, -95.5),  // 7: AR, LA, OK, TX
    (38.0, -109.0), // 8: AZ, CO, ID, NM, NV, UT, WY
    (38.0, -121.0), // 9: CA, OR, WA, AK, HI
];

/// Where a US ZIP code is, approximately: the city with the same 3-digit prefix if
/// there is one, else the centroid of its ZIP region. `None` when it is not a ZIP.
pub fn zip_location(zip: &str) -> Option<(f64, f64)> {
    let digits: String = zip.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.len() < 3 {
        return None;
    }
    if let Some(city) = CITIES.iter().find(|c| c.zip[..3] == digits[..3]) {
        return Some((city.latitude, city.longitude));
    }
    let region = digits.chars().next()?.to_digit(10)? as usize;
    ZIP_REGIONS.get(region).copied()
}

/// Great-circle distance in miles between two (latitude, longitude) points.
pub fn distance_miles(a: (f64, f64), b: (f64, f64)) -> f64 {
    const EARTH_RADIUS_MILES: f64 = 3958.8;
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_MILES * h.sqrt().asin()
}

/// USPS-style zone (1..=8) for a distance, which drives carrier prices.
pub fn zone_for_miles(miles: f64) -> u8 {
    match miles {
        m if m <= 50.0 => 1,
        m if m <= 150.0 => 2,
        m if m <= 300.0 => 3,
        m if m <= 600.0 => 4,
        m if m <= 1000.0 => 5,
        m if m <= 1400.0 => 6,
        m if m <= 1800.0 => 7,
        _ => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_york_to_los_angeles_is_about_2450_miles_and_zone_8() {
        let ny = zip_location("10001").unwrap();
        let la = zip_location("90012").unwrap();
        let miles = distance_miles(ny, la);
        assert!((2400.0..2500.0).contains(&miles), "{miles}");
        assert_eq!(zone_for_miles(miles), 8);
    }

    #[test]
    fn unknown_zip_codes_fall_back_to_their_region_and_garbage_has_no_location() {
        assert_eq!(zip_location("59801"), Some(ZIP_REGIONS[5]));
        assert_eq!(zip_location("ab"), None);
    }
}
