//! The AI gateway: OpenAI's `chat/completions`, `embeddings` and `models` endpoints in front of
//! OpenAI-compatible backends (`[[ai.backends]]`: OpenAI, Azure OpenAI, Ollama, vLLM, llama.cpp).
//!
//! It is a backend of the gateway (`backend = "ai"`), so a route's authentication, scopes and
//! limits apply before it; the caller's verified claims (`Caller`) say whom usage is metered to.
//! A request goes to the backends that serve its model, by priority then weight; a `429`, a
//! `5xx`, a refused key, no connection, a timeout, or a stream that ends before its first event
//! moves it to the next one, and when every one failed the round is tried again (`retries`),
//! waiting as `Retry-After` says. Once a byte has reached the client there is no failover: a
//! stream that breaks ends with an error event. Backends failing in a row are left out for a
//! cool-down (`circuit_breaker`). Token limits and quotas are reserved before the first call and
//! settled after the last (`limits.rs`). Metering: `usage.rs`, into the hourly usage ledger
//! (`ledger.rs`); streams: `relay.rs`. The local models (`[ai.local]`) are the backend `local`
//! (`local.rs`); the semantic cache answers before all of this (`cache.rs`).

mod backend;
mod cache;
mod error;
mod ledger;
mod limits;
mod local;
mod relay;
mod usage;

pub use ledger::{Dimension, report};
pub use local::models_dir;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use nimbus_api::{Caller, RoutePolicy, TraceContext};
use nimbus_config::AiSection;
use nimbus_store::Store;
use serde_json::{Value, json};

use crate::backend::{Backend, Endpoint};
use crate::error::AiError;
use crate::limits::{Limits, Remaining, Reservation};
use crate::usage::{Account, Meter};

/// A request body beyond this is refused when no route says otherwise.
const DEFAULT_MAX_BODY: u64 = 32 * 1024 * 1024;
/// The longest `Retry-After` honoured between rounds; longer ones end the request (with it).
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);
/// The first wait between rounds when no backend said how long; it doubles each round.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// A whole (non-streamed) answer is read to meter it: at most this (a batch of embeddings is the
/// largest answer an API gives).
const MAX_ANSWER: usize = 256 * 1024 * 1024;
/// Prompts up to this size (the request body's) are counted on the request's own thread.
const INLINE_TOKENIZE: usize = 64 * 1024;
/// An upstream error body read to explain a refusal, at most.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Names the backend that answered, for clients and tests.
const BACKEND_HEADER: &str = "x-nimbus-ai-backend";

pub struct Ai {
    backends: Vec<Backend>,
    retries: u32,
    client: reqwest::Client,
    limits: Limits,
    ledger: Arc<ledger::Ledger>,
    store: Arc<dyn Store>,
    /// `[server] trusted_proxies`, for the client address a limit may count by.
    trusted_proxies: Vec<nimbus_api::Cidr>,
    /// Deleting the counters of windows and periods that are over, and old usage.
    tasks: nimbus_api::Tasks,
    /// `[ai.cache]`.
    cache: Option<Arc<cache::Cache>>,
}

