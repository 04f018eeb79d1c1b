//! The dead-letter review API on the worker's ops port, and its page.
//!
//! | route | does |
//! |---|---|
//! | `GET /dlq?queue=&channel=&error_class=&since=&state=&limit=` | list |
//! | `GET /dlq/{id}` | one dead letter, its payload and every failed run |
//! | `POST /dlq/{id}/retry` `{"reason": ".."}` | retry one |
//! | `POST /dlq/retry` `{"ids": [..]}` or `{"all": true, "queue": .., ..}` | retry several, or all matching |
//! | `POST /dlq/{id}/discard` `{"reason": ".."}` | discard one (a reason is required) |
//! | `GET /dlq/page` | the review page, which calls the routes above |
//!
//! Every route but the page wants `Authorization: Bearer <[ops] token>`;
//! a missing or wrong token is `401`. With no token configured, the routes
//! that change anything answer `403` (they are off) and the others answer
//! anyone. Who acted is taken from the `X-Conveyor-Actor` header and goes,
//! with the reason, into the audit log.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::dead_letter::{self, Filter};
use crate::ops_http::OpsState;

type Shared = State<Arc<OpsState>>;

pub fn routes() -> Router<Arc<OpsState>> {
    Router::new()
        .route("/dlq", get(list))
        .route("/dlq/page", get(page))
        .route("/dlq/retry", post(retry_many))
        .route("/dlq/{id}", get(show))
        .route("/dlq/{id}/retry", post(retry_one))
        .route("/dlq/{id}/discard", post(discard_one))
}

/// An error answer: a status and a JSON body `{"error": ".."}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"conveyor-ops\""),
            );
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "dead-letter API: database error");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database could not be reached; try again".into(),
        )
    }
}

/// Checks the bearer token; `mutating` routes are off without one.
fn authorize(state: &OpsState, headers: &HeaderMap, mutating: bool) -> Result<(), ApiError> {
    let Some(token) = &state.token else {
        return if mutating {
            Err(ApiError(
                StatusCode::FORBIDDEN,
                "dead-letter changes over HTTP are off: no ops token is configured ([ops] token)"
                    .into(),
            ))
        } else {
            Ok(())
        };
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if same(given.as_bytes(), token.expose_secret().as_bytes()) => Ok(()),
        Some(_) => Err(ApiError(StatusCode::UNAUTHORIZED, "wrong token".into())),
        None => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required".into(),
        )),
    }
}

/// Compares in time that depends on the length only, not on where the
/// first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who acted, for the audit log: `http:<X-Conveyor-Actor>`.
fn actor(headers: &HeaderMap) -> String {
    let who = headers
        .get("x-conveyor-actor")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or("anonymous");
    format!("http:{}", who.chars().take(100).collect::<String>())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ListQuery {
    #[serde(flatten)]
    filter: Filter,
    limit: Option<i64>,
}

async fn list(
    State(state): Shared,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, false)?;
    q.filter
        .validate()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let letters = dead_letter::list(&state.pool, &q.filter, q.limit.unwrap_or(200)).await?;
    Ok(Json(letters).into_response())
}

async fn show(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, false)?;
    match dead_letter::show(&state.pool, id).await? {
        Some(detail) => Ok(Json(detail).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no dead letter {id}"),
        )),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Review {
    reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RetryMany {
    ids: Vec<i64>,
    all: bool,
    reason: Option<String>,
    #[serde(flatten)]
    filter: Filter,
}

fn outcome(outcome: dead_letter::Outcome) -> Response {
    Json(serde_json::json!({
        "done": outcome.done,
        "skipped": outcome.skipped.iter().map(|(id, why)| serde_json::json!({"id": id, "reason": why})).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// The answer for a review of one dead letter: 404 when there is none, 409
/// when it was already reviewed.
fn single(id: i64, done: dead_letter::Outcome) -> Result<Response, ApiError> {
    match done.skipped.first() {
        Some((_, why)) if why.starts_with("no such") => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("dead letter {id}: {why}"),
        )),
        Some((_, why)) => Err(ApiError(
            StatusCode::CONFLICT,
            format!("dead letter {id}: {why}"),
        )),
        None => Ok(outcome(done)),
    }
}

async fn retry_one(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Option<Json<Review>>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, true)?;
    let reason = body.and_then(|b| b.0.reason).unwrap_or_default();
    let done = dead_letter::retry(&state.pool, &[id], &actor(&headers), &reason).await?;
    single(id, done)
}

async fn retry_many(
    State(state): Shared,
    headers: HeaderMap,
    Json(body): Json<RetryMany>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, true)?;
    let reason = body.reason.unwrap_or_default();
    let who = actor(&headers);
    let done = match (body.all, body.ids.is_empty()) {
        (true, true) => {
            body.filter
                .validate()
                .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
            dead_letter::retry_matching(&state.pool, &body.filter, &who, &reason).await?
        }
        (false, false) => dead_letter::retry(&state.pool, &body.ids, &who, &reason).await?,
        _ => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "give either \"ids\" or \"all\": true (with optional filters)".into(),
            ));
        }
    };
    Ok(outcome(done))
}

async fn discard_one(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Option<Json<Review>>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, true)?;
    let reason = body.and_then(|b| b.0.reason).unwrap_or_default();
    let done = dead_letter::discard(&state.pool, &[id], &actor(&headers), &reason)
        .await
        .map_err(|e| match e {
            dead_letter::DiscardError::NoReason => {
                ApiError(StatusCode::BAD_REQUEST, "a discard needs a reason".into())
            }
            dead_letter::DiscardError::Database(e) => e.into(),
        })?;
    single(id, done)
}

async fn page() -> Html<&'static str> {
    Html(include_str!("dlq_page.html"))
}
