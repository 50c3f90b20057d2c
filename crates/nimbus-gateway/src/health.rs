//! `GET /_nimbus/health` (liveness: the process answers) and `GET /_nimbus/health/ready`
//! (readiness: the store answers too), for load balancers and orchestrators; both unauthenticated.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::Platform;

const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) fn routes(platform: Platform) -> Router {
    Router::new().route("/_nimbus/health", get(live)).route("/_nimbus/health/ready", get(ready)).with_state(platform)
}

async fn live() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], r#"{"status":"ok"}"#).into_response()
}

async fn ready(State(platform): State<Platform>) -> Response {
    let started = Instant::now();
    let check = tokio::time::timeout(STORE_CHECK_TIMEOUT, platform.store.ping()).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let backend = platform.store.kind().as_str();
    let (status, store) = match check {
        Ok(Ok(())) => (StatusCode::OK, json!({"status": "ok", "backend": backend, "latency_ms": latency_ms})),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: store check failed");
            (StatusCode::SERVICE_UNAVAILABLE, json!({"status": "error", "backend": backend, "error": e.to_string()}))
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "error", "backend": backend, "error": format!("no answer within {STORE_CHECK_TIMEOUT:?}")}),
        ),
    };
    let overall = if status.is_success() { "ready" } else { "unavailable" };
    (status, axum::Json(json!({"status": overall, "checks": {"store": store}}))).into_response()
}
