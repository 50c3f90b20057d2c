//! What every request goes through first: a request id (the client's `x-request-id` if sane, else
//! a new one), the W3C trace context, a `tracing` span carrying both, an access log line, and the
//! Prometheus request counter, latency histogram and in-flight gauge.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use nimbus_api::ApiError;
use rand::Rng;
use tracing::Instrument;

use crate::TraceContext;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C Trace Context level 2: tells the client which trace its request joined.
static TRACERESPONSE: HeaderName = HeaderName::from_static("traceresponse");

/// The request's id, in the request's extensions for components that log or forward it.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

pub(crate) async fn observe(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id: Arc<str> = match req.headers().get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
        Some(id) if is_sane_request_id(id) => id.into(),
        _ => new_request_id().into(),
    };
    let trace = TraceContext::continue_or_start(req.headers().get(&TRACEPARENT).and_then(|v| v.to_str().ok()));
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        method = %method,
        path = %req.uri().path(),
        request_id = %request_id,
        trace_id = %trace.trace_id_hex(),
    );
    req.extensions_mut().insert(RequestId(request_id.clone()));
    req.extensions_mut().insert(trace);

    let in_flight = InFlight::enter();
    let mut response = next.run(req).instrument(span.clone()).await;
    drop(in_flight);

    let status = response.status();
    let elapsed = started.elapsed();
    let labels = [("route", route), ("method", method.as_str().to_owned())];
    metrics::histogram!("nimbus_http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
    let mut labels = labels.to_vec();
    labels.push(("status", status.as_str().to_owned()));
    metrics::counter!("nimbus_http_requests_total", &labels).increment(1);
    span.in_scope(|| {
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), latency_ms, "request failed");
        } else {
            tracing::info!(status = status.as_u16(), latency_ms, "request");
        }
    });

    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&trace.traceparent()) {
        headers.insert(TRACERESPONSE.clone(), v);
    }
    response
}

/// Keeps the in-flight gauge right even when a client goes away and the request is dropped.
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics::gauge!("nimbus_http_requests_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("nimbus_http_requests_in_flight").decrement(1.0);
    }
}

fn is_sane_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

fn new_request_id() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A handler that panicked answers 500 in the JSON error shape; the panic goes to the log.
pub(crate) fn panic_response(payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = detail, "handler panicked");
    ApiError::internal().into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_checked() {
        assert!(is_sane_request_id("abc-123_x.y:z"));
        assert!(!is_sane_request_id(""));
        assert!(!is_sane_request_id("has space"));
        assert!(!is_sane_request_id("<script>"));
        assert!(!is_sane_request_id(&"a".repeat(129)));
        assert_eq!(new_request_id().len(), 32);
    }
}
