//! The HTTP endpoints every Conveyor process serves: `/metrics`
//! (Prometheus text), `/healthz` (the process is alive) and `/readyz`
//! (Postgres and Redis answer); and, on the worker, the dead-letter review
//! API and its page (`crate::dlq_http`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use secrecy::SecretString;
use sqlx::PgPool;

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct OpsState {
    pub pool: PgPool,
    pub redis_url: String,
    pub metrics: Metrics,
    /// Serve the dead-letter review API and page (the worker does).
    pub dlq: bool,
    /// The bearer token of the dead-letter API; `None` turns its mutating
    /// routes off.
    pub token: Option<SecretString>,
}

pub fn router(state: OpsState) -> Router {
    let dlq = state.dlq;
    let state = Arc::new(state);
    let mut router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    if dlq {
        router = router.merge(crate::dlq_http::routes());
    }
    router.with_state(state)
}

async fn metrics(State(state): State<Arc<OpsState>>) -> String {
    state.metrics.render(&state.pool).await
}

async fn readyz(State(state): State<Arc<OpsState>>) -> (StatusCode, String) {
    let pg = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&state.pool),
    )
    .await
    .map(|r| r.is_ok())
    .unwrap_or(false);
    let redis = tokio::time::timeout(Duration::from_secs(2), ping_redis(&state.redis_url))
        .await
        .unwrap_or(false);
    let body = format!("postgres: {}\nredis: {}\n", up(pg), up(redis));
    let status = if pg && redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

fn up(ok: bool) -> &'static str {
    if ok { "up" } else { "down" }
}

async fn ping_redis(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .is_ok()
}

/// Serves the router on `listen` until `shutdown` resolves.
pub async fn serve(
    listen: &str,
    state: OpsState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    serve_on(listener, state, shutdown).await
}

/// Serves the router on a bound listener until `shutdown` resolves.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: OpsState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "ops endpoints listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
