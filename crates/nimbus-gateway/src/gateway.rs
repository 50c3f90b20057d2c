//! The policy pipeline in front of every backend. A request to an app path finds the most specific
//! `[[routes]]` entry that fits (or, on a function route no entry covers, the default: a valid
//! token), then runs its policies in this fixed order:
//!
//! CORS → size limit → authentication → authorization → rate limit → quota → request transforms
//! → backend → response transforms.
//!
//! Paths that neither a route nor a function claims go to the static site, untouched.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nimbus_api::body::Watched;
use nimbus_api::{ApiError, Caller, RouteLabel};
use nimbus_config::{AuthMode, Manifest};
use nimbus_store::Store;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use tower::util::BoxCloneSyncService;

use crate::client::HttpClient;
use crate::jwt::Verifier;
use crate::keys::{ApiKeys, KeyRejection};
use crate::limit::LimitHeaders;
use crate::route::{Backend, Delivered, Route};
use nimbus_api::Subject;

/// The components a route can lead to, as the binary wires them.
#[derive(Clone)]
pub struct Backends {
    /// Serves function routes (and answers 404 for paths no function has).
    pub functions: Router,
    /// Whether some function's route matches a path, whatever the method.
    pub serves_function: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    /// The static site: what serves paths nothing else claims.
    pub site: Router,
    /// The app's HTTP operations, for the OpenAPI document.
    pub operations: Arc<dyn Fn() -> Vec<Operation> + Send + Sync>,
    /// The AI gateway's OpenAI-compatible API, when the app has `[ai]`.
    pub ai: Option<Router>,
}

/// One function route, as the OpenAPI document describes it.
#[derive(Debug, Clone)]
pub struct Operation {
    pub path: String,
    /// Empty means every method.
    pub methods: Vec<String>,
    pub function: String,
}

#[derive(Debug, thiserror::Error)]
#[error("routes[{index}]: {message}")]
pub struct GatewayError {
    index: usize,
    message: String,
}

/// The gateway's policies, compiled from the manifest.
pub struct Gateway {
    routes: Vec<Arc<Route>>,
    default_route: Arc<Route>,
    verifier: Arc<Verifier>,
    keys: ApiKeys,
    client: HttpClient,
    pub(crate) app: String,
    pub(crate) openid_configuration: Vec<String>,
    /// Fetching issuers' keys, forgetting idle rate-limit state, purging old quota periods.
    tasks: nimbus_api::Tasks,
    /// `[server] trusted_proxies`: only these peers may name the client in `X-Forwarded-For`.
    trusted_proxies: Vec<nimbus_api::Cidr>,
}

type Svc = BoxCloneSyncService<Request, Response, Infallible>;

struct Dispatch {
    gateway: Arc<Gateway>,
    /// Index-aligned with `gateway.routes`: each route's pipeline wrapped in its CORS layer.
    services: Vec<Svc>,
    default_service: Svc,
    backends: Backends,
}

impl Gateway {
    /// Compiles `[[routes]]` (already validated by `nimbus-config`) and starts the background work:
    /// fetching issuers' keys and forgetting idle rate-limit state.
    pub fn start(
        manifest: &Manifest,
        app: &str,
        store: Arc<dyn Store>,
        own_issuer: Option<crate::jwt::LocalIssuer>,
    ) -> Result<Arc<Self>, GatewayError> {
        let client = crate::client::build();
        let mut routes = Vec::new();
        for (index, section) in manifest.routes.iter().enumerate() {
            let route = Route::compile(section, manifest, &store).map_err(|message| GatewayError { index, message })?;
            routes.push(Arc::new(route));
        }
        // Most specific first; among equals, the order of the manifest.
        routes.sort_by_key(|r| r.pattern.as_ref().map(|p| p.specificity()));
        let tasks = nimbus_api::Tasks::new("gateway");
        let verifier = Arc::new(Verifier::new(manifest, own_issuer, client.clone(), tasks.clone()));
        let gateway = Arc::new(Self {
            default_route: Arc::new(Route::default_for_functions(manifest)),
            routes,
            openid_configuration: verifier
                .issuers()
                .iter()
                .map(|i| format!("{}/.well-known/openid-configuration", i.issuer.trim_end_matches('/')))
                .collect(),
            verifier,
            keys: ApiKeys::new(store),
            client,
            app: app.to_owned(),
            tasks: tasks.clone(),
            trusted_proxies: manifest.server.trusted_proxies.clone(),
        });
        let warming = gateway.verifier.clone();
        tasks.spawn(async move { warming.warm().await });
        let weak = Arc::downgrade(&gateway);
        let mut rounds: u64 = 0;
        tasks.every("housekeeping", Duration::from_secs(60), move || {
            let (weak, round) = (weak.clone(), rounds);
            rounds += 1;
            async move {
                if let Some(gateway) = weak.upgrade() {
                    gateway.housekeep(round).await;
                }
            }
        });
        Ok(gateway)
    }

