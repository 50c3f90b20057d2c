//! The static website: the `$web` container served at `/` for paths nothing else claims.
//! `/` and folders (`/docs/`) answer their index document; a missing page answers the error
//! document with 404, or, with `spa = true`, `index.html` with 200 for paths that do not look like
//! files. GET and HEAD follow RFC 9110's preconditions and ranges (`conditional.rs`, shared with
//! the API); other methods on a page get 405 with `Allow`. A page with compressed variants beside
//! it (`<key>.br`, `<key>.gz`: made by deploys, or precompressed files of the folder) is sent in
//! the coding `Accept-Encoding` prefers, each variant a representation of its own (its own ETag,
//! ranges of its own bytes). `Cache-Control` comes from glob rules in `[site] cache_control`.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nimbus_api::ApiError;

use crate::api::{error, method_not_allowed, read, respond};
use crate::compress::{self, Coding, VARIANT_OF};
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

    /// The object a key from [`site_key`] names: the exact key, a folder's index document, or none.
    async fn resolve(&self, key: &str) -> Result<Option<Stored>, BlobError> {
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

    /// The representation of `found` to send (RFC 9110 §12.5.3): the variant in the coding the
    /// client prefers among those kept beside it, or `found` itself; with whether it has variants
    /// at all (its responses then `Vary: accept-encoding`). A variant made from other content than
    /// `found`'s (the file was replaced through the API since) is not one.
    async fn negotiate(&self, found: Stored, headers: &HeaderMap) -> Result<(Stored, Option<Coding>, bool), BlobError> {
        let mut variants = Vec::new();
        for coding in Coding::ALL {
            if let Some(variant) = self.record(&format!("{}{}", found.info.key, coding.suffix())).await?
                && variant.info.metadata.get(VARIANT_OF).is_none_or(|of| *of == found.info.etag)
            {
                variants.push((coding, variant));
            }
        }
        let available: Vec<Coding> = variants.iter().map(|(c, _)| *c).collect();
        let Some(coding) = compress::choose(headers, &available) else {
            return Ok((found, None, !variants.is_empty()));
        };
        let (_, mut variant) = variants.into_iter().find(|(c, _)| *c == coding).expect("chosen among them");
        // The representation's type is the file's; its coding says how it is compressed.
        variant.info.content_type = found.info.content_type;
        Ok((variant, Some(coding), true))
    }

    fn cache_control(&self, key: &str) -> Option<HeaderValue> {
        self.cache_rules.iter().find(|(glob, _)| glob.is_match(key)).map(|(_, v)| v.clone())
    }
}

async fn serve(State(site): State<Site>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let (method, path, headers) = (&parts.method, parts.uri.path(), &parts.headers);
    // A HEAD answers what its GET would, error text included (RFC 9110 §9.3.2).
    let shown = if method == Method::HEAD { &Method::GET } else { method };
    let not_found = || ApiError::not_found(format!("no route or page matches {shown} {path}")).into_response();
    let key = match site_key(path) {
        Ok(key) => key,
        Err(why) => return ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", why).into_response(),
    };
    let found = match site.resolve(&key).await {
        Ok(found) => found,
        Err(e) => return error(e).into_response(),
    };
    if method != Method::GET && method != Method::HEAD {
        // RFC 9110 §15.5.6: a page refuses other methods with 405, saying which it allows.
        return if found.is_some() { method_not_allowed(method, "GET, HEAD") } else { not_found() };
    }
    let (info, status) = match found {
        Some(info) => (info, StatusCode::OK),
        None => {
            let last = path.rsplit('/').next().unwrap_or("");
            let fallback = match (site.spa && !last.contains('.'), &site.error_document) {
                (true, _) => Some((site.index.clone(), StatusCode::OK)),
                (false, Some(doc)) => Some((doc.clone(), StatusCode::NOT_FOUND)),
                (false, None) => None,
            };
            let Some((key, status)) = fallback else { return not_found() };
            match site.blobs.find(SITE_CONTAINER, &key).await {
                Ok(info) => (info, status),
                Err(_) => return not_found(),
            }
        }
    };
    match page(&site, info, status, method, headers).await {
        Ok(response) => response,
        Err(e) => error(e).into_response(),
    }
}

/// The key a request path names: percent-decoded, dot segments removed and empty segments merged
/// (RFC 3986 §6.2.2; nginx does the same), `/` at the end for a folder. A path that climbs above
/// the root or holds control characters is refused (nginx refuses both with 400 too).
fn site_key(path: &str) -> Result<String, &'static str> {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    if decoded.chars().any(char::is_control) {
        return Err("the path holds control characters");
    }
    let mut segments: Vec<&str> = Vec::new();
    let mut folder = false;
    for segment in decoded.split('/') {
        folder = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or("the path climbs above the site's root")?;
            }
            s => segments.push(s),
        }
    }
    let mut key = segments.join("/");
    if folder && !key.is_empty() {
        key.push('/');
    }
    Ok(key)
}

/// A page (or, with another `status`, the error document) in the representation the client
/// accepts, answered by RFC 9110's preconditions and ranges ([`read`]).
async fn page(
    site: &Site,
    found: Stored,
    status: StatusCode,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, BlobError> {
    let cache = site.cache_control(&found.info.key);
    let (chosen, coding, varies) = site.negotiate(found, headers).await?;
    let mut response = if status == StatusCode::OK {
        // A multipart body cannot say its parts are compressed: several ranges of a compressed
        // representation get all of it.
        read(&site.blobs, chosen, method, headers, coding.is_none()).await?
    } else {
        // The error document stands in for a page that is missing: the request's preconditions
        // and Range are about that page, so they are ignored (RFC 9110 §13.2.1).
        let mut response = respond(site.blobs.open(chosen, None).await?, false, method == Method::HEAD);
        *response.status_mut() = status;
        response
    };
    let sent = response.status();
    let carries_body = sent.is_success() || status != StatusCode::OK;
    let h = response.headers_mut();
    if let Some(coding) = coding
        && carries_body
    {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
    }
    if varies {
        // RFC 9110 §12.5.5, and §15.4.5 for a 304.
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if let Some(cache) = cache
        && (carries_body || sent == StatusCode::NOT_MODIFIED)
    {
        h.insert(header::CACHE_CONTROL, cache);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize_to_keys() {
        for (path, key) in [
            ("/", ""),
            ("/index.html", "index.html"),
            ("/docs/", "docs/"),
            ("/docs", "docs"),
            ("/%2e/a.txt", "a.txt"),
            ("/docs/%2e%2e/a.txt", "a.txt"),
            ("/docs%2Findex.html", "docs/index.html"),
            ("//a.txt", "a.txt"),
            ("/docs//index.html", "docs/index.html"),
            ("/docs/.", "docs/"),
            ("/caf%C3%A9.txt", "caf\u{e9}.txt"),
            ("/a%20b.txt", "a b.txt"),
        ] {
            assert_eq!(site_key(path).as_deref(), Ok(key), "{path}");
        }
        for bad in ["/..", "/%2e%2e/a.txt", "/a/../../b", "/a.txt%00", "/a%0Ab"] {
            assert!(site_key(bad).is_err(), "{bad}");
        }
    }
}
