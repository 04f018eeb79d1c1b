//! Bringing a shop's catalog, warehouses and stock in from files.
//!
//! Four loads ([`LoadKind`]), each from CSV or JSON (chosen by the file's
//! extension; JSON is an array of objects keyed by the CSV header's column
//! names). A file is read in two steps:
//!
//! 1. [`parse_file`] (pure, no database) validates every row into typed
//!    values ([`Sku`], [`WarehouseCode`], [`Positive`], ...) that cannot hold
//!    an invalid value, and reports *every* invalid row, not just the first.
//!    Rows are located by [`Location`]: for CSV the physical line (the header
//!    is line 1), for JSON the array index (`record 0` is the first object,
//!    `jq '.[0]'`).
//! 2. [`load_rows`] writes the rows in one transaction. Stock and restock rows
//!    are also checked against the database (unknown SKU or warehouse, on hand
//!    below what is reserved); any such row error rolls everything back.
//!
//! [`load_file`] does both, and reports parse and database row errors
//! together. Every load writes one `audit_log` row; stock and restock loads
//! also write one `stock_loads` row, and a restock hands the new units to
//! backordered orders ([`crate::reserve::resume_backordered`]) in the same
//! transaction.
//!
//! ```no_run
//! # async fn f(pool: &sqlx::PgPool) -> Result<(), conveyor_jobs::catalog::LoadError> {
//! use conveyor_jobs::catalog::{load_file, LoadKind};
//! let report = load_file(pool, LoadKind::Stock, "examples/stock.csv".as_ref(), "ops:alice").await?;
//! println!("{} rows: {} new, {} changed", report.rows, report.inserted, report.updated);
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::{PgConnection, PgPool};

use crate::error::JobError;

// ---------------------------------------------------------------------------
// Kinds, formats, locations, errors
// ---------------------------------------------------------------------------

/// What a file holds, and therefore which table it is loaded into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoadKind {
    /// Products, upserted by SKU.
    Catalog,
    /// Warehouses, upserted by code.
    Warehouses,
    /// Sets `on_hand` per (SKU, warehouse).
    Stock,
    /// Adds to `on_hand` per (SKU, warehouse), then resumes backordered orders.
    Restock,
}

impl LoadKind {
    pub const ALL: [LoadKind; 4] = [
        LoadKind::Catalog,
        LoadKind::Warehouses,
        LoadKind::Stock,
        LoadKind::Restock,
    ];

    /// Stable lower-case name: `"catalog"`, `"warehouses"`, `"stock"`, `"restock"`.
    pub fn name(self) -> &'static str {
        match self {
            LoadKind::Catalog => "catalog",
            LoadKind::Warehouses => "warehouses",
            LoadKind::Stock => "stock",
            LoadKind::Restock => "restock",
        }
    }

    /// The columns a file of this kind must have, in the documented order.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            LoadKind::Catalog => &[
                "sku",
                "name",
                "weight_g",
                "length_mm",
                "width_mm",
                "height_mm",
            ],
            LoadKind::Warehouses => &[
                "code",
                "name",
                "address1",
                "city",
                "province",
                "zip",
                "country",
                "latitude",
                "longitude",
                "priority",
            ],
            LoadKind::Stock | LoadKind::Restock => &["sku", "warehouse", "quantity"],
        }
    }

    /// The audit log action: `"catalog.load"`, `"restock.load"`, ...
    pub fn action(self) -> &'static str {
        match self {
            LoadKind::Catalog => "catalog.load",
            LoadKind::Warehouses => "warehouses.load",
            LoadKind::Stock => "stock.load",
            LoadKind::Restock => "restock.load",
        }
    }
}

impl fmt::Display for LoadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LoadKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LoadKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!("unknown load {s:?}; loads are catalog, warehouses, stock, restock")
            })
    }
}

/// The file format, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

impl Format {
    /// `.csv` or `.json` (any case); anything else is a [`LoadError::Format`].
    pub fn from_path(path: &Path) -> Result<Format, LoadError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Ok(Format::Csv),
            Some("json") => Ok(Format::Json),
            _ => Err(LoadError::Format(format!(
                "{}: unsupported file type, expected a .csv or .json file",
                path.display()
            ))),
        }
    }
}

/// Where a row is in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Location {
    /// CSV: the physical line the row starts on; the header is line 1.
    Line(u64),
    /// JSON: the index of the object in the top-level array, from 0.
    Record(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Record(n) => write!(f, "record {n}"),
        }
    }
}

/// One invalid row (or one invalid value in a row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub location: Location,
    /// The column at fault, when one is.
    pub column: Option<&'static str>,
    pub reason: String,
}