    /// Stops the background work (key fetches, housekeeping) within `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.tasks.shutdown(grace).await;
    }

    /// `[gateway] cors` as a layer, for other components' browser-facing routes (the identity
    /// provider's token, userinfo and JWKS endpoints, called by single-page apps on other origins).
    pub fn global_cors(&self) -> Option<tower_http::cors::CorsLayer> {
        self.default_route.cors.clone()
    }

    pub fn keys(&self) -> &ApiKeys {
        &self.keys
    }

    /// Serves every app path (the binary sets it as the fallback after the platform's routes).
    pub fn router(self: &Arc<Self>, backends: Backends) -> Router {
        let services = self.routes.iter().map(|r| pipeline(self.clone(), r.clone(), backends.clone())).collect();
        let default_service = pipeline(self.clone(), self.default_route.clone(), backends.clone());
        let dispatch = Arc::new(Dispatch { gateway: self.clone(), services, default_service, backends });
        Router::new().fallback(dispatch_request).with_state(dispatch)
    }

    /// `GET /_nimbus/openapi.json`: public, like the API it describes.
    pub fn openapi_router(self: &Arc<Self>, backends: &Backends) -> Router {
        let gateway = self.clone();
        let operations = backends.operations.clone();
        Router::new().route(
            "/_nimbus/openapi.json",
            axum::routing::get(move || {
                let doc = crate::openapi::document(&gateway, &operations());
                async move { axum::Json(doc) }
            }),
        )
    }

    /// What governs `method path`: the most specific `[[routes]]` pattern that matches the path
    /// claims it for every method — the entry of that pattern whose methods fit, else `405` (a
    /// method never falls through to a less specific, weaker route). No entry: the default policy
    /// when a function serves the path, else the site (its paths are public). A function-backed
    /// entry where no function serves the path leaves it to the site, so that a broad pattern like
    /// `/*` does not hide the site.
    fn find(&self, method: &Method, path: &str, serves_function: &dyn Fn(&str) -> bool) -> Governs {
        let serves = std::cell::OnceCell::new();
        let serves = || *serves.get_or_init(|| serves_function(path));
        let Some(first) = self.routes.iter().position(|r| r.claims(path)) else {
            return if serves() { Governs::Default } else { Governs::Site };
        };
        let label = &self.routes[first].label;
        let claimants = || self.routes.iter().enumerate().filter(|(_, r)| r.label == *label);
        let function_serves = |route: &Route| {
            let rewritten = route.backend_path(path);
            if rewritten == path { serves() } else { serves_function(&rewritten) }
        };
        match claimants().find(|(_, r)| r.allows(method)) {
            Some((i, route)) if matches!(route.backend, Backend::Function) => {
                if function_serves(route) {
                    Governs::Route(i)
                } else {
                    Governs::Site
                }
            }
            Some((i, _)) => Governs::Route(i),
            None if claimants().all(|(_, r)| matches!(r.backend, Backend::Function) && !function_serves(r)) => {
                Governs::Site
            }
            None => {
                let mut allow: Vec<Method> = Vec::new();
                for (_, route) in claimants() {
                    for m in &route.methods {
                        if !allow.contains(m) {
                            allow.push(m.clone());
                        }
                    }
                }
                if allow.contains(&Method::GET) && !allow.contains(&Method::HEAD) {
                    allow.push(Method::HEAD);
                }
                Governs::MethodNotAllowed(allow)
            }
        }
    }

    pub(crate) fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    pub(crate) fn default_route(&self) -> &Route {
        &self.default_route
    }
}

