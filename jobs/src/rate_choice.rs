//! Choosing a carrier rate for a package.
//!
//! The rate step collects quotes from every carrier and keeps the promise made
//! to the customer at checkout: the cheapest quote that arrives within the
//! days the paid service level allows. A quote with no delivery estimate
//! cannot prove it keeps the promise, so it is never chosen.
//!
//! ```
//! use conveyor_jobs::rate_choice::{choose_rate, Quote, ServiceLevel};
//!
//! let quote = |id: &str, cents, days| Quote {
//!     rate_id: id.into(), carrier: "UPS".into(), service: id.into(),
//!     amount_cents: cents, currency: "USD".into(), delivery_days: days,
//! };
//! let quotes = vec![quote("ground", 900, Some(5)), quote("2day", 1900, Some(2))];
//! let level = ServiceLevel::from_shipping_title("Express shipping");
//! assert_eq!(choose_rate(&quotes, level).unwrap().rate_id, "2day");
//! ```

/// A carrier's offer to ship one package.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Quote {
    pub rate_id: String,
    pub carrier: String,
    pub service: String,
    pub amount_cents: i64,
    pub currency: String,
    /// Transit days the carrier commits to; `None` when it gives no estimate.
    pub delivery_days: Option<u32>,
}

/// The delivery promise the customer paid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ServiceLevel {
    Standard,
    Express,
    Overnight,
}

impl ServiceLevel {
    /// Most transit days a quote may take and still keep this promise.
    pub fn max_days(self) -> u32 {
        match self {
            ServiceLevel::Standard => 5,
            ServiceLevel::Express => 2,
            ServiceLevel::Overnight => 1,
        }
    }

    /// Read the level from the shipping method title the store showed at
    /// checkout (free text such as "FedEx Priority Overnight" or "Free
    /// shipping"). Faster words win, so "Priority Overnight" is overnight.
    /// Anything unrecognised is standard: promising less than we can deliver
    /// is safer than paying for express on every unknown title.
    pub fn from_shipping_title(title: &str) -> ServiceLevel {
        let title = title.to_lowercase();
        let mentions = |words: &[&str]| words.iter().any(|w| title.contains(w));
        if mentions(&["overnight", "next day", "next-day"]) {
            ServiceLevel::Overnight
        } else if mentions(&["express", "2-day", "priority"]) {
            ServiceLevel::Express
        } else {
            ServiceLevel::Standard
        }
    }
}

