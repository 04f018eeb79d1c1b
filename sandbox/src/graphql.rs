//! GraphQL machinery for the Shopify-style API, independent of orders: the schema
//! the sandbox serves, parsing and validating a request against it (with errors
//! shaped like Shopify's), Shopify's query cost model, and resolvers that project a
//! "full" JSON object onto whatever selection set the client sent.
//!
//! The schema is a strict subset of the real Admin API 2025-01 schema: every type,
//! field, argument and enum value below exists there with the same type (a test
//! checks this against the real SDL). Keeping a subset instead of loading the real
//! 2.8 MB SDL keeps start-up instant and makes "unknown field" mean "the sandbox
//! does not serve it", which is what a client author needs to hear.
//!
//! Execution is apollo-compiler's own engine: aliases, fragments, `__typename`,
//! variables and argument coercion behave as in any spec-compliant server. The
//! sandbox only supplies the data, as full JSON objects keyed by field name.

use std::borrow::Cow;
use std::cell::Cell;
#[cfg(test)]
use std::collections::HashMap;

use apollo_compiler::ast;
use apollo_compiler::executable::{self, Selection, SelectionSet};
use apollo_compiler::resolvers::{Execution, FieldError, ObjectValue, ResolveInfo, ResolvedValue};
use apollo_compiler::response::{ExecutionResponse, GraphQLError, JsonMap, JsonValue};
use apollo_compiler::schema::ExtendedType;
use apollo_compiler::validation::Valid;
use apollo_compiler::{ExecutableDocument, Node, Schema};
use base64::Engine as _;
use serde_json::{Value, json};

/// Largest `first`/`last` a connection accepts, as on Shopify.
pub const MAX_PAGE_SIZE: i64 = 250;

/// The schema served by the sandbox: a subset of Shopify Admin API 2025-01.
///
/// One deliberate difference: `QueryRoot.orders(sortKey:)` has no default here
/// (Shopify's is `PROCESSED_AT`) so the sandbox can tell "not given" apart and sort
/// by `UPDATED_AT` then; clients should pass `sortKey` explicitly.
pub const SCHEMA_SDL: &str = r#"
schema {
  query: QueryRoot
  mutation: Mutation
}

scalar DateTime
scalar Decimal
scalar UnsignedInt64
scalar URL

interface Node {
  id: ID!
}

interface DisplayableError {
  field: [String!]
  message: String!
}

enum CurrencyCode { CAD EUR GBP USD }
enum CountryCode { CA US }
enum OrderSortKeys {
  CREATED_AT CUSTOMER_NAME DESTINATION FINANCIAL_STATUS FULFILLMENT_STATUS ID
  ORDER_NUMBER PO_NUMBER PROCESSED_AT RELEVANCE TOTAL_ITEMS_QUANTITY TOTAL_PRICE UPDATED_AT
}
enum OrderDisplayFulfillmentStatus {
  FULFILLED IN_PROGRESS ON_HOLD OPEN PARTIALLY_FULFILLED PENDING_FULFILLMENT
  REQUEST_DECLINED RESTOCKED SCHEDULED UNFULFILLED
}
enum OrderDisplayFinancialStatus {
  AUTHORIZED EXPIRED PAID PARTIALLY_PAID PARTIALLY_REFUNDED PENDING REFUNDED VOIDED
}
enum OrderCancelReason { CUSTOMER DECLINED FRAUD INVENTORY OTHER STAFF }
enum FulfillmentOrderStatus { CANCELLED CLOSED INCOMPLETE IN_PROGRESS ON_HOLD OPEN SCHEDULED }
enum FulfillmentOrderRequestStatus {
  ACCEPTED CANCELLATION_ACCEPTED CANCELLATION_REJECTED CANCELLATION_REQUESTED
  CLOSED REJECTED SUBMITTED UNSUBMITTED
}
enum FulfillmentStatus { CANCELLED ERROR FAILURE OPEN PENDING SUCCESS }
enum FulfillmentDisplayStatus {
  ATTEMPTED_DELIVERY CANCELED CONFIRMED DELAYED DELIVERED FAILURE FULFILLED IN_TRANSIT
  LABEL_PRINTED LABEL_PURCHASED LABEL_VOIDED MARKED_AS_FULFILLED NOT_DELIVERED
  OUT_FOR_DELIVERY PICKED_UP READY_FOR_PICKUP SUBMITTED
}

type QueryRoot {
  order(id: ID!): Order
  orders(
    after: String
    before: String
    first: Int
    last: Int
    query: String
    reverse: Boolean = false
    savedSearchId: ID
    sortKey: OrderSortKeys
  ): OrderConnection!
  fulfillmentOrder(id: ID!): FulfillmentOrder
  fulfillment(id: ID!): Fulfillment
  node(id: ID!): Node
  nodes(ids: [ID!]!): [Node]!
}

