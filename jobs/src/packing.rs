//! Splitting one warehouse's units into packages.
//!
//! The split step hands this module every unit a warehouse ships for an order
//! and gets back packages, each with the box to use. The goal is few packages
//! (postage is per parcel) without ever breaking the carrier's weight cap or
//! asking a packer to close a box that does not fit its contents.
//!
//! The method is first-fit decreasing by weight: heaviest units first, each
//! into the first open package that can still take it, else a new package.
//! "Can take it" means some box can hold the package with the unit added:
//! every unit fits the box dimensionally, the summed unit volume is at most
//! 85 % of the box volume (real items do not tessellate), and contents plus
//! the box's own tare stay within both the package cap and the box's rated
//! weight. Each package then ships in the smallest box (by volume, then code)
//! that holds it.
//!
//! ```
//! use conveyor_jobs::packing::{default_boxes, pack, Unit};
//!
//! let unit = |g| Unit { line_id: 1, sku: "MUG".into(), weight_g: g,
//!                       length_mm: 120, width_mm: 90, height_mm: 90 };
//! let packages = pack(&[unit(700), unit(700), unit(700)], 1800, &default_boxes()).unwrap();
//! assert_eq!(packages.len(), 2);
//! assert!(packages.iter().all(|p| p.contents_g + p.box_spec.tare_g <= 1800));
//! ```

use std::collections::BTreeMap;

/// Share of a box's volume the contents may occupy. Items leave gaps and
/// need dunnage; 85 % is a common rule of thumb for mixed goods.
const FILL_PERCENT: u128 = 85;

/// One unit of an order line (a line of quantity 3 is three `Unit`s).
#[derive(Debug, Clone)]
pub struct Unit {
    pub line_id: i64,
    pub sku: String,
    pub weight_g: u32,
    pub length_mm: u32,
    pub width_mm: u32,
    pub height_mm: u32,
}

/// A shipping box the warehouse stocks. Inner dimensions; `tare_g` is the
/// weight of the empty box with its dunnage.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct BoxSpec {
    pub code: String,
    pub length_mm: u32,
    pub width_mm: u32,
    pub height_mm: u32,
    pub max_weight_g: u32,
    pub tare_g: u32,
}

/// One package: its box, the weight of its contents (without tare) and its
/// items grouped per line, ordered by `line_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedPackage {
    pub box_spec: BoxSpec,
    pub contents_g: u32,
    pub items: Vec<PackedItem>,
}

/// `quantity` units of one line inside a package.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedItem {
    pub line_id: i64,
    pub sku: String,
    pub quantity: u32,
}

/// Why an order cannot be packed. All are permanent: retrying gives the same
/// answer until someone changes the catalogue data or the box list.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PackError {
    #[error("item {sku} weighs {weight_g} g, over the {cap_g} g package cap")]
    ItemOverCap {
        sku: String,
        weight_g: u32,
        cap_g: u32,
    },
    #[error(
        "item {sku} weighs {weight_g} g, but the boxes it fits can carry at most {limit_g} g of contents once the box itself is weighed in"
    )]
    ItemTooHeavyForBoxes {
        sku: String,
        weight_g: u32,
        limit_g: u32,
    },
    #[error(
        "item {sku} measures {} x {} x {} mm and fits none of the available boxes",
        dims[0], dims[1], dims[2]
    )]
    ItemFitsNoBox { sku: String, dims: [u32; 3] },
    #[error("no shipping boxes are configured, so nothing can be packed")]
    NoBoxes,
}

/// A realistic starter set, from a padded mailer to a large carton.
pub fn default_boxes() -> Vec<BoxSpec> {
    let spec = |code: &str, l, w, h, max_weight_g, tare_g| BoxSpec {
        code: code.into(),
        length_mm: l,
        width_mm: w,
        height_mm: h,
        max_weight_g,
        tare_g,
    };
    vec![
        spec("MAILER-S", 250, 180, 40, 1_000, 20),
        spec("BOX-S", 200, 150, 100, 5_000, 90),
        spec("BOX-M", 300, 250, 150, 10_000, 180),
        spec("BOX-L", 400, 300, 250, 20_000, 320),
        spec("BOX-XL", 600, 400, 400, 30_000, 650),
    ]
}

