//! The HTTP path: match the route, take a slot in the function's pool, forward the request to the
//! instance with the `x-nimbus-*` headers of PROTOCOL.md §3, and stream the response back. Neither
//! body is buffered; the slot and the worker connection are held until the response body ends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use nimbus_api::{ApiError, RouteLabel, TraceContext};
use rand::Rng;

use crate::Inner;
use crate::error::InvokeError;
use crate::pool::Slot;
use crate::routes::Match;

/// Seconds a client is told to wait when a function is at capacity.
const RETRY_AFTER_SECS: &str = "1";

pub(crate) async fn handle(State(shared): State<Arc<crate::Shared>>, req: Request) -> Response {
    let inner = shared.current();
    let method = req.method().clone();
    let (function, params) = match inner.routes.find(&method, req.uri().path()) {
        Match::Found { function, params } => (function.to_owned(), params),
        Match::MethodNotAllowed => {
            return ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on {}", req.uri().path()),
            )
            .into_response();
        }
        Match::NotFound => {
            return ApiError::not_found(format!("no route matches {method} {}", req.uri().path())).into_response();
        }
    };
    let Some(target) = inner.functions.get(&function) else {
        return ApiError::internal().into_response();
    };
    let policy = inner.policy(target, req.extensions().get::<nimbus_api::RoutePolicy>());
    if policy.respond_async || crate::asynchronous::requested(req.headers()) {
        return crate::asynchronous::accept(inner.clone(), function, params, req, policy).await;
    }
    run(&inner, &function, params, req, policy.timeout, policy.max_body).await
}

/// Runs one invocation and answers with the worker's streamed response, or the JSON error that
/// says why there is none.
pub(crate) async fn run(
    inner: &Inner,
    function: &str,
    params: serde_json::Map<String, serde_json::Value>,
    req: Request,
    timeout: std::time::Duration,
    max_body: u64,
) -> Response {
    let Some(target) = inner.functions.get(function) else {
        return ApiError::internal().into_response();
    };
    let started = Instant::now();
    let result = invoke(target, function, params, req, max_body, timeout).await;
    let mut response = match result {
        Ok(response) => response,
        Err(e) => {
            note_failure(function, &e);
            let mut response = e.to_api(function).into_response();
            if response.status() == StatusCode::SERVICE_UNAVAILABLE {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
            }
            response
        }
    };
    note_outcome(target, function, response.status(), started);
    response.extensions_mut().insert(RouteLabel(target.label.clone()));
    response
}

async fn invoke(
    target: &crate::Target,
    function: &str,
    params: serde_json::Map<String, serde_json::Value>,
    req: Request,
    max_body: u64,
    timeout: std::time::Duration,
) -> Result<Response, InvokeError> {
    if nimbus_api::body::declared_length(req.headers()).is_some_and(|n| n > max_body) {
        return Err(InvokeError::BodyTooLarge(max_body));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let trace =
        req.extensions().get::<TraceContext>().copied().unwrap_or_else(|| TraceContext::continue_or_start(None));
    let invocation_id = new_invocation_id();
    let (parts, body) = req.into_parts();
    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
    let mut builder = axum::http::Request::builder().method(parts.method).uri(path_and_query);
    let headers = builder.headers_mut().expect("a fresh builder has headers");
    copy_end_to_end(&parts.headers, headers);
    if !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, HeaderValue::from_static("localhost"));
    }
    protocol_headers(headers, function, &invocation_id, timeout, &trace);
    headers.insert(
        HeaderName::from_static("x-nimbus-params"),
        header_value(if params.is_empty() { "{}".to_owned() } else { header_json(&serde_json::Value::Object(params)) }),
    );
    if let Some(caller) = parts.extensions.get::<nimbus_api::Caller>() {
        headers.insert(HeaderName::from_static("x-nimbus-claims"), header_value(header_json(&caller.0)));
    }
    let limited = http_body_util::Limited::new(body, max_body as usize);
    let uploaded = Arc::new(AtomicBool::new(limited.is_end_stream()));
    let tracked = Tracked { inner: limited, done: uploaded.clone() };
    let request = builder.body(Body::new(tracked)).map_err(|_| InvokeError::WorkerCrashed)?;

    let exchange = exchange(target, function, &invocation_id, request, None, deadline).await;
    let (response, slot, conn) = match exchange {
        Err(Failure::Refused(e)) => return Err(e),
        Err(Failure::Connection(e)) if nimbus_api::body::is_too_large(&e) => {
            return Err(InvokeError::BodyTooLarge(max_body));
        }
        Err(Failure::Connection(e)) if e.is_user() => return Err(InvokeError::IncompleteBody),
        Err(Failure::Connection(_)) => return Err(InvokeError::WorkerCrashed),
        Ok(exchanged) => exchanged,
    };
    let (mut parts, incoming) = response.into_parts();
    nimbus_api::strip_hop_by_hop(&mut parts.headers);
    let body = StreamBack::new(incoming, slot, conn, deadline, uploaded);
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// Why [`exchange`] got no response head.
pub(crate) enum Failure {
    /// No slot, no connection or no answer in time.
    Refused(InvokeError),
    /// The worker connection failed while sending the request or awaiting the head.
    Connection(hyper::Error),
}