type Mutation {
  fulfillmentCreate(fulfillment: FulfillmentInput!, message: String): FulfillmentCreatePayload
}

type PageInfo {
  endCursor: String
  hasNextPage: Boolean!
  hasPreviousPage: Boolean!
  startCursor: String
}

type MoneyV2 {
  amount: Decimal!
  currencyCode: CurrencyCode!
}

type MoneyBag {
  presentmentMoney: MoneyV2!
  shopMoney: MoneyV2!
}

type OrderConnection {
  edges: [OrderEdge!]!
  nodes: [Order!]!
  pageInfo: PageInfo!
}

type OrderEdge {
  cursor: String!
  node: Order!
}

type Order implements Node {
  id: ID!
  legacyResourceId: UnsignedInt64!
  name: String!
  email: String
  phone: String
  createdAt: DateTime!
  updatedAt: DateTime!
  processedAt: DateTime!
  cancelledAt: DateTime
  cancelReason: OrderCancelReason
  closed: Boolean!
  closedAt: DateTime
  confirmed: Boolean!
  test: Boolean!
  currencyCode: CurrencyCode!
  displayFinancialStatus: OrderDisplayFinancialStatus
  displayFulfillmentStatus: OrderDisplayFulfillmentStatus!
  note: String
  tags: [String!]!
  sourceName: String
  subtotalLineItemsQuantity: Int!
  currentSubtotalLineItemsQuantity: Int!
  subtotalPriceSet: MoneyBag
  totalShippingPriceSet: MoneyBag!
  totalPriceSet: MoneyBag!
  currentTotalPriceSet: MoneyBag!
  shippingAddress: MailingAddress
  shippingLine: ShippingLine
  shippingLines(
    after: String
    before: String
    first: Int
    includeRemovals: Boolean = false
    last: Int
    reverse: Boolean = false
  ): ShippingLineConnection!
  lineItems(
    after: String
    before: String
    first: Int
    last: Int
    reverse: Boolean = false
  ): LineItemConnection!
  fulfillmentOrders(
    after: String
    before: String
    displayable: Boolean = false
    first: Int
    last: Int
    query: String
    reverse: Boolean = false
  ): FulfillmentOrderConnection!
  fulfillments(first: Int): [Fulfillment!]!
}

type MailingAddress implements Node {
  id: ID!
  name: String
  firstName: String
  lastName: String
  company: String
  address1: String
  address2: String
  city: String
  province: String
  provinceCode: String
  zip: String
  country: String
  countryCodeV2: CountryCode
  phone: String
  latitude: Float
  longitude: Float
  coordinatesValidated: Boolean!
  formattedArea: String
}

type ShippingLineConnection {
  edges: [ShippingLineEdge!]!
  nodes: [ShippingLine!]!
  pageInfo: PageInfo!
}

type ShippingLineEdge {
  cursor: String!
  node: ShippingLine!
}

type ShippingLine {
  id: ID
  title: String!
  code: String
  source: String
  carrierIdentifier: String
  custom: Boolean!
  isRemoved: Boolean!
  originalPriceSet: MoneyBag!
  discountedPriceSet: MoneyBag!
}

type LineItemConnection {
  edges: [LineItemEdge!]!
  nodes: [LineItem!]!
  pageInfo: PageInfo!
}

type LineItemEdge {
  cursor: String!
  node: LineItem!
}

type LineItem implements Node {
  id: ID!
  sku: String
  name: String!
  title: String!
  variantTitle: String
  vendor: String
  quantity: Int!
  currentQuantity: Int!
  unfulfilledQuantity: Int!
  fulfillableQuantity: Int! @deprecated(reason: "Use `FulfillmentOrderLineItem.remainingQuantity` instead.")
  nonFulfillableQuantity: Int!
  refundableQuantity: Int!
  requiresShipping: Boolean!
  isGiftCard: Boolean!
  taxable: Boolean!
  originalUnitPriceSet: MoneyBag!
  originalTotalSet: MoneyBag!
}

type FulfillmentOrderConnection {
  edges: [FulfillmentOrderEdge!]!
  nodes: [FulfillmentOrder!]!
  pageInfo: PageInfo!
}

type FulfillmentOrderEdge {
  cursor: String!
  node: FulfillmentOrder!
}

type FulfillmentOrder implements Node {
  id: ID!
  status: FulfillmentOrderStatus!
  requestStatus: FulfillmentOrderRequestStatus!
  createdAt: DateTime!
  updatedAt: DateTime!
  fulfillAt: DateTime
  orderId: ID!
  orderName: String!
  orderProcessedAt: DateTime!
  lineItems(
    after: String
    before: String
    first: Int
    last: Int
    reverse: Boolean = false
  ): FulfillmentOrderLineItemConnection!
}

type FulfillmentOrderLineItemConnection {
  edges: [FulfillmentOrderLineItemEdge!]!
  nodes: [FulfillmentOrderLineItem!]!
  pageInfo: PageInfo!
}