impl Ai {
    /// The gateway for `[ai]` (already validated), its local models loaded (paths relative to
    /// `app_dir`).
    pub async fn new(
        section: &AiSection,
        app_dir: &std::path::Path,
        store: Arc<dyn Store>,
        trusted_proxies: Vec<nimbus_api::Cidr>,
    ) -> Result<Arc<Self>, String> {
        usage::describe();
        tokio::task::spawn_blocking(usage::warm);
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("nimbus/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the AI gateway's HTTP client: {e}"))?;
        let mut backends: Vec<Backend> =
            section.backends.iter().map(|b| Backend::new(b.clone(), &section.circuit_breaker)).collect();
        if let Some(config) = section.local() {
            let (app_dir, for_load) = (app_dir.to_owned(), config.clone());
            let local = tokio::task::spawn_blocking(move || local::Local::load(&for_load, &app_dir))
                .await
                .map_err(|e| format!("cannot load the local AI models: {e}"))??;
            backends.push(Backend::local(Arc::new(local), &config, &section.circuit_breaker));
        }
        let cache = match &section.cache {
            Some(config) => {
                let shared = backends.iter().find_map(|b| b.local.as_ref()).map(|l| l.embedding_model());
                let embedder = match (shared, &config.embeddings) {
                    (Some(model), None) => model,
                    (_, given) => {
                        let (given, app_dir) = (given.clone(), app_dir.to_owned());
                        let load = move || local::load_embeddings(&given, "[ai.cache] embeddings", &app_dir);
                        let loaded = tokio::task::spawn_blocking(load).await;
                        Arc::new(loaded.map_err(|e| format!("cannot load the semantic cache's model: {e}"))??)
                    }
                };
                Some(Arc::new(cache::Cache::new(config.clone(), embedder)))
            }
            None => None,
        };
        for backend in &backends {
            metrics::gauge!("nimbus_ai_circuit_open", "backend" => backend.name().to_owned()).set(0.0);
        }
        let limits = Limits::new(section, store.clone());
        let tasks = nimbus_api::Tasks::new("ai");
        let ledger = Arc::new(ledger::Ledger::new(store.clone()));
        let ai = Arc::new(Self {
            backends,
            retries: section.retries,
            client,
            limits,
            ledger: ledger.clone(),
            store,
            trusted_proxies,
            tasks,
            cache,
        });
        ai.tasks.every("usage ledger", ledger::FLUSH, move || {
            let ledger = ledger.clone();
            async move { ledger.flush().await }
        });
        let weak = Arc::downgrade(&ai);
        ai.tasks.every("housekeeping", limits::HOUSEKEEPING, move || {
            let weak = weak.clone();
            async move {
                let Some(ai) = weak.upgrade() else { return };
                if let Err(e) = ai.limits.housekeep().await {
                    tracing::warn!(error = %e, "cannot delete old AI token counters");
                }
                if let Err(e) = ledger::housekeep(ai.store.as_ref()).await {
                    tracing::warn!(error = %e, "cannot delete old AI usage");
                }
            }
        });
        Ok(ai)
    }

    /// The API on the platform socket, for functions (`ctx.ai`): their worker's token with an
    /// `ai:<model>` grant (or the admin token); a request without `model` gets [`Ai::default_model`].
    pub fn platform_router(self: &Arc<Self>, authenticate: nimbus_api::Authenticate) -> Router {
        let ai = self.clone();
        let handler = move |mut req: Request| {
            let (ai, authenticate) = (ai.clone(), authenticate.clone());
            async move {
                let Some(principal) = authenticate(req.headers()) else {
                    let mut error = AiError::invalid(
                        "this endpoint needs a worker's token (`Authorization: Bearer <token>`)",
                        None,
                    );
                    (error.status, error.kind, error.code) =
                        (StatusCode::UNAUTHORIZED, "authentication_error", "unauthorized");
                    return error.into_response();
                };
                req.extensions_mut().insert(Platform(principal));
                serve(State(ai), req).await
            }
        };
        Router::new().route("/v1/{*rest}", axum::routing::any(handler))
    }

    /// The model a function gets when it names none: for chat, the first listed by the backend
    /// of the lowest priority that lists models; for embeddings, the first that looks like an
    /// embedding model (the local one's, or a name with `embed` in it), else that same first.
    fn default_model(&self, endpoint: Endpoint) -> Option<&str> {
        let mut backends: Vec<&Backend> = self.backends.iter().filter(|b| !b.config.models.is_empty()).collect();
        backends.sort_by_key(|b| b.config.priority);
        let first = backends.first().map(|b| b.config.models[0].as_str());
        if endpoint == Endpoint::Chat {
            return first;
        }
        let embedding = backends.iter().find_map(|b| match &b.local {
            Some(_) => b.config.models.get(1).map(String::as_str),
            None => b.config.models.iter().find(|m| m.contains("embed")).map(String::as_str),
        });
        embedding.or(first)
    }

    /// Stops the housekeeping within `grace`, then writes the usage gathered since the last flush.
    pub async fn shutdown(&self, grace: Duration) {
        self.tasks.shutdown(grace).await;
        self.ledger.flush().await;
    }

    /// `GET /_nimbus/admin/usage?since=7d&by=user,model`: the usage ledger summed (admin only:
    /// the binary mounts it behind the admin token).
    pub fn admin_router(self: &Arc<Self>) -> Router {
        Router::new().route("/_nimbus/admin/usage", axum::routing::get(usage_report)).with_state(self.clone())
    }

    /// The OpenAI-compatible API, matched by the end of the path (`…/chat/completions`,
    /// `…/embeddings`, `…/models`) so that a route may serve it under any prefix.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new().fallback(serve).with_state(self.clone())
    }

    /// `model` as a metrics label: a model some backend lists (or aliases), else `unlisted`, so that
    /// clients naming models at random (a backend that serves any) cannot grow the label set.
    fn model_label(&self, model: &str) -> String {
        let listed = self
            .backends
            .iter()
            .any(|b| b.config.models.iter().any(|m| m == model) || b.config.model_map.contains_key(model));
        if listed { model.to_owned() } else { "unlisted".to_owned() }
    }

    fn failed(&self, i: usize) {
        let backend = &self.backends[i];
        if backend.circuit.failed(Instant::now()) {
            tracing::warn!(backend = backend.name(), "AI backend left out after failures in a row (circuit open)");
            metrics::gauge!("nimbus_ai_circuit_open", "backend" => backend.name().to_owned()).set(1.0);
        }
    }

    fn succeeded(&self, i: usize) {
        let backend = &self.backends[i];
        if backend.circuit.is_open() {
            metrics::gauge!("nimbus_ai_circuit_open", "backend" => backend.name().to_owned()).set(0.0);
        }
        backend.circuit.succeeded();
    }

    /// `GET …/models`: every model a backend lists (aliases included), first by priority.
    fn models(&self) -> Response {
        let mut data: Vec<Value> = Vec::new();
        let mut backends: Vec<&Backend> = self.backends.iter().collect();
        backends.sort_by_key(|b| b.config.priority);
        for backend in backends {
            for id in backend.config.models.iter().chain(backend.config.model_map.keys()) {
                if !data.iter().any(|m| m["id"] == id.as_str()) {
                    data.push(json!({"id": id, "object": "model", "created": 0, "owned_by": backend.name()}));
                }
            }
        }
        axum::Json(json!({"object": "list", "data": data})).into_response()
    }

    /// Sends the request to the backends in turn until one answers (see the module's comment).
    async fn complete(
        self: &Arc<Self>,
        endpoint: Endpoint,
        mut body: Value,
        call: CallInfo,
        subject: &nimbus_api::Subject<'_>,
    ) -> Result<Response, AiError> {
        let model = body["model"].as_str().unwrap_or_default().to_owned();
        let order = backend::order(&self.backends, &model);
        if order.is_empty() {
            return Err(AiError::unknown_model(&model));
        }
        let stream = endpoint == Endpoint::Chat && body["stream"] == json!(true);
        let wants_usage = body["stream_options"]["include_usage"] == json!(true);
        // The semantic cache answers before anything is reserved or called.
        let mut miss = None;
        if let Some(cache) = self.cache.as_ref().filter(|_| endpoint == Endpoint::Chat && call.semantic_cache) {
            match cache.lookup(&body, &call.account).await {
                cache::Lookup::Hit(answer) => {
                    let key = call.account.key.clone().unwrap_or_default();
                    metrics::counter!("nimbus_ai_requests_total", "model" => self.model_label(&model), "backend" => "cache", "key" => key, "outcome" => "ok").increment(1);
                    return Ok(cache::respond(&answer, stream, wants_usage));
                }
                cache::Lookup::Miss(m) => miss = Some((cache.clone(), m)),
                cache::Lookup::Skip => {}
            }
        }
        let looked_up = miss.is_some();
        if stream {
            // Asked of the upstream always, so that a stream is metered by its own count.
            match body.get_mut("stream_options").and_then(Value::as_object_mut) {
                Some(options) => {
                    options.insert("include_usage".into(), json!(true));
                }
                None => body["stream_options"] = json!({"include_usage": true}),
            }
        }
        // Tokenizing is CPU work in proportion to the prompt (up to the route's body limit): a
        // large one goes to the blocking pool, not the threads that serve every other request.
        let prompt_estimate = if call.body_len <= INLINE_TOKENIZE {
            usage::estimate_prompt(endpoint, &model, &body)
        } else {
            let model = model.clone();
            let counted = tokio::task::spawn_blocking(move || (usage::estimate_prompt(endpoint, &model, &body), body));
            let Ok((estimate, returned)) = counted.await else {
                return Err(AiError::upstream(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the prompt could not be counted",
                ));
            };
            body = returned;
            estimate
        };
        let completion_bound = match endpoint {
            Endpoint::Embeddings => 0,
            Endpoint::Chat => {
                let asked = body["max_completion_tokens"].as_u64().or(body["max_tokens"].as_u64());
                // (saturating: huge values must not wrap into a small reservation)
                asked.unwrap_or(limits::COMPLETION_RESERVE).saturating_mul(body["n"].as_u64().unwrap_or(1).max(1))
            }
        };
        let estimate = prompt_estimate.saturating_add(completion_bound);
        let (reservation, remaining) = self.limits.reserve(subject, estimate).await?;
        let mut reservation = Some(reservation);
        let mut last: Option<AiError> = None;
        for round in 0..=self.retries {
            let mut wait = FIRST_BACKOFF * 2u32.saturating_pow(round);
            let mut tried = false;
            for &i in &order {
                let backend = &self.backends[i];
                if !backend.circuit.admit(Instant::now()) {
                    continue;
                }
                tried = true;
                body["model"] = json!(backend.config.upstream_model(&model));
                let meter = |reservation: Option<Reservation>| {
                    let model = usage::Model { name: model.clone(), label: self.model_label(&model) };
                    Meter::new(model, backend.name(), &call, prompt_estimate, reservation, self.ledger.clone())
                };
                match self.attempt(i, endpoint, &body, stream, &call).await {
                    Ok(Answer::Whole(status, content_type, bytes)) => {
                        self.succeeded(i);
                        if let Some((cache, miss)) = miss.take()
                            && status.is_success()
                            && let Some(answer) = cache::Answer::from_whole(&bytes)
                        {
                            cache.keep(miss, answer);
                        }
                        let mut response =
                            whole(meter(reservation.take()), backend.name(), status, content_type, bytes);
                        limit_headers(&mut response, remaining.as_ref());
                        cache_header(&mut response, looked_up);
                        return Ok(response);
                    }
                    Ok(Answer::Stream(first, rest)) => {
                        let idle = backend.config.timeout.get();
                        let meter = meter(reservation.take());
                        let capture = miss.take().map(|(cache, miss)| relay::Capture::new(cache, miss));
                        let relay = relay::Relay {
                            ai: self.clone(),
                            backend: i,
                            first,
                            rest,
                            meter,
                            wants_usage,
                            idle,
                            capture,
                        };
                        let mut response = streamed(backend.name(), relay);
                        limit_headers(&mut response, remaining.as_ref());
                        cache_header(&mut response, looked_up);
                        return Ok(response);
                    }
                    Ok(Answer::Refused(response)) => {
                        // The request itself is wrong (400, 404…): another backend would say the same.
                        let key = call.account.key.clone().unwrap_or_default();
                        metrics::counter!("nimbus_ai_requests_total", "model" => self.model_label(&model), "backend" => backend.name().to_owned(), "key" => key, "outcome" => "refused").increment(1);
                        return Ok(response);
                    }
                    Err(failure) => {
                        self.failed(i);
                        if let Some(after) = failure.retry_after {
                            wait = wait.max(after);
                        }
                        last = Some(failure.error);
                    }
                }
            }
            if !tried {
                // Every backend is out (circuits open): say when the first is back.
                let now = Instant::now();
                let back = order.iter().map(|&i| self.backends[i].circuit.closed_in(now)).min().unwrap_or_default();
                let mut error = AiError::upstream(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "backends_unavailable",
                    format!("every backend serving `{model}` is failing; try again in {} s", back.as_secs().max(1)),
                );
                error.retry_after = Some(back.as_secs().max(1));
                return Err(last.unwrap_or(error));
            }
            if round < self.retries {
                if wait > MAX_RETRY_WAIT {
                    break;
                }
                tokio::time::sleep(wait).await;
            }
        }
        Err(last.unwrap_or_else(|| AiError::upstream(StatusCode::BAD_GATEWAY, "upstream_error", "no backend answered")))
    }

    /// One call to backend `i`: its answer, or why it failed (so the next backend is tried).
    async fn attempt(
        &self,
        i: usize,
        endpoint: Endpoint,
        body: &Value,
        stream: bool,
        call: &CallInfo,
    ) -> Result<Answer, Failure> {
        let backend = &self.backends[i];
        let name = backend.name().to_owned();
        let deadline = tokio::time::Instant::now() + backend.config.timeout.get();
        let fail = |outcome: &'static str, status: StatusCode, message: String| {
            metrics::counter!("nimbus_ai_upstream_attempts_total", "backend" => name.clone(), "outcome" => outcome)
                .increment(1);
            tracing::warn!(backend = %name, outcome, %message, "AI backend failed; trying the next");
            let code = if status == StatusCode::GATEWAY_TIMEOUT { "upstream_timeout" } else { "upstream_error" };
            Failure { error: AiError::upstream(status, code, message), retry_after: None }
        };
        if let Some(local) = &backend.local {
            let answer = local.answer(endpoint, body, stream, deadline).await;
            if matches!(answer, Ok(Answer::Whole(..) | Answer::Stream(..))) {
                metrics::counter!("nimbus_ai_upstream_attempts_total", "backend" => name, "outcome" => "ok")
                    .increment(1);
            }
            return answer;
        }
        let accept = if stream { "text/event-stream" } else { "application/json" };
        let mut request = backend.request(&self.client, endpoint, body).header(header::ACCEPT, accept);
        if let Some(trace) = call.trace {
            request = request.header("traceparent", trace.traceparent());
        }
        let response = match tokio::time::timeout_at(deadline, request.send()).await {
            Err(_) => {
                return Err(fail(
                    "timeout",
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("backend `{name}` did not answer in time"),
                ));
            }
            Ok(Err(e)) => {
                let message = format!("backend `{name}` could not be reached: {}", error_chain(&e));
                return Err(fail("connect", StatusCode::BAD_GATEWAY, message));
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT
        {
            let retry_after = retry_after(response.headers());
            let detail = error_message(response, deadline).await;
            let (outcome, answer) = if status == StatusCode::TOO_MANY_REQUESTS {
                ("status_429", StatusCode::TOO_MANY_REQUESTS)
            } else {
                ("status_5xx", StatusCode::BAD_GATEWAY)
            };
            let mut failure = fail(outcome, answer, format!("backend `{name}` answered {status}{detail}"));
            failure.retry_after = retry_after;
            failure.error.retry_after = retry_after.map(|d| d.as_secs().max(1));
            return Err(failure);
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            // The backend's key, not the client's: the gateway's configuration is wrong.
            let detail = error_message(response, deadline).await;
            return Err(fail(
                "refused",
                StatusCode::BAD_GATEWAY,
                format!("backend `{name}` refused its key ({status}){detail}"),
            ));
        }
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        if !status.is_success() {
            metrics::counter!("nimbus_ai_upstream_attempts_total", "backend" => name.clone(), "outcome" => "client_error")
                .increment(1);
            let bytes = read_bounded(response, deadline, ERROR_BODY_LIMIT).await.map(|(b, _)| b).unwrap_or_default();
            let mut answer = (status, bytes).into_response();
            if let Some(ct) = content_type {
                answer.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            return Ok(Answer::Refused(answer));
        }
        let is_sse =
            content_type.as_ref().and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/event-stream"));
        if !(stream && is_sse) {
            return match read_bounded(response, deadline, MAX_ANSWER).await {
                Ok((bytes, true)) => {
                    metrics::counter!("nimbus_ai_upstream_attempts_total", "backend" => name.clone(), "outcome" => "ok")
                        .increment(1);
                    Ok(Answer::Whole(status, content_type, bytes))
                }
                Ok((_, false)) => Err(fail(
                    "broken",
                    StatusCode::BAD_GATEWAY,
                    format!("backend `{name}`'s answer is larger than {MAX_ANSWER} bytes"),
                )),
                Err(ReadFailure::Broken(e)) => {
                    Err(fail("broken", StatusCode::BAD_GATEWAY, format!("backend `{name}`'s answer broke off: {e}")))
                }
                Err(ReadFailure::Timeout) => Err(fail(
                    "timeout",
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("backend `{name}` did not answer in time"),
                )),
            };
        }
        let mut events: relay::Events = response
            .bytes_stream()
            .flat_map(|chunk| futures_util::stream::iter(relay::by_line(chunk)))
            .eventsource()
            .map(|event| event.map_err(|e| e.to_string()))
            .boxed();
        // Nothing has reached the client yet: a stream that fails before its first event fails over.
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(Ok(first))) => {
                metrics::counter!("nimbus_ai_upstream_attempts_total", "backend" => name.clone(), "outcome" => "ok")
                    .increment(1);
                Ok(Answer::Stream(first, events))
            }
            Ok(Some(Err(e))) => Err(fail(
                "broken",
                StatusCode::BAD_GATEWAY,
                format!("backend `{name}`'s stream broke before its first event: {e}"),
            )),
            Ok(None) => Err(fail(
                "broken",
                StatusCode::BAD_GATEWAY,
                format!("backend `{name}`'s stream ended before its first event"),
            )),
            Err(_) => {
                Err(fail("timeout", StatusCode::GATEWAY_TIMEOUT, format!("backend `{name}` sent no event in time")))
            }
        }
    }
}

