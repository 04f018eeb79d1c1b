//! Shopify Admin GraphQL channel adapter.