type FulfillmentOrderLineItemEdge {
  cursor: String!
  node: FulfillmentOrderLineItem!
}

type FulfillmentOrderLineItem implements Node {
  id: ID!
  totalQuantity: Int!
  remainingQuantity: Int!
  sku: String
  productTitle: String!
  variantTitle: String
  requiresShipping: Boolean!
  lineItem: LineItem!
}

type Fulfillment implements Node {
  id: ID!
  legacyResourceId: UnsignedInt64!
  name: String!
  status: FulfillmentStatus!
  displayStatus: FulfillmentDisplayStatus
  createdAt: DateTime!
  updatedAt: DateTime!
  deliveredAt: DateTime
  inTransitAt: DateTime
  estimatedDeliveryAt: DateTime
  requiresShipping: Boolean!
  totalQuantity: Int!
  trackingInfo(first: Int): [FulfillmentTrackingInfo!]!
}

type FulfillmentTrackingInfo {
  company: String
  number: String
  url: URL
}

type UserError implements DisplayableError {
  field: [String!]
  message: String!
}

type FulfillmentCreatePayload {
  fulfillment: Fulfillment
  userErrors: [UserError!]!
}

input FulfillmentInput {
  lineItemsByFulfillmentOrder: [FulfillmentOrderLineItemsInput!]!
  notifyCustomer: Boolean = false
  originAddress: FulfillmentOriginAddressInput
  trackingInfo: FulfillmentTrackingInput
}

input FulfillmentOrderLineItemsInput {
  fulfillmentOrderId: ID!
  fulfillmentOrderLineItems: [FulfillmentOrderLineItemInput!]
}

input FulfillmentOrderLineItemInput {
  id: ID!
  quantity: Int!
}

input FulfillmentTrackingInput {
  company: String
  number: String
  numbers: [String!]
  url: URL
  urls: [URL!]
}

input FulfillmentOriginAddressInput {
  address1: String
  address2: String
  city: String
  countryCode: String!
  provinceCode: String
  zip: String
}
"#;

/// Cost of one mutation root field in Shopify's model.
const MUTATION_COST: u32 = 10;

/// The body of a GraphQL POST.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphQlRequest {
    pub query: String,
    #[serde(default)]
    pub variables: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub operation_name: Option<String>,
}

/// A request that parsed, validated, and passed Shopify's argument checks; ready
/// to execute.
pub struct Prepared {
    document: Valid<ExecutableDocument>,
    operation_name: Option<String>,
    variables: Valid<JsonMap>,
    /// Shopify's `requestedQueryCost`, computed from the document before running it.
    pub requested_cost: u32,
    pub is_mutation: bool,
    /// Names (not aliases) of the root fields, for request counters.
    pub root_fields: Vec<String>,
}

/// The validated schema, parsed once at start-up.
pub struct GraphQl {
    schema: Valid<Schema>,
}

impl GraphQl {
    pub fn new() -> anyhow::Result<Self> {
        let schema = Schema::parse_and_validate(SCHEMA_SDL, "sandbox-shopify-2025-01.graphql")
            .map_err(|e| anyhow::anyhow!("the sandbox's own schema is invalid: {}", e.errors))?;
        Ok(Self { schema })
    }

    #[cfg(test)]
    pub fn schema_for_tests(&self) -> &Valid<Schema> {
        &self.schema
    }

    /// Parses and validates a request. `Err` holds GraphQL `errors` entries to send
    /// back without `data`, as Shopify does for documents it refuses to run.
    pub fn prepare(&self, request: &GraphQlRequest) -> Result<Prepared, Vec<Value>> {
        let ast = ast::Document::parse(request.query.as_str(), "query.graphql")
            .map_err(|with| diagnostics_to_json(&with.errors))?;
        let undefined = undefined_fields(&self.schema, &ast);
        if !undefined.is_empty() {
            return Err(undefined);
        }
        let document = ast
            .to_executable_validate(&self.schema)
            .map_err(|with| diagnostics_to_json(&with.errors))?;
        let operation = document
            .operations
            .get(request.operation_name.as_deref())
            .map_err(|e| vec![to_value(&e.to_graphql_error(&document.sources))])?;
        let raw_variables =
            JsonValue::from(Value::Object(request.variables.clone().unwrap_or_default()));
        let empty = JsonMap::new();
        let raw_variables = raw_variables.as_object().unwrap_or(&empty);
        let variables = apollo_compiler::request::coerce_variable_values(
            &self.schema,
            operation,
            raw_variables,
        )
        .map_err(|e| vec![to_value(&e.to_graphql_error(&document.sources))])?;

        let is_mutation = operation.is_mutation();
        let root_fields = operation
            .root_fields(&document)
            .map(|f| f.name.to_string())
            .collect::<Vec<_>>();
        let mut walk = CostWalk {
            schema: &self.schema,
            document: &document,
            variables: &variables,
            errors: Vec::new(),
        };
        let requested_cost = if is_mutation {
            MUTATION_COST * root_fields.len() as u32
        } else {
            walk.selection_set(&operation.selection_set, &mut Vec::new())
        };
        if !walk.errors.is_empty() {
            return Err(walk.errors);
        }
        Ok(Prepared {
            operation_name: request.operation_name.clone(),
            document,
            variables,
            requested_cost,
            is_mutation,
            root_fields,
        })
    }

