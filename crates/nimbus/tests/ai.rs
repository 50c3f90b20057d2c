//! The AI gateway (issue 16) through the real binary, against a fake OpenAI-compatible upstream
//! whose behaviour each backend picks by its URL's first segment: `ok`, `nousage` (never sends
//! usage), `status500`, `status429` (with `Retry-After: 1`), `breakearly` (a stream that dies
//! before its first event), `breaklate` (after two chunks), `trickle` (a chunk every 100 ms for
//! 5 s), `slow` (answers after 3 s); and `azure`, which answers in Azure OpenAI's shape.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use support::{App, Node};

/// What the fake upstream saw: hits per mode, and the last request (headers, body) per mode.
#[derive(Default)]
struct Seen {
    hits: HashMap<String, usize>,
    last: HashMap<String, (HeaderMap, Value)>,
}

struct Fake {
    url: String,
    seen: Arc<Mutex<Seen>>,
}

impl Fake {
    async fn start() -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = axum::Router::new()
            .route("/{mode}/v1/chat/completions", axum::routing::post(fake_chat))
            .route("/{mode}/v1/embeddings", axum::routing::post(fake_embeddings))
            .route("/azure/openai/deployments/{deployment}/chat/completions", axum::routing::post(fake_azure))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, seen }
    }

    fn hits(&self, mode: &str) -> usize {
        self.seen.lock().unwrap().hits.get(mode).copied().unwrap_or(0)
    }

    fn last(&self, mode: &str) -> (HeaderMap, Value) {
        self.seen.lock().unwrap().last[mode].clone()
    }

    fn backend(&self, name: &str, mode: &str, extra: &str) -> String {
        format!("[[ai.backends]]\nname = \"{name}\"\nurl = \"{}/{mode}/v1\"\n{extra}\n", self.url)
    }
}

fn chunk(content: &str) -> String {
    let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                       "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
    format!("data: {chunk}\n\n")
}

