//! Asynchronous invocations, for work that outlasts any HTTP timeout: a request with
//! `Prefer: respond-async` (RFC 7240), or to a route with `async = true`, is answered `202 Accepted`
//! at once with `Location: /_nimbus/invocations/{id}`; the function runs in the background and its
//! response (status, headers, body) is kept in the store, so it survives a restart of the node and
//! can be read from any node sharing the store, until the retention period ends.
//!
//! The id is 128 random bits: knowing the URL is what grants reading the result.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use nimbus_api::ApiError;
use nimbus_api::extract::Path;
use nimbus_store::{Expect, Write};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::Inner;

const NS: &str = "invocations";
/// Keys: `m/<id>` holds the record, `b/<id>` the response body (listed apart, so sweeping never
/// loads bodies).
fn meta_key(id: &str) -> String {
    format!("m/{id}")
}
fn body_key(id: &str) -> String {
    format!("b/{id}")
}
/// The largest response body kept for an asynchronous invocation.
const MAX_RESULT: usize = 16 * 1024 * 1024;
/// How long past its deadline a running invocation is reported lost (its node went away).
const LOST_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    id: String,
    function: String,
    created_ms: u64,
    deadline_ms: u64,
    expires_ms: u64,
    /// Absent while running.
    response: Option<StoredHead>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredHead {
    status: u16,
    headers: Vec<(String, String)>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `Prefer: respond-async` among the request's preferences.
pub(crate) fn requested(headers: &HeaderMap) -> bool {
    headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').any(|pref| pref.split(';').next().is_some_and(|p| p.trim().eq_ignore_ascii_case("respond-async")))
    })
}

/// Accepts the invocation: reads the request body (bounded), records it as running, answers 202
/// and runs it in the background.
pub(crate) async fn accept(
    inner: Arc<Inner>,
    function: String,
    params: serde_json::Map<String, serde_json::Value>,
    req: Request,
    policy: crate::Policy,
) -> Response {
    let (timeout, max) = (policy.async_timeout, policy.max_body);
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, max as usize).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return crate::error::InvokeError::BodyTooLarge(max).to_api(&function).into_response();
        }
        Err(_) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "incomplete_body", "the request body was cut off")
                .into_response();
        }
    };
    let id = nimbus_api::hex(&rand::rng().random::<[u8; 16]>());
    let now = now_ms();
    let record = Record {
        id: id.clone(),
        function: function.clone(),
        created_ms: now,
        deadline_ms: now + timeout.as_millis() as u64,
        expires_ms: now + inner.async_retention.as_millis() as u64,
        response: None,
    };
    if let Err(e) = save(&inner, &record, None).await {
        tracing::error!(error = %e, "cannot record an asynchronous invocation");
        return ApiError::internal().into_response();
    }
    let location = format!("/_nimbus/invocations/{id}");
    let task_inner = inner.clone();
    let running = Running::enter(&inner);
    tokio::spawn(async move {
        let _running = running;
        let req = Request::from_parts(parts, Body::from(body));
        let response = crate::invoke::run(&task_inner, &function, params, req, timeout, max).await;
        let (head, body) = response.into_parts();
        let body = match http_body_util::Limited::new(body, MAX_RESULT).collect().await {
            Ok(collected) => collected.to_bytes().to_vec(),
            Err(e) => {
                tracing::warn!(invocation = %record.id, error = %e, "asynchronous result could not be read whole");
                let error = ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "result_unavailable",
                    "the function's response could not be kept (too large or cut off)",
                );
                let stored =
                    StoredHead { status: 502, headers: vec![("content-type".into(), "application/json".into())] };
                let body = serde_json::to_vec(&error.body()).unwrap_or_default();
                finish(&task_inner, record, stored, body).await;
                return;
            }
        };
        let headers = head
            .headers
            .iter()
            .filter(|(name, _)| *name != header::CONTENT_LENGTH)
            .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
            .collect();
        finish(&task_inner, record, StoredHead { status: head.status.as_u16(), headers }, body).await;
    });
    let mut response = (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"id": id, "status": "running", "statusQueryGetUri": location})),
    )
        .into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(HeaderName::from_static("preference-applied"), HeaderValue::from_static("respond-async"));
    response
}

/// Counts a background invocation for as long as it runs, however its task ends.
struct Running(Arc<Inner>);

impl Running {
    fn enter(inner: &Arc<Inner>) -> Self {
        inner.background.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(inner.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.background.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

async fn finish(inner: &Inner, mut record: Record, head: StoredHead, body: Vec<u8>) {
    record.response = Some(head);
    if let Err(e) = save(inner, &record, Some(body)).await {
        tracing::error!(invocation = %record.id, error = %e, "cannot store an asynchronous result");
    }
}

async fn save(inner: &Inner, record: &Record, body: Option<Vec<u8>>) -> Result<(), nimbus_store::StoreError> {
    let meta = serde_json::to_vec(record).map_err(|e| nimbus_store::StoreError::Invalid(e.to_string()))?;
    let mut writes = vec![Write::put(NS, &meta_key(&record.id), meta)];
    if record.response.is_none() {
        writes[0] = writes[0].clone().expect(Expect::Absent);
    }
    if let Some(body) = body {
        writes.push(Write::put(NS, &body_key(&record.id), body));
    }
    inner.store.commit(writes).await.map(|_| ())
}

/// `GET /_nimbus/invocations/{id}`: 202 while running, then the stored response.
pub(crate) async fn status(State(shared): State<Arc<crate::Shared>>, Path(id): Path<String>) -> Response {
    let inner = shared.current();
    let not_found =
        || ApiError::not_found("no such invocation (it never existed, or its result expired)").into_response();
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return not_found();
    }
    let record = match inner.store.get(NS, &meta_key(&id)).await {
        Ok(Some(r)) => r,
        Ok(None) => return not_found(),
        Err(e) => {
            tracing::error!(error = %e, "cannot read an asynchronous invocation");
            return ApiError::internal().into_response();
        }
    };
    let Ok(record) = serde_json::from_slice::<Record>(&record.value) else {
        return ApiError::internal().into_response();
    };
    let now = now_ms();
    if now >= record.expires_ms {
        return not_found();
    }
    let Some(head) = record.response else {
        if now > record.deadline_ms + LOST_AFTER.as_millis() as u64 {
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                "invocation_lost",
                "the node running this invocation stopped before it finished",
            )
            .into_response();
        }
        let mut response =
            (StatusCode::ACCEPTED, axum::Json(serde_json::json!({"id": id, "status": "running"}))).into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let body = match inner.store.get(NS, &body_key(&id)).await {
        Ok(Some(r)) => r.value,
        Ok(None) => Vec::new(),
        Err(_) => return ApiError::internal().into_response(),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (name, value) in head.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) {
            response.headers_mut().append(n, v);
        }
    }
    response
}

/// Deletes results past their retention, a page at a time.
pub(crate) async fn sweep(inner: &Inner) {
    let mut after: Option<String> = None;
    loop {
        let page = match inner.store.list(NS, "m/", after.as_deref(), 500).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sweep asynchronous results");
                return;
            }
        };
        let Some(last) = page.last() else { return };
        after = Some(last.key.clone());
        let now = now_ms();
        for record in &page {
            let expired = serde_json::from_slice::<Record>(&record.value).map_or(true, |r| now >= r.expires_ms);
            let id = record.key.trim_start_matches("m/");
            if expired {
                let writes = vec![Write::delete(NS, &record.key), Write::delete(NS, &body_key(id))];
                let _ = inner.store.commit(writes).await;
            }
        }
    }
}