    /// Runs a prepared request against a root object. `Err` is a request error
    /// (an `errors` entry; there is no `data` then).
    pub fn execute(
        &self,
        prepared: &Prepared,
        root: &dyn ObjectValue,
    ) -> Result<ExecutionResponse, Value> {
        Execution::new(&self.schema, &prepared.document)
            .operation_name(prepared.operation_name.as_deref())
            .map(|e| e.coerced_variable_values(&prepared.variables))
            .and_then(|e| e.execute_sync(root))
            .map_err(|e| to_value(&e.to_graphql_error(&prepared.document.sources)))
    }
}

/// A response body that keeps `data` in selection order (apollo's maps are
/// ordered; going through `serde_json::Value` would sort the keys).
#[derive(serde::Serialize)]
pub struct ResponseBody<'a> {
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub errors: &'a [GraphQLError],
    pub data: Option<&'a JsonMap>,
    pub extensions: Value,
}

fn to_value(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn diagnostics_to_json(list: &apollo_compiler::validation::DiagnosticList) -> Vec<Value> {
    list.iter().map(|d| to_value(&d.to_json())).collect()
}

/// Shopify (graphql-ruby) reports a field missing from the schema as
/// `Field 'x' doesn't exist on type 'T'` with code `undefinedField`; clients match
/// on that code, so the sandbox reports it the same way before generic validation.
fn undefined_fields(schema: &Schema, document: &ast::Document) -> Vec<Value> {
    let mut errors = Vec::new();
    for definition in &document.definitions {
        match definition {
            ast::Definition::OperationDefinition(op) => {
                let Some(root) = schema.root_operation(op.operation_type) else {
                    continue;
                };
                let label = match &op.name {
                    Some(name) => format!("{} {name}", op.operation_type.name()),
                    None => op.operation_type.name().to_owned(),
                };
                walk_ast(
                    schema,
                    document,
                    root,
                    &op.selection_set,
                    &mut vec![label],
                    &mut errors,
                );
            }
            ast::Definition::FragmentDefinition(fragment) => {
                let mut path = vec![format!("fragment {}", fragment.name)];
                let ty = fragment.type_condition.as_str();
                walk_ast(
                    schema,
                    document,
                    ty,
                    &fragment.selection_set,
                    &mut path,
                    &mut errors,
                );
            }
            _ => {}
        }
    }
    errors
}

fn walk_ast(
    schema: &Schema,
    document: &ast::Document,
    ty: &str,
    selections: &[ast::Selection],
    path: &mut Vec<String>,
    errors: &mut Vec<Value>,
) {
    for selection in selections {
        match selection {
            ast::Selection::Field(field) => {
                path.push(field.response_name().to_string());
                match schema.type_field(ty, &field.name) {
                    Ok(definition) => {
                        let inner = definition.ty.inner_named_type().as_str();
                        walk_ast(schema, document, inner, &field.selection_set, path, errors);
                    }
                    // Unknown parent types are reported by regular validation.
                    Err(_) if schema.types.contains_key(ty) => {
                        let locations: Vec<Value> = field
                            .location()
                            .and_then(|l| l.line_column(&document.sources))
                            .map(|lc| json!({ "line": lc.line, "column": lc.column }))
                            .into_iter()
                            .collect();
                        errors.push(json!({
                            "message": format!("Field '{}' doesn't exist on type '{ty}'", field.name),
                            "locations": locations,
                            "path": path.clone(),
                            "extensions": {
                                "code": "undefinedField",
                                "typeName": ty,
                                "fieldName": field.name.as_str(),
                            },
                        }));
                    }
                    Err(_) => {}
                }
                path.pop();
            }
            ast::Selection::InlineFragment(inline) => {
                let condition = inline.type_condition.as_ref().map(|n| n.as_str());
                path.push(match condition {
                    Some(t) => format!("... on {t}"),
                    None => "...".to_owned(),
                });
                let inner = condition.unwrap_or(ty);
                walk_ast(schema, document, inner, &inline.selection_set, path, errors);
                path.pop();
            }
            // Fragment definitions are walked on their own.
            ast::Selection::FragmentSpread(_) => {}
        }
    }
}

/// Shopify's static query cost, and its connection argument rules, in one walk:
/// objects cost 1, scalars and enums 0, a connection 2 plus its page size times the
/// cost of one node (`nodes` or `edges.node`, whichever costs more), `pageInfo` 0,
/// a mutation field 10. A connection must have exactly one of `first`/`last`, at
/// most 250.
struct CostWalk<'a> {
    schema: &'a Schema,
    document: &'a ExecutableDocument,
    variables: &'a JsonMap,
    errors: Vec<Value>,
}