async fn fake_chat(
    State(seen): State<Arc<Mutex<Seen>>>,
    Path(mode): Path<String>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    {
        let mut seen = seen.lock().unwrap();
        *seen.hits.entry(mode.clone()).or_default() += 1;
        seen.last.insert(mode.clone(), (headers, body.clone()));
    }
    let stream = body["stream"] == true;
    let usage = body["stream_options"]["include_usage"] == true && mode != "nousage";
    match mode.as_str() {
        "status500" => {
            return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"error": {"message": "upstream exploded"}})))
                .into_response();
        }
        "status429" => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                axum::Json(json!({"error": {"message": "slow down"}})),
            )
                .into_response();
        }
        "slow" => tokio::time::sleep(Duration::from_secs(3)).await,
        _ => {}
    }
    if !stream {
        let mut answer = json!({"id": "x", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, friend"}, "finish_reason": "stop"}]});
        if mode != "nousage" {
            answer["usage"] = json!({"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15});
        }
        return axum::Json(answer).into_response();
    }
    let words: Vec<String> = match mode.as_str() {
        "trickle" => (0..50).map(|i| format!("w{i} ")).collect(),
        _ => vec!["Hello".into(), " there".into(), ",".into(), " friend".into()],
    };
    let mut items: Vec<Result<String, std::io::Error>> = words.iter().map(|w| Ok(chunk(w))).collect();
    if usage {
        let last = json!({"id": "c1", "object": "chat.completion.chunk", "choices": [],
                          "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}});
        items.push(Ok(format!("data: {last}\n\n")));
    }
    items.push(Ok("data: [DONE]\n\n".into()));
    match mode.as_str() {
        "breakearly" => items = vec![Err(std::io::Error::other("died"))],
        "breaklate" => {
            items.truncate(2);
            items.push(Err(std::io::Error::other("died")));
        }
        _ => {}
    }
    let trickle = mode == "trickle";
    let events = futures_util::StreamExt::then(futures_util::stream::iter(items), move |item| async move {
        // (before an error too: the chunks before it reach the gateway before the connection dies)
        if trickle || item.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        item
    });
    Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(events)).unwrap()
}

/// Azure OpenAI's shape: the deployment in the path, `api-version` in the query, `api-key`.
async fn fake_azure(
    State(seen): State<Arc<Mutex<Seen>>>,
    Path(deployment): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let mut seen = seen.lock().unwrap();
    *seen.hits.entry("azure".into()).or_default() += 1;
    let request = json!({"deployment": deployment, "query": query, "body": body.0});
    seen.last.insert("azure".into(), (headers, request));
    axum::Json(json!({"id": "x", "object": "chat.completion", "model": deployment,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "from Azure"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}))
    .into_response()
}

async fn fake_embeddings(
    State(seen): State<Arc<Mutex<Seen>>>,
    Path(mode): Path<String>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    {
        let mut seen = seen.lock().unwrap();
        *seen.hits.entry(mode.clone()).or_default() += 1;
        seen.last.insert(mode.clone(), (headers, body.0.clone()));
    }
    axum::Json(json!({"object": "list", "model": body.0["model"],
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.5]}],
        "usage": {"prompt_tokens": 3, "total_tokens": 3}}))
    .into_response()
}

/// An app whose `/v1/*` takes API keys (as OpenAI's SDKs send them: a bearer token).
fn app(ai: &str) -> App {
    let manifest = format!("[[routes]]\npath = \"/v1/*\"\nbackend = \"ai\"\nauth = \"api_key\"\n\n[ai]\n{ai}");
    App::new(Some(&manifest))
}

async fn key(node: &Node, app: &App) -> String {
    let reply = reqwest::Client::new()
        .post(node.url("/_nimbus/admin/keys"))
        .bearer_auth(support::admin_token(app))
        .json(&json!({"name": "sdk"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
    reply.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_owned()
}

struct Client {
    http: reqwest::Client,
    node_url: String,
    key: String,
}

impl Client {
    async fn new(node: &Node, app: &App) -> Self {
        Self { http: reqwest::Client::new(), node_url: node.url(""), key: key(node, app).await }
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http.post(format!("{}{path}", self.node_url)).bearer_auth(&self.key).json(&body).send().await.unwrap()
    }

    async fn chat(&self, body: Value) -> (u16, Value, HeaderMap) {
        let response = self.post("/v1/chat/completions", body).await;
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        (status, response.json().await.unwrap_or(Value::Null), headers)
    }

    /// A streamed chat: its status, backend and the `data:` payloads in order.
    async fn stream(&self, body: Value) -> (u16, String, Vec<String>) {
        let response = self.post("/v1/chat/completions", body).await;
        let status = response.status().as_u16();
        let backend =
            response.headers().get("x-nimbus-ai-backend").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let text = response.text().await.unwrap_or_default();
        let data = text.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_owned).collect();
        (status, backend, data)
    }

    async fn metrics(&self, app: &App) -> String {
        let response = self
            .http
            .get(format!("{}/_nimbus/metrics", self.node_url))
            .bearer_auth(support::admin_token(app))
            .send()
            .await
            .unwrap();
        response.text().await.unwrap()
    }
}

fn messages() -> Value {
    json!([{"role": "user", "content": "Say hello"}])
}

/// The value of the first metrics line that starts with `name{` and contains every label.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .reduce(|a, b| a + b)
}

#[tokio::test]
async fn chat_embeddings_and_models_pass_through_with_aliases_and_the_backend_key() {
    let fake = Fake::start().await;
    let ai = fake.backend("main", "ok", "api_key = \"${NIMBUS_TEST_AI_KEY}\"\nmodels = [\"gpt-4o-mini\", \"text-embedding-3-small\"]\nmodel_map = { fast = \"gpt-4o-mini\" }");
    let app = app(&ai);
    let mut cmd = support::command();
    cmd.env("NIMBUS_TEST_AI_KEY", "sk-upstream-secret");
    let node = Node::start_with(cmd, app.path(), &[]);
    let c = Client::new(&node, &app).await;

    let (status, body, headers) = c.chat(json!({"model": "fast", "messages": messages(), "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello there, friend");
    assert_eq!(headers["x-nimbus-ai-backend"], "main");
    let (seen_headers, seen_body) = fake.last("ok");
    assert_eq!(seen_body["model"], "gpt-4o-mini", "the alias is mapped");
    assert_eq!(seen_body["tools"][0]["function"]["name"], "f", "tools pass through");
    assert_eq!(seen_headers["authorization"], "Bearer sk-upstream-secret", "the backend's key, never the client's");

    // A prompt above 64 KB is counted off the request's thread, and still answered.
    let long = "lorem ipsum ".repeat(10_000);
    let (status, body, _) = c.chat(json!({"model": "fast", "messages": [{"role": "user", "content": long}]})).await;
    assert_eq!(status, 200, "{body}");

    // The client's trace goes on to the backend (W3C traceparent: same trace, the node's span).
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let response = c
        .http
        .post(format!("{}/v1/chat/completions", c.node_url))
        .bearer_auth(&c.key)
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .json(&json!({"model": "fast", "messages": messages()}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (seen_headers, _) = fake.last("ok");
    let sent = seen_headers["traceparent"].to_str().unwrap();
    assert!(sent.starts_with(&format!("00-{trace}-")) && !sent.contains("b7ad6b7169203331"), "{sent}");

    let response = c.post("/v1/embeddings", json!({"model": "text-embedding-3-small", "input": "hi"})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["data"][0]["embedding"], json!([0.5, -0.5]));

    let models: Value =
        c.http.get(format!("{}/v1/models", c.node_url)).bearer_auth(&c.key).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["gpt-4o-mini", "text-embedding-3-small", "fast"]);
    assert_eq!(models["data"][0]["owned_by"], "main");

    // Without a key: the route's authentication answers before any upstream is called.
    let hits = fake.hits("ok");
    let response = c
        .http
        .post(format!("{}/v1/chat/completions", c.node_url))
        .json(&json!({"model": "fast"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let error: Value = response.json().await.unwrap();
    assert_eq!(
        (error["error"]["type"].as_str(), error["error"]["code"].as_str()),
        (Some("authentication_error"), Some("api_key_required")),
        "{error}"
    );
    assert!(error["error"]["message"].is_string() && error["error"]["param"].is_null(), "{error}");
    assert_eq!(fake.hits("ok"), hits);

    // Three answers of model "fast", 11 prompt tokens each by the upstream's usage.
    let metrics = c.metrics(&app).await;
    assert_eq!(
        metric(&metrics, "nimbus_ai_tokens_total", &["model=\"fast\"", "kind=\"prompt\"", "source=\"upstream\""]),
        Some(33.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "nimbus_ai_tokens_total", &["model=\"text-embedding-3-small\"", "kind=\"prompt\""]),
        Some(3.0)
    );
}

#[tokio::test]
async fn bad_requests_get_openai_shaped_errors() {
    let fake = Fake::start().await;
    let app = app(&fake.backend("main", "ok", "models = [\"m\"]"));
    let node = app.start(&[]);
    let c = Client::new(&node, &app).await;
    for (body, status, param) in [
        (json!({"messages": messages()}), 400, json!("model")),
        (json!({"model": "m"}), 400, json!("messages")),
        (json!({"model": "m", "messages": []}), 400, json!("messages")),
        (json!({"model": "nope", "messages": messages()}), 404, json!("model")),
        (json!([1, 2]), 400, Value::Null),
    ] {
        let (got, error, _) = c.chat(body.clone()).await;
        assert_eq!(got, status, "{body}: {error}");
        assert!(error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
        assert!(error["error"]["type"].is_string(), "{error}");
        assert_eq!(error["error"]["param"], param, "{body}: {error}");
    }
    let response = c
        .http
        .post(format!("{}/v1/chat/completions", c.node_url))
        .bearer_auth(&c.key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = c.http.get(format!("{}/v1/chat/completions", c.node_url)).bearer_auth(&c.key).send().await.unwrap();
    assert_eq!((response.status().as_u16(), response.headers()["allow"].to_str().unwrap()), (405, "POST"));
    let response = c.post("/v1/images/generations", json!({"model": "m"})).await;
    assert_eq!(response.status(), 404);
    assert_eq!(fake.hits("ok"), 0, "no bad request reached the upstream");
}

#[tokio::test]
async fn failover_before_the_first_byte_retries_and_a_circuit_that_opens() {
    let fake = Fake::start().await;
    let ai = format!(
        "circuit_breaker = {{ failures = 2, cool_down = \"60s\" }}\n{}{}{}",
        fake.backend("broken", "status500", "priority = 1"),
        fake.backend("early", "breakearly", "priority = 2"),
        fake.backend("good", "ok", "priority = 3"),
    );
    let app = app(&ai);
    let node = app.start(&[]);
    let c = Client::new(&node, &app).await;
    // A 5xx, then a stream that dies before its first event: the client sees neither.
    let (status, backend, data) = c.stream(json!({"model": "m", "messages": messages(), "stream": true})).await;
    assert_eq!((status, backend.as_str(), &data[..0]), (200, "good", &[][..]), "{data:?}");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let text: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "Hello there, friend");
    assert!(
        data.iter().all(|d| !d.contains("\"usage\"")),
        "the usage chunk the gateway asked for is not the client's: {data:?}"
    );
    // Two failures in a row open both circuits: the next requests go straight to the good one.
    let (status, backend, _) = c.stream(json!({"model": "m", "messages": messages(), "stream": true})).await;
    assert_eq!((status, backend.as_str()), (200, "good"));
    let (broken, early) = (fake.hits("status500"), fake.hits("breakearly"));
    assert_eq!((broken, early), (2, 2));
    for _ in 0..3 {
        assert_eq!(c.chat(json!({"model": "m", "messages": messages()})).await.0, 200);
    }
    assert_eq!((fake.hits("status500"), fake.hits("breakearly")), (broken, early), "open circuits are skipped");
    let metrics = c.metrics(&app).await;
    assert_eq!(metric(&metrics, "nimbus_ai_circuit_open", &["backend=\"broken\""]), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, "nimbus_ai_circuit_open", &["backend=\"good\""]), Some(0.0));
    assert!(
        metric(&metrics, "nimbus_ai_upstream_attempts_total", &["backend=\"early\"", "outcome=\"broken\""]).is_some()
    );
    // No backend lists "m": it is labelled as unlisted, so random model names cannot grow the metrics.
    assert!(metric(&metrics, "nimbus_ai_requests_total", &["model=\"unlisted\""]).is_some(), "{metrics}");
    assert!(!metrics.contains("model=\"m\""), "{metrics}");
}

#[tokio::test]
async fn rate_limited_backends_are_retried_after_retry_after_and_then_the_client_is_told() {
    let fake = Fake::start().await;
    let app = app(&format!("retries = 1\n{}", fake.backend("busy", "status429", "")));
    let node = app.start(&[]);
    let c = Client::new(&node, &app).await;
    let started = std::time::Instant::now();
    let (status, error, headers) = c.chat(json!({"model": "m", "messages": messages()})).await;
    assert_eq!(status, 429, "{error}");
    assert_eq!(error["error"]["type"], "rate_limit_error");
    assert!(error["error"]["message"].as_str().unwrap().contains("slow down"), "{error}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(fake.hits("status429"), 2, "the first call and one retry");
    assert!(started.elapsed() >= Duration::from_secs(1), "the retry waited as Retry-After said");
}

#[tokio::test]
async fn a_stream_that_breaks_after_its_first_byte_ends_with_an_error_not_done() {
    let fake = Fake::start().await;
    let app = app(&format!(
        "{}{}",
        fake.backend("flaky", "breaklate", "priority = 1"),
        fake.backend("good", "ok", "priority = 2")
    ));
    let node = app.start(&[]);
    let c = Client::new(&node, &app).await;
    let (status, backend, data) = c.stream(json!({"model": "m", "messages": messages(), "stream": true})).await;
    assert_eq!((status, backend.as_str()), (200, "flaky"));
    assert_eq!(data.len(), 3, "two chunks, then the error: {data:?}");
    assert!(data[0].contains("Hello") && data[1].contains(" there"));
    let error: Value = serde_json::from_str(&data[2]).unwrap();
    assert_eq!(error["error"]["code"], "stream_interrupted", "{error}");
    assert!(!data.iter().any(|d| d == "[DONE]"));
    assert_eq!(fake.hits("ok"), 0, "no failover once the client has bytes");
    let metrics = c.metrics(&app).await;
    assert_eq!(
        metric(&metrics, "nimbus_ai_requests_total", &["backend=\"flaky\"", "outcome=\"broken\""]),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn usage_is_metered_from_the_upstream_or_counted_and_a_client_that_leaves_is_billed() {
    let fake = Fake::start().await;
    let ai = format!(
        "{}{}{}",
        fake.backend("counted", "nousage", "models = [\"gpt-4o\"]"),
        fake.backend("reported", "ok", "models = [\"reported\"]"),
        fake.backend("trickle", "trickle", "models = [\"long\"]")
    );
    let app = app(&ai);
    let node = app.start(&[]);
    let c = Client::new(&node, &app).await;
    // The client asks for usage itself: it gets the usage chunk, and the upstream was asked.
    let (status, _, data) = c.stream(json!({"model": "reported", "messages": messages(), "stream": true, "stream_options": {"include_usage": true}})).await;
    assert_eq!(status, 200);
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 4, "{data:?}");
    // An upstream that never says: the streamed text is counted with the tokenizer.
    let (status, _, data) = c.stream(json!({"model": "gpt-4o", "messages": messages(), "stream": true})).await;
    assert_eq!((status, data.last().map(String::as_str)), (200, Some("[DONE]")));
    assert_eq!(fake.last("nousage").1["stream_options"]["include_usage"], true, "the gateway asked for usage");
    // A client that leaves mid-stream.
    let mut response =
        c.post("/v1/chat/completions", json!({"model": "long", "messages": messages(), "stream": true})).await;
    let mut seen = String::new();
    while seen.matches("data: ").count() < 5 {
        seen.push_str(&String::from_utf8_lossy(&response.chunk().await.unwrap().unwrap()));
    }
    drop(response);
    let metrics = loop {
        let metrics = c.metrics(&app).await;
        if metric(&metrics, "nimbus_ai_requests_total", &["model=\"long\"", "outcome=\"client_closed\""]).is_some() {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // "Hello there, friend" is 4 tokens; "w0 w1 w2 w3 w4 " at least 5.
    assert_eq!(
        metric(
            &metrics,
            "nimbus_ai_tokens_total",
            &["model=\"gpt-4o\"", "kind=\"completion\"", "source=\"tokenizer\""]
        ),
        Some(4.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "nimbus_ai_tokens_total",
            &["model=\"reported\"", "kind=\"completion\"", "source=\"upstream\""]
        ),
        Some(4.0)
    );
    let left = metric(&metrics, "nimbus_ai_tokens_total", &["model=\"long\"", "kind=\"completion\""]).unwrap();
    assert!((5.0..40.0).contains(&left), "billed for what was generated before it left: {left}");
    assert!(fake.hits("trickle") == 1);
}

#[tokio::test]
async fn an_ai_section_serves_v1_with_a_token_required_by_default() {
    let fake = Fake::start().await;
    let app = App::new(Some(&format!("[ai]\n{}", fake.backend("main", "ok", ""))));
    let node = app.start(&[]);
    let response = reqwest::Client::new()
        .post(node.url("/v1/chat/completions"))
        .json(&json!({"model": "m", "messages": messages()}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(fake.hits("ok"), 0);
}

#[tokio::test]
async fn a_backend_past_its_timeout_fails_over() {
    let fake = Fake::start().await;
    let app = app(&format!(
        "{}{}",
        fake.backend("slow", "slow", "priority = 1\ntimeout = \"1s\""),
        fake.backend("good", "ok", "priority = 2")
    ));
    let node = app.start(&[]);
    let c = Client::new(&node, &app).await;
    let started = std::time::Instant::now();
    let (status, body, headers) = c.chat(json!({"model": "m", "messages": messages()})).await;
    assert_eq!((status, headers["x-nimbus-ai-backend"].to_str().unwrap()), (200, "good"), "{body}");
    assert!(started.elapsed() < Duration::from_millis(2900), "the slow backend was given up at its timeout");
    assert_eq!(fake.hits("slow"), 1);
}

/// The `[ai]` of the limit tests: each request below reserves 19 tokens (a 9-token prompt and
/// `max_tokens` 10) and uses 15 (the fake's usage): ten reservations fit in 190.
fn limited(fake: &Fake) -> String {
    format!(
        "token_limit = {{ key = \"route\", tokens = 190, per = \"1d\" }}\nquota = {{ key = \"api_key\", tokens = 100000, per = \"month\" }}\n{}",
        fake.backend("main", "ok", "")
    )
}

/// 50 requests at once, spread over `clients`: how many were answered (the others must be refused
/// with `tokens_exceeded` before reaching the upstream).
async fn fifty_at_once(clients: &[Arc<Client>], fake: &Fake) -> usize {
    let body = json!({"model": "gpt-4o", "messages": messages(), "max_tokens": 10});
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (c, body) = (clients[i % clients.len()].clone(), body.clone());
            tokio::spawn(async move { c.chat(body).await })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        let (status, body, headers) = task.await.unwrap();
        match status {
            200 => {
                ok += 1;
                assert_eq!(headers["x-ratelimit-limit-tokens"], "190");
                assert!(headers.contains_key("x-ratelimit-remaining-tokens"));
            }
            429 => {
                assert_eq!(body["error"]["code"], "tokens_exceeded", "{body}");
                assert!(headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
            }
            other => panic!("{other}: {body}"),
        }
    }
    // Used: 15 a request; allowed: 190 plus at most one request's estimate.
    assert!((10..=13).contains(&ok), "{ok} requests answered");
    assert_eq!(fake.hits("ok"), ok, "a refused request never reached the upstream");
    ok
}

#[tokio::test]
async fn token_limits_are_reserved_before_the_call_and_hold_under_50_concurrent_requests() {
    let fake = Fake::start().await;
    let app = app(&limited(&fake));
    let node = app.start(&[]);
    let c = Arc::new(Client::new(&node, &app).await);
    let ok = fifty_at_once(std::slice::from_ref(&c), &fake).await;
    // A bound so large it would wrap (2^63 tokens, twice) is not a small one.
    let (status, error, _) =
        c.chat(json!({"model": "gpt-4o", "messages": messages(), "max_tokens": 9223372036854775808u64, "n": 2})).await;
    assert_eq!(status, 429, "{error}");
    // More than the limit allows at all: refused with the reason.
    let (status, error, _) = c.chat(json!({"model": "gpt-4o", "messages": messages(), "max_tokens": 1000})).await;
    assert_eq!(status, 429);
    assert!(error["error"]["message"].as_str().unwrap().contains("allows at all"), "{error}");

    // The ledger, through the admin API and the CLI (beside the running node).
    let token = support::admin_token(&app);
    let mut report = Value::Null;
    for _ in 0..50 {
        report = c
            .http
            .get(node.url("/_nimbus/admin/usage?since=1h&by=key,model"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if report["rows"][0]["requests"] == ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let row = &report["rows"][0];
    assert_eq!(
        (row["requests"].as_u64(), row["prompt_tokens"].as_u64(), row["model"].as_str()),
        (Some(ok as u64), Some(11 * ok as u64), Some("gpt-4o")),
        "{report}"
    );
    assert!(row["key"].as_str().is_some_and(|k| k != "-"), "{report}");
    let bad = c.http.get(node.url("/_nimbus/admin/usage?by=colour")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let app_dir = app.path().to_str().unwrap().to_owned();
    let out = support::nimbus(&["ai", "usage", "--app", &app_dir, "--by", "model", "--since", "2h", "--json"]);
    assert!(out.status.success(), "{}", support::text(&out.stderr));
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["rows"][0]["completion_tokens"], 4 * ok as u64, "{cli}");
    let out = support::nimbus(&["ai", "usage", "--app", &app_dir, "--by", "colour"]);
    assert!(
        !out.status.success() && support::text(&out.stderr).contains("--by: \"colour\""),
        "{}",
        support::text(&out.stderr)
    );
}

const FUNCTIONS_PY: &str = r#"
import nimbus
app = nimbus.App()

@app.http("/py/ask", methods=["POST"])
async def ask(req, ctx):
    body = await req.json()
    answer = await ctx.ai.chat([{"role": "user", "content": body["q"]}], user="alice")
    streamed = [piece async for piece in ctx.ai.chat_stream([{"role": "user", "content": body["q"]}], model="fast")]
    vector = await ctx.ai.embed("hi", model="text-embedding-3-small")
    return {"answer": answer["choices"][0]["message"]["content"], "streamed": streamed, "vector": vector}

@app.http("/py/forbidden", methods=["POST"])
async def forbidden(req, ctx):
    try:
        await ctx.ai.chat([{"role": "user", "content": "hi"}], model="text-embedding-3-small")
    except nimbus.PlatformError as e:
        return {"status": e.status, "code": e.code, "message": e.message}
    return {"status": 200}
"#;

const FUNCTIONS_JS: &str = r#"
const { App } = require("nimbus");
const app = new App();

app.http("/js/ask", { methods: ["POST"], name: "js_ask" }, async (req, ctx) => {
  const answer = await ctx.ai.chat([{ role: "user", content: "hi" }], { model: "fast" });
  const streamed = [];
  for await (const piece of ctx.ai.chatStream([{ role: "user", content: "hi" }])) streamed.push(piece);
  const vectors = await ctx.ai.embed(["a", "b"], { model: "text-embedding-3-small" });
  return { answer: answer.choices[0].message.content, streamed, vectors };
});

module.exports = app;
"#;

#[tokio::test]
async fn functions_call_the_gateway_with_their_grant_and_for_their_user() {
    let fake = Fake::start().await;
    let manifest = format!(
        "[workers.py]\nruntime = \"python\"\nentry = \"app.py\"\n\n[workers.js]\nruntime = \"node\"\nentry = \"app.js\"\n\n\
         [functions.ask]\ngrants = [\"ai:gpt-4o-mini\", \"ai:fast\", \"ai:text-embedding-3-small\"]\n\n\
         [functions.forbidden]\ngrants = [\"ai:gpt-4o-mini\"]\n\n[functions.js_ask]\ngrants = [\"ai:*\"]\n\n\
         [[routes]]\npath = \"/py/*\"\nauth = \"anonymous\"\n\n[[routes]]\npath = \"/js/*\"\nauth = \"anonymous\"\n\n[ai]\n{}",
        fake.backend(
            "main",
            "ok",
            "models = [\"gpt-4o-mini\", \"text-embedding-3-small\"]\nmodel_map = { fast = \"gpt-4o-mini\" }"
        )
    );
    let app = App::new(Some(&manifest));
    std::fs::write(app.path().join("app.py"), FUNCTIONS_PY).unwrap();
    std::fs::write(app.path().join("app.js"), FUNCTIONS_JS).unwrap();
    let node = app.start(&[]);
    let http = reqwest::Client::new();

    let reply: Value =
        http.post(node.url("/py/ask")).json(&json!({"q": "hello?"})).send().await.unwrap().json().await.unwrap();
    assert_eq!(reply["answer"], "Hello there, friend", "{reply}");
    assert_eq!(reply["streamed"], json!(["Hello", " there", ",", " friend"]));
    assert_eq!(reply["vector"], json!([0.5, -0.5]));
    let (_, last) = fake.last("ok");
    assert_eq!(last["model"], "text-embedding-3-small");

    let reply: Value = http.post(node.url("/py/forbidden")).send().await.unwrap().json().await.unwrap();
    assert_eq!(reply["status"], 403, "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("ai:text-embedding-3-small"), "{reply}");

    let reply: Value = http.post(node.url("/js/ask")).send().await.unwrap().json().await.unwrap();
    assert_eq!(reply["answer"], "Hello there, friend", "{reply}");
    assert_eq!(reply["streamed"].as_array().unwrap().len(), 4, "{reply}");
    assert_eq!(reply["vectors"], json!([[0.5, -0.5]]));

    // Metered to the user the function named, as the function's own calls.
    let token = support::admin_token(&app);
    // (the ledger is written every second)
    let mut report = Value::Null;
    for _ in 0..50 {
        let url = node.url("/_nimbus/admin/usage?since=1h&by=user,key");
        report = http.get(url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        if report["rows"].as_array().is_some_and(|rows| rows.iter().any(|r| r["key"] == "function:js_ask")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = report["rows"].as_array().unwrap();
    let alice = rows.iter().find(|r| r["user"] == "alice").unwrap_or_else(|| panic!("{report}"));
    assert_eq!((alice["key"].as_str(), alice["requests"].as_u64()), (Some("function:ask"), Some(1)), "{report}");
    assert!(rows.iter().any(|r| r["key"] == "function:js_ask"), "{report}");
}

#[tokio::test]
async fn token_limits_hold_across_two_nodes_on_one_postgresql_database() {
    use nimbus_store::testing::{Backend, TestDb};
    let db = TestDb::new(Backend::Postgres).await;
    let fake = Fake::start().await;
    let (app1, app2) = (app(&limited(&fake)), app(&limited(&fake)));
    let node1 = app1.start(&["--store", db.url()]);
    let node2 = app2.start(&["--store", db.url()]);
    let c1 = Arc::new(Client::new(&node1, &app1).await);
    // The key lives in the shared store: node 2 takes it too.
    let c2 = Arc::new(Client { http: reqwest::Client::new(), node_url: node2.url(""), key: c1.key.clone() });
    fifty_at_once(&[c1, c2], &fake).await;
}

#[tokio::test]
async fn azure_openai_gets_its_deployment_path_api_version_and_api_key() {
    let fake = Fake::start().await;
    let ai = format!(
        "[[ai.backends]]\nname = \"azure\"\nurl = \"{}/azure/openai\"\napi_key = \"azure-secret\"\napi_version = \"2024-10-21\"\nmodels = [\"gpt-4o-mini\"]\n",
        fake.url
    );
    let app = app(&ai);
    let node = app.start(&[]);
    let c = Client::new(&node, &app).await;
    let (status, body, _) = c.chat(json!({"model": "gpt-4o-mini", "messages": messages()})).await;
    assert_eq!((status, body["choices"][0]["message"]["content"].as_str()), (200, Some("from Azure")), "{body}");
    let (headers, request) = fake.last("azure");
    assert_eq!(request["deployment"], "gpt-4o-mini");
    assert_eq!(request["query"], "api-version=2024-10-21");
    assert_eq!(headers["api-key"], "azure-secret");
    assert!(headers.get("authorization").is_none(), "the client's key stays at the gateway");
}

// --- the local provider (`[ai.local]`: the models `scripts/models.sh` installs) -------------------

const LOCAL_CHAT: &str = "SmolLM2-135M-Instruct.Q4_1";
const LOCAL_EMBEDDINGS: &str = "all-MiniLM-L6-v2";

fn france() -> Value {
    json!([{"role": "system", "content": "You are a helpful assistant."},
           {"role": "user", "content": "What is the capital of France?"}])
}

#[tokio::test]
async fn with_no_backend_the_local_model_chats_streams_and_embeds() {
    let app = app("");
    let node = app.start(&[]);
    let c = Client::new(&node, &app).await;
    let models: Value =
        c.http.get(node.url("/v1/models")).bearer_auth(&c.key).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [LOCAL_CHAT, LOCAL_EMBEDDINGS]);

    // A whole answer, greedy: coherent, with its usage.
    let (status, answer, headers) =
        c.chat(json!({"model": LOCAL_CHAT, "messages": france(), "temperature": 0, "max_tokens": 40})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(headers["x-nimbus-ai-backend"], "local");
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.contains("Paris"), "{answer}");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    let usage = &answer["usage"];
    assert!(
        usage["prompt_tokens"].as_u64().unwrap() > 10 && usage["completion_tokens"].as_u64().unwrap() > 2,
        "{usage}"
    );

    // Streamed: the same text in pieces, then the finish, the usage asked for, and [DONE].
    let body = json!({"model": LOCAL_CHAT, "messages": france(), "temperature": 0, "max_tokens": 40,
                      "stream": true, "stream_options": {"include_usage": true}});
    let (status, backend, data) = c.stream(body).await;
    assert_eq!((status, backend.as_str()), (200, "local"), "{data:?}");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let pieces: Vec<&str> = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(pieces.iter().filter(|p| !p.is_empty()).count() > 3, "{pieces:?}");
    assert_eq!(pieces.concat(), content);
    assert_eq!(chunks.last().unwrap()["usage"], *usage, "{chunks:?}");

    // Stop strings and max_tokens.
    let (_, cut, _) =
        c.chat(json!({"model": LOCAL_CHAT, "messages": france(), "temperature": 0, "stop": ["Paris"]})).await;
    assert_eq!(cut["choices"][0]["message"]["content"], content[..content.find("Paris").unwrap()]);
    let (_, short, _) = c.chat(json!({"model": LOCAL_CHAT, "messages": france(), "max_tokens": 2})).await;
    assert_eq!(
        (short["choices"][0]["finish_reason"].as_str(), short["usage"]["completion_tokens"].as_u64()),
        (Some("length"), Some(2))
    );

    // Embeddings, as floats and as base64 (little-endian float32): the same unit vectors.
    let floats: Value = c
        .post("/v1/embeddings", json!({"model": LOCAL_EMBEDDINGS, "input": ["A cat sits on the mat.", "Stocks fell."]}))
        .await
        .json()
        .await
        .unwrap();
    let first: Vec<f32> =
        floats["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert_eq!((first.len(), floats["data"].as_array().unwrap().len()), (384, 2));
    assert!(floats["usage"]["prompt_tokens"].as_u64().unwrap() > 5);
    let encoded: Value = c
        .post(
            "/v1/embeddings",
            json!({"model": LOCAL_EMBEDDINGS, "input": "A cat sits on the mat.", "encoding_format": "base64"}),
        )
        .await
        .json()
        .await
        .unwrap();
    use base64::Engine as _;
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(encoded["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let decoded: Vec<f32> = bytes.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(decoded, first);

    // What the local models cannot do is refused, naming the parameter; nothing is generated.
    for (body, param) in [
        (
            json!({"model": LOCAL_CHAT, "messages": messages(), "tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools",
        ),
        (
            json!({"model": LOCAL_CHAT, "messages": messages(), "response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (json!({"model": LOCAL_CHAT, "messages": messages(), "temperature": 3}), "temperature"),
        (json!({"model": LOCAL_EMBEDDINGS, "messages": messages()}), "model"),
        (json!({"model": LOCAL_CHAT, "messages": messages(), "max_tokens": 100_000}), "messages"),
    ] {
        let (status, error, _) = c.chat(body.clone()).await;
        assert_eq!((status, error["error"]["param"].as_str()), (400, Some(param)), "{body} → {error}");
    }
    let (status, error, _) = c.chat(json!({"model": LOCAL_CHAT, "messages": messages(), "max_tokens": 100_000})).await;
    assert_eq!((status, error["error"]["code"].as_str()), (400, Some("context_length_exceeded")));

    // Metered like any backend.
    let metrics = c.metrics(&app).await;
    assert!(
        metric(&metrics, "nimbus_ai_tokens_total", &["backend=\"local\"", "kind=\"completion\""]).unwrap_or(0.0) > 10.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "nimbus_ai_local_tokens_per_second_count", &["phase=\"generation\""]).is_some(),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_local_model_serves_when_the_backends_before_it_fail() {
    let fake = Fake::start().await;
    let ai =
        format!("retries = 0\n{}\n[ai.local]\npriority = 2\n", fake.backend("broken", "status500", "priority = 1"));
    let app = app(&ai);
    let node = app.start(&[]);
    let c = Client::new(&node, &app).await;
    let (status, answer, headers) = c.chat(json!({"model": LOCAL_CHAT, "messages": france(), "max_tokens": 5})).await;
    assert_eq!(
        (status, &headers["x-nimbus-ai-backend"]),
        (200, &"local".parse::<axum::http::HeaderValue>().unwrap()),
        "{answer}"
    );
    // The broken backend (it serves any model) was asked first.
    assert_eq!(fake.hits("status500"), 1);
}

#[tokio::test]
async fn a_missing_local_model_stops_the_start_with_the_fix() {
    let app = app("[ai.local]\nchat = \"models/none.gguf\"\n");
    let error = support::Node::try_start(app.path(), &[]).err().expect("the node must not start");
    assert!(error.contains("none.gguf is missing") && error.contains("[ai.local] chat"), "{error}");
}

// --- the semantic cache ---------------------------------------------------------------------

fn ask(question: &str) -> Value {
    json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}])
}

#[tokio::test]
async fn the_semantic_cache_answers_similar_questions_per_user_within_its_ttl() {
    let fake = Fake::start().await;
    let ai =
        format!("{}\n[ai.cache]\nsimilarity = 0.9\nttl = \"3s\"\nscope = \"user\"\n", fake.backend("up", "ok", ""));
    let manifest = format!(
        "[[routes]]\npath = \"/v1/*\"\nbackend = \"ai\"\nauth = \"api_key\"\nsemantic_cache = true\n\n[ai]\n{ai}"
    );
    let app = App::new(Some(&manifest));
    let node = app.start(&[]);
    let c = Client::new(&node, &app).await;
    let cache = |headers: &HeaderMap| headers.get("x-nimbus-ai-cache").map(|v| v.to_str().unwrap().to_owned());

    let (status, first, headers) =
        c.chat(json!({"model": "m", "messages": ask("What is the capital of France?")})).await;
    assert_eq!((status, cache(&headers).as_deref()), (200, Some("miss")), "{first}");
    assert_eq!(fake.hits("ok"), 1);
    let content = first["choices"][0]["message"]["content"].as_str().unwrap().to_owned();

    // The same meaning in other words: the kept answer, no backend call; streamed when asked.
    let (status, again, headers) =
        c.chat(json!({"model": "m", "messages": ask("What's the capital city of France?")})).await;
    assert_eq!((status, cache(&headers).as_deref()), (200, Some("hit")), "{again}");
    assert_eq!(again["choices"][0]["message"]["content"], content.as_str());
    assert_eq!(again["usage"], first["usage"]);
    let response = c
        .post(
            "/v1/chat/completions",
            json!({"model": "m", "messages": ask("Which city is the capital of France?"),
                                             "stream": true, "stream_options": {"include_usage": true}}),
        )
        .await;
    assert_eq!(cache(response.headers()).as_deref(), Some("hit"));
    let text = response.text().await.unwrap();
    let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, content);
    assert!(
        chunks.iter().filter(|c| c["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty())).count()
            > 1
    );
    assert_eq!(chunks.last().unwrap()["usage"], first["usage"]);
    assert_eq!(fake.hits("ok"), 1);

    // Another question, other parameters, another user: misses.
    let (_, _, headers) = c.chat(json!({"model": "m", "messages": ask("What is the capital of Spain?")})).await;
    assert_eq!(cache(&headers).as_deref(), Some("miss"));
    let (_, _, headers) =
        c.chat(json!({"model": "m", "messages": ask("What is the capital of France?"), "temperature": 1.5})).await;
    assert_eq!(cache(&headers).as_deref(), Some("miss"));
    let other = Client::new(&node, &app).await;
    let (_, _, headers) = other.chat(json!({"model": "m", "messages": ask("What is the capital of France?")})).await;
    assert_eq!(cache(&headers).as_deref(), Some("miss"));
    assert_eq!(fake.hits("ok"), 4);

    // A streamed answer is kept too, once its stream ended cleanly.
    let stream = json!({"model": "m", "messages": ask("Tell me a joke about owls."), "stream": true});
    let (status, _, _) = c.stream(stream.clone()).await;
    assert_eq!(status, 200);
    let (_, answer, headers) = c.chat(json!({"model": "m", "messages": ask("Tell me a joke about owls.")})).await;
    assert_eq!(cache(&headers).as_deref(), Some("hit"), "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], "Hello there, friend");

    let metrics = c.metrics(&app).await;
    assert_eq!(metric(&metrics, "nimbus_ai_cache_total", &["outcome=\"hit\""]), Some(3.0), "{metrics}");
    assert!(metric(&metrics, "nimbus_ai_requests_total", &["backend=\"cache\""]).is_some_and(|n| n >= 3.0));

    // Past the TTL the answer is gone.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (_, _, headers) = c.chat(json!({"model": "m", "messages": ask("What is the capital of France?")})).await;
    assert_eq!(cache(&headers).as_deref(), Some("miss"));
}
