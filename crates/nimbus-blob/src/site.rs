//! The static website: the `$web` container served at `/` for paths nothing else claims.
//! `/` and folders (`/docs/`) answer their index document; a missing page answers the error
//! document with 404, or, with `spa = true`, `index.html` with 200 for paths that do not look like
//! files. Conditional requests (`If-None-Match`, `If-Modified-Since` → 304), `Range` (206/416),
//! `HEAD`, precompressed `.br`/`.gz` variants when the client accepts them, and `Cache-Control` by
//! glob rules from `[site] cache_control`.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nimbus_api::ApiError;

use crate::api::{error, http_date, respond, unsatisfiable};
use crate::{BlobError, Blobs, SITE_CONTAINER, Stored};

#[derive(Clone)]
pub struct Site {
    blobs: Blobs,
    index: String,
    error_document: Option<String>,
    spa: bool,
    cache_rules: std::sync::Arc<Vec<(globset::GlobMatcher, HeaderValue)>>,
    /// Recent lookups of `$web` records, found or not, for [`RECORD_TTL`]: a page then costs no
    /// store read. A change (a deploy, a PUT through the API, another node) shows within that time.
    records: RecordCache,
}

type RecordCache =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (Option<Stored>, std::time::Instant)>>>;

const RECORD_TTL: std::time::Duration = std::time::Duration::from_secs(1);

impl Site {
    pub fn new(blobs: Blobs, section: Option<&nimbus_config::SiteSection>) -> Self {
        let rules = section
            .map(|s| s.cache_control.iter().map(|(glob, value)| (glob.compile_matcher(), value.clone())).collect())
            .unwrap_or_default();
        Self {
            blobs,
            index: section.map_or_else(|| "index.html".to_owned(), |s| s.index_document.clone()),
            error_document: section.and_then(|s| s.error_document.clone()),
            spa: section.is_some_and(|s| s.spa),
            cache_rules: std::sync::Arc::new(rules),
            records: std::sync::Arc::default(),
        }
    }

    pub fn router(self) -> axum::Router {
        axum::Router::new().fallback(serve).with_state(self)
    }

    /// The object a path names: the exact key, a folder's index document, or none.
    async fn resolve(&self, path: &str) -> Result<Option<Stored>, BlobError> {
        let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
        let key = decoded.trim_start_matches('/');
        let candidates = if key.is_empty() || key.ends_with('/') {
            vec![format!("{key}{}", self.index)]
        } else {
            vec![key.to_owned(), format!("{key}/{}", self.index)]
        };
        for candidate in candidates {
            if crate::check_key(&candidate).is_err() {
                return Ok(None);
            }
            if let Some(found) = self.record(&candidate).await? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The `$web` record of `key`, from the cache when it is fresh.
    async fn record(&self, key: &str) -> Result<Option<Stored>, BlobError> {
        let cached = self.records.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned();
        if let Some((found, at)) = cached
            && at.elapsed() < RECORD_TTL
        {
            return Ok(found);
        }
        let found = match self.blobs.find(SITE_CONTAINER, key).await {
            Ok(found) => Some(found),
            Err(BlobError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.len() >= 10_000 {
            records.clear();
        }
        records.insert(key.to_owned(), (found.clone(), std::time::Instant::now()));
        Ok(found)
    }

    fn cache_control(&self, key: &str) -> Option<HeaderValue> {
        self.cache_rules.iter().find(|(glob, _)| glob.is_match(key)).map(|(_, v)| v.clone())
    }
}

async fn serve(State(site): State<Site>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let (method, path, headers) = (parts.method.clone(), parts.uri.path(), &parts.headers);
    if method != Method::GET && method != Method::HEAD {
        return ApiError::not_found(format!("no route or page matches {method} {path}")).into_response();
    }
    let found = match site.resolve(path).await {
        Ok(found) => found,
        Err(e) => return error(e).into_response(),
    };
    let (info, status) = match found {
        Some(info) => (info, StatusCode::OK),
        None => {
            let last = path.rsplit('/').next().unwrap_or("");
            let fallback = match (site.spa && !last.contains('.'), &site.error_document) {
                (true, _) => Some((site.index.clone(), StatusCode::OK)),
                (false, Some(doc)) => Some((doc.clone(), StatusCode::NOT_FOUND)),
                (false, None) => None,
            };
            match fallback {
                Some((key, status)) => match site.blobs.find(SITE_CONTAINER, &key).await {
                    Ok(info) => (info, status),
                    Err(_) => {
                        return ApiError::not_found(format!("no route or page matches {method} {path}"))
                            .into_response();
                    }
                },
                None => {
                    return ApiError::not_found(format!("no route or page matches {method} {path}")).into_response();
                }
            }
        }
    };
    match page(&site, info, status, headers, method == Method::HEAD).await {
        Ok(response) => response,
        Err(e) => error(e).into_response(),
    }
}

async fn page(
    site: &Site,
    found: Stored,
    status: StatusCode,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, BlobError> {
    let info = found.info.clone();
    let cache = site.cache_control(&info.key);
    let etag = format!("\"{}\"", info.etag);
    if status == StatusCode::OK && not_modified(headers, &etag, info.last_modified) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        let h = response.headers_mut();
        h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex is a header value"));
        if let Some(cache) = cache {
            h.insert(header::CACHE_CONTROL, cache);
        }
        return Ok(response);
    }
    // A precompressed variant, when the client takes it and no range is asked for.
    let accepts = headers.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !headers.contains_key(header::RANGE) {
        for (encoding, suffix) in [("br", ".br"), ("gzip", ".gz")] {
            if !accepts.split(',').any(|e| e.split(';').next().is_some_and(|e| e.trim() == encoding)) {
                continue;
            }
            let variant = format!("{}{suffix}", info.key);
            if let Some(found) = site.record(&variant).await? {
                let download = site.blobs.open(found, None).await?;
                let mut response = respond(download, false, head);
                *response.status_mut() = status;
                let h = response.headers_mut();
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
                if let Ok(v) = HeaderValue::from_str(&info.content_type) {
                    h.insert(header::CONTENT_TYPE, v);
                }
                h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
                if let Some(cache) = cache {
                    h.insert(header::CACHE_CONTROL, cache);
                }
                return Ok(response);
            }
        }
    }
    let range = match status {
        StatusCode::OK => match crate::range::requested(headers, info.size) {
            Ok(range) => range,
            Err(_) => return Ok(unsatisfiable(info.size)),
        },
        _ => None,
    };
    let partial = range.is_some();
    let mut response = respond(site.blobs.open(found, range).await?, partial, head);
    if !partial {
        *response.status_mut() = status;
    }
    let h = response.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(cache) = cache {
        h.insert(header::CACHE_CONTROL, cache);
    }
    Ok(response)
}

/// RFC 9110 §13.1: `If-None-Match` decides when present, else `If-Modified-Since`.
fn not_modified(headers: &HeaderMap, etag: &str, last_modified: u64) -> bool {
    if let Some(inm) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return inm.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
    }
    let since = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    since.is_some_and(|since| {
        http_date(last_modified) == httpdate::fmt_http_date(since) || {
            since.duration_since(std::time::UNIX_EPOCH).is_ok_and(|d| d.as_secs() >= last_modified)
        }
    })
}
