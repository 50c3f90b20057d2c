//! The REST API: `PUT`, `GET`, `HEAD`, `DELETE /_nimbus/blob/{container}/{key…}`,
//! `GET /_nimbus/blob/{container}?prefix=&delimiter=&continuation=&max=` and
//! `POST /_nimbus/blob/sign`; a `PUT` with `x-nimbus-copy-source: <container>/<key>` copies. Requests carry the admin token, a worker's scoped token (only the
//! containers its function's grants name: `blob:<container>:r|rw`), or, for one object and method,
//! a signed URL's `sig` and `exp` (so a browser uploads or downloads directly). Request bodies stream
//! into the backend, at most `[blob] max_object_size` (and a signed PUT's `maxsize`); responses
//! stream out of it.
//!
//! Objects are served on the app's own origin (beside `/account/*` and `/oauth2/*`), so what anyone
//! uploaded must never run there: every object comes with `X-Content-Type-Options: nosniff` and
//! `Content-Security-Policy: sandbox` (an opaque origin: no script, no cookies, no same-origin
//! reach), and one whose type is not on a short list of passive ones (text, JSON, raster images,
//! audio, video) is an attachment unless its container is web content (`$web`, `[blob]
//! web_containers`).

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use nimbus_api::ApiError;
use nimbus_api::extract::{Path, Query};
use serde::Deserialize;
use serde_json::Value;

use crate::conditional::{self, Answer, Validators};
use crate::{BlobError, Blobs, Download, Stored};