/// What governs a request's path and method.
enum Governs {
    /// The `[[routes]]` entry at this index.
    Route(usize),
    /// The default policy of function routes.
    Default,
    /// Nothing: the site serves it.
    Site,
    /// An entry claims the path but allows other methods: these.
    MethodNotAllowed(Vec<Method>),
}

/// `405` with `Allow`, in the JSON error shape.
fn method_not_allowed(method: &Method, path: &str, allow: &[Method]) -> Response {
    let allowed: Vec<&str> = allow.iter().map(Method::as_str).collect();
    let message = format!("{method} is not allowed on {path} (allowed: {})", allowed.join(", "));
    let mut response = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message).into_response();
    if let Ok(value) = HeaderValue::from_str(&allowed.join(", ")) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

async fn dispatch_request(State(d): State<Arc<Dispatch>>, req: Request) -> Response {
    if let Err(why) = check_path(req.uri().path()) {
        return ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", why).into_response();
    }
    // A CORS preflight is matched by the method it asks about.
    let method = match (req.method(), req.headers().get(header::ACCESS_CONTROL_REQUEST_METHOD)) {
        (&Method::OPTIONS, Some(asked)) if req.headers().contains_key(header::ORIGIN) => {
            Method::from_bytes(asked.as_bytes()).unwrap_or(Method::OPTIONS)
        }
        (m, _) => m.clone(),
    };
    let service = match d.gateway.find(&method, req.uri().path(), d.backends.serves_function.as_ref()) {
        Governs::Default => d.default_service.clone(),
        Governs::Route(i) => d.services[i].clone(),
        Governs::Site => return d.backends.site.clone().oneshot(req).await.unwrap_or_else(|e| match e {}),
        Governs::MethodNotAllowed(allow) => return method_not_allowed(&method, req.uri().path(), &allow),
    };
    service.oneshot(req).await.unwrap_or_else(|e| match e {})
}

/// One route's policies as a service, inside its CORS layer (outermost, so that refusals carry
/// CORS headers a browser script can read).
fn pipeline(gateway: Arc<Gateway>, route: Arc<Route>, backends: Backends) -> Svc {
    let cors = route.cors.clone();
    let inner = tower::service_fn(move |req: Request| {
        let (gateway, route, backends) = (gateway.clone(), route.clone(), backends.clone());
        async move {
            let started = Instant::now();
            let mut response = match run(&gateway, &route, &backends, req).await {
                Ok(r) => r,
                // OpenAI's SDKs read their own error shape: the route's refusals speak it too.
                Err(r) if matches!(route.backend, Backend::Ai) => openai_shaped(r).await,
                Err(r) => r,
            };
            route.metrics.record(response.status(), started.elapsed());
            if response.extensions().get::<RouteLabel>().is_none() {
                response.extensions_mut().insert(RouteLabel(route.label.clone()));
            }
            let watched = Delivered::new(route.clone());
            Ok::<_, Infallible>(response.map(|body| axum::body::Body::new(Watched::new(body, watched))))
        }
    });
    match cors {
        Some(layer) => BoxCloneSyncService::new(tower::Layer::layer(&layer, inner)),
        None => BoxCloneSyncService::new(inner),
    }
}

