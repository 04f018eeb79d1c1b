//! Where an order's units come from.
//!
//! The reserve step asks this module which warehouse ships how many units of
//! each order line. The rule, in order of importance:
//!
//! 1. **Fewest packages.** If one warehouse can supply every line in full, use
//!    exactly that one warehouse: every extra warehouse is an extra parcel,
//!    an extra label and a customer who receives a split order.
//! 2. **Nearest.** Among equally good warehouses, prefer the one closest to the
//!    destination by great-circle distance (cheaper and faster postage).
//! 3. **Priority**, then warehouse code, so the outcome never depends on the
//!    order rows came back from the database.
//!
//! When no warehouse holds everything, units are allocated greedily: take the
//! warehouse that can supply the most still-needed units, take everything it
//! can, and repeat. Whatever no warehouse can supply is reported as `short` so
//! the line can be backordered.
//!
//! ```
//! use conveyor_jobs::allocation::{plan_allocation, LineNeed, StockLevel, WarehouseSite};
//!
//! let sites = vec![WarehouseSite { code: "NYC".into(), latitude: 40.71, longitude: -74.0, priority: 1 }];
//! let lines = vec![LineNeed { line_id: 1, sku: "MUG".into(), quantity: 3 }];
//! let stock = vec![StockLevel { warehouse: "NYC".into(), sku: "MUG".into(), available: 2 }];
//! let plan = plan_allocation(&lines, &sites, &stock, None);
//! assert_eq!(plan.allocations[0].quantity, 2);
//! assert_eq!(plan.short, vec![(1, 1)]);
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

/// Mean earth radius (IUGG), the usual constant for haversine distances.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// A warehouse that can ship orders.
#[derive(Debug, Clone, PartialEq)]
pub struct WarehouseSite {
    pub code: String,
    pub latitude: f64,
    pub longitude: f64,
    /// Lower number = preferred when distance does not decide.
    pub priority: i32,
}

/// Units of one order line that still need a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineNeed {
    pub line_id: i64,
    pub sku: String,
    pub quantity: u32,
}

/// Sellable units of a SKU at a warehouse (on hand minus reserved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockLevel {
    pub warehouse: String,
    pub sku: String,
    pub available: u32,
}

/// `quantity` units of `line_id` ship from `warehouse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub line_id: i64,
    pub warehouse: String,
    pub quantity: u32,
}

/// The outcome for one order: allocations ordered by line then warehouse, and
/// the units per line no warehouse could supply (ordered by line, zero
/// shortfalls omitted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AllocationPlan {
    pub allocations: Vec<Allocation>,
    /// `(line_id, units)` still missing after every warehouse was used.
    pub short: Vec<(i64, u32)>,
}

/// Great-circle distance in kilometres between two `(latitude, longitude)`
/// points in degrees, by the haversine formula.
///
/// Non-finite input yields NaN; callers that rank by distance treat NaN as
/// "unknown" rather than "nearest".
pub fn great_circle_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let dlat = lat2 - lat1;
    let dlon = lon2 - lon1;
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    // Rounding can push `h` a hair above 1 for antipodal points, which would
    // make `asin` return NaN.
    2.0 * EARTH_RADIUS_KM * h.clamp(0.0, 1.0).sqrt().asin()
}

