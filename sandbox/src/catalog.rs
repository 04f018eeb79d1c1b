//! The product catalog that generated orders draw their SKUs from: either the
//! default `SKU-0001`..`SKU-0024`, or the `sku` and `name` columns of a CSV file, so
//! that a demo can line the sandbox's orders up with the stock loaded into Conveyor.

use std::path::Path;

use anyhow::{Context, bail};

/// The catalog used when no CSV is given: `SKU-0001`..`SKU-0024`.
pub fn default_catalog() -> Vec<(String, String)> {
    (1..=24)
        .map(|n| (format!("SKU-{n:04}"), format!("Sample product {n}")))
        .collect()
}

/// Reads `(sku, name)` pairs from a CSV file with a header row containing at least
/// a `sku` and a `name` column (case-insensitive; other columns are ignored).
/// Rows with an empty SKU are skipped; duplicate SKUs keep their first name.
pub fn read_catalog_csv(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("opening catalog {}", path.display()))?;
    parse_catalog(file).with_context(|| format!("reading catalog {}", path.display()))
}

fn parse_catalog(reader: impl std::io::Read) -> anyhow::Result<Vec<(String, String)>> {
    let mut csv = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(reader);
    let headers = csv.headers().context("reading the header row")?.clone();
    let column = |wanted: &str| {
        headers.iter().position(|h| {
            h.trim_start_matches('\u{feff}')
                .eq_ignore_ascii_case(wanted)
        })
    };
    let (Some(sku_col), Some(name_col)) = (column("sku"), column("name")) else {
        bail!("the header row needs a `sku` and a `name` column, found {headers:?}");
    };
    let mut seen = std::collections::HashSet::new();
    let mut catalog = Vec::new();
    for (row, record) in csv.records().enumerate() {
        let record = record.with_context(|| format!("row {}", row + 2))?;
        let sku = record.get(sku_col).unwrap_or_default().to_owned();
        if sku.is_empty() || !seen.insert(sku.clone()) {
            continue;
        }
        let name = match record.get(name_col).unwrap_or_default() {
            "" => sku.clone(),
            name => name.to_owned(),
        };
        catalog.push((sku, name));
    }
    if catalog.is_empty() {
        bail!("the catalog has no SKUs");
    }
    Ok(catalog)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catalog_csv_keeps_sku_and_name_and_ignores_other_columns() {
        let csv = "weight_g,SKU,name,price\n120,MUG-1,Blue mug,9.99\n80,TEE-2,,12\n1,MUG-1,dup,1\n";
        let catalog = parse_catalog(csv.as_bytes()).unwrap();
        assert_eq!(
            catalog,
            vec![
                ("MUG-1".to_owned(), "Blue mug".to_owned()),
                ("TEE-2".to_owned(), "TEE-2".to_owned())
            ]
        );
    }

    #[test]
    fn a_catalog_without_a_sku_column_is_refused() {
        assert!(parse_catalog("name\nx\n".as_bytes()).is_err());
    }

    #[test]
    fn the_default_catalog_has_24_skus() {
        let catalog = default_catalog();
        assert_eq!(catalog.len(), 24);
        assert_eq!(catalog[0].0, "SKU-0001");
        assert_eq!(catalog[23].1, "Sample product 24");
    }
}