/// The step every invocation shares: a slot in the function's pool, a connection to its instance,
/// the request sent and the response head received, all before `deadline`. The caller owns the
/// slot and the connection until the response body has been read (then gives the connection back).
pub(crate) async fn exchange(
    target: &crate::Target,
    function: &str,
    invocation_id: &str,
    mut request: axum::http::Request<Body>,
    affinity: Option<&str>,
    deadline: tokio::time::Instant,
) -> Result<(axum::http::Response<Incoming>, Slot, SendRequest<Body>), Failure> {
    let slot = match tokio::time::timeout_at(deadline, target.pool.acquire(affinity)).await {
        Err(_) => return Err(Failure::Refused(InvokeError::Timeout)),
        Ok(slot) => slot.map_err(Failure::Refused)?,
    };
    let mut conn = match tokio::time::timeout_at(deadline, slot.instance.connection()).await {
        Err(_) => {
            slot.retire();
            return Err(Failure::Refused(InvokeError::Timeout));
        }
        Ok(conn) => conn.map_err(|_| Failure::Refused(InvokeError::WorkerCrashed))?,
    };
    slot.instance.authorize(request.headers_mut());
    match tokio::time::timeout_at(deadline, conn.send_request(request)).await {
        Err(_) => {
            tracing::info!(function, invocation = %invocation_id, "timed out; cancelling the invocation");
            slot.retire();
            Err(Failure::Refused(InvokeError::Timeout))
        }
        // The client's request body failed (cut off, malformed, too large): not the worker's doing.
        Ok(Err(e)) if e.is_user() => {
            tracing::info!(function, invocation = %invocation_id, error = %e, "the request body failed");
            Err(Failure::Connection(e))
        }
        Ok(Err(e)) => {
            tracing::warn!(function, invocation = %invocation_id, instance = %slot.instance.id, error = %e, "worker connection failed");
            Err(Failure::Connection(e))
        }
        Ok(Ok(response)) => Ok((response, slot, conn)),
    }
}

/// A fresh invocation id: 128 random bits in hex.
pub(crate) fn new_invocation_id() -> String {
    nimbus_api::hex(&rand::rng().random::<[u8; 16]>())
}

/// The `x-nimbus-*` headers and trace context of PROTOCOL.md §3 and §4 that every invocation carries.
pub(crate) fn protocol_headers(
    headers: &mut HeaderMap,
    function: &str,
    invocation_id: &str,
    timeout: std::time::Duration,
    trace: &TraceContext,
) {
    headers.insert(HeaderName::from_static("x-nimbus-function"), header_value(function.to_owned()));
    headers.insert(HeaderName::from_static("x-nimbus-invocation-id"), header_value(invocation_id.to_owned()));
    headers.insert(HeaderName::from_static("x-nimbus-timeout-ms"), header_value(timeout.as_millis().to_string()));
    headers.insert(HeaderName::from_static("traceparent"), header_value(trace.traceparent()));
}