/// The cheapest quote that meets `level`, or `None` if no quote does.
///
/// Ties on price go to fewer days (same money, sooner parcel), then carrier
/// and service name, then rate id, so the same quotes always give the same
/// choice. Amounts are compared as given: callers pass quotes in one currency.
pub fn choose_rate(quotes: &[Quote], level: ServiceLevel) -> Option<&Quote> {
    quotes
        .iter()
        .filter_map(|q| match q.delivery_days {
            Some(days) if days <= level.max_days() => Some((q, days)),
            _ => None,
        })
        .min_by(|(a, a_days), (b, b_days)| {
            a.amount_cents
                .cmp(&b.amount_cents)
                .then(a_days.cmp(b_days))
                .then_with(|| a.carrier.cmp(&b.carrier))
                .then_with(|| a.service.cmp(&b.service))
                .then_with(|| a.rate_id.cmp(&b.rate_id))
        })
        .map(|(q, _)| q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote(rate_id: &str, carrier: &str, service: &str, cents: i64, days: Option<u32>) -> Quote {
        Quote {
            rate_id: rate_id.into(),
            carrier: carrier.into(),
            service: service.into(),
            amount_cents: cents,
            currency: "USD".into(),
            delivery_days: days,
        }
    }

    #[test]
    fn the_cheapest_quote_meeting_the_promise_wins() {
        let quotes = vec![
            quote("a", "UPS", "Ground", 1200, Some(4)),
            quote("b", "USPS", "Ground Advantage", 800, Some(5)),
            quote("c", "FedEx", "Home", 950, Some(3)),
        ];
        let chosen = choose_rate(&quotes, ServiceLevel::Standard).unwrap();
        assert_eq!(chosen.rate_id, "b");
    }

    #[test]
    fn a_cheaper_quote_that_is_too_slow_is_skipped() {
        let quotes = vec![
            quote("slow", "USPS", "Ground Advantage", 700, Some(5)),
            quote("fast", "UPS", "2nd Day Air", 2100, Some(2)),
        ];
        let chosen = choose_rate(&quotes, ServiceLevel::Express).unwrap();
        assert_eq!(chosen.rate_id, "fast");
    }

    #[test]
    fn quotes_without_delivery_days_never_qualify() {
        let quotes = vec![
            quote("unknown", "Regional", "Saver", 100, None),
            quote("known", "UPS", "Ground", 1000, Some(3)),
        ];
        assert_eq!(
            choose_rate(&quotes, ServiceLevel::Standard)
                .unwrap()
                .rate_id,
            "known"
        );
        assert_eq!(choose_rate(&quotes[..1], ServiceLevel::Standard), None);
    }

    #[test]
    fn none_meets_the_promise_gives_none() {
        let quotes = vec![
            quote("a", "UPS", "Ground", 900, Some(3)),
            quote("b", "FedEx", "2Day", 1900, Some(2)),
        ];
        assert_eq!(choose_rate(&quotes, ServiceLevel::Overnight), None);
    }

    #[test]
    fn no_quotes_gives_none() {
        assert_eq!(choose_rate(&[], ServiceLevel::Standard), None);
    }

    #[test]
    fn a_price_tie_goes_to_fewer_days() {
        let quotes = vec![
            quote("three", "AAA", "Ground", 1000, Some(3)),
            quote("two", "ZZZ", "Ground", 1000, Some(2)),
        ];
        assert_eq!(
            choose_rate(&quotes, ServiceLevel::Standard)
                .unwrap()
                .rate_id,
            "two"
        );
    }

    #[test]
    fn a_price_and_days_tie_goes_to_the_carrier_name() {
        let quotes = vec![
            quote("ups", "UPS", "Ground", 1000, Some(3)),
            quote("fedex", "FedEx", "Ground", 1000, Some(3)),
        ];
        assert_eq!(
            choose_rate(&quotes, ServiceLevel::Standard)
                .unwrap()
                .rate_id,
            "fedex"
        );
    }

    #[test]
    fn a_tie_on_carrier_goes_to_the_service_name() {
        let quotes = vec![
            quote("x", "UPS", "Surepost", 1000, Some(3)),
            quote("y", "UPS", "Ground", 1000, Some(3)),
        ];
        assert_eq!(
            choose_rate(&quotes, ServiceLevel::Standard)
                .unwrap()
                .rate_id,
            "y"
        );
    }

    #[test]
    fn the_choice_does_not_depend_on_quote_order() {
        let mut quotes = vec![
            quote("x", "UPS", "Ground", 1000, Some(3)),
            quote("y", "UPS", "Ground", 1000, Some(3)),
            quote("z", "DHL", "Express", 1000, Some(1)),
        ];
        let first = choose_rate(&quotes, ServiceLevel::Standard)
            .unwrap()
            .clone();
        quotes.reverse();
        assert_eq!(
            choose_rate(&quotes, ServiceLevel::Standard).unwrap(),
            &first
        );
        assert_eq!(first.rate_id, "z");
    }

    #[test]
    fn a_quote_exactly_at_the_limit_qualifies() {
        let quotes = vec![quote("edge", "UPS", "Ground", 500, Some(5))];
        assert!(choose_rate(&quotes, ServiceLevel::Standard).is_some());
        assert!(choose_rate(&quotes, ServiceLevel::Express).is_none());
    }

    #[test]
    fn service_levels_allow_five_two_and_one_days() {
        assert_eq!(ServiceLevel::Standard.max_days(), 5);
        assert_eq!(ServiceLevel::Express.max_days(), 2);
        assert_eq!(ServiceLevel::Overnight.max_days(), 1);
    }

    #[test]
    fn shipping_titles_map_to_service_levels_ignoring_case() {
        use ServiceLevel::*;
        let cases = [
            ("OVERNIGHT", Overnight),
            ("FedEx Priority Overnight", Overnight),
            ("Next Day Air", Overnight),
            ("next-day delivery", Overnight),
            ("Express", Express),
            ("UPS 2-Day", Express),
            ("USPS Priority Mail", Express),
            ("Standard shipping", Standard),
            ("Free shipping", Standard),
            ("", Standard),
        ];
        for (title, level) in cases {
            assert_eq!(ServiceLevel::from_shipping_title(title), level, "{title:?}");
        }
    }
}