/// The route's policies in their fixed order, each one function that passes the request on or
/// answers for it.
async fn run(gateway: &Gateway, route: &Route, backends: &Backends, mut req: Request) -> Result<Response, Response> {
    check_size(route, &req)?;
    let caller = authenticate(gateway, route, &mut req).await?;
    authorize(route, &caller)?;
    let limit_headers = limit(route, client_ip(gateway, &req), req.headers(), &caller).await?;
    let path = transform_request(route, &mut req, caller);
    let mut response = forward(gateway, route, backends, req, &path).await?;
    route.response_headers.apply(response.headers_mut());
    limit_headers.apply(response.headers_mut());
    Ok(response)
}

/// Who a request comes from, once its credentials are checked.
#[derive(Default)]
struct Authenticated {
    claims: Option<Arc<Value>>,
    api_key: Option<String>,
}

/// A body the request declares larger than the route takes is refused before anything else.
// Each policy answers the refusal itself (a `Response`); refusals are the rare path.
#[allow(clippy::result_large_err)]
fn check_size(route: &Route, req: &Request) -> Result<(), Response> {
    let limit = route.policy.max_body;
    if nimbus_api::body::declared_length(req.headers()).is_some_and(|n| n > limit) {
        route.metrics.rejected("size");
        return Err(nimbus_api::body::payload_too_large(limit).into_response());
    }
    Ok(())
}