impl CostWalk<'_> {
    fn selection_set(&mut self, set: &SelectionSet, path: &mut Vec<String>) -> u32 {
        let mut cost = 0u32;
        for field in flatten_fields(self.document, set) {
            cost = cost.saturating_add(self.field(field, path));
        }
        cost
    }

    fn field(&mut self, field: &Node<executable::Field>, path: &mut Vec<String>) -> u32 {
        let ty = field.ty().inner_named_type().as_str();
        let composite = matches!(
            self.schema.types.get(ty),
            Some(ExtendedType::Object(_) | ExtendedType::Interface(_) | ExtendedType::Union(_))
        );
        if !composite || ty == "PageInfo" {
            return 0;
        }
        path.push(field.response_key().to_string());
        let cost = if is_connection(ty) {
            let size = self.page_size(field, path);
            let node = self.node_cost(&field.selection_set, path);
            2u32.saturating_add(size.saturating_mul(node))
        } else {
            let one = 1u32.saturating_add(self.selection_set(&field.selection_set, path));
            let count = if field.ty().is_list() {
                self.int_arg(field, "first")
                    .map_or(1, |n| n.clamp(1, MAX_PAGE_SIZE) as u32)
            } else {
                1
            };
            one.saturating_mul(count)
        };
        path.pop();
        cost
    }

    fn node_cost(&mut self, connection: &SelectionSet, path: &mut Vec<String>) -> u32 {
        let mut best = 0;
        for field in flatten_fields(self.document, connection) {
            match field.name.as_str() {
                "nodes" => best = best.max(1 + self.selection_set(&field.selection_set, path)),
                "edges" => {
                    for inner in flatten_fields(self.document, &field.selection_set) {
                        if inner.name == "node" {
                            best = best.max(1 + self.selection_set(&inner.selection_set, path));
                        }
                    }
                }
                _ => {}
            }
        }
        best
    }

    fn page_size(&mut self, field: &Node<executable::Field>, path: &[String]) -> u32 {
        let first = self.int_arg(field, "first");
        let last = self.int_arg(field, "last");
        let message = match (first, last) {
            (None, None) => "you must provide one of first or last".to_owned(),
            (Some(_), Some(_)) => "providing both first and last is not supported".to_owned(),
            (Some(n), None) | (None, Some(n)) if (0..=MAX_PAGE_SIZE).contains(&n) => {
                return n as u32;
            }
            (Some(n), None) | (None, Some(n)) => {
                let arg = if first.is_some() { "first" } else { "last" };
                format!(
                    "Argument '{arg}' on Field '{}' has an invalid value ({n}). \
                     Expected a page size from 0 to {MAX_PAGE_SIZE}.",
                    field.name
                )
            }
        };
        let locations: Vec<Value> = field
            .location()
            .and_then(|l| l.line_column(&self.document.sources))
            .map(|lc| json!({ "line": lc.line, "column": lc.column }))
            .into_iter()
            .collect();
        self.errors.push(json!({
            "message": message,
            "locations": locations,
            "path": path,
            "extensions": { "code": "BAD_REQUEST" },
        }));
        0
    }

    fn int_arg(&self, field: &executable::Field, name: &str) -> Option<i64> {
        let value = field.specified_argument_by_name(name)?;
        match value.as_ref() {
            ast::Value::Int(int) => int.try_to_i32().ok().map(i64::from),
            ast::Value::Variable(variable) => self.variables.get(variable.as_str())?.as_i64(),
            _ => None,
        }
    }
}

/// The fields of a selection set with fragments expanded (type conditions are
/// ignored: an upper bound is what a cost model wants).
fn flatten_fields<'a>(
    document: &'a ExecutableDocument,
    set: &'a SelectionSet,
) -> Vec<&'a Node<executable::Field>> {
    let mut out = Vec::new();
    let mut stack = vec![set];
    let mut seen_fragments = Vec::new();
    while let Some(set) = stack.pop() {
        for selection in set.selections.iter().rev() {
            match selection {
                Selection::Field(field) => out.push(field),
                Selection::InlineFragment(inline) => stack.push(&inline.selection_set),
                Selection::FragmentSpread(spread) => {
                    if seen_fragments.contains(&&spread.fragment_name) {
                        continue;
                    }
                    seen_fragments.push(&spread.fragment_name);
                    if let Some(fragment) = document.fragments.get(&spread.fragment_name) {
                        stack.push(&fragment.selection_set);
                    }
                }
            }
        }
    }
    out
}

fn is_connection(type_name: &str) -> bool {
    type_name.ends_with("Connection")
}

/// Counts Shopify's `actualQueryCost` while resolving: 1 per object, 2 per
/// connection, nothing for edges and `pageInfo`.
#[derive(Debug, Default)]
pub struct CostMeter(Cell<u32>);

