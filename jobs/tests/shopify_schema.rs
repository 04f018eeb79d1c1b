//! Every GraphQL document the Shopify adapter sends validates against the
//! real Admin API 2025-01 schema (`shared/api/shopify-admin-2025-01.graphql`).

mod common;

use std::sync::OnceLock;

use apollo_compiler::validation::Valid;
use apollo_compiler::{ExecutableDocument, Schema};
use conveyor_jobs::channel::shopify::ShopifyClient;

fn schema() -> &'static Valid<Schema> {
    static SCHEMA: OnceLock<Valid<Schema>> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let path = common::shared_api_dir().join("shopify-admin-2025-01.graphql");
        let sdl = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        Schema::parse_and_validate(sdl, &path)
            .unwrap_or_else(|e| panic!("the Shopify SDL does not validate:\n{}", e.errors))
    })
}

fn validate(name: &str, document: &str) -> Result<(), String> {
    ExecutableDocument::parse_and_validate(schema(), document, format!("{name}.graphql"))
        .map(|_| ())
        .map_err(|e| e.errors.to_string())
}

fn document(name: &str) -> &'static str {
    ShopifyClient::documents()
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no document named {name}"))
        .1
}

#[test]
fn every_document_the_shopify_client_sends_validates_against_the_2025_01_schema() {
    let documents = ShopifyClient::documents();
    assert_eq!(documents.len(), 5);
    for (name, text) in documents {
        if let Err(errors) = validate(name, text) {
            panic!("{name} does not validate against the Shopify schema:\n{errors}");
        }
        let parsed =
            ExecutableDocument::parse_and_validate(schema(), *text, "doc.graphql").unwrap();
        assert!(
            parsed.operations.get(Some(name)).is_ok(),
            "{name} is not the name of the operation in its document"
        );
    }
}

#[test]
fn the_documents_cover_the_orders_page_the_follow_ups_and_the_fulfillment() {
    let names: Vec<&str> = ShopifyClient::documents().iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "OrdersPage",
            "Order",
            "OrderFulfillmentOrders",
            "OrderFulfillments",
            "fulfillmentCreate"
        ]
    );
    assert!(
        document("OrderFulfillments").contains("query OrderFulfillments($id: ID!, $first: Int!)")
    );
    let page = document("OrdersPage");
    assert!(page.contains("query OrdersPage($first: Int!, $after: String, $query: String)"));
    assert!(page.contains("sortKey: UPDATED_AT"));
    assert!(document("fulfillmentCreate").contains("$fulfillment: FulfillmentInput!"));
}

#[test]
fn a_document_with_a_misspelt_field_fails_validation() {
    let misspelt = document("OrdersPage").replace("remainingQuantity", "remainingQuantiy");
    let errors = validate("misspelt", &misspelt).expect_err("a misspelt field must not validate");
    assert!(errors.contains("remainingQuantiy"), "{errors}");
}

#[test]
fn a_variable_of_the_wrong_type_fails_validation() {
    let wrong = document("OrdersPage").replace("$first: Int!", "$first: String!");
    assert!(validate("wrong-type", &wrong).is_err());
    let nullable = document("fulfillmentCreate").replace("FulfillmentInput!", "FulfillmentInput");
    assert!(
        validate("nullable", &nullable).is_err(),
        "a nullable variable for a non-null argument must not validate"
    );
}