impl RowError {
    fn new(location: Location, column: Option<&'static str>, reason: impl Into<String>) -> Self {
        RowError {
            location,
            column,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.column {
            Some(column) => write!(f, "{}, column {}: {}", self.location, column, self.reason),
            None => write!(f, "{}: {}", self.location, self.reason),
        }
    }
}

/// Why a load did not happen. Nothing is written in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not CSV or JSON, not an array of objects, or a required column missing.
    #[error("{0}")]
    Format(String),
    /// Every invalid row, in file order.
    #[error("{}", rows_message(.0))]
    Rows(Vec<RowError>),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The restock was applied but backordered orders could not be resumed;
    /// the whole transaction, restock included, was rolled back.
    #[error("resuming backordered orders: {0}")]
    Resume(#[source] JobError),
}

fn rows_message(errors: &[RowError]) -> String {
    let rows: HashSet<Location> = errors.iter().map(|e| e.location).collect();
    let mut out = format!(
        "{} invalid row{}, nothing was loaded:",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    for e in errors {
        out.push('\n');
        out.push_str(&e.to_string());
    }
    out
}

// ---------------------------------------------------------------------------
// Validated values
// ---------------------------------------------------------------------------

/// Quotes a value for an error message, shortened if long.
fn shown(raw: &str) -> String {
    const MAX: usize = 40;
    if raw.chars().count() > MAX {
        let head: String = raw.chars().take(MAX).collect();
        format!("{head:?}...")
    } else {
        format!("{raw:?}")
    }
}

fn code_like(raw: &str, max: usize, extra: &[char]) -> bool {
    let len = raw.chars().count();
    (1..=max).contains(&len)
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

/// A stock keeping unit: 1-64 characters of `A-Z a-z 0-9 . _ -`.
/// Case-sensitive (`sku-1` and `SKU-1` are different products).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sku(String);

impl Sku {
    pub fn parse(raw: &str) -> Result<Sku, String> {
        if code_like(raw, 64, &['.', '_', '-']) {
            Ok(Sku(raw.to_string()))
        } else {
            Err(format!(
                "a SKU is 1-64 characters of letters, digits, '.', '_' and '-', got {}",
                shown(raw)
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A warehouse code: 1-32 characters of `A-Z a-z 0-9 _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WarehouseCode(String);

impl WarehouseCode {
    pub fn parse(raw: &str) -> Result<WarehouseCode, String> {
        if code_like(raw, 32, &['_', '-']) {
            Ok(WarehouseCode(raw.to_string()))
        } else {
            Err(format!(
                "a warehouse code is 1-32 characters of letters, digits, '_' and '-', got {}",
                shown(raw)
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WarehouseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Text that is not empty once trimmed (names, address parts).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Text(String);

impl Text {
    pub fn parse(raw: &str) -> Result<Text, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            Err("must not be empty".to_string())
        } else {
            Ok(Text(trimmed.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An ISO 3166-1 alpha-2 country code, stored upper-case (`us` -> `US`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CountryCode(String);

impl CountryCode {
    pub fn parse(raw: &str) -> Result<CountryCode, String> {
        if raw.len() == 2 && raw.chars().all(|c| c.is_ascii_alphabetic()) {
            Ok(CountryCode(raw.to_ascii_uppercase()))
        } else {
            Err(format!(
                "a country is a 2-letter code such as US, got {}",
                shown(raw)
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Degrees north, -90 to 90.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Latitude(f64);

impl Latitude {
    pub fn parse(raw: &str) -> Result<Latitude, String> {
        match raw.parse::<f64>() {
            Ok(v) if v.is_finite() && (-90.0..=90.0).contains(&v) => Ok(Latitude(v)),
            _ => Err(format!(
                "a latitude is a number from -90 to 90, got {}",
                shown(raw)
            )),
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

/// Degrees east, -180 to 180.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Longitude(f64);

impl Longitude {
    pub fn parse(raw: &str) -> Result<Longitude, String> {
        match raw.parse::<f64>() {
            Ok(v) if v.is_finite() && (-180.0..=180.0).contains(&v) => Ok(Longitude(v)),
            _ => Err(format!(
                "a longitude is a number from -180 to 180, got {}",
                shown(raw)
            )),
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

/// A whole number from 1 to 2,147,483,647 (it fits an SQL `INTEGER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Positive(i32);

impl Positive {
    pub fn parse(raw: &str) -> Result<Positive, String> {
        match raw.parse::<i32>() {
            Ok(v) if v > 0 => Ok(Positive(v)),
            _ => Err(format!(
                "must be a whole number from 1 to {}, got {}",
                i32::MAX,
                shown(raw)
            )),
        }
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

/// A whole number from 0 to 2,147,483,647: a stock level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(i32);

impl Quantity {
    pub fn parse(raw: &str) -> Result<Quantity, String> {
        match raw.parse::<i32>() {
            Ok(v) if v >= 0 => Ok(Quantity(v)),
            _ => Err(format!(
                "must be a whole number from 0 to {}, got {}",
                i32::MAX,
                shown(raw)
            )),
        }
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

fn parse_priority(raw: &str) -> Result<i32, String> {
    raw.parse::<i32>().map_err(|_| {
        format!(
            "a priority is a whole number (lower is preferred), got {}",
            shown(raw)
        )
    })
}

// ---------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------

/// A product line of a catalog file.
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    pub sku: Sku,
    pub name: Text,
    pub weight_g: Positive,
    pub length_mm: Positive,
    pub width_mm: Positive,
    pub height_mm: Positive,
}

/// A warehouse line of a warehouses file.
#[derive(Debug, Clone, PartialEq)]
pub struct Warehouse {
    pub code: WarehouseCode,
    pub name: Text,
    pub address1: Text,
    pub city: Text,
    pub province: Text,
    pub zip: Text,
    pub country: CountryCode,
    pub latitude: Latitude,
    pub longitude: Longitude,
    /// Lower is preferred.
    pub priority: i32,
}

/// A line of a stock file: `on_hand` becomes exactly this.
#[derive(Debug, Clone, PartialEq)]
pub struct StockLevel {
    pub sku: Sku,
    pub warehouse: WarehouseCode,
    pub on_hand: Quantity,
}

/// A line of a restock file: this many units arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Restock {
    pub sku: Sku,
    pub warehouse: WarehouseCode,
    pub quantity: Positive,
}

/// A validated row and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Row<T> {
    pub location: Location,
    pub value: T,
}

/// The valid rows of one file, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedRows {
    Catalog(Vec<Row<Product>>),
    Warehouses(Vec<Row<Warehouse>>),
    Stock(Vec<Row<StockLevel>>),
    Restock(Vec<Row<Restock>>),
}

impl ParsedRows {
    pub fn kind(&self) -> LoadKind {
        match self {
            ParsedRows::Catalog(_) => LoadKind::Catalog,
            ParsedRows::Warehouses(_) => LoadKind::Warehouses,
            ParsedRows::Stock(_) => LoadKind::Stock,
            ParsedRows::Restock(_) => LoadKind::Restock,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            ParsedRows::Catalog(r) => r.len(),
            ParsedRows::Warehouses(r) => r.len(),
            ParsedRows::Stock(r) => r.len(),
            ParsedRows::Restock(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// One cell of a raw row, before validation.
enum Cell {
    Empty,
    Value(String),
    /// A JSON value that is neither a string nor a number.
    Unusable(&'static str),
}

/// A row as read, its cells in `LoadKind::columns` order.
struct RawRow {
    location: Location,
    cells: Vec<Cell>,
}

/// Validates the cells of one raw row, collecting an error per bad cell.
struct Cells<'a> {
    row: &'a RawRow,
    columns: &'static [&'static str],
    errors: Vec<RowError>,
}

impl<'a> Cells<'a> {
    fn new(kind: LoadKind, row: &'a RawRow) -> Self {
        Cells {
            row,
            columns: kind.columns(),
            errors: Vec::new(),
        }
    }

    fn get<T>(
        &mut self,
        column: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let index = self.columns.iter().position(|c| *c == column)?;
        let result = match &self.row.cells[index] {
            Cell::Empty => Err("a value is required".to_string()),
            Cell::Unusable(what) => Err(format!("expected a string or a number, got {what}")),
            Cell::Value(raw) => parse(raw),
        };
        match result {
            Ok(v) => Some(v),
            Err(reason) => {
                self.errors
                    .push(RowError::new(self.row.location, Some(column), reason));
                None
            }
        }
    }
}

fn product(cells: &mut Cells<'_>) -> Option<Product> {
    let sku = cells.get("sku", Sku::parse);
    let name = cells.get("name", Text::parse);
    let weight_g = cells.get("weight_g", Positive::parse);
    let length_mm = cells.get("length_mm", Positive::parse);
    let width_mm = cells.get("width_mm", Positive::parse);
    let height_mm = cells.get("height_mm", Positive::parse);
    Some(Product {
        sku: sku?,
        name: name?,
        weight_g: weight_g?,
        length_mm: length_mm?,
        width_mm: width_mm?,
        height_mm: height_mm?,
    })
}

fn warehouse(cells: &mut Cells<'_>) -> Option<Warehouse> {
    let code = cells.get("code", WarehouseCode::parse);
    let name = cells.get("name", Text::parse);
    let address1 = cells.get("address1", Text::parse);
    let city = cells.get("city", Text::parse);
    let province = cells.get("province", Text::parse);
    let zip = cells.get("zip", Text::parse);
    let country = cells.get("country", CountryCode::parse);
    let latitude = cells.get("latitude", Latitude::parse);
    let longitude = cells.get("longitude", Longitude::parse);
    let priority = cells.get("priority", parse_priority);
    Some(Warehouse {
        code: code?,
        name: name?,
        address1: address1?,
        city: city?,
        province: province?,
        zip: zip?,
        country: country?,
        latitude: latitude?,
        longitude: longitude?,
        priority: priority?,
    })
}

fn stock_level(cells: &mut Cells<'_>) -> Option<StockLevel> {
    let sku = cells.get("sku", Sku::parse);
    let warehouse = cells.get("warehouse", WarehouseCode::parse);
    let on_hand = cells.get("quantity", Quantity::parse);
    Some(StockLevel {
        sku: sku?,
        warehouse: warehouse?,
        on_hand: on_hand?,
    })
}

fn restock(cells: &mut Cells<'_>) -> Option<Restock> {
    let sku = cells.get("sku", Sku::parse);
    let warehouse = cells.get("warehouse", WarehouseCode::parse);
    let quantity = cells.get("quantity", Positive::parse);
    Some(Restock {
        sku: sku?,
        warehouse: warehouse?,
        quantity: quantity?,
    })
}

/// Validates raw rows into typed ones; reports duplicates of the key
/// (SKU, warehouse code, or SKU + warehouse) at their second occurrence.
fn validate(kind: LoadKind, raw: Vec<RawRow>) -> (ParsedRows, Vec<RowError>) {
    fn typed<T, K: Eq + std::hash::Hash>(
        kind: LoadKind,
        raw: &[RawRow],
        errors: &mut Vec<RowError>,
        build: fn(&mut Cells<'_>) -> Option<T>,
        key: fn(&T) -> K,
        duplicate: fn(&T, Location) -> (Option<&'static str>, String),
    ) -> Vec<Row<T>> {
        let mut seen: HashMap<K, Location> = HashMap::new();
        let mut rows = Vec::with_capacity(raw.len());
        for r in raw {
            let mut cells = Cells::new(kind, r);
            let value = build(&mut cells);
            errors.append(&mut cells.errors);
            let Some(value) = value else { continue };
            if let Some(first) = seen.get(&key(&value)) {
                let (column, reason) = duplicate(&value, *first);
                errors.push(RowError::new(r.location, column, reason));
                continue;
            }
            seen.insert(key(&value), r.location);
            rows.push(Row {
                location: r.location,
                value,
            });
        }
        rows
    }

    let mut errors = Vec::new();
    let parsed = match kind {
        LoadKind::Catalog => ParsedRows::Catalog(typed(
            kind,
            &raw,
            &mut errors,
            product,
            |p| p.sku.clone(),
            |p, first| {
                (
                    Some("sku"),
                    format!("duplicate SKU {}, already on {first}", p.sku),
                )
            },
        )),
        LoadKind::Warehouses => ParsedRows::Warehouses(typed(
            kind,
            &raw,
            &mut errors,
            warehouse,
            |w| w.code.clone(),
            |w, first| {
                (
                    Some("code"),
                    format!("duplicate warehouse {}, already on {first}", w.code),
                )
            },
        )),
        LoadKind::Stock => ParsedRows::Stock(typed(
            kind,
            &raw,
            &mut errors,
            stock_level,
            |s| (s.sku.clone(), s.warehouse.clone()),
            |s, first| {
                let reason = format!(
                    "duplicate SKU {} in warehouse {}, already on {first}",
                    s.sku, s.warehouse
                );
                (None, reason)
            },
        )),
        LoadKind::Restock => ParsedRows::Restock(typed(
            kind,
            &raw,
            &mut errors,
            restock,
            |s| (s.sku.clone(), s.warehouse.clone()),
            |s, first| {
                let reason = format!(
                    "duplicate SKU {} in warehouse {}, already on {first} (put the total on one line)",
                    s.sku, s.warehouse
                );
                (None, reason)
            },
        )),
    };
    (parsed, errors)
}

fn missing_columns(kind: LoadKind, missing: &[&str]) -> LoadError {
    LoadError::Format(format!(
        "missing column{} {}; a {} file has the columns {}",
        if missing.len() == 1 { "" } else { "s" },
        missing.join(", "),
        kind,
        kind.columns().join(",")
    ))
}

/// Physical line numbers of byte offsets. The `csv` crate's own line count
/// is off after blank lines and with CRLF endings; its byte offsets are
/// right, but point at any blank lines skipped before the record.
struct Lines<'a> {
    bytes: &'a [u8],
    /// Offsets of every line break (`\n`, or a `\r` not followed by `\n`).
    breaks: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        let breaks = (0..bytes.len())
            .filter(|&i| {
                bytes[i] == b'\n' || (bytes[i] == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
            })
            .collect();
        Lines { bytes, breaks }
    }

    /// The line (from 1) of the first byte at or after `offset` that is not
    /// a line break.
    fn line_of(&self, offset: u64) -> Location {
        let mut at = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.bytes.len());
        while matches!(self.bytes.get(at), Some(b'\r' | b'\n')) {
            at += 1;
        }
        Location::Line(self.breaks.partition_point(|&b| b < at) as u64 + 1)
    }
}

fn read_csv(kind: LoadKind, bytes: &[u8]) -> Result<(Vec<RawRow>, Vec<RowError>), LoadError> {
    let lines = Lines::new(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let header = reader
        .headers()
        .map_err(|e| LoadError::Format(format!("unreadable CSV header: {e}")))?
        .clone();
    if header.iter().all(str::is_empty) {
        return Err(LoadError::Format(format!(
            "empty file; a {} CSV file starts with the header {}",
            kind,
            kind.columns().join(",")
        )));
    }
    let mut indices = Vec::with_capacity(kind.columns().len());
    let mut missing = Vec::new();
    for column in kind.columns() {
        let found: Vec<usize> = header
            .iter()
            .enumerate()
            .filter(|(_, h)| h.eq_ignore_ascii_case(column))
            .map(|(i, _)| i)
            .collect();
        match found.as_slice() {
            [] => missing.push(*column),
            [i] => indices.push(*i),
            _ => {
                return Err(LoadError::Format(format!(
                    "column {column} appears {} times in the header",
                    found.len()
                )));
            }
        }
    }
    if !missing.is_empty() {
        return Err(missing_columns(kind, &missing));
    }

    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let location = lines.line_of(record.position().map_or(0, |p| p.byte()));
                // A line of only separators or spaces is as good as empty.
                if record.iter().all(str::is_empty) {
                    continue;
                }
                let cells = indices
                    .iter()
                    .map(|&i| match record.get(i) {
                        None | Some("") => Cell::Empty,
                        Some(v) => Cell::Value(v.to_string()),
                    })
                    .collect();
                rows.push(RawRow { location, cells });
            }
            Err(e) => match (e.kind(), e.position()) {
                // A bad byte spoils one row; the others are still worth checking.
                (csv::ErrorKind::Utf8 { err, .. }, Some(pos)) => {
                    errors.push(RowError::new(
                        lines.line_of(pos.byte()),
                        None,
                        format!("not valid UTF-8 text: {err}"),
                    ));
                }
                _ => return Err(LoadError::Format(format!("unreadable CSV: {e}"))),
            },
        }
    }
    Ok((rows, errors))
}

fn read_json(kind: LoadKind, bytes: &[u8]) -> Result<(Vec<RawRow>, Vec<RowError>), LoadError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| LoadError::Format(format!("not valid JSON: {e}")))?;
    let serde_json::Value::Array(items) = value else {
        return Err(LoadError::Format(format!(
            "a {kind} JSON file is an array of objects with the fields {}",
            kind.columns().join(", ")
        )));
    };
    let columns = kind.columns();
    let mut rows = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    let mut present = vec![false; columns.len()];
    for (index, item) in items.iter().enumerate() {
        let location = Location::Record(index);
        let Some(object) = item.as_object() else {
            errors.push(RowError::new(location, None, "expected an object"));
            continue;
        };
        let cells = columns
            .iter()
            .enumerate()
            .map(|(i, column)| {
                let value = object
                    .iter()
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case(column))
                    .map(|(_, v)| v);
                if value.is_some() {
                    present[i] = true;
                }
                match value {
                    None | Some(serde_json::Value::Null) => Cell::Empty,
                    Some(serde_json::Value::String(s)) if s.trim().is_empty() => Cell::Empty,
                    Some(serde_json::Value::String(s)) => Cell::Value(s.trim().to_string()),
                    Some(serde_json::Value::Number(n)) => Cell::Value(n.to_string()),
                    Some(serde_json::Value::Bool(_)) => Cell::Unusable("true/false"),
                    Some(serde_json::Value::Array(_)) => Cell::Unusable("an array"),
                    Some(serde_json::Value::Object(_)) => Cell::Unusable("an object"),
                }
            })
            .collect();
        rows.push(RawRow { location, cells });
    }
    // A field no object has is the JSON form of a missing header column.
    let missing: Vec<&str> = columns
        .iter()
        .zip(&present)
        .filter(|(_, p)| !**p)
        .map(|(c, _)| *c)
        .collect();
    if !rows.is_empty() && !missing.is_empty() {
        return Err(missing_columns(kind, &missing));
    }
    Ok((rows, errors))
}

/// Parses file contents, returning the valid rows and every row error
/// (sorted by location) separately.
fn parse_lenient(
    kind: LoadKind,
    format: Format,
    bytes: &[u8],
) -> Result<(ParsedRows, Vec<RowError>), LoadError> {
    let (raw, mut errors) = match format {
        Format::Csv => read_csv(kind, bytes)?,
        Format::Json => read_json(kind, bytes)?,
    };
    let (rows, mut more) = validate(kind, raw);
    errors.append(&mut more);
    // Stable: a row's errors stay in column order.
    errors.sort_by_key(|e| e.location);
    Ok((rows, errors))
}

/// Parses and validates file contents. No database is involved.
pub fn parse(kind: LoadKind, format: Format, bytes: &[u8]) -> Result<ParsedRows, LoadError> {
    let (rows, errors) = parse_lenient(kind, format, bytes)?;
    if errors.is_empty() {
        Ok(rows)
    } else {
        Err(LoadError::Rows(errors))
    }
}

fn read(path: &Path) -> Result<(Format, Vec<u8>), LoadError> {
    let format = Format::from_path(path)?;
    let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((format, bytes))
}

fn with_path(err: LoadError, path: &Path) -> LoadError {
    match err {
        LoadError::Io { source, .. } => LoadError::Io {
            path: path.to_path_buf(),
            source,
        },
        LoadError::Format(message) => LoadError::Format(format!("{}: {message}", path.display())),
        other => other,
    }
}

/// Reads and validates a file (format from its extension). No database is
/// involved; every invalid row is reported in [`LoadError::Rows`].
pub fn parse_file(kind: LoadKind, path: &Path) -> Result<ParsedRows, LoadError> {
    let (format, bytes) = read(path)?;
    parse(kind, format, &bytes).map_err(|e| with_path(e, path))
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub kind: LoadKind,
    /// Rows in the file.
    pub rows: usize,
    /// Rows that created a product, warehouse or stock row.
    pub inserted: usize,
    /// Rows that changed an existing one. Rows identical to what is stored
    /// are counted in neither (`rows - inserted - updated` of them).
    pub updated: usize,
    /// Restock only: orders that became fully reserved.
    pub orders_resumed: u64,
    /// Stock and restock only: the `stock_loads` row written.
    pub stock_load_id: Option<i64>,
}

/// Reads, validates and loads a file in one transaction. Row errors found
/// while parsing and those found against the database (stock and restock)
/// are reported together; when there is any, nothing is written.
/// The audit log and `stock_loads` name the file by its file name.
pub async fn load_file(
    pool: &PgPool,
    kind: LoadKind,
    path: &Path,
    actor: &str,
) -> Result<LoadReport, LoadError> {
    let (format, bytes) = read(path)?;
    let (rows, errors) = parse_lenient(kind, format, &bytes).map_err(|e| with_path(e, path))?;
    if !errors.is_empty() && matches!(kind, LoadKind::Catalog | LoadKind::Warehouses) {
        return Err(LoadError::Rows(errors));
    }
    let source = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    load_checked(pool, &rows, errors, &source, actor).await
}

/// Loads rows already parsed (by [`parse`] or [`parse_file`]) in one
/// transaction. `source` names where they came from in the audit log.
pub async fn load_rows(
    pool: &PgPool,
    rows: &ParsedRows,
    source: &str,
    actor: &str,
) -> Result<LoadReport, LoadError> {
    load_checked(pool, rows, Vec::new(), source, actor).await
}

async fn load_checked(
    pool: &PgPool,
    rows: &ParsedRows,
    mut errors: Vec<RowError>,
    source: &str,
    actor: &str,
) -> Result<LoadReport, LoadError> {
    let mut tx = pool.begin().await?;
    let (inserted, updated) = match rows {
        ParsedRows::Catalog(rows) => upsert_products(&mut tx, rows).await?,
        ParsedRows::Warehouses(rows) => upsert_warehouses(&mut tx, rows).await?,
        ParsedRows::Stock(rows) => {
            errors.extend(check_stock(&mut tx, rows).await?);
            if !errors.is_empty() {
                return Err(rows_error(errors));
            }
            set_stock(&mut tx, rows).await?
        }
        ParsedRows::Restock(rows) => {
            errors.extend(check_restock(&mut tx, rows).await?);
            if !errors.is_empty() {
                return Err(rows_error(errors));
            }
            add_stock(&mut tx, rows).await?
        }
    };
    let (orders_resumed, wake) = if let ParsedRows::Restock(_) = rows {
        crate::reserve::resume_backordered(&mut tx)
            .await
            .map_err(LoadError::Resume)?
    } else {
        (0, crate::queue::Wake::default())
    };
    let kind = rows.kind();
    let stock_load_id = if matches!(kind, LoadKind::Stock | LoadKind::Restock) {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO stock_loads (kind, source, rows) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(kind.name())
        .bind(source)
        .bind(count(rows.len()))
        .fetch_one(&mut *tx)
        .await?;
        Some(id)
    } else {
        None
    };
    let report = LoadReport {
        kind,
        rows: rows.len(),
        inserted,
        updated,
        orders_resumed,
        stock_load_id,
    };
    let detail = serde_json::json!({
        "kind": kind.name(),
        "rows": report.rows,
        "inserted": report.inserted,
        "updated": report.updated,
        "unchanged": report.rows - report.inserted - report.updated,
        "orders_resumed": report.orders_resumed,
        "stock_load_id": report.stock_load_id,
    });
    sqlx::query("INSERT INTO audit_log (actor, action, entity, entity_id, detail) VALUES ($1, $2, 'file', $3, $4)")
        .bind(actor)
        .bind(kind.action())
        .bind(source)
        .bind(detail)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    wake.send(pool).await;
    Ok(report)
}

fn rows_error(mut errors: Vec<RowError>) -> LoadError {
    errors.sort_by_key(|e| e.location);
    LoadError::Rows(errors)
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Splits `RETURNING (xmax = 0)` flags into (inserted, updated).
fn tally(flags: &[bool]) -> (usize, usize) {
    let inserted = flags.iter().filter(|f| **f).count();
    (inserted, flags.len() - inserted)
}

async fn upsert_products(
    conn: &mut PgConnection,
    rows: &[Row<Product>],
) -> Result<(usize, usize), sqlx::Error> {
    let col = |f: fn(&Product) -> i32| rows.iter().map(|r| f(&r.value)).collect::<Vec<i32>>();
    let flags: Vec<bool> = sqlx::query_scalar(
        "INSERT INTO products AS p (sku, name, weight_g, length_mm, width_mm, height_mm)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::int4[], $5::int4[], $6::int4[])
         ON CONFLICT (sku) DO UPDATE
            SET name = EXCLUDED.name, weight_g = EXCLUDED.weight_g, length_mm = EXCLUDED.length_mm,
                width_mm = EXCLUDED.width_mm, height_mm = EXCLUDED.height_mm, updated_at = now()
          WHERE (p.name, p.weight_g, p.length_mm, p.width_mm, p.height_mm)
                IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.weight_g, EXCLUDED.length_mm, EXCLUDED.width_mm, EXCLUDED.height_mm)
         RETURNING (xmax = 0)",
    )
    .bind(rows.iter().map(|r| r.value.sku.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.value.name.as_str()).collect::<Vec<_>>())
    .bind(col(|p| p.weight_g.get()))
    .bind(col(|p| p.length_mm.get()))
    .bind(col(|p| p.width_mm.get()))
    .bind(col(|p| p.height_mm.get()))
    .fetch_all(conn)
    .await?;
    Ok(tally(&flags))
}

async fn upsert_warehouses(
    conn: &mut PgConnection,
    rows: &[Row<Warehouse>],
) -> Result<(usize, usize), sqlx::Error> {
    let text = |f: fn(&Warehouse) -> &str| rows.iter().map(|r| f(&r.value)).collect::<Vec<&str>>();
    let flags: Vec<bool> = sqlx::query_scalar(
        "INSERT INTO warehouses AS w (code, name, address1, city, province, zip, country, latitude, longitude, priority)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                              $8::float8[], $9::float8[], $10::int4[])
         ON CONFLICT (code) DO UPDATE
            SET name = EXCLUDED.name, address1 = EXCLUDED.address1, city = EXCLUDED.city,
                province = EXCLUDED.province, zip = EXCLUDED.zip, country = EXCLUDED.country,
                latitude = EXCLUDED.latitude, longitude = EXCLUDED.longitude, priority = EXCLUDED.priority,
                updated_at = now()
          WHERE (w.name, w.address1, w.city, w.province, w.zip, w.country, w.latitude, w.longitude, w.priority)
                IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.address1, EXCLUDED.city, EXCLUDED.province, EXCLUDED.zip,
                                  EXCLUDED.country, EXCLUDED.latitude, EXCLUDED.longitude, EXCLUDED.priority)
         RETURNING (xmax = 0)",
    )
    .bind(text(|w| w.code.as_str()))
    .bind(text(|w| w.name.as_str()))
    .bind(text(|w| w.address1.as_str()))
    .bind(text(|w| w.city.as_str()))
    .bind(text(|w| w.province.as_str()))
    .bind(text(|w| w.zip.as_str()))
    .bind(text(|w| w.country.as_str()))
    .bind(rows.iter().map(|r| r.value.latitude.get()).collect::<Vec<f64>>())
    .bind(rows.iter().map(|r| r.value.longitude.get()).collect::<Vec<f64>>())
    .bind(rows.iter().map(|r| r.value.priority).collect::<Vec<i32>>())
    .fetch_all(conn)
    .await?;
    Ok(tally(&flags))
}

/// The stock rows a file touches, locked until the load commits so that no
/// reservation can slip in between the check and the write.
#[derive(sqlx::FromRow)]
struct Current {
    sku: String,
    warehouse: String,
    on_hand: i32,
    reserved: i32,
}

/// Row errors for unknown SKUs and warehouses, and the current stock of the
/// (SKU, warehouse) pairs that exist, locked `FOR UPDATE`.
async fn known_and_locked<'a>(
    conn: &mut PgConnection,
    keys: impl Iterator<Item = (Location, &'a Sku, &'a WarehouseCode)> + Clone,
) -> Result<(Vec<RowError>, HashMap<(String, String), Current>), sqlx::Error> {
    let skus: Vec<&str> = keys.clone().map(|(_, s, _)| s.as_str()).collect();
    let codes: Vec<&str> = keys.clone().map(|(_, _, w)| w.as_str()).collect();
    // KEY SHARE: the products and warehouses cannot vanish before we commit.
    let known_skus: HashSet<String> = sqlx::query_scalar(
        "SELECT sku FROM products WHERE sku = ANY($1) ORDER BY sku FOR KEY SHARE",
    )
    .bind(&skus)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let known_codes: HashSet<String> = sqlx::query_scalar(
        "SELECT code FROM warehouses WHERE code = ANY($1) ORDER BY code FOR KEY SHARE",
    )
    .bind(&codes)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let mut errors = Vec::new();
    for (location, sku, code) in keys {
        if !known_skus.contains(sku.as_str()) {
            errors.push(RowError::new(
                location,
                Some("sku"),
                format!("unknown SKU {sku}; load it in the catalog first"),
            ));
        }
        if !known_codes.contains(code.as_str()) {
            errors.push(RowError::new(
                location,
                Some("warehouse"),
                format!("unknown warehouse {code}; load it with the warehouses first"),
            ));
        }
    }
    // Locked in key order, the same order every loader uses.
    let current: Vec<Current> = sqlx::query_as(
        "SELECT s.sku, s.warehouse, s.on_hand, s.reserved
           FROM stock s
           JOIN UNNEST($1::text[], $2::text[]) AS f (sku, warehouse)
             ON s.sku = f.sku AND s.warehouse = f.warehouse
          ORDER BY s.sku, s.warehouse
            FOR UPDATE OF s",
    )
    .bind(&skus)
    .bind(&codes)
    .fetch_all(&mut *conn)
    .await?;
    let current = current
        .into_iter()
        .map(|c| ((c.sku.clone(), c.warehouse.clone()), c))
        .collect();
    Ok((errors, current))
}

fn key(sku: &Sku, warehouse: &WarehouseCode) -> (String, String) {
    (sku.as_str().to_string(), warehouse.as_str().to_string())
}

async fn check_stock(
    conn: &mut PgConnection,
    rows: &[Row<StockLevel>],
) -> Result<Vec<RowError>, sqlx::Error> {
    let keys = rows
        .iter()
        .map(|r| (r.location, &r.value.sku, &r.value.warehouse));
    let (mut errors, current) = known_and_locked(conn, keys).await?;
    for r in rows {
        let s = &r.value;
        if let Some(c) = current.get(&key(&s.sku, &s.warehouse))
            && s.on_hand.get() < c.reserved
        {
            errors.push(RowError::new(
                r.location,
                Some("quantity"),
                format!(
                    "cannot set on hand of {} in {} to {}: {} units are reserved for orders",
                    s.sku,
                    s.warehouse,
                    s.on_hand.get(),
                    c.reserved
                ),
            ));
        }
    }
    Ok(errors)
}

async fn check_restock(
    conn: &mut PgConnection,
    rows: &[Row<Restock>],
) -> Result<Vec<RowError>, sqlx::Error> {
    let keys = rows
        .iter()
        .map(|r| (r.location, &r.value.sku, &r.value.warehouse));
    let (mut errors, current) = known_and_locked(conn, keys).await?;
    for r in rows {
        let s = &r.value;
        if let Some(c) = current.get(&key(&s.sku, &s.warehouse))
            && c.on_hand.checked_add(s.quantity.get()).is_none()
        {
            errors.push(RowError::new(
                r.location,
                Some("quantity"),
                format!(
                    "{} in {} already has {} on hand; adding {} exceeds {}",
                    s.sku,
                    s.warehouse,
                    c.on_hand,
                    s.quantity.get(),
                    i32::MAX
                ),
            ));
        }
    }
    Ok(errors)
}

async fn set_stock(
    conn: &mut PgConnection,
    rows: &[Row<StockLevel>],
) -> Result<(usize, usize), sqlx::Error> {
    let flags: Vec<bool> = sqlx::query_scalar(
        "INSERT INTO stock AS s (sku, warehouse, on_hand)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int4[])
         ON CONFLICT (sku, warehouse) DO UPDATE
            SET on_hand = EXCLUDED.on_hand, updated_at = now()
          WHERE s.on_hand IS DISTINCT FROM EXCLUDED.on_hand
         RETURNING (xmax = 0)",
    )
    .bind(
        rows.iter()
            .map(|r| r.value.sku.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.value.warehouse.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.value.on_hand.get())
            .collect::<Vec<i32>>(),
    )
    .fetch_all(conn)
    .await?;
    Ok(tally(&flags))
}

async fn add_stock(
    conn: &mut PgConnection,
    rows: &[Row<Restock>],
) -> Result<(usize, usize), sqlx::Error> {
    let flags: Vec<bool> = sqlx::query_scalar(
        "INSERT INTO stock AS s (sku, warehouse, on_hand)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int4[])
         ON CONFLICT (sku, warehouse) DO UPDATE
            SET on_hand = s.on_hand + EXCLUDED.on_hand, updated_at = now()
         RETURNING (xmax = 0)",
    )
    .bind(
        rows.iter()
            .map(|r| r.value.sku.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.value.warehouse.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.value.quantity.get())
            .collect::<Vec<i32>>(),
    )
    .fetch_all(conn)
    .await?;
    Ok(tally(&flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus_and_codes_accept_only_their_alphabet_and_length() {
        assert!(Sku::parse("SKU-0001").is_ok());
        assert!(Sku::parse("a.b_c-D9").is_ok());
        assert!(Sku::parse(&"x".repeat(64)).is_ok());
        assert!(Sku::parse(&"x".repeat(65)).is_err());
        assert!(Sku::parse("").is_err());
        assert!(Sku::parse("has space").is_err());
        assert!(Sku::parse("é").is_err());
        assert!(WarehouseCode::parse("RNO-1_a").is_ok());
        assert!(WarehouseCode::parse("RNO.1").is_err());
        assert!(WarehouseCode::parse(&"w".repeat(33)).is_err());
    }

    #[test]
    fn numbers_are_checked_for_range_and_wholeness() {
        assert_eq!(Positive::parse("250").unwrap().get(), 250);
        assert!(Positive::parse("0").is_err());
        assert!(Positive::parse("-3").is_err());
        assert!(Positive::parse("2.5").is_err());
        assert!(Positive::parse("3000000000").is_err());
        assert_eq!(Quantity::parse("0").unwrap().get(), 0);
        assert!(Quantity::parse("-1").is_err());
        assert!(Latitude::parse("90").is_ok());
        assert!(Latitude::parse("90.01").is_err());
        assert!(Latitude::parse("NaN").is_err());
        assert!(Longitude::parse("-180").is_ok());
        assert!(Longitude::parse("-180.5").is_err());
        assert_eq!(CountryCode::parse("us").unwrap().as_str(), "US");
        assert!(CountryCode::parse("USA").is_err());
    }

    #[test]
    fn csv_rows_are_located_by_physical_line_and_blank_lines_are_skipped() {
        let csv = "sku,warehouse,quantity,note\n\nA,W1,5,x\n   \nB,W1,-1\n,,\nC,W2,3\n";
        let err = parse(LoadKind::Stock, Format::Csv, csv.as_bytes()).unwrap_err();
        let LoadError::Rows(errors) = err else {
            panic!("{err}")
        };
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].location, Location::Line(5));
        assert_eq!(errors[0].column, Some("quantity"));
        let ok = "\u{feff}SKU, Warehouse ,quantity\nA,W1,5\n\nC,W2,3\n";
        let ParsedRows::Stock(rows) = parse(LoadKind::Stock, Format::Csv, ok.as_bytes()).unwrap()
        else {
            panic!()
        };
        let lines: Vec<Location> = rows.iter().map(|r| r.location).collect();
        assert_eq!(lines, [Location::Line(2), Location::Line(4)]);
        let crlf = "sku,warehouse,quantity\r\n\r\nA,W1,5\r\n\"B\",W1,x\r\n";
        let LoadError::Rows(errors) =
            parse(LoadKind::Stock, Format::Csv, crlf.as_bytes()).unwrap_err()
        else {
            panic!()
        };
        assert_eq!(errors[0].location, Location::Line(4));
        let quoted = "sku,name,weight_g,length_mm,width_mm,height_mm\nA,\"two\nlines\",1,1,1,1\n\nB,x,0,1,1,1\n";
        let LoadError::Rows(errors) =
            parse(LoadKind::Catalog, Format::Csv, quoted.as_bytes()).unwrap_err()
        else {
            panic!()
        };
        assert_eq!(errors[0].location, Location::Line(5));
    }

    #[test]
    fn a_missing_column_is_a_format_error_naming_it() {
        let err = parse(
            LoadKind::Catalog,
            Format::Csv,
            b"sku,name,weight_g\nA,B,1\n",
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, LoadError::Format(_)), "{message}");
        assert!(
            message.contains("length_mm, width_mm, height_mm"),
            "{message}"
        );
        let json = br#"[{"sku": "A", "name": "B", "weight_g": 1, "length_mm": 1, "width_mm": 1}]"#;
        let err = parse(LoadKind::Catalog, Format::Json, json).unwrap_err();
        assert!(
            err.to_string().contains("missing column height_mm"),
            "{err}"
        );
    }

    #[test]
    fn json_records_are_located_by_array_index_and_reject_unusable_values() {
        let json = br#"[
            {"sku": "A", "warehouse": "W", "quantity": 2},
            {"sku": "B", "warehouse": "W", "quantity": true},
            "not an object",
            {"sku": "C", "warehouse": "W", "quantity": "4"}
        ]"#;
        let LoadError::Rows(errors) = parse(LoadKind::Restock, Format::Json, json).unwrap_err()
        else {
            panic!()
        };
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "record 1, column quantity: expected a string or a number, got true/false",
                "record 2: expected an object",
            ]
        );
    }

    #[test]
    fn every_bad_cell_of_a_row_is_reported() {
        let csv = "sku,name,weight_g,length_mm,width_mm,height_mm\nbad sku,,0,1,1,x\n";
        let LoadError::Rows(errors) =
            parse(LoadKind::Catalog, Format::Csv, csv.as_bytes()).unwrap_err()
        else {
            panic!()
        };
        let columns: Vec<_> = errors.iter().map(|e| e.column.unwrap()).collect();
        assert_eq!(columns, ["sku", "name", "weight_g", "height_mm"]);
    }
}