impl CostMeter {
    pub fn add(&self, n: u32) {
        self.0.set(self.0.get().saturating_add(n));
    }

    pub fn total(&self) -> u32 {
        self.0.get()
    }
}

/// An object resolved from its full JSON representation (keys are GraphQL field
/// names). Scalars are copied, nested objects become `JsonObject`s, and arrays under
/// a `...Connection` field become paginated connections.
pub struct JsonObject<'a> {
    type_name: String,
    value: Cow<'a, Value>,
    meter: &'a CostMeter,
}

impl<'a> JsonObject<'a> {
    /// `type_name` is the GraphQL type; a `__typename` key in the value wins, which
    /// is how objects behind an interface (`node(id:)`) say what they are.
    pub fn new(type_name: &str, value: Cow<'a, Value>, meter: &'a CostMeter) -> Self {
        let type_name = value
            .get("__typename")
            .and_then(Value::as_str)
            .unwrap_or(type_name)
            .to_owned();
        if type_name != "PageInfo" && !type_name.ends_with("Edge") {
            meter.add(1);
        }
        Self {
            type_name,
            value,
            meter,
        }
    }
}

impl ObjectValue for JsonObject<'_> {
    fn type_name(&self) -> &str {
        &self.type_name
    }

    fn resolve_field<'b>(
        &'b self,
        info: &'b ResolveInfo<'b>,
    ) -> Result<ResolvedValue<'b>, FieldError> {
        match self.value.get(info.field_name()) {
            Some(raw) => resolve_json(info, raw, self.meter),
            None => Err(FieldError {
                message: format!(
                    "the sandbox has no value for {}.{}",
                    self.type_name,
                    info.field_name()
                ),
            }),
        }
    }
}

/// Resolves a field whose full value is `raw`, following the field's schema type.
pub fn resolve_json<'b>(
    info: &'b ResolveInfo<'b>,
    raw: &'b Value,
    meter: &'b CostMeter,
) -> Result<ResolvedValue<'b>, FieldError> {
    let schema = info.schema();
    let ty = &info.field_definition().ty;
    let named = ty.inner_named_type().as_str();
    let composite = matches!(
        schema.types.get(named),
        Some(ExtendedType::Object(_) | ExtendedType::Interface(_) | ExtendedType::Union(_))
    );
    if composite && is_connection(named) {
        let items = raw.as_array().map(Vec::as_slice).unwrap_or_default();
        let args = PageArgs::from_arguments(info.arguments())?;
        let connection = Connection::over_slice(schema, named, items, &args, meter)?;
        return Ok(ResolvedValue::object(connection));
    }
    // Plain lists with a `first` argument (`trackingInfo(first:)`, `fulfillments(first:)`).
    let limit = info
        .arguments()
        .get("first")
        .and_then(JsonValue::as_i64)
        .map_or(usize::MAX, |n| n.max(0) as usize);
    let shape = Shape {
        named,
        composite,
        meter,
    };
    Ok(shape.resolve(ty, raw, limit))
}

/// How to turn JSON into resolved values for one field's type.
struct Shape<'b> {
    named: &'b str,
    composite: bool,
    meter: &'b CostMeter,
}

impl<'b> Shape<'b> {
    fn resolve(
        &self,
        ty: &apollo_compiler::ast::Type,
        raw: &'b Value,
        limit: usize,
    ) -> ResolvedValue<'b> {
        match raw {
            Value::Null => ResolvedValue::null(),
            Value::Array(items) if ty.is_list() => {
                let item_type = ty.item_type();
                let resolved: Vec<ResolvedValue<'b>> = items
                    .iter()
                    .take(limit)
                    .map(|item| self.resolve(item_type, item, usize::MAX))
                    .collect();
                ResolvedValue::list(resolved)
            }
            _ if self.composite && !ty.is_list() => {
                ResolvedValue::object(JsonObject::new(self.named, Cow::Borrowed(raw), self.meter))
            }
            // Scalars, enums, and shapes the schema disagrees with (which the
            // executor then reports as a field error).
            _ => ResolvedValue::Leaf(JsonValue::from(raw.clone())),
        }
    }
}

/// Relay pagination arguments of a connection field.
#[derive(Debug, Clone, Default)]
pub struct PageArgs {
    pub first: Option<usize>,
    pub last: Option<usize>,
    pub after: Option<String>,
    pub before: Option<String>,
    pub reverse: bool,
}

