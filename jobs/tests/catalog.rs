//! Loading catalog, warehouse, stock and restock files into a fresh database.

mod common;

use std::path::{Path, PathBuf};

use conveyor_jobs::catalog::{LoadError, LoadKind, Location, RowError, load_file, parse_file};
use sqlx::PgPool;

const ACTOR: &str = "test:catalog";

const CATALOG_CSV: &str = "\
sku,name,weight_g,length_mm,width_mm,height_mm
SKU-0001,Ceramic mug 350 ml,340,120,90,100
SKU-0002,Cotton tote bag,120,380,350,10
SKU-0003,Cast iron skillet 26 cm,2450,450,270,55
";

const WAREHOUSES_CSV: &str = "\
code,name,address1,city,province,zip,country,latitude,longitude,priority
CMH,Columbus fulfillment center,4200 Alum Creek Dr,Columbus,OH,43207,US,39.9012,-82.9537,1
RNO,Reno fulfillment center,1355 Capital Blvd,Reno,NV,89502,us,39.4965,-119.7580,3
";

async fn fresh_pool() -> PgPool {
    common::fresh_pool("catalog", 4).await
}

/// Writes `contents` to a file named `name` in a new directory under the
/// system's temp dir, and returns its path.
fn write(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "conveyor-catalog-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn examples(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

fn row_errors(result: Result<impl std::fmt::Debug, LoadError>) -> Vec<RowError> {
    match result {
        Err(LoadError::Rows(errors)) => errors,
        other => panic!("expected row errors, got {other:?}"),
    }
}

async fn base(pool: &PgPool) {
    load_file(
        pool,
        LoadKind::Catalog,
        &write("catalog.csv", CATALOG_CSV),
        ACTOR,
    )
    .await
    .unwrap();
    load_file(
        pool,
        LoadKind::Warehouses,
        &write("warehouses.csv", WAREHOUSES_CSV),
        ACTOR,
    )
    .await
    .unwrap();
}

type ProductRow = (String, String, i32, i32, i32, i32);

async fn products(pool: &PgPool) -> Vec<ProductRow> {
    sqlx::query_as(
        "SELECT sku, name, weight_g, length_mm, width_mm, height_mm FROM products ORDER BY sku",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn on_hand(pool: &PgPool, sku: &str, warehouse: &str) -> Option<(i32, i32)> {
    sqlx::query_as("SELECT on_hand, reserved FROM stock WHERE sku = $1 AND warehouse = $2")
        .bind(sku)
        .bind(warehouse)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn a_valid_catalog_loads_identically_from_csv_and_from_json() {
    let json = r#"[
        {"sku": "SKU-0001", "name": "Ceramic mug 350 ml", "weight_g": 340, "length_mm": 120, "width_mm": 90, "height_mm": 100},
        {"sku": "SKU-0002", "name": "Cotton tote bag", "weight_g": "120", "length_mm": 380, "width_mm": 350, "height_mm": 10, "colour": "natural"},
        {"sku": " SKU-0003 ", "name": "Cast iron skillet 26 cm", "weight_g": 2450, "length_mm": 450, "width_mm": 270, "height_mm": 55}
    ]"#;
    let from_csv = fresh_pool().await;
    let from_json = fresh_pool().await;

    let csv_report = load_file(
        &from_csv,
        LoadKind::Catalog,
        &write("catalog.csv", CATALOG_CSV),
        ACTOR,
    )
    .await
    .unwrap();
    let json_report = load_file(
        &from_json,
        LoadKind::Catalog,
        &write("catalog.json", json),
        ACTOR,
    )
    .await
    .unwrap();

    assert_eq!(csv_report, json_report);
    assert_eq!(
        (csv_report.rows, csv_report.inserted, csv_report.updated),
        (3, 3, 0)
    );
    let loaded = products(&from_csv).await;
    assert_eq!(loaded.len(), 3);
    assert_eq!(loaded, products(&from_json).await);
    assert_eq!(
        loaded[0],
        (
            "SKU-0001".into(),
            "Ceramic mug 350 ml".into(),
            340,
            120,
            90,
            100
        )
    );
    let audit: (String, String, String, String, serde_json::Value) =
        sqlx::query_as("SELECT actor, action, entity, entity_id, detail FROM audit_log")
            .fetch_one(&from_json)
            .await
            .unwrap();
    assert_eq!(
        (
            audit.0.as_str(),
            audit.1.as_str(),
            audit.2.as_str(),
            audit.3.as_str()
        ),
        (ACTOR, "catalog.load", "file", "catalog.json")
    );
    assert_eq!(audit.4["rows"], 3);
    assert_eq!(audit.4["inserted"], 3);
}

#[tokio::test]
async fn reloading_a_catalog_updates_only_the_products_that_changed() {
    let pool = fresh_pool().await;
    base(&pool).await;
    let changed = CATALOG_CSV.replace("Cotton tote bag,120", "Cotton tote bag,125")
        + "SKU-0004,Sticker pack,40,150,100,5\n";

    let report = load_file(
        &pool,
        LoadKind::Catalog,
        &write("catalog.csv", &changed),
        ACTOR,
    )
    .await
    .unwrap();

    assert_eq!((report.rows, report.inserted, report.updated), (4, 1, 1));
    assert_eq!(products(&pool).await[1].2, 125);
}

#[tokio::test]
async fn a_file_with_three_bad_rows_reports_all_three_by_line_and_writes_nothing() {
    let pool = fresh_pool().await;
    let csv = "\
sku,name,weight_g,length_mm,width_mm,height_mm
SKU-0001,Ceramic mug 350 ml,340,120,90,100
SKU 0002,Cotton tote bag,120,380,350,10

SKU-0003,Cast iron skillet 26 cm,-2450,450,270,55
SKU-0004,Sticker pack,40,150,100,5
SKU-0005,,95,160,90,20
";
    let path = write("catalog.csv", csv);

    let errors = row_errors(load_file(&pool, LoadKind::Catalog, &path, ACTOR).await);

    let found: Vec<(Location, Option<&str>)> =
        errors.iter().map(|e| (e.location, e.column)).collect();
    assert_eq!(
        found,
        [
            (Location::Line(3), Some("sku")),
            (Location::Line(5), Some("weight_g")),
            (Location::Line(7), Some("name")),
        ]
    );
    let message = LoadError::Rows(errors).to_string();
    assert!(
        message.starts_with("3 invalid rows, nothing was loaded:\n"),
        "{message}"
    );
    assert!(
        message.contains("\nline 5, column weight_g: must be a whole number from 1"),
        "{message}"
    );
    assert_eq!(message.lines().count(), 4, "{message}");
    assert!(products(&pool).await.is_empty());
    assert_eq!(count(&pool, "SELECT count(*) FROM audit_log").await, 0);
    // The same file, parsed without a database, reports the same rows.
    assert_eq!(row_errors(parse_file(LoadKind::Catalog, &path)).len(), 3);
}

#[tokio::test]
async fn a_duplicate_sku_in_a_catalog_file_is_reported_where_it_repeats() {
    let pool = fresh_pool().await;
    let csv = format!("{CATALOG_CSV}SKU-0002,Cotton tote bag large,150,420,380,10\n");

    let errors =
        row_errors(load_file(&pool, LoadKind::Catalog, &write("catalog.csv", &csv), ACTOR).await);

    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].location, Location::Line(5));
    assert_eq!(errors[0].column, Some("sku"));
    assert_eq!(
        errors[0].reason,
        "duplicate SKU SKU-0002, already on line 3"
    );
    assert!(products(&pool).await.is_empty());
}

#[tokio::test]
async fn a_file_missing_a_column_or_of_another_type_is_a_format_error() {
    let missing = write(
        "catalog.csv",
        "sku,name,weight_g,length_mm,width_mm\nSKU-1,Mug,1,1,1\n",
    );
    let wrong = write("catalog.txt", CATALOG_CSV);

    let missing = parse_file(LoadKind::Catalog, &missing).unwrap_err();
    let wrong = parse_file(LoadKind::Catalog, &wrong).unwrap_err();

    assert!(matches!(missing, LoadError::Format(_)), "{missing:?}");
    assert!(
        missing.to_string().contains("missing column height_mm"),
        "{missing}"
    );
    assert!(matches!(wrong, LoadError::Format(_)), "{wrong:?}");
    assert!(wrong.to_string().contains(".csv or .json"), "{wrong}");
}

#[tokio::test]
async fn warehouses_load_with_their_coordinates_and_priorities() {
    let pool = fresh_pool().await;

    let report = load_file(
        &pool,
        LoadKind::Warehouses,
        &write("warehouses.csv", WAREHOUSES_CSV),
        ACTOR,
    )
    .await
    .unwrap();

    assert_eq!((report.rows, report.inserted), (2, 2));
    let rows: Vec<(String, String, String, f64, f64, i32)> =
        sqlx::query_as("SELECT code, city, country, latitude, longitude, priority FROM warehouses ORDER BY priority")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            (
                "CMH".into(),
                "Columbus".into(),
                "US".into(),
                39.9012,
                -82.9537,
                1
            ),
            (
                "RNO".into(),
                "Reno".into(),
                "US".into(),
                39.4965,
                -119.758,
                3
            ),
        ]
    );
}