/// Every value given here is ASCII (function names, ids, numbers, [`header_json`]).
fn header_value(value: String) -> HeaderValue {
    HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Counts and logs an invocation that got no response from its handler.
pub(crate) fn note_failure(function: &str, e: &InvokeError) {
    metrics::counter!("nimbus_function_errors_total", "function" => function.to_owned(), "kind" => e.kind())
        .increment(1);
    match e {
        InvokeError::WorkerCrashed | InvokeError::Unavailable => {
            tracing::warn!(function = %function, error = e.kind(), "invocation failed")
        }
        _ => tracing::info!(function = %function, error = e.kind(), "invocation refused"),
    }
}

/// Counts an invocation by the status it answered, and records how long it took.
pub(crate) fn note_outcome(target: &crate::Target, function: &str, status: StatusCode, started: Instant) {
    metrics::counter!("nimbus_function_invocations_total", "function" => function.to_owned(), "status" => status.as_str().to_owned())
        .increment(1);
    target.duration.record(started.elapsed().as_secs_f64());
}

/// JSON for a header value: header values are ASCII, so every other character is written as a
/// `\uXXXX` escape (non-ASCII can only occur inside JSON strings, where escapes are valid).
fn header_json(value: &serde_json::Value) -> String {
    let json = value.to_string();
    if json.is_ascii() {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// The client's end-to-end headers; hop-by-hop ones and any `x-nimbus-*` a client tried to forge stay behind.
fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        let n = name.as_str();
        if nimbus_api::HOP_BY_HOP.contains(&n) || n.starts_with("x-nimbus-") || n == "traceparent" || n == "tracestate"
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

pin_project_lite::pin_project! {
    /// The worker's response body on its way to the client, chunk by chunk. Holds the pool slot and
    /// the connection: at the end they go back for reuse; if the client goes away first (the body is
    /// dropped) or the deadline passes, the connection is dropped, which the worker sees as
    /// cancellation.
    struct StreamBack {
        #[pin]
        inner: Incoming,
        slot: Option<Slot>,
        conn: Option<SendRequest<Body>>,
        #[pin]
        deadline: tokio::time::Sleep,
        // Whether the request body was sent whole: a worker may answer before reading it all, and
        // a connection with an upload still going cannot carry the next invocation.
        uploaded: Arc<AtomicBool>,
    }
}

pin_project_lite::pin_project! {
    /// The request body on its way to the worker; notes when it has been sent to the end.
    struct Tracked<B> {
        #[pin]
        inner: B,
        done: Arc<AtomicBool>,
    }
}

impl<B: HttpBody> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.done.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl StreamBack {
    fn new(
        inner: Incoming,
        slot: Slot,
        conn: SendRequest<Body>,
        deadline: tokio::time::Instant,
        uploaded: Arc<AtomicBool>,
    ) -> Self {
        let mut body =
            Self { inner, slot: Some(slot), conn: Some(conn), deadline: tokio::time::sleep_until(deadline), uploaded };
        if body.inner.is_end_stream() {
            finish(&mut body.slot, &mut body.conn, &body.uploaded);
        }
        body
    }
}

/// The response was read to its end: the slot is free, and the connection can carry the next
/// invocation if the request body went out whole too (else it is closed).
fn finish(slot: &mut Option<Slot>, conn: &mut Option<SendRequest<Body>>, uploaded: &AtomicBool) {
    if let (Some(slot), Some(conn)) = (slot.take(), conn.take())
        && uploaded.load(Ordering::Acquire)
    {
        slot.instance.give_back(conn);
    }
}

impl HttpBody for StreamBack {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        if this.slot.is_none() {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.conn.take();
            if let Some(slot) = this.slot.take() {
                slot.retire();
            }
            return Poll::Ready(Some(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "function timed out"))));
        }
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(None) => {
                finish(this.slot, this.conn, this.uploaded);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    finish(this.slot, this.conn, this.uploaded);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.conn.take();
                this.slot.take();
                Poll::Ready(Some(Err(std::io::Error::other(e))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.slot.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_json_is_ascii_and_round_trips() {
        let value = serde_json::json!({"id": "café 😀", "n": "plain"});
        let header = header_json(&value);
        assert!(header.is_ascii() && HeaderValue::from_str(&header).is_ok(), "{header}");
        assert!(header.contains("caf\\u00e9 \\ud83d\\ude00"), "{header}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&header).unwrap(), value);
    }
}