impl PageArgs {
    pub fn from_arguments(args: &JsonMap) -> Result<Self, FieldError> {
        let size = |name: &str| -> Result<Option<usize>, FieldError> {
            match args.get(name).and_then(JsonValue::as_i64) {
                None => Ok(None),
                Some(n) if (0..=MAX_PAGE_SIZE).contains(&n) => Ok(Some(n as usize)),
                Some(n) => Err(FieldError {
                    message: format!("{name} must be between 0 and {MAX_PAGE_SIZE}, got {n}"),
                }),
            }
        };
        let text = |name: &str| {
            args.get(name)
                .and_then(JsonValue::as_str)
                .map(str::to_owned)
        };
        let page = Self {
            first: size("first")?,
            last: size("last")?,
            after: text("after"),
            before: text("before"),
            reverse: args
                .get("reverse")
                .and_then(JsonValue::as_bool)
                .unwrap_or(false),
        };
        if page.first.is_none() && page.last.is_none() {
            return Err(FieldError {
                message: "you must provide one of first or last".to_owned(),
            });
        }
        Ok(page)
    }

    /// The `[start, end)` window of a list of `len` items, given where the `after`
    /// and `before` cursors fall (`after_start`: index of the first item after the
    /// `after` cursor; `before_end`: index of the first item at or past `before`).
    pub fn window(&self, len: usize, after_start: usize, before_end: usize) -> (usize, usize) {
        let mut start = after_start.min(len);
        let mut end = before_end.clamp(start, len);
        if let Some(first) = self.first {
            end = end.min(start + first);
        }
        if let Some(last) = self.last {
            start = start.max(end.saturating_sub(last));
        }
        (start, end)
    }
}

/// Opaque cursors: base64 of a small JSON object, like Shopify's.
pub fn encode_cursor(value: &Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(value.to_string())
}

pub fn decode_cursor(cursor: &str) -> Option<Value> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(cursor.trim())
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A page of a connection, built either from a nested JSON array (index cursors)
/// or by the caller (the `orders` root field, which sorts and filters itself).
pub struct Connection<'a> {
    type_name: String,
    edge_type: String,
    node_type: String,
    items: Vec<(String, Cow<'a, Value>)>,
    page_info: Value,
    meter: &'a CostMeter,
}

impl<'a> Connection<'a> {
    /// A page already cut by the caller: `(cursor, node)` pairs in order.
    pub fn from_page(
        schema: &Schema,
        type_name: &str,
        items: Vec<(String, Cow<'a, Value>)>,
        has_previous_page: bool,
        has_next_page: bool,
        meter: &'a CostMeter,
    ) -> Self {
        let field_type = |field: &str| {
            schema
                .type_field(type_name, field)
                .map(|d| d.ty.inner_named_type().to_string())
                .unwrap_or_default()
        };
        let page_info = json!({
            "hasNextPage": has_next_page,
            "hasPreviousPage": has_previous_page,
            "startCursor": items.first().map(|(c, _)| c.clone()),
            "endCursor": items.last().map(|(c, _)| c.clone()),
        });
        meter.add(2);
        Self {
            type_name: type_name.to_owned(),
            edge_type: field_type("edges"),
            node_type: field_type("nodes"),
            items,
            page_info,
            meter,
        }
    }

    /// Paginates a nested array (line items of an order, ...). Cursors carry the
    /// item's position, which is stable because nested lists only ever grow.
    pub fn over_slice(
        schema: &Schema,
        type_name: &str,
        items: &'a [Value],
        args: &PageArgs,
        meter: &'a CostMeter,
    ) -> Result<Self, FieldError> {
        let mut indexed: Vec<(usize, &'a Value)> = items.iter().enumerate().collect();
        if args.reverse {
            indexed.reverse();
        }
        let position_of = |cursor: &str| -> Result<usize, FieldError> {
            let index = decode_cursor(cursor)
                .and_then(|v| v.get("last_value").and_then(Value::as_u64))
                .ok_or_else(|| FieldError {
                    message: format!("Invalid cursor: {cursor}"),
                })?;
            Ok(indexed
                .iter()
                .position(|(i, _)| *i as u64 == index)
                .unwrap_or(indexed.len()))
        };
        let after_start = match &args.after {
            Some(cursor) => position_of(cursor)?.saturating_add(1),
            None => 0,
        };
        let before_end = match &args.before {
            Some(cursor) => position_of(cursor)?,
            None => indexed.len(),
        };
        let (start, end) = args.window(indexed.len(), after_start, before_end);
        let page = indexed[start..end]
            .iter()
            .map(|(index, value)| {
                let id = value.get("id").cloned().unwrap_or(Value::Null);
                let cursor = encode_cursor(&json!({ "last_id": id, "last_value": index }));
                (cursor, Cow::Borrowed(*value))
            })
            .collect();
        Ok(Self::from_page(
            schema,
            type_name,
            page,
            start > 0,
            end < indexed.len(),
            meter,
        ))
    }
}

impl ObjectValue for Connection<'_> {
    fn type_name(&self) -> &str {
        &self.type_name
    }

    fn resolve_field<'b>(
        &'b self,
        info: &'b ResolveInfo<'b>,
    ) -> Result<ResolvedValue<'b>, FieldError> {
        match info.field_name() {
            "nodes" => Ok(ResolvedValue::list(self.items.iter().map(|(_, node)| {
                ResolvedValue::object(JsonObject::new(
                    &self.node_type,
                    Cow::Borrowed(node.as_ref()),
                    self.meter,
                ))
            }))),
            "edges" => Ok(ResolvedValue::list(self.items.iter().map(
                |(cursor, node)| {
                    ResolvedValue::object(Edge {
                        type_name: &self.edge_type,
                        node_type: &self.node_type,
                        cursor,
                        node: node.as_ref(),
                        meter: self.meter,
                    })
                },
            ))),
            "pageInfo" => Ok(ResolvedValue::object(JsonObject::new(
                "PageInfo",
                Cow::Borrowed(&self.page_info),
                self.meter,
            ))),
            _ => Err(self.unknown_field_error(info)),
        }
    }
}