/// Pack `units` into packages of at most `weight_cap_g` (contents + tare).
///
/// Errors name the offending SKU; a unit that is heavier than the cap, that
/// no box fits, or that no box can carry within the cap fails the whole
/// order, because shipping part of it in an impossible box helps nobody.
pub fn pack(
    units: &[Unit],
    weight_cap_g: u32,
    boxes: &[BoxSpec],
) -> Result<Vec<PackedPackage>, PackError> {
    if boxes.is_empty() {
        return Err(PackError::NoBoxes);
    }
    // Smallest first, so the first box that holds a package is the one to use.
    let mut boxes: Vec<&BoxSpec> = boxes.iter().collect();
    boxes.sort_by(|a, b| {
        box_volume(a)
            .cmp(&box_volume(b))
            .then_with(|| a.code.cmp(&b.code))
    });

    for unit in units {
        check_unit(unit, weight_cap_g, &boxes)?;
    }

    let mut order: Vec<&Unit> = units.iter().collect();
    order.sort_by(|a, b| {
        b.weight_g
            .cmp(&a.weight_g)
            .then_with(|| unit_volume(b).cmp(&unit_volume(a)))
            .then_with(|| a.sku.cmp(&b.sku))
            .then_with(|| a.line_id.cmp(&b.line_id))
    });

    // A unit joins a package only if some box can then hold the package
    // with its own tare inside the cap. That is simpler and tighter than
    // packing against a cap reduced by the heaviest tare (which would waste
    // hundreds of grams per parcel whenever a light box suffices), and it
    // means every package already knows its smallest box when packing ends.
    let mut open: Vec<OpenPackage<'_>> = Vec::new();
    for unit in order {
        let placed = open.iter_mut().any(|package| {
            let candidate = package.load.with(unit);
            match smallest_box_for(&candidate, weight_cap_g, &boxes) {
                Some(box_index) => {
                    package.load = candidate;
                    package.box_index = box_index;
                    package.units.push(unit);
                    true
                }
                None => false,
            }
        });
        if !placed {
            let load = Load::default().with(unit);
            // `check_unit` proved some box holds this unit on its own, so a
            // miss here would be a bug; report it as the unit's fault rather
            // than panic in a job.
            let box_index =
                smallest_box_for(&load, weight_cap_g, &boxes).ok_or_else(|| fits_no_box(unit))?;
            open.push(OpenPackage {
                load,
                box_index,
                units: vec![unit],
            });
        }
    }

    Ok(open
        .into_iter()
        .map(|package| PackedPackage {
            box_spec: boxes[package.box_index].clone(),
            // Never exceeds the cap, which is a u32.
            contents_g: u32::try_from(package.load.weight_g).unwrap_or(u32::MAX),
            items: group_items(&package.units),
        })
        .collect())
}

struct OpenPackage<'a> {
    load: Load,
    /// Index into the size-sorted boxes of the smallest box that holds `load`.
    box_index: usize,
    units: Vec<&'a Unit>,
}

/// What a box has to accommodate: total weight and volume, and the largest
/// extent in each sorted dimension (a box holds every unit iff its sorted
/// dimensions are at least these).
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    weight_g: u64,
    volume_mm3: u128,
    extent: [u32; 3],
}

impl Load {
    fn with(self, unit: &Unit) -> Load {
        let dims = sorted_dims(unit.length_mm, unit.width_mm, unit.height_mm);
        Load {
            weight_g: self.weight_g + u64::from(unit.weight_g),
            volume_mm3: self.volume_mm3.saturating_add(unit_volume(unit)),
            extent: [
                self.extent[0].max(dims[0]),
                self.extent[1].max(dims[1]),
                self.extent[2].max(dims[2]),
            ],
        }
    }
}

