//! The REST API: `PUT`, `GET`, `HEAD`, `DELETE /_nimbus/blob/{container}/{key…}`,
//! `GET /_nimbus/blob/{container}?prefix=&delimiter=&continuation=&max=` and
//! `POST /_nimbus/blob/sign`; a `PUT` with `x-nimbus-copy-source: <container>/<key>` copies. Requests carry the admin token, a worker's scoped token (only the
//! containers its function's grants name: `blob:<container>:r|rw`), or, for one object and method,
//! a signed URL's `sig` and `exp` (so a browser uploads or downloads directly). Request bodies stream
//! into the backend; responses stream out of it.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::TryStreamExt;
use nimbus_api::ApiError;
use serde::Deserialize;
use serde_json::Value;

use crate::{BlobError, Blobs, Download};

pub(crate) fn error(e: BlobError) -> ApiError {
    match e {
        BlobError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", m),
        BlobError::NotFound(_) => ApiError::not_found(e.to_string()),
        BlobError::Range => ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable", e.to_string()),
        BlobError::Incomplete => ApiError::new(StatusCode::BAD_REQUEST, "incomplete_body", e.to_string()),
        BlobError::DiskFull => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage", e.to_string()),
        BlobError::Backend(_) | BlobError::Store(_) => {
            tracing::error!(error = %e, "blob storage failed");
            ApiError::internal()
        }
    }
}

/// One `bytes=a-b`, `bytes=a-` or `bytes=-n` range of an object of `size` bytes, as `start..end`.
/// `Ok(None)` when there is no usable Range header (several ranges: the whole object).
pub(crate) fn requested_range(headers: &HeaderMap, size: u64) -> Result<Option<std::ops::Range<u64>>, BlobError> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else { return Ok(None) };
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(BlobError::Range)?;
    let range = match (start.trim(), end.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| BlobError::Range)?;
            if n == 0 || size == 0 {
                return Err(BlobError::Range);
            }
            size.saturating_sub(n)..size
        }
        (a, "") => a.parse::<u64>().map_err(|_| BlobError::Range)?..size,
        (a, b) => {
            let (a, b): (u64, u64) =
                (a.parse().map_err(|_| BlobError::Range)?, b.parse().map_err(|_| BlobError::Range)?);
            if b < a {
                return Err(BlobError::Range);
            }
            a..(b + 1).min(size)
        }
    };
    if range.start >= size { Err(BlobError::Range) } else { Ok(Some(range)) }
}

/// The response for a download: 200 or 206, with the object's headers; HEAD gets no body.
pub(crate) fn respond(download: Download, partial: bool, head: bool) -> Response {
    let info = &download.info;
    let mut builder = Response::builder()
        .status(if partial { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK })
        .header(header::CONTENT_TYPE, &info.content_type)
        .header(header::CONTENT_LENGTH, download.range.end - download.range.start)
        .header(header::ETAG, format!("\"{}\"", info.etag))
        .header(header::LAST_MODIFIED, http_date(info.last_modified))
        .header(header::ACCEPT_RANGES, "bytes");
    if partial {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", download.range.start, download.range.end - 1, info.size),
        );
    }
    for (k, v) in &info.metadata {
        if let Ok(v) = HeaderValue::from_str(v) {
            builder = builder.header(format!("x-nimbus-meta-{k}"), v);
        }
    }
    let body = match (head, download.whole) {
        (true, _) => Body::empty(),
        (false, Some(whole)) => Body::from(whole),
        (false, None) => Body::from_stream(download.body),
    };
    builder.body(body).unwrap_or_else(|_| ApiError::internal().into_response())
}

pub(crate) fn http_date(unix: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
}

/// Who may call the API: the admin token (checked by the binary's function), or a signed URL.
#[derive(Clone)]
struct Api {
    blobs: Blobs,
    authenticate: nimbus_api::Authenticate,
}

impl Api {
    /// `None` when the caller may go on; else the refusal (see [`nimbus_api::authorize`]).
    fn refuse(&self, headers: &HeaderMap, container: &str, write: bool) -> Option<Response> {
        nimbus_api::authorize(&self.authenticate, headers, "blob", container, write).err().map(|e| {
            let mut e = e;
            if e.status == StatusCode::UNAUTHORIZED {
                e.message.push_str(", or a signed URL");
            }
            e.into_response()
        })
    }
}

/// `PUT` with this header (`<container>/<key>`) copies that object instead of reading a body.
const COPY_SOURCE: &str = "x-nimbus-copy-source";

#[derive(Deserialize)]
struct Signature {
    sig: Option<String>,
    exp: Option<u64>,
}

