//! The upstream backend: a streaming reverse proxy over the pooled client. Bodies pass through
//! chunk by chunk both ways; hop-by-hop headers stay behind; `X-Forwarded-*` and the trace context
//! go along. A connection that cannot be made is retried for idempotent requests without a body.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use nimbus_api::{ApiError, TraceContext};

use crate::client::HttpClient;

const CONNECT_RETRIES: u32 = 2;

pub(crate) struct Upstream {
    scheme: axum::http::uri::Scheme,
    authority: axum::http::uri::Authority,
    /// The upstream URL's path without its trailing `/`, prepended to every request path.
    base_path: String,
}

impl Upstream {
    /// The upstream at `uri` (the manifest's, already checked); `None` without a scheme or host.
    pub fn new(uri: &Uri) -> Option<Self> {
        Some(Self {
            scheme: uri.scheme()?.clone(),
            authority: uri.authority()?.clone(),
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    pub async fn forward(
        &self,
        client: &HttpClient,
        req: Request,
        path: &str,
        timeout: Duration,
        trusted: &[nimbus_api::Cidr],
    ) -> Response {
        let (mut parts, body) = req.into_parts();
        let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        let target = format!("{}{}{query}", self.base_path, path);
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(if target.starts_with('/') { target } else { format!("/{target}") })
            .build();
        let Ok(uri) = uri else {
            return ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "the request path cannot be forwarded")
                .into_response();
        };
        let client_ip = parts.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let trace = parts.extensions.get::<TraceContext>().copied();
        let original_host = parts.headers.get(header::HOST).cloned();
        let mut headers = std::mem::take(&mut parts.headers);
        nimbus_api::strip_hop_by_hop(&mut headers);
        let platform: Vec<HeaderName> =
            headers.keys().filter(|n| n.as_str().starts_with("x-nimbus-")).cloned().collect();
        for name in platform {
            headers.remove(name);
        }
        if let Some(ip) = client_ip {
            // Only a trusted proxy's account of the hops before it is passed on; anyone else's
            // header is replaced, so a client cannot name another address upstream.
            let prior = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
            let forwarded = match prior {
                Some(prior) if nimbus_api::is_trusted(ip, trusted) => format!("{prior}, {ip}"),
                _ => ip.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&forwarded) {
                headers.insert(HeaderName::from_static("x-forwarded-for"), v);
            }
        }
        headers.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static("http"));
        if let Some(host) = original_host {
            headers.insert(HeaderName::from_static("x-forwarded-host"), host);
        }
        if let Ok(host) = HeaderValue::from_str(self.authority.as_str()) {
            headers.insert(header::HOST, host);
        }
        if let Some(trace) = trace
            && let Ok(v) = HeaderValue::from_str(&trace.traceparent())
        {
            headers.insert(HeaderName::from_static("traceparent"), v);
        }
        let retryable = is_idempotent(&parts.method) && axum::body::HttpBody::is_end_stream(&body);
        let method = parts.method.clone();
        let build = |body: Body| {
            let mut request = axum::http::Request::new(body);
            *request.method_mut() = method.clone();
            *request.uri_mut() = uri.clone();
            *request.headers_mut() = headers.clone();
            request
        };

        let deadline = tokio::time::Instant::now() + timeout;
        let mut attempt = 0;
        let mut body = Some(body);
        loop {
            let request = build(body.take().unwrap_or_else(Body::empty));
            match tokio::time::timeout_at(deadline, client.request(request)).await {
                Err(_) => {
                    return upstream_error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream_timeout",
                        "the upstream did not answer in time",
                    );
                }
                Ok(Ok(response)) => return stream_back(response),
                Ok(Err(e)) if e.is_connect() && retryable && attempt < CONNECT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "upstream connect failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
                Ok(Err(e)) if e.is_connect() => {
                    tracing::warn!(upstream = %self.authority, error = %e, "upstream unreachable");
                    return upstream_error(
                        StatusCode::BAD_GATEWAY,
                        "upstream_unreachable",
                        "the upstream cannot be reached",
                    );
                }
                Ok(Err(e)) => {
                    if nimbus_api::body::is_too_large(&e) {
                        return ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "payload_too_large",
                            "the request body is larger than this route accepts",
                        )
                        .into_response();
                    }
                    tracing::warn!(upstream = %self.authority, error = %e, "upstream failed");
                    return upstream_error(
                        StatusCode::BAD_GATEWAY,
                        "upstream_failed",
                        "the upstream closed the connection without an answer",
                    );
                }
            }
        }
    }
}

fn stream_back(response: Response<hyper::body::Incoming>) -> Response {
    let (mut parts, body) = response.into_parts();
    nimbus_api::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::new(body))
}

fn upstream_error(status: StatusCode, code: &'static str, message: &str) -> Response {
    ApiError::new(status, code, message).into_response()
}

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    use super::*;

    #[test]
    fn parses_upstreams_and_strips_hop_by_hop() {
        let up = Upstream::new(&"http://127.0.0.1:9000/base/".parse().unwrap()).unwrap();
        assert_eq!(up.base_path, "/base");
        assert_eq!(up.authority.as_str(), "127.0.0.1:9000");
        assert!(Upstream::new(&"/relative".parse().unwrap()).is_none());
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        nimbus_api::strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
