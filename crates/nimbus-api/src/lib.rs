//! The wire conventions every component's HTTP surface shares: the error body (HTTP status plus
//! `{"error": {"code": "snake_case_code", "message": "human sentence"}}`), the W3C trace context
//! and request id that travel with a request, and the route label components give their responses.
//!
//! Each component keeps its own typed error enum and converts it into an [`ApiError`] at its edge,
//! so the status map of a component lives in one function.
//!
//! Ports, implemented by one component and handed to others by the binary, so that no component
//! depends on another: [`Authenticate`] (who calls a platform API) and [`Invoke`] (run a function
//! by name, with the [`Trigger`] types every component shares).

mod access;
pub mod body;
pub mod extract;
mod invoke;
mod limit;
mod source;
mod tasks;
mod trace_context;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

pub use access::{Authenticate, Grant, Principal, authorize, bearer};
pub use invoke::{Call, Declared, FeedStart, Invoke, InvokeError, InvokeFuture, Invoker, Schedule, Trigger};
pub use limit::Subject;
pub use source::{Cidr, client_ip, is_trusted, source_key};
pub use tasks::Tasks;
pub use trace_context::{TraceContext, hex};

/// The request's id (the client's `x-request-id` if sane, else a new one), in the request's
/// extensions for components that log or forward it.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// Put in a response's extensions by a component that routes by itself (e.g. functions), so the
/// edge's metrics label the request by what served it rather than as unmatched.
#[derive(Debug, Clone)]
pub struct RouteLabel(pub Arc<str>);

/// The verified caller of a request, put in its extensions by the gateway after authentication:
/// a token's claims, or `{"api_key": {"id", "name"}}` for an API key. Functions forward it to the
/// worker as `x-nimbus-claims`.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<serde_json::Value>);

/// What the gateway's matching `[[routes]]` entry asks of the component that serves a request,
/// computed once when the route is compiled.
#[derive(Debug, Clone, Copy)]
pub struct RoutePolicy {
    /// How long a request may run: the route's `timeout`, else `[server] request_timeout`.
    pub timeout: std::time::Duration,
    /// The route's own `timeout`, when it sets one: it bounds asynchronous runs too, which the
    /// gateway's default does not.
    pub own_timeout: Option<std::time::Duration>,
    /// Answer `202 Accepted` at once and run in the background.
    pub respond_async: bool,
    /// The largest request body: the route's `max_body`, capped by `[server] max_request_body`.
    pub max_body: u64,
    /// An AI route's `semantic_cache`.
    pub semantic_cache: bool,
}

/// Headers that belong to one connection (RFC 9110 §7.6.1), never forwarded by a proxy.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes the hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut axum::http::HeaderMap) {
    let named: Vec<axum::http::HeaderName> = headers
        .get_all(axum::http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// An error as a client sees it.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// A 5xx whose detail belongs in the log, not in the answer.
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the server failed to handle the request; see its log")
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message.clone() } }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The JSON body of an error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}