/// Decide which warehouse supplies how many units of each line.
///
/// Stock rows for warehouses missing from `sites` are ignored (we cannot rank
/// or ship from a site we know nothing about). Duplicate stock rows for the
/// same warehouse and SKU are added together; duplicate site codes keep the
/// first entry. Lines may share a SKU: the stock is shared between them and
/// lower `line_id`s are served first.
pub fn plan_allocation(
    lines: &[LineNeed],
    sites: &[WarehouseSite],
    stock: &[StockLevel],
    destination: Option<(f64, f64)>,
) -> AllocationPlan {
    // Serve lines in a fixed order so shared SKUs are split the same way
    // whatever order the caller passed them in.
    let mut needs: Vec<(i64, &str, u32)> = lines
        .iter()
        .filter(|l| l.quantity > 0)
        .map(|l| (l.line_id, l.sku.as_str(), l.quantity))
        .collect();
    needs.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));

    let mut candidates = rank_sites(sites, destination);
    let mut available: HashMap<(&str, &str), u64> = HashMap::new();
    for row in stock {
        if candidates.iter().any(|c| c.code == row.warehouse) {
            *available
                .entry((row.warehouse.as_str(), row.sku.as_str()))
                .or_default() += u64::from(row.available);
        }
    }

    let mut allocated: BTreeMap<(i64, String), u64> = BTreeMap::new();

    // Rule 1: one warehouse that holds everything beats any split. Candidates
    // are already in (nearest, priority, code) order, so the first one wins.
    let single = candidates
        .iter()
        .find(|c| supplies_all(c.code, &needs, &available))
        .map(|c| c.code);
    if let Some(code) = single {
        take_all_from(code, &mut needs, &mut available, &mut allocated);
    } else {
        // Rule 2: greedy set cover by units. Each round uses up the chosen
        // warehouse, so the loop ends after at most `sites.len()` rounds.
        loop {
            let best = candidates
                .iter()
                .enumerate()
                .map(|(i, c)| (i, suppliable_units(c.code, &needs, &available)))
                .filter(|&(_, units)| units > 0)
                // Ties keep the earlier (nearer, higher-priority) candidate.
                .min_by_key(|&(i, units)| (Reverse(units), i));
            let Some((index, _)) = best else { break };
            let code = candidates.remove(index).code;
            take_all_from(code, &mut needs, &mut available, &mut allocated);
        }
    }

    let allocations = allocated
        .into_iter()
        .map(|((line_id, warehouse), quantity)| Allocation {
            line_id,
            warehouse,
            quantity: clamp_u32(quantity),
        })
        .collect();
    let mut short: BTreeMap<i64, u64> = BTreeMap::new();
    for (line_id, _, remaining) in needs {
        if remaining > 0 {
            *short.entry(line_id).or_default() += u64::from(remaining);
        }
    }
    AllocationPlan {
        allocations,
        short: short
            .into_iter()
            .map(|(line_id, units)| (line_id, clamp_u32(units)))
            .collect(),
    }
}

struct Candidate<'a> {
    code: &'a str,
    distance_km: f64,
    priority: i32,
}

/// Sites in preference order: nearest first (unknown distance last), then
/// lower priority number, then code.
fn rank_sites(sites: &[WarehouseSite], destination: Option<(f64, f64)>) -> Vec<Candidate<'_>> {
    let mut ranked: Vec<Candidate<'_>> = Vec::with_capacity(sites.len());
    for site in sites {
        if ranked.iter().any(|c| c.code == site.code) {
            continue;
        }
        let distance_km = match destination {
            // Without a destination every site is equally far, so priority decides.
            None => 0.0,
            Some(dest) => {
                let d = great_circle_km((site.latitude, site.longitude), dest);
                if d.is_finite() { d } else { f64::INFINITY }
            }
        };
        ranked.push(Candidate {
            code: &site.code,
            distance_km,
            priority: site.priority,
        });
    }
    ranked.sort_by(|a, b| {
        a.distance_km
            .total_cmp(&b.distance_km)
            .then(a.priority.cmp(&b.priority))
            .then_with(|| a.code.cmp(b.code))
    });
    ranked
}

/// Total need per SKU, so two lines of the same SKU are checked together.
fn need_per_sku<'a>(needs: &[(i64, &'a str, u32)]) -> BTreeMap<&'a str, u64> {
    let mut per_sku: BTreeMap<&str, u64> = BTreeMap::new();
    for &(_, sku, remaining) in needs {
        *per_sku.entry(sku).or_default() += u64::from(remaining);
    }
    per_sku
}

fn supplies_all(
    code: &str,
    needs: &[(i64, &str, u32)],
    available: &HashMap<(&str, &str), u64>,
) -> bool {
    need_per_sku(needs)
        .into_iter()
        .all(|(sku, need)| available.get(&(code, sku)).copied().unwrap_or(0) >= need)
}