/// OpenAI's `x-ratelimit-*-tokens` headers, from the tightest limit the request was reserved in.
fn limit_headers(response: &mut Response, remaining: Option<&Remaining>) {
    let Some(r) = remaining else { return };
    let headers = response.headers_mut();
    headers.insert("x-ratelimit-limit-tokens", HeaderValue::from(r.limit));
    headers.insert("x-ratelimit-remaining-tokens", HeaderValue::from(r.remaining));
    if let Ok(v) = HeaderValue::from_str(&format!("{}s", r.reset_secs)) {
        headers.insert("x-ratelimit-reset-tokens", v);
    }
}

/// `x-nimbus-ai-cache: miss` on an answer the cache was asked for and did not have.
fn cache_header(response: &mut Response, missed: bool) {
    if missed {
        response.headers_mut().insert(cache::HEADER, HeaderValue::from_static("miss"));
    }
}

/// What a request carries besides its body.
pub(crate) struct CallInfo {
    pub account: Account,
    /// The request body's size.
    pub body_len: usize,
    pub trace: Option<TraceContext>,
    pub started: Instant,
    /// The route has `semantic_cache = true`.
    pub semantic_cache: bool,
}

enum Answer {
    /// A whole (non-streamed) answer.
    Whole(StatusCode, Option<HeaderValue>, bytes::Bytes),
    /// A stream, its first event read.
    Stream(eventsource_stream::Event, relay::Events),
    /// The upstream's refusal of the request itself, passed on.
    Refused(Response),
}