struct Edge<'a> {
    type_name: &'a str,
    node_type: &'a str,
    cursor: &'a str,
    node: &'a Value,
    meter: &'a CostMeter,
}

impl ObjectValue for Edge<'_> {
    fn type_name(&self) -> &str {
        self.type_name
    }

    fn resolve_field<'b>(
        &'b self,
        info: &'b ResolveInfo<'b>,
    ) -> Result<ResolvedValue<'b>, FieldError> {
        match info.field_name() {
            "cursor" => Ok(ResolvedValue::leaf(self.cursor)),
            "node" => Ok(ResolvedValue::object(JsonObject::new(
                self.node_type,
                Cow::Borrowed(self.node),
                self.meter,
            ))),
            _ => Err(self.unknown_field_error(info)),
        }
    }
}

/// Every object type of the served schema with the fields it declares, so tests
/// can check that each full JSON object has every field.
#[cfg(test)]
pub fn object_fields(schema: &Schema) -> HashMap<String, Vec<String>> {
    schema
        .types
        .iter()
        .filter_map(|(name, ty)| match ty {
            ExtendedType::Object(object) => Some((
                name.to_string(),
                object.fields.keys().map(|f| f.to_string()).collect(),
            )),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: &str) -> GraphQlRequest {
        GraphQlRequest {
            query: query.to_owned(),
            variables: None,
            operation_name: None,
        }
    }

    #[test]
    fn the_sandbox_schema_is_valid() {
        GraphQl::new().unwrap();
    }

    #[test]
    fn an_unknown_field_is_reported_like_shopify_with_code_undefined_field() {
        let gql = GraphQl::new().unwrap();
        let errors = gql
            .prepare(&request("{ orders(first: 1) { nodes { id bogus } } }"))
            .err()
            .unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0]["message"],
            "Field 'bogus' doesn't exist on type 'Order'"
        );
        assert_eq!(errors[0]["extensions"]["code"], "undefinedField");
        assert_eq!(
            errors[0]["path"],
            json!(["query", "orders", "nodes", "bogus"])
        );
    }

    #[test]
    fn requested_cost_follows_shopifys_connection_rule() {
        let gql = GraphQl::new().unwrap();
        let prepared = gql
            .prepare(&request(
                "{ orders(first: 10) { pageInfo { hasNextPage } nodes { id shippingAddress { zip } \
                 lineItems(first: 5) { edges { node { sku } } } } } }",
            ))
            .ok()
            .unwrap();
        // 2 + 10 * (order 1 + address 1 + (2 + 5 * line 1))
        assert_eq!(prepared.requested_cost, 2 + 10 * (1 + 1 + (2 + 5)));
    }

    #[test]
    fn a_connection_without_first_or_last_or_with_more_than_250_is_refused() {
        let gql = GraphQl::new().unwrap();
        let missing = gql
            .prepare(&request("{ orders { nodes { id } } }"))
            .err()
            .unwrap();
        assert_eq!(
            missing[0]["message"],
            "you must provide one of first or last"
        );
        let mut too_many = request("query($n: Int) { orders(first: $n) { nodes { id } } }");
        too_many.variables = Some(json!({ "n": 251 }).as_object().unwrap().clone());
        let errors = gql.prepare(&too_many).err().unwrap();
        assert!(errors[0]["message"].as_str().unwrap().contains("251"));
    }

    #[test]
    fn page_windows_follow_relay_rules() {
        let args = PageArgs {
            first: Some(3),
            ..PageArgs::default()
        };
        assert_eq!(args.window(10, 0, 10), (0, 3));
        assert_eq!(args.window(10, 8, 10), (8, 10));
        let args = PageArgs {
            last: Some(2),
            ..PageArgs::default()
        };
        assert_eq!(args.window(10, 0, 5), (3, 5));
    }

    #[test]
    fn cursors_round_trip() {
        let value = json!({ "last_id": 7, "last_value": "x" });
        assert_eq!(decode_cursor(&encode_cursor(&value)), Some(value));
        assert_eq!(decode_cursor("not base64!"), None);
    }
}