async fn authenticate(gateway: &Gateway, route: &Route, req: &mut Request) -> Result<Authenticated, Response> {
    match route.auth {
        AuthMode::Anonymous => Ok(Authenticated::default()),
        AuthMode::Jwt => {
            let Some(token) = nimbus_api::bearer(req.headers()) else {
                route.metrics.rejected("authentication");
                return Err(unauthorized("unauthorized", "this route requires a bearer token", None));
            };
            match gateway.verifier.verify(token).await {
                Ok(claims) => Ok(Authenticated { claims: Some(claims), api_key: None }),
                Err(e) => {
                    route.metrics.rejected("authentication");
                    Err(unauthorized("invalid_token", &e.0, Some("invalid_token")))
                }
            }
        }
        AuthMode::ApiKey => {
            // Where clients' SDKs put a key: APIM's headers, Azure OpenAI's `api-key`, or (OpenAI's
            // SDKs) a bearer token.
            let header = ["x-api-key", "ocp-apim-subscription-key", "api-key", "authorization"]
                .into_iter()
                .find(|name| req.headers().contains_key(*name))
                .unwrap_or("x-api-key");
            let presented = match header {
                "authorization" => nimbus_api::bearer(req.headers()),
                name => req.headers().get(name).and_then(|v| v.to_str().ok()),
            };
            let Some(presented) = presented else {
                route.metrics.rejected("authentication");
                return Err(key_refused(
                    "api_key_required",
                    "this route requires an API key in `x-api-key` (or `api-key`, or as a bearer token)",
                ));
            };
            let info = match gateway.keys.verify(presented).await {
                Ok(Ok(info)) => info,
                Ok(Err(why)) => {
                    route.metrics.rejected("authentication");
                    return Err(match why {
                        KeyRejection::Unknown => key_refused("invalid_api_key", "the API key is not valid"),
                        KeyRejection::Expired => key_refused("api_key_expired", "the API key has expired"),
                        KeyRejection::Revoked => key_refused("api_key_revoked", "the API key has been revoked"),
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read API keys");
                    return Err(store_unavailable());
                }
            };
            if !info.routes.is_empty() && !info.routes.iter().any(|r| **r == *route.label) {
                route.metrics.rejected("authorization");
                let refusal =
                    ApiError::new(StatusCode::FORBIDDEN, "forbidden", "the API key is not valid for this route");
                return Err(refusal.into_response());
            }
            // The key is a secret between the client and the gateway: it goes no further.
            req.headers_mut().remove(header);
            let claims = Arc::new(json!({"api_key": {"id": info.id, "name": info.name}}));
            Ok(Authenticated { claims: Some(claims), api_key: Some(info.id) })
        }
    }
}

/// Scopes, roles and claim values a token must carry.
#[allow(clippy::result_large_err)]
fn authorize(route: &Route, caller: &Authenticated) -> Result<(), Response> {
    if route.auth == AuthMode::Jwt
        && let Some(claims) = &caller.claims
        && let Err(why) = crate::route::authorize(route, claims)
    {
        route.metrics.rejected("authorization");
        return Err(forbidden_scope(&why, &route.scopes));
    }
    Ok(())
}

/// The rate limit, then the quota; the headers that tell the client where it stands.
async fn limit(
    route: &Route,
    ip: std::net::IpAddr,
    request_headers: &axum::http::HeaderMap,
    caller: &Authenticated,
) -> Result<LimitHeaders, Response> {
    let mut headers = LimitHeaders::default();
    if route.rate.is_none() && route.quota.is_none() {
        return Ok(headers);
    }
    let subject =
        Subject { ip, headers: request_headers, claims: caller.claims.as_deref(), api_key: caller.api_key.as_deref() };
    if let Some(rate) = &route.rate
        && let Err(exceeded) = rate.check(subject.key(&rate.key), &mut headers)
    {
        route.metrics.rejected("rate_limit");
        return Err(too_many("rate_limited", "too many requests; slow down", exceeded));
    }
    if let Some(quota) = &route.quota {
        match quota.take(&subject.key(&quota.key), &mut headers).await {
            Ok(Ok(())) => {}
            Ok(Err(exceeded)) => {
                route.metrics.rejected("quota");
                return Err(too_many("quota_exceeded", "the quota for this period is used up", exceeded));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot count the quota");
                return Err(store_unavailable());
            }
        }
    }
    Ok(headers)
}

/// The client's address: the peer's, or, from a trusted proxy, the one `X-Forwarded-For` names.
fn client_ip(gateway: &Gateway, req: &Request) -> std::net::IpAddr {
    let peer =
        req.extensions().get::<ConnectInfo<SocketAddr>>().map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    nimbus_api::client_ip(peer, req.headers(), &gateway.trusted_proxies)
}

/// The route's header changes, the caller's claims for the backend; answers the path the
/// backend sees.
fn transform_request(route: &Route, req: &mut Request, caller: Authenticated) -> String {
    route.request_headers.apply(req.headers_mut());
    if let Some(claims) = caller.claims {
        req.extensions_mut().insert(Caller(claims));
    }
    route.backend_path(req.uri().path()).into_owned()
}

/// Hands the request to the route's backend: a component with the route's policy in the
/// request's extensions, or an upstream URL.
async fn forward(
    gateway: &Gateway,
    route: &Route,
    backends: &Backends,
    mut req: Request,
    path: &str,
) -> Result<Response, Response> {
    let backend = match &route.backend {
        Backend::Upstream(upstream) => {
            let req = nimbus_api::body::limit_body(req, route.policy.max_body).map_err(|e| {
                route.metrics.rejected("size");
                e.into_response()
            })?;
            return Ok(upstream
                .forward(&gateway.client, req, path, route.policy.timeout, &gateway.trusted_proxies)
                .await);
        }
        Backend::Site => backends.site.clone(),
        Backend::Function => backends.functions.clone(),
        Backend::Ai => match &backends.ai {
            Some(ai) => ai.clone(),
            None => {
                let why = "this route's backend is the AI gateway, which this node does not run";
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ai_unavailable", why).into_response());
            }
        },
    };
    req.extensions_mut().insert(route.policy);
    if path != req.uri().path() {
        let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        if let Ok(uri) = format!("{path}{query}").parse() {
            *req.uri_mut() = uri;
        }
    }
    Ok(backend.oneshot(req).await.unwrap_or_else(|e| match e {}))
}

/// A refusal (`{"error": {"code", "message"}}`) in OpenAI's error shape: `type` (from the status)
/// and `param` added, as an AI route's clients expect.
async fn openai_shaped(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    let mut value: Value = match serde_json::from_slice(&bytes) {
        Ok(value @ Value::Object(_)) if value["error"].is_object() => value,
        _ => return Response::from_parts(parts, axum::body::Body::from(bytes)),
    };
    let kind = match parts.status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    };
    value["error"]["type"] = json!(kind);
    value["error"]["param"] = Value::Null;
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(value.to_string()))
}

