//! The one outbound HTTP client of the gateway: a pooled hyper client over rustls (aws-lc-rs, the
//! system's root certificates) for upstream proxying and for fetching issuers' signing keys.

use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

pub(crate) fn build() -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let https = match builder.with_provider_and_native_roots(provider.clone()) {
        Ok(b) => b.https_or_http().enable_all_versions().wrap_connector(http),
        Err(e) => {
            // Plain-http upstreams and local issuers still work; https ones will fail to verify.
            tracing::warn!(error = %e, "no system root certificates found; https upstreams and issuers cannot be verified");
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth());
            match config {
                Ok(config) => hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_or_http()
                    .enable_all_versions()
                    .wrap_connector(http),
                Err(_) => unreachable!("aws-lc-rs supports the default protocol versions"),
            }
        }
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https)
}

/// GETs a small JSON document (discovery, JWKS) with a time and size bound.
pub(crate) async fn get_json(client: &HttpClient, url: &str) -> Result<serde_json::Value, String> {
    const LIMIT: usize = 1024 * 1024;
    let uri: axum::http::Uri = url.parse().map_err(|_| format!("\"{url}\" is not a valid URL"))?;
    let request = axum::http::Request::get(uri)
        .header("accept", "application/json")
        .header("user-agent", concat!("nimbus/", env!("CARGO_PKG_VERSION")))
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| format!("GET {url} timed out"))?
        .map_err(|e| format!("GET {url} failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {url} answered {}", response.status()));
    }
    let body = http_body_util::Limited::new(response.into_body(), LIMIT);
    let bytes = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .map_err(|_| format!("GET {url} timed out"))?
        .map_err(|e| format!("GET {url}: {e}"))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| format!("GET {url}: not JSON: {e}"))
}