struct Failure {
    error: AiError,
    retry_after: Option<Duration>,
}

/// `Retry-After` in seconds (an HTTP date is rare from these APIs and read as one second).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    Some(Duration::from_secs(value.trim().parse::<u64>().unwrap_or(1)))
}

/// `: <the upstream's message>` from an error body, when it has one.
async fn error_message(response: reqwest::Response, deadline: tokio::time::Instant) -> String {
    let Ok((bytes, _)) = read_bounded(response, deadline, ERROR_BODY_LIMIT).await else { return String::new() };
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    match value["error"]["message"].as_str().or(value["error"].as_str()).or(value["message"].as_str()) {
        Some(message) => format!(": {message}"),
        None => String::new(),
    }
}

/// A body up to `limit` bytes (the rest is not read), within the deadline: the bytes, and whether
/// that was all of it.
async fn read_bounded(
    response: reqwest::Response,
    deadline: tokio::time::Instant,
    limit: usize,
) -> Result<(bytes::Bytes, bool), ReadFailure> {
    let mut out = Vec::new();
    let mut stream = response.bytes_stream();
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) if out.len() + chunk.len() > limit => {
                out.extend_from_slice(&chunk[..limit - out.len()]);
                return Ok((out.into(), false));
            }
            Ok(Some(Ok(chunk))) => out.extend_from_slice(&chunk),
            Ok(None) => return Ok((out.into(), true)),
            Ok(Some(Err(e))) => return Err(ReadFailure::Broken(e.to_string())),
            Err(_) => return Err(ReadFailure::Timeout),
        }
    }
}