async fn object(
    State(api): State<Api>,
    Path((container, key)): Path<(String, String)>,
    Query(signature): Query<Signature>,
    req: Request,
) -> Response {
    let method = req.method().clone();
    match (&signature.sig, signature.exp) {
        (Some(sig), Some(exp)) => {
            let signed_method = if method == Method::HEAD { Method::GET } else { method.clone() };
            if let Err(e) = api.blobs.verify(&signed_method, &container, &key, exp, sig).await {
                return e.into_response();
            }
        }
        _ => {
            let write = !matches!(method, Method::GET | Method::HEAD);
            if let Some(refusal) = api.refuse(req.headers(), &container, write) {
                return refusal;
            }
        }
    }
    let copy_source = req.headers().get(COPY_SOURCE).map(|v| v.to_str().unwrap_or("\u{0}").to_owned());
    if let Some(source) = copy_source {
        // A copy reads another object: the caller's own token must reach it (a signed URL opens
        // only the one object it names).
        let (from_container, from_key) = source.trim_start_matches('/').split_once('/').unwrap_or((&source, ""));
        if method != Method::PUT || signature.sig.is_some() {
            let m = format!("{COPY_SOURCE} goes with a PUT that carries a token, not a signed URL");
            return error(BlobError::Invalid(m)).into_response();
        }
        if let Some(refusal) = api.refuse(req.headers(), from_container, false) {
            return refusal;
        }
        return match api.blobs.copy(from_container, from_key, &container, &key).await {
            Ok(info) => (StatusCode::CREATED, axum::Json(info)).into_response(),
            Err(e) => error(e).into_response(),
        };
    }
    let blobs = api.blobs;
    let result = match method {
        Method::PUT => put(&blobs, &container, &key, req).await,
        Method::GET | Method::HEAD => download(&blobs, &container, &key, req.headers(), method == Method::HEAD).await,
        Method::DELETE => blobs.delete(&container, &key).await.map(|()| StatusCode::NO_CONTENT.into_response()),
        _ => Err(BlobError::Invalid(format!("{method} is not allowed on objects"))),
    };
    result.unwrap_or_else(|e| error(e).into_response())
}

async fn put(blobs: &Blobs, container: &str, key: &str, req: Request) -> Result<Response, BlobError> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut metadata = BTreeMap::new();
    for (name, value) in req.headers() {
        if let Some(k) = name.as_str().strip_prefix("x-nimbus-meta-") {
            let v = value.to_str().map_err(|_| BlobError::Invalid(format!("metadata \"{k}\" is not text")))?;
            metadata.insert(k.to_owned(), v.to_owned());
        }
    }
    let body = req.into_body().into_data_stream().map_err(|e| e.to_string());
    let info = blobs.put(container, key, content_type.as_deref(), metadata, Box::pin(body)).await?;
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

async fn download(
    blobs: &Blobs,
    container: &str,
    key: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, BlobError> {
    let info = blobs.head(container, key).await?;
    let range = requested_range(headers, info.size)?;
    let partial = range.is_some();
    Ok(respond(blobs.get(container, key, range).await?, partial, head))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
    delimiter: Option<String>,
    continuation: Option<String>,
    max: Option<usize>,
}

async fn list(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(container): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Some(refusal) = api.refuse(&headers, &container, false) {
        return refusal;
    }
    let blobs = api.blobs;
    let limit = q.max.unwrap_or(1000).clamp(1, 5000);
    match blobs.list(&container, &q.prefix, q.delimiter.as_deref(), q.continuation.as_deref(), limit).await {
        Ok(listing) => axum::Json(listing).into_response(),
        Err(e) => error(e).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SignRequest {
    container: String,
    key: String,
    method: String,
    /// Seconds, or a duration like "15m"; at most 7 days.
    expires_in: Value,
}

async fn sign(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<axum::Json<SignRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if (api.authenticate)(&headers).is_none() {
        return api.refuse(&headers, "", false).unwrap_or_else(|| ApiError::internal().into_response());
    }
    let invalid = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", m).into_response();
    let body = match body {
        Ok(axum::Json(b)) => b,
        Err(e) => return invalid(e.body_text()),
    };
    let method = match body.method.to_ascii_uppercase().as_str() {
        "GET" => Method::GET,
        "PUT" => Method::PUT,
        other => return invalid(format!("method \"{other}\": a signed URL is for GET or PUT")),
    };
    // Signing hands the capability on: the signer must hold it.
    if let Some(refusal) = api.refuse(&headers, &body.container, method == Method::PUT) {
        return refusal;
    }
    let seconds = match &body.expires_in {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse::<nimbus_config::Duration>().ok().map(|d| d.get().as_secs()),
        _ => None,
    };
    let Some(seconds) = seconds.filter(|s| (1..=7 * 86_400).contains(s)) else {
        return invalid("expiresIn must be 1 second to 7 days (a number of seconds or \"15m\")".into());
    };
    match api.blobs.sign(&method, &body.container, &body.key, seconds).await {
        Ok(path) => {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
            let scheme = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or("http");
            axum::Json(serde_json::json!({"url": format!("{scheme}://{host}{path}"), "path": path})).into_response()
        }
        Err(e) => error(e).into_response(),
    }
}

/// The API; `authenticate` tells who a request's token belongs to (the admin, or a function).
pub fn router(blobs: Blobs, authenticate: nimbus_api::Authenticate) -> axum::Router {
    axum::Router::new()
        .route("/_nimbus/blob/sign", axum::routing::post(sign))
        .route("/_nimbus/blob/{container}", get(list))
        .route("/_nimbus/blob/{container}/{*key}", axum::routing::any(object))
        .with_state(Api { blobs, authenticate })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, size: u64) -> Result<Option<std::ops::Range<u64>>, BlobError> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        requested_range(&h, size)
    }

    #[test]
    fn parses_ranges() {
        assert_eq!(range("bytes=0-9", 100).unwrap(), Some(0..10));
        assert_eq!(range("bytes=90-", 100).unwrap(), Some(90..100));
        assert_eq!(range("bytes=-10", 100).unwrap(), Some(90..100));
        assert_eq!(range("bytes=95-200", 100).unwrap(), Some(95..100));
        assert_eq!(range("bytes=0-1,5-6", 100).unwrap(), None);
        assert!(range("bytes=100-", 100).is_err());
        assert!(range("bytes=5-1", 100).is_err());
        assert!(range("bytes=x-1", 100).is_err());
        assert_eq!(range("items=1-2", 100).unwrap(), None);
    }
}
