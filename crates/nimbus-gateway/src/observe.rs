//! What every request goes through first: a request id (the client's `x-request-id` if sane, else
//! a new one), the W3C trace context, a `tracing` span carrying both, an access log line, and the
//! Prometheus request counter, latency histogram and in-flight gauge.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use nimbus_api::{ApiError, RequestId, RouteLabel, TraceContext};
use rand::Rng;
use tracing::Instrument;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C Trace Context level 2: tells the client which trace its request joined.
static TRACERESPONSE: HeaderName = HeaderName::from_static("traceresponse");

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
    let route = match response.extensions().get::<RouteLabel>() {
        Some(label) => label.0.to_string(),
        None => route,
    };
    let method_label = method_label(&method);
    metrics::histogram!("nimbus_http_request_duration_seconds", "route" => route.clone(), "method" => method_label)
        .record(elapsed.as_secs_f64());
    metrics::counter!(
        "nimbus_http_requests_total",
        "route" => route,
        "method" => method_label,
        "status" => status.as_str().to_owned()
    )
    .increment(1);
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
struct InFlight(metrics::Gauge);

impl InFlight {
    fn enter() -> Self {
        let gauge = metrics::gauge!("nimbus_http_requests_in_flight");
        gauge.increment(1.0);
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

fn is_sane_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

fn new_request_id() -> String {
    nimbus_api::hex(&rand::rng().random::<[u8; 16]>())
}

/// The method as a metric label; anything unusual is `other`, so clients cannot grow the label set.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
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