pub(crate) fn error(e: BlobError) -> ApiError {
    match e {
        BlobError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", m),
        BlobError::TooLarge(limit) => nimbus_api::body::payload_too_large(limit),
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

/// The 416 for a range outside an object of `size` bytes, with `Content-Range: bytes */size`
/// (RFC 9110 §15.5.17).
pub(crate) fn unsatisfiable(size: u64) -> Response {
    let mut response = error(BlobError::Range).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
        response.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    response
}

/// A 405 naming the methods the target allows (RFC 9110 §15.5.6: `Allow` is a MUST).
pub(crate) fn method_not_allowed(method: &Method, allow: &'static str) -> Response {
    let message = format!("{method} is not allowed here; use {allow}");
    let mut response = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message).into_response();
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// The answer to a GET or HEAD of a found object, by RFC 9110 §13 and §14 ([`conditional`]): 200,
/// 206 (one part, or several as `multipart/byteranges`), 304, 412 or 416. `multipart` says
/// whether several ranges may be answered in parts (see [`conditional::Validators`]).
///
/// [`conditional`]: crate::conditional
pub(crate) async fn read(
    blobs: &Blobs,
    found: Stored,
    method: &Method,
    headers: &HeaderMap,
    multipart: bool,
) -> Result<Response, BlobError> {
    let info = &found.info;
    let validators = Validators { etag: &info.etag, last_modified: info.last_modified, size: info.size, multipart };
    let head = method == Method::HEAD;
    Ok(match conditional::evaluate(method, headers, &validators) {
        Answer::Whole => respond(blobs.open(found, None).await?, false, head),
        Answer::Partial(ranges) if ranges.len() == 1 => {
            let range = ranges.into_iter().next();
            respond(blobs.open(found, range).await?, true, head)
        }
        Answer::Partial(ranges) => multipart_response(blobs, found, ranges),
        Answer::NotModified => not_modified(info),
        Answer::PreconditionFailed => {
            let message = "a precondition (If-Match or If-Unmodified-Since) does not hold";
            ApiError::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", message).into_response()
        }
        Answer::Unsatisfiable => unsatisfiable(info.size),
    })
}

/// RFC 9110 §15.4.5: a 304 carries the validators (the caller adds `Vary` and `Cache-Control`) and
/// no representation metadata beyond them. A Content-Length, if sent, must be the 200's (§8.6):
/// it is set so, since otherwise one of 0 is added to a HEAD's (hyper sends none for a GET's).
fn not_modified(info: &crate::ObjectInfo) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
    h.insert(header::ETAG, HeaderValue::from_str(&format!("\"{}\"", info.etag)).expect("hex is a header value"));
    h.insert(header::LAST_MODIFIED, HeaderValue::from_str(&http_date(info.last_modified)).expect("a date"));
    response
}

/// A 206 of several ranges as `multipart/byteranges` (RFC 9110 §14.6), in the order asked; each
/// part is read from the backend as the body streams.
fn multipart_response(blobs: &Blobs, found: Stored, ranges: Vec<std::ops::Range<u64>>) -> Response {
    let info = found.info.clone();
    let boundary = nimbus_api::hex(&rand::random::<[u8; 12]>());
    let heads: Vec<Bytes> = ranges
        .iter()
        .map(|r| {
            let (first, last, size) = (r.start, r.end - 1, info.size);
            let head = format!(
                "\r\n--{boundary}\r\nContent-Type: {}\r\nContent-Range: bytes {first}-{last}/{size}\r\n\r\n",
                info.content_type
            );
            Bytes::from(head)
        })
        .collect();
    let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
    let length = heads.iter().map(|h| h.len() as u64).sum::<u64>()
        + ranges.iter().map(|r| r.end - r.start).sum::<u64>()
        + tail.len() as u64;
    let blobs = blobs.clone();
    let parts = futures_util::stream::iter(heads.into_iter().zip(ranges))
        .then(move |(head, range)| {
            let (blobs, found) = (blobs.clone(), found.clone());
            async move {
                let part = blobs
                    .open(found, Some(range))
                    .await
                    .map_err(|e| object_store::Error::Generic { store: "blob", source: Box::new(e) })?;
                let head = futures_util::stream::once(async move { Ok(head) });
                Ok::<_, object_store::Error>(head.chain(part.body))
            }
        })
        .try_flatten()
        .chain(futures_util::stream::once(async move { Ok(tail) }));
    let mut builder = Response::builder()
        .status(StatusCode::PARTIAL_CONTENT)
        .header(header::CONTENT_TYPE, format!("multipart/byteranges; boundary={boundary}"))
        .header(header::CONTENT_LENGTH, length)
        .header(header::ETAG, format!("\"{}\"", info.etag))
        .header(header::LAST_MODIFIED, http_date(info.last_modified))
        .header(header::ACCEPT_RANGES, "bytes");
    for (k, v) in shown_metadata(&info) {
        builder = builder.header(format!("x-nimbus-meta-{k}"), v);
    }
    builder.body(Body::from_stream(parts)).unwrap_or_else(|_| ApiError::internal().into_response())
}

/// The user metadata sent as `x-nimbus-meta-*` headers: what is text, and not Nimbus's own.
fn shown_metadata(info: &crate::ObjectInfo) -> impl Iterator<Item = (&String, HeaderValue)> {
    info.metadata
        .iter()
        .filter(|(k, _)| k.as_str() != crate::compress::VARIANT_OF)
        .filter_map(|(k, v)| HeaderValue::from_str(v).ok().map(|v| (k, v)))
}

/// Types a browser shows without running anything, served inline from any container (with
/// `nosniff`, a browser never reads them as another type). Anything else (HTML, XHTML, SVG, XML,
/// JavaScript, PDF, types nobody listed) is an attachment outside web containers.
const PASSIVE: &[&str] = &[
    "text/plain",
    "text/csv",
    "application/json",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/avif",
    "image/bmp",
    "image/x-icon",
    "image/vnd.microsoft.icon",
];

fn passive(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    PASSIVE.contains(&essence.as_str())
        || ["audio/", "video/"].iter().any(|p| essence.strip_prefix(p).is_some_and(|sub| !sub.is_empty()))
}

/// Keeps an object served under `/_nimbus/blob/` from acting on the app's origin: `nosniff`, a
/// sandbox (an opaque origin: no script, no cookies, no same-origin requests), and, for an active
/// type outside web containers, `Content-Disposition: attachment` with the key's last segment as
/// the file name.
fn contain(response: &mut Response, info: &crate::ObjectInfo, web: bool) {
    let h = response.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
    if !web && !passive(&info.content_type) {
        h.insert(header::CONTENT_DISPOSITION, attachment(&info.key));
    }
}

/// `attachment; filename="…"; filename*=UTF-8''…` (RFC 6266) for the last segment of `key`: the
/// quoted name keeps only `A-Za-z0-9._-` (anything else becomes `_`), the extended one is the
/// whole name percent-encoded; neither can end the header early.
fn attachment(key: &str) -> HeaderValue {
    let name = key.rsplit('/').next().unwrap_or(key);
    let ascii: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).collect();
    let encoded = percent_encoding::utf8_percent_encode(name, crate::UNRESERVED);
    HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
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
    for (k, v) in shown_metadata(info) {
        builder = builder.header(format!("x-nimbus-meta-{k}"), v);
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
    /// A signed PUT's size bound, covered by the signature.
    maxsize: Option<u64>,
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
            if let Err(e) = api.blobs.verify(&signed_method, &container, &key, exp, signature.maxsize, sig).await {
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
    let limit = blobs.max_object_size().min(signature.maxsize.unwrap_or(u64::MAX));
    let result = match method {
        Method::PUT => put(&blobs, &container, &key, req, limit).await,
        Method::GET | Method::HEAD => download(&blobs, &container, &key, &method, req.headers()).await,
        Method::DELETE => blobs.delete(&container, &key).await.map(|()| StatusCode::NO_CONTENT.into_response()),
        _ => Ok(method_not_allowed(&method, "GET, HEAD, PUT, DELETE")),
    };
    result.unwrap_or_else(|e| error(e).into_response())
}

/// A PUT of at most `limit` bytes: one that declares more is refused before a byte is read; one
/// that sends more without declaring it (chunked) is cut off there and leaves nothing.
async fn put(blobs: &Blobs, container: &str, key: &str, req: Request, limit: u64) -> Result<Response, BlobError> {
    if nimbus_api::body::declared_length(req.headers()).is_some_and(|n| n > limit) {
        return Err(BlobError::TooLarge(limit));
    }
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut metadata = BTreeMap::new();
    for (name, value) in req.headers() {
        if let Some(k) = name.as_str().strip_prefix("x-nimbus-meta-") {
            let v = value.to_str().map_err(|_| BlobError::Invalid(format!("metadata \"{k}\" is not text")))?;
            metadata.insert(k.to_owned(), v.to_owned());
        }
    }
    let body = req.into_body().into_data_stream().map_err(|e| e.to_string());
    let info = blobs.put_within(container, key, content_type.as_deref(), metadata, Box::pin(body), limit).await?;
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

async fn download(
    blobs: &Blobs,
    container: &str,
    key: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, BlobError> {
    let found = blobs.find(container, key).await?;
    let info = found.info.clone();
    let mut response = read(blobs, found, method, headers, true).await?;
    if response.status().is_success() {
        contain(&mut response, &info, blobs.is_web_container(container));
    }
    Ok(response)
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
    /// For a PUT: the largest upload the URL takes (bytes, or a size like "10MB"), covered by the
    /// signature; `[blob] max_object_size` holds too.
    #[serde(default)]
    max_size: Option<Value>,
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
    let max_size = match &body.max_size {
        None | Some(Value::Null) => None,
        Some(_) if method != Method::PUT => return invalid("maxSize bounds an upload: it goes with method PUT".into()),
        Some(Value::Number(n)) => match n.as_u64().filter(|n| *n > 0) {
            Some(n) => Some(n),
            None => return invalid("maxSize must be a number of bytes of at least 1, or a size like \"10MB\"".into()),
        },
        Some(Value::String(s)) => match s.parse::<nimbus_config::ByteSize>() {
            Ok(size) if size.0 > 0 => Some(size.0),
            Ok(_) => return invalid("maxSize must be at least 1 byte".into()),
            Err(e) => return invalid(format!("maxSize: {e}")),
        },
        Some(_) => return invalid("maxSize must be a number of bytes or a size like \"10MB\"".into()),
    };
    // The URL starts with the node's public URL: a request's Host (or X-Forwarded-*) header,
    // which any client writes, never decides where it points.
    match api.blobs.sign(&method, &body.container, &body.key, seconds, max_size).await {
        Ok(path) => axum::Json(serde_json::json!({"url": api.blobs.public_url(&path), "path": path})).into_response(),
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

    #[test]
    fn active_types_are_attachments_with_a_safe_name() {
        for inline in ["text/plain; charset=utf-8", "IMAGE/PNG", "video/mp4", "audio/ogg", "application/json"] {
            assert!(passive(inline), "{inline}");
        }
        for active in [
            "text/html",
            "application/xhtml+xml",
            "image/svg+xml",
            "text/xml",
            "application/xml",
            "text/javascript",
            "application/pdf",
            "application/octet-stream",
            "image/png, text/html",
            "video/",
            "",
        ] {
            assert!(!passive(active), "{active}");
        }
        assert_eq!(
            attachment("a/b/r\u{e9}sum\u{e9} \"1\".html"),
            "attachment; filename=\"r_sum___1_.html\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%221%22.html"
        );
    }
}