#[tokio::test]
async fn warehouses_out_of_range_are_reported_per_column() {
    let csv = "\
code,name,address1,city,province,zip,country,latitude,longitude,priority
CMH,Columbus,4200 Alum Creek Dr,Columbus,OH,43207,USA,95,-82.9,1
";
    let errors = row_errors(parse_file(
        LoadKind::Warehouses,
        &write("warehouses.csv", csv),
    ));

    let columns: Vec<Option<&str>> = errors.iter().map(|e| e.column).collect();
    assert_eq!(columns, [Some("country"), Some("latitude")]);
}

#[tokio::test]
async fn stock_for_an_unknown_warehouse_is_a_row_error_and_nothing_is_set() {
    let pool = fresh_pool().await;
    base(&pool).await;
    let csv = "sku,warehouse,quantity\nSKU-0001,CMH,10\nSKU-0001,ATL,5\nSKU-0002,RNO,7\n";

    let errors =
        row_errors(load_file(&pool, LoadKind::Stock, &write("stock.csv", csv), ACTOR).await);

    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].location, Location::Line(3));
    assert_eq!(errors[0].column, Some("warehouse"));
    assert!(
        errors[0].reason.contains("unknown warehouse ATL"),
        "{}",
        errors[0]
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM stock").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM stock_loads").await, 0);
}

