//! `[[routes]]` entries compiled for the request path: pattern, methods, and each policy in the
//! form it runs in. Matching picks the most specific pattern whose methods fit. The manifest's
//! values arrive typed (`nimbus-config` parsed and checked them); nothing here parses them again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method};
use nimbus_api::RoutePolicy;
use nimbus_api::body::{End, Watch};
use nimbus_config::{AuthMode, CorsSection, HeaderTransform, Manifest, Origins, PathPattern, RouteSection};
use nimbus_store::Store;
use serde_json::Value;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::limit::{Quota, RateLimit};
use crate::proxy::Upstream;

pub(crate) enum Backend {
    Function,
    Site,
    /// The AI gateway (`nimbus-ai`).
    Ai,
    Upstream(Upstream),
}

pub(crate) struct Route {
    /// The `[[routes]]` path, or `default` for function routes no entry covers.
    pub label: Arc<str>,
    pub pattern: Option<PathPattern>,
    /// Empty means every method.
    pub methods: Vec<Method>,
    pub auth: AuthMode,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub claims: BTreeMap<String, String>,
    pub rate: Option<RateLimit>,
    pub quota: Option<Quota>,
    pub cors: Option<CorsLayer>,
    /// The effective timeout and body limit (the route's, else the server's), computed once and
    /// handed to the backend with the request.
    pub policy: RoutePolicy,
    pub backend: Backend,
    pub rewrite_prefix: Option<String>,
    pub request_headers: Transform,
    pub response_headers: Transform,
    pub metrics: RouteMetrics,
}