/// Whether `b` can ship `load`: size (see [`fits_by_size`]), and weight
/// against both the box rating and the package cap, tare included.
fn holds(b: &BoxSpec, load: &Load, weight_cap_g: u32) -> bool {
    let gross = load.weight_g + u64::from(b.tare_g);
    let weight_limit = u64::from(weight_cap_g.min(b.max_weight_g));
    fits_by_size(b, load) && gross <= weight_limit
}

/// Every unit fits the box in some orientation and the summed unit volume
/// leaves the fill-factor headroom.
fn fits_by_size(b: &BoxSpec, load: &Load) -> bool {
    let inner = sorted_dims(b.length_mm, b.width_mm, b.height_mm);
    load.extent
        .iter()
        .zip(inner)
        .all(|(&need, have)| need <= have)
        && load.volume_mm3.saturating_mul(100) <= box_volume(b) * FILL_PERCENT
}

fn smallest_box_for(load: &Load, weight_cap_g: u32, boxes: &[&BoxSpec]) -> Option<usize> {
    boxes.iter().position(|b| holds(b, load, weight_cap_g))
}

/// Reject a unit that could never ship, with the most useful reason first.
fn check_unit(unit: &Unit, weight_cap_g: u32, boxes: &[&BoxSpec]) -> Result<(), PackError> {
    if unit.weight_g > weight_cap_g {
        return Err(PackError::ItemOverCap {
            sku: unit.sku.clone(),
            weight_g: unit.weight_g,
            cap_g: weight_cap_g,
        });
    }
    let alone = Load::default().with(unit);
    let fitting: Vec<&BoxSpec> = boxes
        .iter()
        .copied()
        .filter(|b| fits_by_size(b, &alone))
        .collect();
    if fitting.is_empty() {
        return Err(fits_no_box(unit));
    }
    if !fitting.iter().any(|b| holds(b, &alone, weight_cap_g)) {
        let limit_g = fitting
            .iter()
            .map(|b| weight_cap_g.min(b.max_weight_g).saturating_sub(b.tare_g))
            .max()
            .unwrap_or(0);
        return Err(PackError::ItemTooHeavyForBoxes {
            sku: unit.sku.clone(),
            weight_g: unit.weight_g,
            limit_g,
        });
    }
    Ok(())
}

fn fits_no_box(unit: &Unit) -> PackError {
    PackError::ItemFitsNoBox {
        sku: unit.sku.clone(),
        dims: [unit.length_mm, unit.width_mm, unit.height_mm],
    }
}

fn group_items(units: &[&Unit]) -> Vec<PackedItem> {
    let mut per_line: BTreeMap<(i64, &str), u32> = BTreeMap::new();
    for unit in units {
        *per_line
            .entry((unit.line_id, unit.sku.as_str()))
            .or_default() += 1;
    }
    per_line
        .into_iter()
        .map(|((line_id, sku), quantity)| PackedItem {
            line_id,
            sku: sku.to_string(),
            quantity,
        })
        .collect()
}

/// Dimensions largest first, so a box fits an item in any orientation that
/// keeps edges parallel (the only way packers place items).
fn sorted_dims(a: u32, b: u32, c: u32) -> [u32; 3] {
    let mut dims = [a, b, c];
    dims.sort_unstable_by(|x, y| y.cmp(x));
    dims
}

fn unit_volume(unit: &Unit) -> u128 {
    u128::from(unit.length_mm) * u128::from(unit.width_mm) * u128::from(unit.height_mm)
}