#[tokio::test]
async fn parse_errors_and_database_errors_of_one_file_are_reported_together() {
    let pool = fresh_pool().await;
    base(&pool).await;
    let csv = "sku,warehouse,quantity\nSKU-9999,CMH,10\nSKU-0001,CMH,-5\n";

    let errors =
        row_errors(load_file(&pool, LoadKind::Stock, &write("stock.csv", csv), ACTOR).await);

    let found: Vec<(Location, Option<&str>)> =
        errors.iter().map(|e| (e.location, e.column)).collect();
    assert_eq!(
        found,
        [
            (Location::Line(2), Some("sku")),
            (Location::Line(3), Some("quantity"))
        ]
    );
}

#[tokio::test]
async fn stock_below_what_is_reserved_is_refused_naming_the_reserved_amount() {
    let pool = fresh_pool().await;
    base(&pool).await;
    load_file(
        &pool,
        LoadKind::Stock,
        &write(
            "stock.csv",
            "sku,warehouse,quantity\nSKU-0001,CMH,10\nSKU-0002,CMH,4\n",
        ),
        ACTOR,
    )
    .await
    .unwrap();
    sqlx::query("UPDATE stock SET reserved = 6 WHERE sku = 'SKU-0001' AND warehouse = 'CMH'")
        .execute(&pool)
        .await
        .unwrap();

    let lower = "sku,warehouse,quantity\nSKU-0002,CMH,20\nSKU-0001,CMH,5\n";
    let errors =
        row_errors(load_file(&pool, LoadKind::Stock, &write("stock.csv", lower), ACTOR).await);

    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].location, Location::Line(3));
    assert_eq!(errors[0].column, Some("quantity"));
    assert!(
        errors[0].reason.contains("6 units are reserved"),
        "{}",
        errors[0]
    );
    assert_eq!(on_hand(&pool, "SKU-0001", "CMH").await, Some((10, 6)));
    assert_eq!(
        on_hand(&pool, "SKU-0002", "CMH").await,
        Some((4, 0)),
        "the valid row was not written either"
    );

    // Down to exactly what is reserved is allowed.
    let exact = "sku,warehouse,quantity\nSKU-0001,CMH,6\n";
    let report = load_file(&pool, LoadKind::Stock, &write("stock.csv", exact), ACTOR)
        .await
        .unwrap();
    assert_eq!((report.inserted, report.updated), (0, 1));
    assert_eq!(on_hand(&pool, "SKU-0001", "CMH").await, Some((6, 6)));
}