/// Refuses paths that could mean another path to a backend than to the route matcher: `.` and
/// `..` segments, also percent-encoded or hidden behind an encoded `/` or `\`, and NUL.
fn check_path(path: &str) -> Result<(), &'static str> {
    for segment in path.split('/') {
        let decoded = percent_encoding::percent_decode_str(segment).collect::<Vec<u8>>();
        if decoded.contains(&0) {
            return Err("the path contains a NUL byte");
        }
        if decoded.split(|b| *b == b'/' || *b == b'\\').any(|part| part == b"." || part == b"..") {
            return Err("the path contains a `.` or `..` segment");
        }
    }
    Ok(())
}

/// A 401 with RFC 6750's `WWW-Authenticate` (the error code only when a token was presented).
fn unauthorized(code: &'static str, message: &str, error: Option<&str>) -> Response {
    let mut challenge = String::from("Bearer realm=\"nimbus\"");
    if let Some(error) = error {
        challenge.push_str(&format!(", error=\"{error}\", error_description=\"{}\"", quoted(message)));
    }
    with_challenge(ApiError::new(StatusCode::UNAUTHORIZED, code, message), &challenge)
}

fn key_refused(code: &'static str, message: &str) -> Response {
    with_challenge(
        ApiError::new(StatusCode::UNAUTHORIZED, code, message),
        "ApiKey realm=\"nimbus\", header=\"x-api-key\"",
    )
}

fn forbidden_scope(message: &str, scopes: &[String]) -> Response {
    let mut challenge =
        format!("Bearer realm=\"nimbus\", error=\"insufficient_scope\", error_description=\"{}\"", quoted(message));
    if !scopes.is_empty() {
        challenge.push_str(&format!(", scope=\"{}\"", quoted(&scopes.join(" "))));
    }
    with_challenge(ApiError::new(StatusCode::FORBIDDEN, "insufficient_scope", message), &challenge)
}

fn with_challenge(error: ApiError, challenge: &str) -> Response {
    let mut response = error.into_response();
    if let Ok(v) = HeaderValue::from_str(challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

/// Text fit for a quoted-string: printable ASCII without `"` and `\`.
fn quoted(s: &str) -> String {
    s.chars().map(|c| if c == '"' || c == '\\' { '\'' } else { c }).filter(|c| (' '..='~').contains(c)).collect()
}

fn too_many(code: &'static str, message: &str, exceeded: crate::limit::Exceeded) -> Response {
    let mut response = ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(exceeded.retry_after));
    exceeded.headers.apply(response.headers_mut());
    response
}

fn store_unavailable() -> Response {
    let mut response = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the gateway cannot reach its store; try again",
    )
    .into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Every minute: forget rate-limit state of idle clients; every hour: delete quota counters of
/// periods that are over. Ends when the gateway is dropped.
impl Gateway {
    /// Every minute: idle rate-limit state forgotten; every hour: old quota periods purged.
    async fn housekeep(&self, round: u64) {
        for route in &self.routes {
            if let Some(rate) = &route.rate {
                rate.housekeep();
            }
            if round.is_multiple_of(60)
                && let Some(quota) = &route.quota
                && let Err(e) = quota.housekeep().await
            {
                tracing::warn!(route = %route.label, error = %e, "cannot purge old quota counters");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_that_climb() {
        for ok in ["/", "/a/b", "/a%2Fb", "/files/.hidden", "/a/..b", "/v1.2/x"] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "/up/../secret",
            "/up/%2e%2e/secret",
            "/up/..%2fsecret",
            "/up/%2E/x",
            "/a/.",
            "/a\\..",
            "/a/%5c..%5cb",
            "/a%00",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quotes_challenge_text() {
        assert_eq!(quoted("a \"b\" \\ é"), "a 'b' ' ");
    }
}