enum ReadFailure {
    Broken(String),
    Timeout,
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

/// A whole answer, metered from its `usage` (or counted when it has none).
fn whole(
    mut meter: Meter,
    backend: &str,
    status: StatusCode,
    content_type: Option<HeaderValue>,
    bytes: bytes::Bytes,
) -> Response {
    meter.first_token();
    if let Ok(value) = serde_json::from_slice::<Value>(&bytes) {
        match usage::from_upstream(&value) {
            Some(used) => meter.upstream_usage(used),
            None => meter.generated(&value),
        }
    }
    meter.finish("ok");
    let mut response = (status, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type.unwrap_or(HeaderValue::from_static("application/json")));
    if let Ok(v) = HeaderValue::from_str(backend) {
        headers.insert(BACKEND_HEADER, v);
    }
    response
}

fn streamed(backend: &str, relay: relay::Relay) -> Response {
    let mut response = Response::new(Body::from_stream(relay.into_stream()));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(backend) {
        headers.insert(BACKEND_HEADER, v);
    }
    response
}

async fn serve(State(ai): State<Arc<Ai>>, req: Request) -> Response {
    let path = req.uri().path().trim_end_matches('/');
    let endpoint = if path.ends_with("/chat/completions") {
        Some(Endpoint::Chat)
    } else if path.ends_with("/embeddings") {
        Some(Endpoint::Embeddings)
    } else if path.ends_with("/models") {
        None
    } else {
        let message = format!(
            "Invalid URL ({} {}): use …/chat/completions, …/embeddings or …/models",
            req.method(),
            req.uri().path()
        );
        let mut error = AiError::invalid(message, None);
        (error.status, error.code) = (StatusCode::NOT_FOUND, "unknown_url");
        return error.into_response();
    };
    let allowed = if endpoint.is_some() { Method::POST } else { Method::GET };
    if *req.method() != allowed {
        let mut error =
            AiError::invalid(format!("{} takes {allowed} requests, not {}", req.uri().path(), req.method()), None);
        (error.status, error.code) = (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        let mut response = error.into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_str(allowed.as_str()).unwrap_or(HeaderValue::from_static("POST")));
        return response;
    }
    let Some(endpoint) = endpoint else { return ai.models() };
    let (parts, body) = req.into_parts();
    let limit = parts.extensions.get::<RoutePolicy>().map_or(DEFAULT_MAX_BODY, |p| p.max_body);
    let bytes = match axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX)).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let too_large = std::error::Error::source(&e).is_some_and(nimbus_api::body::is_too_large);
            let mut error = AiError::invalid(format!("the request body could not be read: {e}"), None);
            if too_large {
                (error.status, error.code) = (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large");
                error.message = format!("the request body is larger than {limit} bytes");
            }
            return error.into_response();
        }
    };
    let mut body: Value = match serde_json::from_slice(&bytes) {
        Ok(body @ Value::Object(_)) => body,
        Ok(_) => return AiError::invalid("the request body must be a JSON object", None).into_response(),
        Err(e) => {
            return AiError::invalid(format!("We could not parse the JSON body of your request: {e}"), None)
                .into_response();
        }
    };
    let platform = parts.extensions.get::<Platform>();
    if platform.is_some()
        && body.get("model").is_none_or(Value::is_null)
        && let Some(model) = ai.default_model(endpoint)
    {
        body["model"] = json!(model);
    }
    if !body["model"].is_string() || body["model"] == "" {
        return AiError::invalid("you must provide a model parameter", Some("model")).into_response();
    }
    match endpoint {
        Endpoint::Chat if body["messages"].as_array().is_none_or(|m| m.is_empty()) => {
            return AiError::invalid("`messages` must be a non-empty array", Some("messages")).into_response();
        }
        Endpoint::Embeddings if body.get("input").is_none_or(Value::is_null) => {
            return AiError::invalid("you must provide an input parameter", Some("input")).into_response();
        }
        _ => {}
    }
    // A client is metered to its token's `sub` or its API key; a function (platform socket) to the
    // user it names in `user` (OpenAI's field for the end user), its calls counted as its own.
    let caller = parts.extensions.get::<Caller>();
    let (account, on_behalf) = match platform {
        Some(Platform(principal)) => {
            let model = body["model"].as_str().unwrap_or_default();
            if !principal.may("ai", model, true) {
                let mut error = AiError::invalid(
                    format!("{} may not call model `{model}` (grant it with \"ai:{model}\")", principal.describe()),
                    Some("model"),
                );
                (error.status, error.kind, error.code) = (StatusCode::FORBIDDEN, "permission_error", "forbidden");
                return error.into_response();
            }
            let user = body["user"].as_str().filter(|u| !u.is_empty()).map(str::to_owned);
            let key = match principal {
                nimbus_api::Principal::Admin => "admin".to_owned(),
                nimbus_api::Principal::Function { function, .. } => format!("function:{function}"),
            };
            let on_behalf = user.as_ref().map(|u| json!({"sub": u}));
            (Account { user, key: Some(key) }, on_behalf)
        }
        None => (Account::of(caller), None),
    };
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let api_key = account.key.clone();
    let subject = nimbus_api::Subject {
        ip: nimbus_api::client_ip(peer, &parts.headers, &ai.trusted_proxies),
        headers: &parts.headers,
        claims: on_behalf.as_ref().or(caller.map(|c| c.0.as_ref())),
        api_key: api_key.as_deref(),
    };
    let trace = parts.extensions.get::<TraceContext>().copied();
    let semantic_cache = parts.extensions.get::<RoutePolicy>().is_some_and(|p| p.semantic_cache);
    let call = CallInfo { account, body_len: bytes.len(), trace, started: Instant::now(), semantic_cache };
    ai.complete(endpoint, body, call, &subject).await.unwrap_or_else(IntoResponse::into_response)
}

/// A request on the platform socket, with who sent it (the admin token, or a function's worker).
#[derive(Clone)]
struct Platform(nimbus_api::Principal);

async fn usage_report(
    State(ai): State<Arc<Ai>>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let invalid =
        |message: String| nimbus_api::ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message).into_response();
    let since = match query.get("since").map(String::as_str).unwrap_or("1d").parse::<nimbus_config::Duration>() {
        Ok(d) => d.get(),
        Err(e) => return invalid(format!("since: {e}")),
    };
    let mut by = Vec::new();
    for name in query.get("by").map(String::as_str).unwrap_or("").split(',').filter(|s| !s.is_empty()) {
        match Dimension::parse(name.trim()) {
            Some(d) if !by.contains(&d) => by.push(d),
            Some(_) => {}
            None => return invalid(format!("by: \"{name}\" is not one of model, backend, user, key")),
        }
    }
    let now = ai.store.clock().now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match report(ai.store.as_ref(), now.saturating_sub(since.as_secs()), &by).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot read AI usage");
            nimbus_api::ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "usage cannot be read now")
                .into_response()
        }
    }
}
