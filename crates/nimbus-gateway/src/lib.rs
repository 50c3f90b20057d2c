//! The one-port HTTP edge. It owns what every request goes through before a component sees it
//! (request id, W3C trace context, a `tracing` span, Prometheus metrics, panic containment, the
//! JSON 404/405 shape), the platform's own routes (`/_nimbus/health`, `/_nimbus/metrics`,
//! `/_nimbus/admin/*` behind the admin token) and graceful serving.
//!
//! Components hand it axum `Router`s; the binary merges them and calls [`edge`] then [`serve`].
//! Behind the platform's routes, the [`Gateway`] runs each `[[routes]]` entry's policies (CORS,
//! size limit, JWT or API key, scopes/roles/claims, rate limit, quota, header and path transforms)
//! and hands the request to its backend: a function, an upstream URL, or the static site.

mod admin;
mod client;
mod gateway;
mod health;
mod invoke;
mod jwt;
mod keys;
mod limit;
mod linger;
mod metrics;
mod observe;
mod openapi;
mod proxy;
mod route;
mod serve;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::http::{Method, Uri};
use nimbus_api::ApiError;
use nimbus_store::Store;

pub use admin::{AdminToken, AdminTokenError, admin_only};
pub use gateway::{Backends, Gateway, GatewayError, Operation};
pub use invoke::admin_router as invoke_admin_router;
pub use jwt::LocalIssuer;
pub use keys::{ApiKeyInfo, ApiKeys, KeyError, admin_router as keys_admin_router};
pub use metrics::{MetricsHandle, install_metrics};
pub use nimbus_api::{RequestId, TraceContext};
pub use serve::{ShutdownOutcome, serve};

/// What the platform routes report and check.
#[derive(Clone)]
pub struct Platform {
    pub store: Arc<dyn Store>,
    pub admin_token: AdminToken,
    pub metrics: MetricsHandle,
    pub node: Arc<NodeInfo>,
}

/// Facts about the running node, for `/_nimbus/admin/info`.
#[derive(Debug)]
pub struct NodeInfo {
    pub app: String,
    pub version: &'static str,
    pub data_dir: PathBuf,
    pub started: Instant,
}

/// A JSON 404 for paths nothing serves.
pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route matches {method} {}", uri.path()))
}

/// The platform's own routes under `/_nimbus/`.
pub fn platform_routes(platform: Platform) -> Router {
    Router::new().merge(health::routes(platform.clone())).merge(admin::routes(platform))
}

/// Wraps the merged routes of all components with what every request goes through, and answers
/// wrong methods in the JSON error shape. Paths no route claims go to the `routes`' fallback (the
/// binary sets it: the functions component, which answers a JSON 404 for what it does not serve).
pub fn edge(routes: Router) -> Router {
    routes
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on {}", uri.path()),
            )
        })
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(observe::panic_response))
        .layer(axum::middleware::from_fn(observe::observe))
        .layer(axum::middleware::from_fn(linger::linger))
}