fn suppliable_units(
    code: &str,
    needs: &[(i64, &str, u32)],
    available: &HashMap<(&str, &str), u64>,
) -> u64 {
    need_per_sku(needs)
        .into_iter()
        .map(|(sku, need)| need.min(available.get(&(code, sku)).copied().unwrap_or(0)))
        .sum()
}

/// Move as many units as `code` can supply from `needs` into `allocated`.
fn take_all_from<'a>(
    code: &'a str,
    needs: &mut [(i64, &'a str, u32)],
    available: &mut HashMap<(&'a str, &'a str), u64>,
    allocated: &mut BTreeMap<(i64, String), u64>,
) {
    for (line_id, sku, remaining) in needs.iter_mut() {
        let Some(stock) = available.get_mut(&(code, *sku)) else {
            continue;
        };
        let take = u64::from(*remaining).min(*stock);
        if take == 0 {
            continue;
        }
        *stock -= take;
        // `take <= remaining`, so this cannot underflow or truncate.
        *remaining -= clamp_u32(take);
        *allocated.entry((*line_id, code.to_string())).or_default() += take;
    }
}

fn clamp_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    fn site(code: &str, lat: f64, lon: f64, priority: i32) -> WarehouseSite {
        WarehouseSite {
            code: code.into(),
            latitude: lat,
            longitude: lon,
            priority,
        }
    }

    fn line(line_id: i64, sku: &str, quantity: u32) -> LineNeed {
        LineNeed {
            line_id,
            sku: sku.into(),
            quantity,
        }
    }

    fn stock(warehouse: &str, sku: &str, available: u32) -> StockLevel {
        StockLevel {
            warehouse: warehouse.into(),
            sku: sku.into(),
            available,
        }
    }

    fn alloc(line_id: i64, warehouse: &str, quantity: u32) -> Allocation {
        Allocation {
            line_id,
            warehouse: warehouse.into(),
            quantity,
        }
    }

    const NEW_YORK: (f64, f64) = (40.7128, -74.0060);
    const LOS_ANGELES: (f64, f64) = (34.0522, -118.2437);
    const NEWARK: (f64, f64) = (40.7357, -74.1724);
    const CHICAGO: (f64, f64) = (41.8781, -87.6298);
    const DALLAS: (f64, f64) = (32.7767, -96.7970);

    #[test]
    fn great_circle_km_new_york_to_los_angeles_is_about_3936_km() {
        let d = great_circle_km(NEW_YORK, LOS_ANGELES);
        assert!((d - 3936.0).abs() <= 10.0, "got {d}");
    }

    #[test]
    fn great_circle_km_is_zero_for_the_same_point_and_symmetric() {
        assert_eq!(great_circle_km(CHICAGO, CHICAGO), 0.0);
        let there = great_circle_km(CHICAGO, DALLAS);
        let back = great_circle_km(DALLAS, CHICAGO);
        assert!((there - back).abs() < 1e-9);
    }

    #[test]
    fn great_circle_km_stays_finite_for_antipodal_points() {
        let d = great_circle_km((0.0, 0.0), (0.0, 180.0));
        assert!(d.is_finite());
        assert!((d - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1.0);
    }

    #[test]
    fn a_single_warehouse_is_preferred_over_a_nearer_split() {
        // Newark is next door but only has the mug; Los Angeles has both.
        let sites = vec![
            site("EWR", NEWARK.0, NEWARK.1, 1),
            site("LAX", LOS_ANGELES.0, LOS_ANGELES.1, 1),
        ];
        let lines = vec![line(1, "MUG", 2), line(2, "TEA", 1)];
        let stock = vec![
            stock("EWR", "MUG", 10),
            stock("LAX", "MUG", 5),
            stock("LAX", "TEA", 5),
        ];
        let plan = plan_allocation(&lines, &sites, &stock, Some(NEW_YORK));
        assert_eq!(
            plan.allocations,
            vec![alloc(1, "LAX", 2), alloc(2, "LAX", 1)]
        );
        assert!(plan.short.is_empty());
    }

    #[test]
    fn the_nearest_of_several_full_warehouses_is_chosen() {
        let sites = vec![
            site("LAX", LOS_ANGELES.0, LOS_ANGELES.1, 1),
            site("ORD", CHICAGO.0, CHICAGO.1, 5),
            site("DFW", DALLAS.0, DALLAS.1, 1),
        ];
        let lines = vec![line(7, "MUG", 1)];
        let stock = vec![
            stock("LAX", "MUG", 1),
            stock("ORD", "MUG", 1),
            stock("DFW", "MUG", 1),
        ];
        let plan = plan_allocation(&lines, &sites, &stock, Some(NEW_YORK));
        assert_eq!(plan.allocations, vec![alloc(7, "ORD", 1)]);
    }

    #[test]
    fn priority_breaks_a_distance_tie() {
        // Two sites at the same coordinates: only priority can separate them.
        let sites = vec![
            site("A", CHICAGO.0, CHICAGO.1, 3),
            site("B", CHICAGO.0, CHICAGO.1, 2),
        ];
        let lines = vec![line(1, "MUG", 1)];
        let stock = vec![stock("A", "MUG", 1), stock("B", "MUG", 1)];
        let plan = plan_allocation(&lines, &sites, &stock, Some(NEW_YORK));
        assert_eq!(plan.allocations, vec![alloc(1, "B", 1)]);
    }

    #[test]
    fn priority_decides_when_the_destination_is_unknown() {
        let sites = vec![
            site("NEAR", NEWARK.0, NEWARK.1, 9),
            site("FAR", LOS_ANGELES.0, LOS_ANGELES.1, 1),
        ];
        let lines = vec![line(1, "MUG", 1)];
        let stock = vec![stock("NEAR", "MUG", 1), stock("FAR", "MUG", 1)];
        let plan = plan_allocation(&lines, &sites, &stock, None);
        assert_eq!(plan.allocations, vec![alloc(1, "FAR", 1)]);
    }

    #[test]
    fn code_breaks_a_tie_on_distance_and_priority() {
        let sites = vec![
            site("ZED", CHICAGO.0, CHICAGO.1, 1),
            site("ABE", CHICAGO.0, CHICAGO.1, 1),
        ];
        let lines = vec![line(1, "MUG", 1)];
        let stock = vec![stock("ZED", "MUG", 1), stock("ABE", "MUG", 1)];
        let plan = plan_allocation(&lines, &sites, &stock, Some(NEW_YORK));
        assert_eq!(plan.allocations, vec![alloc(1, "ABE", 1)]);
    }

    #[test]
    fn an_order_splits_across_two_warehouses_when_none_holds_everything() {
        let sites = vec![
            site("ORD", CHICAGO.0, CHICAGO.1, 1),
            site("DFW", DALLAS.0, DALLAS.1, 1),
            site("LAX", LOS_ANGELES.0, LOS_ANGELES.1, 1),
        ];
        let lines = vec![line(1, "MUG", 3), line(2, "TEA", 2)];
        // ORD has the most needed units (3 mugs), the rest comes from the
        // nearer of the two sites that have tea.
        let stock = vec![
            stock("ORD", "MUG", 3),
            stock("DFW", "TEA", 2),
            stock("LAX", "TEA", 2),
            stock("LAX", "MUG", 1),
        ];
        let plan = plan_allocation(&lines, &sites, &stock, Some(NEW_YORK));
        assert_eq!(
            plan.allocations,
            vec![alloc(1, "ORD", 3), alloc(2, "DFW", 2)]
        );
        assert!(plan.short.is_empty());
    }

    #[test]
    fn the_greedy_split_takes_the_warehouse_supplying_most_units_first() {
        // Newark is nearest but supplies only 1 unit; Dallas supplies 5.
        let sites = vec![
            site("EWR", NEWARK.0, NEWARK.1, 1),
            site("DFW", DALLAS.0, DALLAS.1, 1),
        ];
        let lines = vec![line(1, "MUG", 5), line(2, "TEA", 1)];
        let stock = vec![stock("EWR", "TEA", 1), stock("DFW", "MUG", 5)];
        let plan = plan_allocation(&lines, &sites, &stock, Some(NEW_YORK));
        assert_eq!(
            plan.allocations,
            vec![alloc(1, "DFW", 5), alloc(2, "EWR", 1)]
        );
    }

    #[test]
    fn a_partial_allocation_reports_the_shortfall_when_stock_runs_out() {
        let sites = vec![
            site("ORD", CHICAGO.0, CHICAGO.1, 1),
            site("DFW", DALLAS.0, DALLAS.1, 1),
        ];
        let lines = vec![line(1, "MUG", 10), line(2, "TEA", 1)];
        let stock = vec![
            stock("ORD", "MUG", 4),
            stock("DFW", "MUG", 3),
            stock("DFW", "TEA", 1),
        ];
        let plan = plan_allocation(&lines, &sites, &stock, Some(NEW_YORK));
        assert_eq!(
            plan.allocations,
            vec![alloc(1, "DFW", 3), alloc(1, "ORD", 4), alloc(2, "DFW", 1)]
        );
        assert_eq!(plan.short, vec![(1, 3)]);
    }

    #[test]
    fn zero_stock_leaves_everything_short() {
        let sites = vec![site("ORD", CHICAGO.0, CHICAGO.1, 1)];
        let lines = vec![line(2, "TEA", 4), line(1, "MUG", 2)];
        let stock = vec![stock("ORD", "MUG", 0)];
        let plan = plan_allocation(&lines, &sites, &stock, Some(NEW_YORK));
        assert!(plan.allocations.is_empty());
        assert_eq!(plan.short, vec![(1, 2), (2, 4)]);
    }

    #[test]
    fn stock_at_a_warehouse_missing_from_the_sites_is_not_used() {
        let sites = vec![site("ORD", CHICAGO.0, CHICAGO.1, 1)];
        let lines = vec![line(1, "MUG", 1)];
        let stock = vec![stock("GHOST", "MUG", 5)];
        let plan = plan_allocation(&lines, &sites, &stock, None);
        assert!(plan.allocations.is_empty());
        assert_eq!(plan.short, vec![(1, 1)]);
    }

    #[test]
    fn lines_sharing_a_sku_share_the_stock_lowest_line_first() {
        let sites = vec![site("ORD", CHICAGO.0, CHICAGO.1, 1)];
        let lines = vec![line(9, "MUG", 2), line(3, "MUG", 2)];
        let stock = vec![stock("ORD", "MUG", 3)];
        let plan = plan_allocation(&lines, &sites, &stock, None);
        assert_eq!(
            plan.allocations,
            vec![alloc(3, "ORD", 2), alloc(9, "ORD", 1)]
        );
        assert_eq!(plan.short, vec![(9, 1)]);
    }

    #[test]
    fn a_site_with_unusable_coordinates_ranks_after_known_distances() {
        let sites = vec![
            site("BAD", f64::NAN, 0.0, 0),
            site("LAX", LOS_ANGELES.0, LOS_ANGELES.1, 5),
        ];
        let lines = vec![line(1, "MUG", 1)];
        let stock = vec![stock("BAD", "MUG", 1), stock("LAX", "MUG", 1)];
        let plan = plan_allocation(&lines, &sites, &stock, Some(NEW_YORK));
        assert_eq!(plan.allocations, vec![alloc(1, "LAX", 1)]);
    }

    #[test]
    fn an_order_with_nothing_to_allocate_yields_an_empty_plan() {
        let sites = vec![site("ORD", CHICAGO.0, CHICAGO.1, 1)];
        let plan = plan_allocation(&[line(1, "MUG", 0)], &sites, &[], None);
        assert_eq!(plan, AllocationPlan::default());
    }

    #[test]
    fn random_orders_never_over_allocate_and_account_for_every_unit() {
        let mut rng = StdRng::seed_from_u64(0x5EED_A110C);
        let skus = ["A", "B", "C", "D", "E"];
        for case in 0..400 {
            let site_count = rng.random_range(1..=5);
            let sites: Vec<WarehouseSite> = (0..site_count)
                .map(|i| {
                    site(
                        &format!("W{i}"),
                        rng.random_range(-60.0..60.0),
                        rng.random_range(-180.0..180.0),
                        rng.random_range(0..3),
                    )
                })
                .collect();
            let lines: Vec<LineNeed> = (0..rng.random_range(1..=6))
                .map(|i| {
                    line(
                        i,
                        skus[rng.random_range(0..skus.len())],
                        rng.random_range(0..8),
                    )
                })
                .collect();
            let mut levels = Vec::new();
            for s in &sites {
                for sku in skus {
                    if rng.random_bool(0.6) {
                        levels.push(stock(&s.code, sku, rng.random_range(0..10)));
                    }
                }
            }
            let destination = rng.random_bool(0.8).then(|| {
                (
                    rng.random_range(-60.0..60.0),
                    rng.random_range(-180.0..180.0),
                )
            });

            let plan = plan_allocation(&lines, &sites, &levels, destination);

            // No warehouse/SKU gives out more than it has.
            let sku_of: HashMap<i64, &str> =
                lines.iter().map(|l| (l.line_id, l.sku.as_str())).collect();
            let mut used: HashMap<(String, &str), u64> = HashMap::new();
            for a in &plan.allocations {
                assert!(a.quantity > 0, "case {case}: empty allocation {a:?}");
                *used
                    .entry((a.warehouse.clone(), sku_of[&a.line_id]))
                    .or_default() += u64::from(a.quantity);
            }
            for ((warehouse, sku), units) in &used {
                let have: u64 = levels
                    .iter()
                    .filter(|l| &l.warehouse == warehouse && l.sku == *sku)
                    .map(|l| u64::from(l.available))
                    .sum();
                assert!(
                    *units <= have,
                    "case {case}: {warehouse}/{sku} gave {units} of {have}"
                );
            }

            // Allocated + short == needed, per line.
            for l in &lines {
                let got: u64 = plan
                    .allocations
                    .iter()
                    .filter(|a| a.line_id == l.line_id)
                    .map(|a| u64::from(a.quantity))
                    .sum();
                let short: u64 = plan
                    .short
                    .iter()
                    .filter(|(id, _)| *id == l.line_id)
                    .map(|(_, u)| u64::from(*u))
                    .sum();
                assert_eq!(
                    got + short,
                    u64::from(l.quantity),
                    "case {case}: line {l:?}"
                );
            }

            // Output is sorted and does not depend on input order.
            let mut sorted = plan.allocations.clone();
            sorted.sort_by(|a, b| (a.line_id, &a.warehouse).cmp(&(b.line_id, &b.warehouse)));
            assert_eq!(plan.allocations, sorted, "case {case}");
            let mut shuffled_levels = levels.clone();
            shuffled_levels.shuffle(&mut rng);
            let mut shuffled_sites = sites.clone();
            shuffled_sites.shuffle(&mut rng);
            assert_eq!(
                plan_allocation(&lines, &shuffled_sites, &shuffled_levels, destination),
                plan,
                "case {case}: result depends on input order"
            );

            // If one warehouse could do it all, exactly one is used.
            let full_exists = sites.iter().any(|s| {
                skus.iter().all(|sku| {
                    let need: u32 = lines
                        .iter()
                        .filter(|l| l.sku == *sku)
                        .map(|l| l.quantity)
                        .sum();
                    let have: u32 = levels
                        .iter()
                        .filter(|l| l.warehouse == s.code && l.sku == *sku)
                        .map(|l| l.available)
                        .sum();
                    have >= need
                })
            });
            if full_exists && lines.iter().any(|l| l.quantity > 0) {
                let mut warehouses: Vec<&str> = plan
                    .allocations
                    .iter()
                    .map(|a| a.warehouse.as_str())
                    .collect();
                warehouses.dedup();
                warehouses.sort_unstable();
                warehouses.dedup();
                assert_eq!(warehouses.len(), 1, "case {case}: {plan:?}");
                assert!(plan.short.is_empty(), "case {case}");
            }
        }
    }
}