#[tokio::test]
async fn restock_adds_to_on_hand_and_is_atomic() {
    let pool = fresh_pool().await;
    base(&pool).await;
    load_file(
        &pool,
        LoadKind::Stock,
        &write("stock.csv", "sku,warehouse,quantity\nSKU-0001,CMH,10\n"),
        ACTOR,
    )
    .await
    .unwrap();

    // One bad row (an unknown SKU) and nothing is added anywhere.
    let bad = "sku,warehouse,quantity\nSKU-0001,CMH,5\nSKU-0404,CMH,5\n";
    let errors =
        row_errors(load_file(&pool, LoadKind::Restock, &write("restock.csv", bad), ACTOR).await);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (errors[0].location, errors[0].column),
        (Location::Line(3), Some("sku"))
    );
    assert_eq!(on_hand(&pool, "SKU-0001", "CMH").await, Some((10, 0)));

    // A restock of zero is not a restock.
    let zero = "sku,warehouse,quantity\nSKU-0001,CMH,0\n";
    let errors =
        row_errors(load_file(&pool, LoadKind::Restock, &write("restock.csv", zero), ACTOR).await);
    assert_eq!(errors[0].column, Some("quantity"));

    let good = r#"[{"sku": "SKU-0001", "warehouse": "CMH", "quantity": 5},
                   {"sku": "SKU-0002", "warehouse": "RNO", "quantity": 3}]"#;
    let report = load_file(
        &pool,
        LoadKind::Restock,
        &write("restock.json", good),
        ACTOR,
    )
    .await
    .unwrap();

    assert_eq!((report.rows, report.inserted, report.updated), (2, 1, 1));
    assert_eq!(report.orders_resumed, 0);
    assert_eq!(on_hand(&pool, "SKU-0001", "CMH").await, Some((15, 0)));
    assert_eq!(on_hand(&pool, "SKU-0002", "RNO").await, Some((3, 0)));
    let load: (i64, String, String, i32) =
        sqlx::query_as("SELECT id, kind, source, rows FROM stock_loads WHERE kind = 'restock'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(Some(load.0), report.stock_load_id);
    assert_eq!(
        (load.1.as_str(), load.2.as_str(), load.3),
        ("restock", "restock.json", 2)
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM audit_log WHERE action = 'restock.load'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn the_example_files_load_and_leave_limited_stock_everywhere() {
    let pool = fresh_pool().await;

    for (kind, name) in [
        (LoadKind::Catalog, "catalog.csv"),
        (LoadKind::Warehouses, "warehouses.csv"),
        (LoadKind::Stock, "stock.csv"),
    ] {
        load_file(&pool, kind, &examples(name), ACTOR)
            .await
            .unwrap();
    }

    assert_eq!(count(&pool, "SELECT count(*) FROM products").await, 24);
    assert!(count(&pool, "SELECT count(*) FROM products WHERE weight_g < 100").await >= 3);
    assert!(
        count(
            &pool,
            "SELECT count(*) FROM products WHERE weight_g BETWEEN 1200 AND 2500"
        )
        .await
            >= 3
    );
    assert_eq!(
        count(&pool, "SELECT count(DISTINCT priority) FROM warehouses").await,
        3
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM stock").await, 24 * 3);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM stock WHERE on_hand > 40").await,
        0
    );
    assert!(count(&pool, "SELECT count(*) FROM stock WHERE on_hand = 0").await > 0);
    let total = count(&pool, "SELECT sum(on_hand)::int8 FROM stock").await;
    assert!((900..=1100).contains(&total), "total stock {total}");

    let report = load_file(&pool, LoadKind::Restock, &examples("restock.csv"), ACTOR)
        .await
        .unwrap();
    let restocked = count(&pool, "SELECT sum(on_hand)::int8 FROM stock").await - total;
    assert!((200..=500).contains(&restocked), "restocked {restocked}");
    assert_eq!(report.inserted, 0);
}