fn box_volume(b: &BoxSpec) -> u128 {
    u128::from(b.length_mm) * u128::from(b.width_mm) * u128::from(b.height_mm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn unit(line_id: i64, sku: &str, weight_g: u32, dims: [u32; 3]) -> Unit {
        Unit {
            line_id,
            sku: sku.into(),
            weight_g,
            length_mm: dims[0],
            width_mm: dims[1],
            height_mm: dims[2],
        }
    }

    fn count_units(packages: &[PackedPackage]) -> BTreeMap<(i64, String), u32> {
        let mut counts = BTreeMap::new();
        for package in packages {
            for item in &package.items {
                *counts.entry((item.line_id, item.sku.clone())).or_default() += item.quantity;
            }
        }
        counts
    }

    #[test]
    fn the_spec_example_packs_into_the_minimum_two_packages_within_the_cap() {
        let weights = [700, 750, 680, 350, 200, 120, 80, 40];
        let units: Vec<Unit> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| unit(i as i64 + 1, &format!("SKU-{}", i + 1), w, [100, 80, 50]))
            .collect();
        let cap = 1800;

        let packages = pack(&units, cap, &default_boxes()).unwrap();

        for p in &packages {
            assert!(p.contents_g + p.box_spec.tare_g <= cap, "{p:?}");
        }
        let counts = count_units(&packages);
        assert_eq!(counts.len(), units.len());
        assert!(counts.values().all(|&q| q == 1), "{counts:?}");
        let total: u32 = weights.iter().sum();
        assert_eq!(packages.iter().map(|p| p.contents_g).sum::<u32>(), total);
        // 2920 g cannot go in one 1800 g package; two is the floor.
        assert_eq!(packages.len(), total.div_ceil(cap) as usize);
        assert_eq!(packages.len(), 2);
    }

    #[test]
    fn an_item_over_the_cap_is_an_error_naming_its_sku() {
        let units = vec![
            unit(1, "SKU-1", 300, [100, 100, 100]),
            unit(7, "SKU-7", 2400, [100, 100, 100]),
        ];
        let err = pack(&units, 1800, &default_boxes()).unwrap_err();
        assert_eq!(
            err,
            PackError::ItemOverCap {
                sku: "SKU-7".into(),
                weight_g: 2400,
                cap_g: 1800
            }
        );
        assert_eq!(
            err.to_string(),
            "item SKU-7 weighs 2400 g, over the 1800 g package cap"
        );
    }

    #[test]
    fn the_smallest_box_that_holds_the_package_is_chosen() {
        // A flat item goes in the mailer, a chunky one needs a real box.
        let flat = pack(
            &[unit(1, "CARD", 100, [200, 150, 20])],
            5000,
            &default_boxes(),
        )
        .unwrap();
        assert_eq!(flat.len(), 1);
        assert_eq!(flat[0].box_spec.code, "MAILER-S");

        let chunky = pack(
            &[unit(1, "MUG", 400, [120, 90, 90])],
            5000,
            &default_boxes(),
        )
        .unwrap();
        assert_eq!(chunky[0].box_spec.code, "BOX-S");
    }

    #[test]
    fn box_choice_does_not_depend_on_the_order_boxes_are_listed() {
        let mut boxes = default_boxes();
        boxes.reverse();
        let packages = pack(&[unit(1, "CARD", 100, [200, 150, 20])], 5000, &boxes).unwrap();
        assert_eq!(packages[0].box_spec.code, "MAILER-S");
    }

    #[test]
    fn boxes_of_equal_volume_are_chosen_by_code() {
        let make = |code: &str| BoxSpec {
            code: code.into(),
            length_mm: 300,
            width_mm: 200,
            height_mm: 100,
            max_weight_g: 5000,
            tare_g: 100,
        };
        let boxes = vec![make("ZULU"), make("ALPHA")];
        let packages = pack(&[unit(1, "MUG", 300, [100, 100, 100])], 5000, &boxes).unwrap();
        assert_eq!(packages[0].box_spec.code, "ALPHA");
    }

    #[test]
    fn a_unit_too_large_for_any_box_is_an_error_with_its_dimensions() {
        let units = vec![unit(3, "SOFA", 1000, [2000, 900, 800])];
        let err = pack(&units, 30_000, &default_boxes()).unwrap_err();
        assert_eq!(
            err,
            PackError::ItemFitsNoBox {
                sku: "SOFA".into(),
                dims: [2000, 900, 800]
            }
        );
        assert_eq!(
            err.to_string(),
            "item SOFA measures 2000 x 900 x 800 mm and fits none of the available boxes"
        );
    }

    #[test]
    fn a_unit_that_fits_only_when_rotated_is_packed() {
        // 380 mm tall, 240 mm wide: fits BOX-L (400 x 300 x 250) on its side.
        let packages = pack(
            &[unit(1, "LAMP", 900, [100, 240, 380])],
            5000,
            &default_boxes(),
        )
        .unwrap();
        assert_eq!(packages[0].box_spec.code, "BOX-L");
    }

    #[test]
    fn an_item_under_the_cap_that_no_box_can_carry_with_its_tare_is_an_error() {
        // 1790 g is under the 1800 g cap, but the lightest box it fits weighs 90 g.
        let err = pack(
            &[unit(1, "ANVIL", 1790, [100, 100, 100])],
            1800,
            &default_boxes(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            PackError::ItemTooHeavyForBoxes {
                sku: "ANVIL".into(),
                weight_g: 1790,
                limit_g: 1710
            }
        );
        assert!(err.to_string().contains("ANVIL"));
    }

    #[test]
    fn an_empty_box_list_is_an_error() {
        let err = pack(&[unit(1, "MUG", 300, [100, 100, 100])], 1800, &[]).unwrap_err();
        assert_eq!(err, PackError::NoBoxes);
    }

    #[test]
    fn nothing_to_pack_gives_no_packages() {
        assert_eq!(pack(&[], 1800, &default_boxes()).unwrap(), vec![]);
    }

    #[test]
    fn the_box_tare_counts_toward_the_weight_cap() {
        // Three 330 g cards weigh 990 g; with the 20 g mailer that is 1010 g,
        // over a 1000 g cap, so one card must go in a second package.
        let cards: Vec<Unit> = (0..3)
            .map(|_| unit(1, "CARD", 330, [150, 100, 5]))
            .collect();
        let packages = pack(&cards, 1000, &default_boxes()).unwrap();
        assert_eq!(packages.len(), 2);
        for p in &packages {
            assert!(p.contents_g + p.box_spec.tare_g <= 1000, "{p:?}");
        }

        let two = pack(&cards[..2], 1000, &default_boxes()).unwrap();
        assert_eq!(two.len(), 1);
    }

    #[test]
    fn volume_beyond_the_fill_factor_opens_another_package() {
        // Each unit is 40 % of BOX-XL (96 l): two fit under 85 %, three do not.
        let units: Vec<Unit> = (0..3)
            .map(|_| unit(1, "PILLOW", 100, [600, 400, 160]))
            .collect();
        let packages = pack(&units, 30_000, &default_boxes()).unwrap();
        assert_eq!(packages.len(), 2);
        assert!(packages.iter().all(|p| p.box_spec.code == "BOX-XL"));
    }

    #[test]
    fn items_are_grouped_per_line_and_ordered_by_line_id() {
        let units = vec![
            unit(9, "TEA", 100, [50, 50, 50]),
            unit(2, "MUG", 300, [100, 100, 100]),
            unit(9, "TEA", 100, [50, 50, 50]),
            unit(2, "MUG", 300, [100, 100, 100]),
            unit(5, "SPOON", 20, [150, 20, 10]),
        ];
        let packages = pack(&units, 5000, &default_boxes()).unwrap();
        assert_eq!(packages.len(), 1);
        assert_eq!(
            packages[0].items,
            vec![
                PackedItem {
                    line_id: 2,
                    sku: "MUG".into(),
                    quantity: 2
                },
                PackedItem {
                    line_id: 5,
                    sku: "SPOON".into(),
                    quantity: 1
                },
                PackedItem {
                    line_id: 9,
                    sku: "TEA".into(),
                    quantity: 2
                },
            ]
        );
        assert_eq!(packages[0].contents_g, 820);
    }

    #[test]
    fn error_messages_are_sentences_for_operators() {
        let err = PackError::NoBoxes.to_string();
        assert!(err.starts_with("no shipping boxes"));
    }

    #[test]
    fn random_orders_stay_within_cap_and_box_and_pack_every_unit_once() {
        let mut rng = StdRng::seed_from_u64(0xB0C5);
        let boxes = default_boxes();
        let mut packed_cases = 0;
        for case in 0..500 {
            let cap = rng.random_range(800..=25_000);
            // Each line is one SKU with fixed weight and size.
            let line_count = rng.random_range(1..=6);
            let mut catalogue = BTreeMap::new();
            let mut units = Vec::new();
            for line_id in 0..line_count {
                let sku = format!("SKU-{line_id}");
                let weight = rng.random_range(1..=cap.min(6_000));
                let dims = [
                    rng.random_range(5..=450),
                    rng.random_range(5..=300),
                    rng.random_range(5..=200),
                ];
                catalogue.insert(line_id, (sku.clone(), weight, dims));
                for _ in 0..rng.random_range(1..=5) {
                    units.push(unit(line_id, &sku, weight, dims));
                }
            }

            let packages = match pack(&units, cap, &boxes) {
                Ok(packages) => packages,
                Err(PackError::ItemTooHeavyForBoxes { sku, weight_g, .. }) => {
                    // Justified only if no box it fits can carry it with tare.
                    let u = units.iter().find(|u| u.sku == sku).unwrap();
                    let alone = Load::default().with(u);
                    assert!(
                        boxes.iter().all(|b| !holds(b, &alone, cap)),
                        "case {case}: {sku} at {weight_g} g wrongly rejected"
                    );
                    continue;
                }
                Err(PackError::ItemFitsNoBox { sku, .. }) => {
                    let u = units.iter().find(|u| u.sku == sku).unwrap();
                    let alone = Load::default().with(u);
                    assert!(
                        boxes.iter().all(|b| !fits_by_size(b, &alone)),
                        "case {case}"
                    );
                    continue;
                }
                Err(other) => panic!("case {case}: unexpected {other}"),
            };
            packed_cases += 1;

            let mut seen: BTreeMap<i64, u32> = BTreeMap::new();
            for p in &packages {
                assert!(boxes.contains(&p.box_spec), "case {case}");
                let b = &p.box_spec;
                let mut weight = 0u64;
                let mut volume = 0u128;
                let inner = sorted_dims(b.length_mm, b.width_mm, b.height_mm);
                for item in &p.items {
                    let (sku, w, dims) = &catalogue[&item.line_id];
                    assert_eq!(&item.sku, sku);
                    weight += u64::from(*w) * u64::from(item.quantity);
                    volume += u128::from(dims[0] * dims[1] * dims[2]) * u128::from(item.quantity);
                    let d = sorted_dims(dims[0], dims[1], dims[2]);
                    assert!(
                        d.iter().zip(inner).all(|(n, h)| *n <= h),
                        "case {case}: {sku} in {}",
                        b.code
                    );
                    *seen.entry(item.line_id).or_default() += item.quantity;
                }
                assert_eq!(u64::from(p.contents_g), weight, "case {case}");
                let gross = weight + u64::from(b.tare_g);
                assert!(
                    gross <= u64::from(cap),
                    "case {case}: {gross} g over cap {cap}"
                );
                assert!(
                    gross <= u64::from(b.max_weight_g),
                    "case {case}: over {}",
                    b.code
                );
                assert!(
                    volume * 100 <= box_volume(b) * 85,
                    "case {case}: overfull {}",
                    b.code
                );
                assert!(!p.items.is_empty(), "case {case}: empty package");
            }
            for u in &units {
                assert!(
                    seen.contains_key(&u.line_id),
                    "case {case}: line {} lost",
                    u.line_id
                );
            }
            for (line_id, qty) in seen {
                let expected = units.iter().filter(|u| u.line_id == line_id).count() as u32;
                assert_eq!(
                    qty, expected,
                    "case {case}: line {line_id} packed {qty} times"
                );
            }
        }
        // The generator must actually exercise the success path.
        assert!(packed_cases > 250, "only {packed_cases} cases packed");
    }
}