#[derive(Default)]
pub(crate) struct Transform {
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Transform {
    fn new(t: &HeaderTransform) -> Self {
        Self { set: t.set.clone(), remove: t.remove.clone() }
    }

    pub fn apply(&self, headers: &mut axum::http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Per-route Prometheus handles, made once so that a request does not look them up.
pub(crate) struct RouteMetrics {
    label: Arc<str>,
    by_class: [metrics::Counter; 5],
    duration: metrics::Histogram,
    bytes: metrics::Counter,
    /// By how response bodies ended: complete, failed, abandoned.
    ends: [metrics::Counter; 3],
}

/// Watches a route's response body on its way to the client (frame by frame, nothing held back)
/// and records, at its end, the bytes delivered and how it ended.
pub(crate) struct Delivered {
    route: Arc<Route>,
    bytes: u64,
}

impl Delivered {
    pub fn new(route: Arc<Route>) -> Self {
        Self { route, bytes: 0 }
    }
}

impl Watch for Delivered {
    fn frame(&mut self, data: &bytes::Bytes) {
        self.bytes += data.len() as u64;
    }

    fn end(&mut self, end: End) {
        self.route.metrics.delivered(self.bytes, end);
    }
}

impl RouteMetrics {
    fn new(label: &Arc<str>) -> Self {
        let class = |c: &'static str| metrics::counter!("nimbus_gateway_requests_total", "route" => label.to_string(), "class" => c);
        Self {
            label: label.clone(),
            by_class: [class("1xx"), class("2xx"), class("3xx"), class("4xx"), class("5xx")],
            duration: metrics::histogram!("nimbus_gateway_request_duration_seconds", "route" => label.to_string()),
            bytes: metrics::counter!("nimbus_gateway_response_bytes_total", "route" => label.to_string()),
            ends: ["complete", "failed", "abandoned"].map(|end| {
                metrics::counter!("nimbus_gateway_responses_ended_total", "route" => label.to_string(), "end" => end)
            }),
        }
    }

    /// A response body's end: how many bytes it delivered, and how it ended.
    fn delivered(&self, bytes: u64, end: End) {
        self.bytes.increment(bytes);
        let i = match end {
            End::Complete => 0,
            End::Failed => 1,
            End::Abandoned => 2,
        };
        self.ends[i].increment(1);
    }

    pub fn record(&self, status: axum::http::StatusCode, elapsed: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }

    pub fn rejected(&self, policy: &'static str) {
        metrics::counter!("nimbus_gateway_rejections_total", "route" => self.label.to_string(), "policy" => policy)
            .increment(1);
    }
}

/// A route's effective settings: its own timeout and body limit, else the server's; a body limit
/// never above `[server] max_request_body`.
fn policy(manifest: &Manifest, timeout: Option<Duration>, max_body: Option<u64>, respond_async: bool) -> RoutePolicy {
    let server = &manifest.server;
    RoutePolicy {
        semantic_cache: false,
        timeout: timeout.unwrap_or(server.request_timeout.get()),
        own_timeout: timeout,
        respond_async,
        max_body: max_body.map_or(server.max_request_body.0, |limit| limit.min(server.max_request_body.0)),
    }
}

impl Route {
    pub fn compile(section: &RouteSection, manifest: &Manifest, store: &Arc<dyn Store>) -> Result<Self, String> {
        let label: Arc<str> = section.path.to_string().into();
        let backend = match &section.backend {
            nimbus_config::Backend::Function => Backend::Function,
            nimbus_config::Backend::Site => Backend::Site,
            nimbus_config::Backend::Ai => Backend::Ai,
            // `nimbus-config` checked that it has a scheme and a host.
            nimbus_config::Backend::Upstream(uri) => {
                Backend::Upstream(Upstream::new(uri).ok_or_else(|| format!("backend \"{uri}\" has no scheme or host"))?)
            }
        };
        let cors = section.cors.as_ref().or(manifest.gateway.cors.as_ref()).map(|c| cors_layer(c, &section.methods));
        Ok(Self {
            pattern: Some(section.path.clone()),
            methods: section.methods.clone(),
            // A route that says nothing about authentication requires a token, like the default.
            auth: section.auth.unwrap_or(AuthMode::Jwt),
            scopes: section.scopes.clone(),
            roles: section.roles.clone(),
            claims: section.claims.clone(),
            rate: section.rate_limit.as_ref().map(RateLimit::new),
            quota: section.quota.as_ref().map(|q| Quota::new(&label, q, store.clone())),
            cors,
            policy: RoutePolicy {
                semantic_cache: section.semantic_cache,
                ..policy(
                    manifest,
                    section.timeout.map(|t| t.get()),
                    section.max_body.map(|b| b.0),
                    section.respond_async,
                )
            },
            backend,
            rewrite_prefix: section.rewrite_prefix.clone(),
            request_headers: Transform::new(&section.request_headers),
            response_headers: Transform::new(&section.response_headers),
            metrics: RouteMetrics::new(&label),
            label,
        })
    }

    /// The policy of function routes no `[[routes]]` entry covers: a valid token, nothing more.
    pub fn default_for_functions(manifest: &Manifest) -> Self {
        let label: Arc<str> = "default".into();
        Self {
            pattern: None,
            methods: Vec::new(),
            auth: AuthMode::Jwt,
            scopes: Vec::new(),
            roles: Vec::new(),
            claims: BTreeMap::new(),
            rate: None,
            quota: None,
            cors: manifest.gateway.cors.as_ref().map(|c| cors_layer(c, &[])),
            policy: policy(manifest, None, None, false),
            backend: Backend::Function,
            rewrite_prefix: None,
            request_headers: Transform::default(),
            response_headers: Transform::default(),
            metrics: RouteMetrics::new(&label),
            label,
        }
    }

    /// Whether the route's pattern matches `path`, whatever the method.
    pub fn claims(&self, path: &str) -> bool {
        self.pattern.as_ref().is_some_and(|p| p.capture(path).is_some())
    }

    /// Whether the route takes `method` (HEAD wherever GET is).
    pub fn allows(&self, method: &Method) -> bool {
        self.methods.is_empty()
            || self.methods.contains(method)
            || (method == Method::HEAD && self.methods.contains(&Method::GET))
    }

    /// The path the backend sees: the matched prefix replaced when the route rewrites it.
    pub fn backend_path<'p>(&self, path: &'p str) -> std::borrow::Cow<'p, str> {
        let (Some(prefix), Some(pattern)) = (&self.rewrite_prefix, &self.pattern) else { return path.into() };
        let Some(len) = pattern.prefix_len(path) else { return path.into() };
        let rest = &path[len..];
        let base = prefix.trim_end_matches('/');
        match (base.is_empty(), rest.is_empty()) {
            (true, true) => "/".into(),
            (true, false) => rest.into(),
            (false, _) => format!("{base}{rest}").into(),
        }
    }
}

fn cors_layer(c: &CorsSection, route_methods: &[Method]) -> CorsLayer {
    let origin = match &c.origins {
        Origins::Any => AllowOrigin::any(),
        Origins::List(origins) => AllowOrigin::list(origins.iter().cloned()),
    };
    let methods: Vec<Method> = match (c.methods.is_empty(), route_methods.is_empty()) {
        (false, _) => c.methods.clone(),
        (true, false) => route_methods.to_vec(),
        (true, true) => vec![Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE],
    };
    let headers: Vec<HeaderName> = match c.headers.is_empty() {
        true => vec![axum::http::header::AUTHORIZATION, axum::http::header::CONTENT_TYPE],
        false => c.headers.clone(),
    };
    let mut layer = CorsLayer::new()
        .allow_origin(origin)
        .allow_methods(methods)
        .allow_headers(headers)
        .expose_headers(c.expose_headers.clone())
        .allow_credentials(c.credentials);
    if let Some(max_age) = c.max_age {
        layer = layer.max_age(max_age.get());
    }
    layer
}

/// Whether the token's claims grant the route: every required scope (`scope`, space-separated,
/// or Entra's `scp`), one of the required roles, and every required claim value. Answers the
/// missing part.
pub(crate) fn authorize(route: &Route, claims: &Value) -> Result<(), String> {
    let granted = strings(claims.get("scope")).chain(strings(claims.get("scp"))).collect::<Vec<_>>();
    let missing: Vec<&str> = route.scopes.iter().map(String::as_str).filter(|s| !granted.contains(s)).collect();
    if !missing.is_empty() {
        return Err(format!("the token lacks scope {}", missing.join(" ")));
    }
    if !route.roles.is_empty() && !strings(claims.get("roles")).any(|r| route.roles.iter().any(|need| need == r)) {
        return Err(format!("the token has none of the roles {}", route.roles.join(", ")));
    }
    for (name, want) in &route.claims {
        let fits = match claims.get(name) {
            Some(Value::Array(items)) => items.iter().any(|v| claim_equals(v, want)),
            Some(v) => claim_equals(v, want),
            None => false,
        };
        if !fits {
            return Err(format!("the token's `{name}` claim is not \"{want}\""));
        }
    }
    Ok(())
}

fn claim_equals(v: &Value, want: &str) -> bool {
    match v {
        Value::String(s) => s == want,
        Value::Bool(_) | Value::Number(_) => serde_json::from_str::<Value>(want).is_ok_and(|w| w == *v),
        _ => false,
    }
}

/// A claim as a list of strings: a space-separated string or an array of strings.
fn strings(v: Option<&Value>) -> Box<dyn Iterator<Item = &str> + '_> {
    match v {
        Some(Value::String(s)) => Box::new(s.split_whitespace()),
        Some(Value::Array(items)) => Box::new(items.iter().filter_map(Value::as_str)),
        _ => Box::new(std::iter::empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(toml: &str) -> Route {
        let manifest = nimbus_config::parse(std::path::Path::new("nimbus.toml"), toml).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let store = runtime.block_on(nimbus_store::open("sqlite", dir.path(), nimbus_store::CORE_MIGRATIONS)).unwrap();
        Route::compile(&manifest.routes[0], &manifest, &store).unwrap()
    }

    #[test]
    fn authorizes_scopes_roles_and_claims() {
        let r = route(
            "[[routes]]\npath = \"/api/*\"\nscopes = [\"chat\", \"read\"]\nroles = [\"admin\", \"ops\"]\nclaims = { tid = \"acme\" }\n",
        );
        let ok = serde_json::json!({"scope": "openid chat read", "roles": ["ops"], "tid": "acme"});
        assert_eq!(authorize(&r, &ok), Ok(()));
        let entra = serde_json::json!({"scp": "chat read", "roles": "admin", "tid": ["x", "acme"]});
        assert_eq!(authorize(&r, &entra), Ok(()));
        assert!(
            authorize(&r, &serde_json::json!({"scope": "chat", "roles": ["ops"], "tid": "acme"}))
                .unwrap_err()
                .contains("read")
        );
        assert!(
            authorize(&r, &serde_json::json!({"scope": "chat read", "roles": ["user"], "tid": "acme"}))
                .unwrap_err()
                .contains("roles")
        );
        assert!(
            authorize(&r, &serde_json::json!({"scope": "chat read", "roles": ["ops"], "tid": "evil"}))
                .unwrap_err()
                .contains("tid")
        );
    }

    #[test]
    fn rewrites_the_matched_prefix() {
        let r = route(
            "[[routes]]\npath = \"/legacy/{v}/*\"\nrewrite_prefix = \"/api\"\nbackend = \"http://127.0.0.1:1\"\n",
        );
        assert_eq!(r.backend_path("/legacy/v1/items/2"), "/api/items/2");
        assert_eq!(r.backend_path("/legacy/v1"), "/api");
        let root =
            route("[[routes]]\npath = \"/legacy/*\"\nrewrite_prefix = \"/\"\nbackend = \"http://127.0.0.1:1\"\n");
        assert_eq!(root.backend_path("/legacy/a"), "/a");
        assert_eq!(root.backend_path("/legacy"), "/");
        assert!(root.claims("/legacy/x") && root.allows(&Method::POST));
        assert_eq!(root.auth, AuthMode::Jwt);
    }
}
