//! The gateway's route policies end to end: the real binary in front of Python functions, a fake
//! OpenID issuer and a fake upstream, both served from this test process on 127.0.0.1. Covers
//! bearer tokens (validation, key rotation), scopes/roles/claims, the default policy, API keys,
//! rate limits and quotas, CORS, header and path transforms, the streaming reverse proxy, the
//! OpenAPI document and the gateway's metrics.
//!
//! Tokens are signed with the test-only keys in `fixtures/jwt/` (see its README).

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::BodyExt as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::{App, Node, admin_token, wait_until};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

// ---------------------------------------------------------------------------------------------
// Signing keys and tokens
// ---------------------------------------------------------------------------------------------

/// The `aud` every issuer in these tests is configured with.
const AUDIENCE: &str = "api://test";

/// One of the fixture key pairs.
#[derive(Clone, Copy, Debug)]
enum Key {
    Rsa1,
    Rsa2,
    Ec1,
}

impl Key {
    fn kid(self) -> &'static str {
        match self {
            Key::Rsa1 => "rsa-key-1",
            Key::Rsa2 => "rsa-key-2",
            Key::Ec1 => "ec-key-1",
        }
    }

    fn alg(self) -> Algorithm {
        match self {
            Key::Rsa1 | Key::Rsa2 => Algorithm::RS256,
            Key::Ec1 => Algorithm::ES256,
        }
    }

    fn encoding(self) -> EncodingKey {
        match self {
            Key::Rsa1 => EncodingKey::from_rsa_pem(include_bytes!("fixtures/jwt/rsa1.pem")),
            Key::Rsa2 => EncodingKey::from_rsa_pem(include_bytes!("fixtures/jwt/rsa2.pem")),
            Key::Ec1 => EncodingKey::from_ec_pem(include_bytes!("fixtures/jwt/ec1.pem")),
        }
        .expect("fixture keys parse")
    }

    /// The public half as a JWK.
    fn jwk(self) -> Value {
        let text = match self {
            Key::Rsa1 => include_str!("fixtures/jwt/rsa1.jwk.json"),
            Key::Rsa2 => include_str!("fixtures/jwt/rsa2.jwk.json"),
            Key::Ec1 => include_str!("fixtures/jwt/ec1.jwk.json"),
        };
        serde_json::from_str(text).expect("fixture JWKs are JSON")
    }
}

/// The RSA key's public PEM: what an attacker would use as an HMAC secret.
const RSA1_PUBLIC_PEM: &[u8] = include_bytes!("fixtures/jwt/rsa1.pub.pem");

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Signs `claims` with `key`, naming `kid` in the header.
fn sign_as(key: Key, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(key.alg());
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key.encoding()).expect("signing works")
}

fn sign(key: Key, claims: &Value) -> String {
    sign_as(key, key.kid(), claims)
}

/// A token signed with no algorithm at all (`alg: none`), as an attacker would craft it.
fn unsigned_token(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

// ---------------------------------------------------------------------------------------------
// A fake OpenID issuer
// ---------------------------------------------------------------------------------------------

/// Serves `/.well-known/openid-configuration` and `/jwks` on 127.0.0.1; the key set can change
/// while the node runs, and every fetch of it is counted.
struct FakeIssuer {
    url: String,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct IssuerState {
    url: String,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

impl FakeIssuer {
    async fn start(keys: &[Key]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = IssuerState { url: url.clone(), jwks: Arc::default(), fetches: Arc::default() };
        let router = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(|State(s): State<IssuerState>| async move {
                    axum::Json(json!({"issuer": s.url, "jwks_uri": format!("{}/jwks", s.url)}))
                }),
            )
            .route(
                "/jwks",
                axum::routing::get(|State(s): State<IssuerState>| async move {
                    s.fetches.fetch_add(1, Ordering::SeqCst);
                    axum::Json(s.jwks.lock().unwrap().clone())
                }),
            )
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let issuer = Self { url, jwks: state.jwks, fetches: state.fetches };
        issuer.publish(keys);
        issuer
    }

    /// Replaces the published key set.
    fn publish(&self, keys: &[Key]) {
        *self.jwks.lock().unwrap() = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Claims the node accepts: this issuer, the test audience, valid for 5 minutes, scope `chat`.
    fn claims(&self) -> Value {
        let now = now();
        json!({
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "user-1",
            "iat": now,
            "exp": now + 300,
            "scope": "chat",
        })
    }

    /// A valid token signed with `key`, with `edit` applied to the claims first.
    fn token(&self, key: Key, edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = self.claims();
        edit(&mut claims);
        sign(key, &claims)
    }

    /// The manifest section that trusts this issuer.
    fn manifest(&self) -> String {
        format!("[[gateway.issuers]]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\n", self.url)
    }
}

// ---------------------------------------------------------------------------------------------
// A fake upstream
// ---------------------------------------------------------------------------------------------

/// An HTTP server on 127.0.0.1 that proxied routes point at. By the end of the path:
/// `…/slow` answers after 3 s, `…/stream` sends 3 chunks 300 ms apart, `…/length` reads the body
/// and answers its length (reporting each chunk's arrival on `uploads`); anything else echoes the
/// request as JSON and answers with the headers `x-upstream-secret` and `x-upstream-kept`.
struct FakeUpstream {
    url: String,
    /// Bytes of the request body received so far, sent as each chunk arrives at `…/length`.
    uploads: tokio::sync::Mutex<mpsc::UnboundedReceiver<usize>>,
}

impl FakeUpstream {
    async fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = axum::Router::new().fallback(upstream_handler).with_state(tx);
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self { url, uploads: tokio::sync::Mutex::new(rx) }
    }
}

async fn upstream_handler(State(uploads): State<mpsc::UnboundedSender<usize>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    if path.ends_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
        return "finally".into_response();
    }
    if path.ends_with("/stream") {
        let chunks = futures_util::stream::unfold(0u32, |i| async move {
            if i == 3 {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Some((Ok::<_, Infallible>(bytes::Bytes::from(format!("chunk {i}\n"))), i + 1))
        });
        return Body::from_stream(chunks).into_response();
    }
    if path.ends_with("/length") {
        let mut body = req.into_body();
        let mut length = 0;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return (axum::http::StatusCode::BAD_REQUEST, "the body broke off").into_response();
            };
            if let Some(data) = frame.data_ref() {
                length += data.len();
                let _ = uploads.send(length);
            }
        }
        return axum::Json(json!({ "length": length })).into_response();
    }
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(name, value)| {
            (name.as_str().to_owned(), Value::String(String::from_utf8_lossy(value.as_bytes()).into()))
        })
        .collect();
    let echo = json!({
        "method": req.method().as_str(),
        "path": path,
        "query": req.uri().query(),
        "headers": headers,
    });
    ([("x-upstream-secret", "s3cr3t"), ("x-upstream-kept", "kept")], axum::Json(echo)).into_response()
}

/// A port on 127.0.0.1 where nothing listens.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------
// The app under test
// ---------------------------------------------------------------------------------------------

/// One Python function per path; each answers its name and the caller's verified claims as the
/// SDK sees them (`req.claims`, parsed from the `x-nimbus-claims` header the host sets).
const APP_PY: &str = r#"
import nimbus

app = nimbus.App()

ROUTES = {
    "whoami": "/api/whoami",
    "admin": "/admin/ping",
    "tenant": "/tenant/ping",
    "open": "/open/hello",
    "public": "/public/hello",
    "keyed": "/keyed/hello",
    "other": "/other/hello",
    "limited": "/limited/hello",
    "perclient": "/perclient/hello",
    "quota": "/quota/hello",
    "cors": "/cors/hello",
    "plain": "/plain/hello",
}


def declare(name, path):
    async def handler(req, ctx):
        return {
            "function": ctx.function_name,
            "claims": req.claims,
            "claims_header": req.headers.get("x-nimbus-claims"),
        }

    app.http(path, methods=["GET"], name=name)(handler)


for name, path in ROUTES.items():
    declare(name, path)
"#;

const WORKER: &str = "[workers.main]\nruntime = \"python\"\nentry = \"functions/app.py\"\n";

/// An app folder with the Python functions and `manifest` after the worker section.
fn python_app(manifest: &str) -> App {
    let app = App::new(Some(&format!("{WORKER}\n{manifest}")));
    std::fs::create_dir_all(app.path().join("functions")).unwrap();
    std::fs::write(app.path().join("functions/app.py"), APP_PY).unwrap();
    app
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------------------------

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// A response read whole: status, headers and the body as JSON (`Null` when it is not JSON).
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("an ASCII header"))
    }

    /// `error.code` of a JSON error answer.
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    /// Whether the body has the platform's error shape `{"error": {"code", "message"}}`.
    fn is_error_shape(&self) -> bool {
        self.body["error"]["code"].is_string() && self.body["error"]["message"].is_string()
    }
}

async fn call(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.expect("the node answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("a whole body");
    Reply { status, headers, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
}

async fn get(node: &Node, path: &str) -> Reply {
    call(client().get(node.url(path))).await
}

async fn get_with_token(node: &Node, path: &str, token: &str) -> Reply {
    call(client().get(node.url(path)).bearer_auth(token)).await
}

/// Calls the admin API with the node's admin token.
async fn admin(node: &Node, app: &App, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
    let mut request = client().request(method, node.url(path)).bearer_auth(admin_token(app));
    if let Some(body) = body {
        request = request.json(&body);
    }
    call(request).await
}

/// Creates an API key; answers (id, secret key).
async fn create_key(node: &Node, app: &App, body: Value) -> (String, String) {
    let reply = admin(node, app, reqwest::Method::POST, "/_nimbus/admin/keys", Some(body)).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    (reply.body["id"].as_str().unwrap().to_owned(), reply.body["key"].as_str().unwrap().to_owned())
}

async fn get_with_key(node: &Node, path: &str, key: &str) -> Reply {
    call(client().get(node.url(path)).header("x-api-key", key)).await
}

/// Asserts a 401 for a presented but invalid token: RFC 6750's challenge with `invalid_token`
/// and an `error_description` containing `why`.
fn assert_invalid_token(reply: &Reply, case: &str, why: &str) {
    assert_eq!(reply.status, 401, "{case}: {}", reply.body);
    assert_eq!(reply.code(), "invalid_token", "{case}: {}", reply.body);
    assert!(reply.is_error_shape(), "{case}: {}", reply.body);
    let challenge = reply.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer realm=\"nimbus\""), "{case}: {challenge}");
    assert!(challenge.contains("error=\"invalid_token\""), "{case}: {challenge}");
    let description = challenge.split("error_description=\"").nth(1).unwrap_or_default();
    assert!(description.contains(why), "{case}: expected the description to say {why:?}: {challenge}");
}

/// A request written by hand on a raw connection, so that its body can be sent chunk by chunk
/// (`Transfer-Encoding: chunked`) with pauses the test controls.
struct ChunkedUpload {
    stream: tokio::net::TcpStream,
}

impl ChunkedUpload {
    async fn start(node: &Node, path: &str) -> Self {
        let authority = node.url.trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {authority}\r\ntransfer-encoding: chunked\r\n\
             content-type: application/octet-stream\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        Self { stream }
    }

    async fn send(&mut self, data: &[u8]) {
        self.stream.write_all(format!("{:x}\r\n", data.len()).as_bytes()).await.unwrap();
        self.stream.write_all(data).await.unwrap();
        self.stream.write_all(b"\r\n").await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Ends the body and reads the answer: (status, the raw rest of the response).
    async fn finish(mut self) -> (u16, String) {
        // The node may answer (and close) before the body is complete: that is fine.
        let _ = self.stream.write_all(b"0\r\n\r\n").await;
        let mut raw = Vec::new();
        let _ = self.stream.read_to_end(&mut raw).await;
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let status = raw.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, raw)
    }
}

/// GETs `target` exactly as written (clients like reqwest normalize `..` away before sending);
/// answers (status, the raw response).
async fn raw_get(node: &Node, target: &str) -> (u16, String) {
    let authority = node.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let head = format!("GET {target} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, raw)
}

// ---------------------------------------------------------------------------------------------
// 1. Bearer tokens
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_verified_and_their_claims_reach_the_function() {
    let issuer = FakeIssuer::start(&[Key::Rsa1, Key::Ec1]).await;
    let app = python_app(&format!(
        "{}\n[[routes]]\npath = \"/api/*\"\nauth = \"jwt\"\nscopes = [\"chat\"]\n",
        issuer.manifest()
    ));
    let node = app.start(&[]);

    // A valid token: the function sees the verified claims, parsed by the SDK and as the raw header.
    let reply = get_with_token(&node, "/api/whoami", &issuer.token(Key::Rsa1, |_| {})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["function"], "whoami");
    let claims = &reply.body["claims"];
    assert_eq!((claims["sub"].as_str(), claims["iss"].as_str()), (Some("user-1"), Some(issuer.url.as_str())));
    assert_eq!((claims["aud"].as_str(), claims["scope"].as_str()), (Some(AUDIENCE), Some("chat")));
    let raw: Value = serde_json::from_str(reply.body["claims_header"].as_str().unwrap()).unwrap();
    assert_eq!(&raw, claims);

    // EC keys work as well as RSA ones; the same token again is served (from the verified cache).
    let ec = issuer.token(Key::Ec1, |c| c["sub"] = json!("user-ec"));
    for _ in 0..2 {
        let reply = get_with_token(&node, "/api/whoami", &ec).await;
        assert_eq!((reply.status, reply.body["claims"]["sub"].as_str()), (200, Some("user-ec")), "{}", reply.body);
    }

    // No token: 401 with a bare challenge (no error code, as RFC 6750 §3.1 asks) and a JSON error.
    let reply = get(&node, "/api/whoami").await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("www-authenticate"), Some("Bearer realm=\"nimbus\""));
    assert!(reply.is_error_shape(), "{}", reply.body);
    assert_eq!(reply.code(), "unauthorized");
    let reply = call(client().get(node.url("/api/whoami")).header("authorization", "Basic dXNlcjpwdw==")).await;
    assert_eq!((reply.status, reply.code()), (401, "unauthorized"), "another scheme is no bearer token");

    // Presented but invalid tokens.
    let valid = issuer.token(Key::Rsa1, |_| {});
    let (header_and_payload, _) = valid.rsplit_once('.').unwrap();
    let hmac_with_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(Key::Rsa1.kid().to_owned());
        jsonwebtoken::encode(&header, &issuer.claims(), &EncodingKey::from_secret(RSA1_PUBLIC_PEM)).unwrap()
    };
    let with_header = |alg: Algorithm, kid: Option<&str>| {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &issuer.claims(), &Key::Rsa1.encoding()).unwrap()
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", issuer.token(Key::Rsa1, |c| c["exp"] = json!(now() - 120)), "expired"),
        ("not yet valid", issuer.token(Key::Rsa1, |c| c["nbf"] = json!(now() + 120)), "not valid yet"),
        ("wrong issuer", issuer.token(Key::Rsa1, |c| c["iss"] = json!("http://127.0.0.1:9")), "not trusted"),
        ("wrong audience", issuer.token(Key::Rsa1, |c| c["aud"] = json!("api://other")), "another audience"),
        ("no exp", issuer.token(Key::Rsa1, |c| _ = c.as_object_mut().unwrap().remove("exp")), "no `exp` claim"),
        ("unknown kid", sign_as(Key::Rsa1, "no-such-key", &issuer.claims()), "'no-such-key' is unknown"),
        ("signed by another key", sign_as(Key::Rsa2, Key::Rsa1.kid(), &issuer.claims()), "does not verify"),
        ("no kid among several keys", with_header(Algorithm::RS256, None), "names no signing key"),
        ("RS384 on an RS256 key", with_header(Algorithm::RS384, Some(Key::Rsa1.kid())), "does not match its key"),
        ("alg none", unsigned_token(&issuer.claims()), "algorithm"),
        ("HS256 keyed with the RSA public key", hmac_with_public_key, "HS256 is not accepted"),
        ("signature cut short", valid[..valid.len() - 12].to_owned(), ""),
        ("signature missing", header_and_payload.to_owned(), "not a well-formed JWT"),
        ("garbage", "garbage".to_owned(), "not a well-formed JWT"),
    ];
    for (case, token, why) in &cases {
        assert_invalid_token(&get_with_token(&node, "/api/whoami", token).await, case, why);
    }

    // The clock-skew leeway (30 s by default): slightly expired or early tokens pass.
    let recently_expired = issuer.token(Key::Rsa1, |c| c["exp"] = json!(now() - 10));
    assert_eq!(get_with_token(&node, "/api/whoami", &recently_expired).await.status, 200);
    let slightly_early = issuer.token(Key::Rsa1, |c| c["nbf"] = json!(now() + 10));
    assert_eq!(get_with_token(&node, "/api/whoami", &slightly_early).await.status, 200);
}

// ---------------------------------------------------------------------------------------------
// 2. Scopes, roles and claims
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_demand_scopes_roles_and_claim_values() {
    let issuer = FakeIssuer::start(&[Key::Rsa1]).await;
    let app = python_app(&format!(
        "{}\n[[routes]]\npath = \"/api/*\"\nscopes = [\"chat\"]\n\n\
         [[routes]]\npath = \"/admin/*\"\nroles = [\"admin\", \"ops\"]\n\n\
         [[routes]]\npath = \"/tenant/*\"\nclaims = {{ tid = \"acme\" }}\n",
        issuer.manifest()
    ));
    let node = app.start(&[]);

    // Scopes: every listed scope, from `scope` (space-separated) or Entra's `scp`.
    let reply = get_with_token(&node, "/api/whoami", &issuer.token(Key::Rsa1, |c| c["scope"] = json!("read"))).await;
    assert_eq!((reply.status, reply.code()), (403, "insufficient_scope"), "{}", reply.body);
    assert!(reply.is_error_shape());
    let challenge = reply.header("www-authenticate").unwrap();
    assert!(challenge.contains("error=\"insufficient_scope\"") && challenge.contains("scope=\"chat\""), "{challenge}");
    for granted in [json!({"scope": "openid chat"}), json!({"scp": "chat"})] {
        let token = issuer.token(Key::Rsa1, |c| {
            c.as_object_mut().unwrap().remove("scope");
            c.as_object_mut().unwrap().extend(granted.as_object().unwrap().clone());
        });
        assert_eq!(get_with_token(&node, "/api/whoami", &token).await.status, 200, "{granted}");
    }

    // Roles: one of the listed roles.
    for (roles, status) in [(json!(["ops"]), 200), (json!("admin"), 200), (json!(["user"]), 403), (Value::Null, 403)] {
        let token = issuer.token(Key::Rsa1, |c| c["roles"] = roles.clone());
        let reply = get_with_token(&node, "/admin/ping", &token).await;
        assert_eq!(reply.status, status, "roles {roles}: {}", reply.body);
        if status == 403 {
            assert_eq!(reply.code(), "insufficient_scope");
            assert!(reply.body["error"]["message"].as_str().unwrap().contains("roles"), "{}", reply.body);
        }
    }

    // Claim values: equal, or contained in an array claim.
    for (tid, status) in
        [(json!("acme"), 200), (json!(["other", "acme"]), 200), (json!("evil"), 403), (Value::Null, 403)]
    {
        let token = issuer.token(Key::Rsa1, |c| c["tid"] = tid.clone());
        let reply = get_with_token(&node, "/tenant/ping", &token).await;
        assert_eq!(reply.status, status, "tid {tid}: {}", reply.body);
        if status == 403 {
            assert!(reply.body["error"]["message"].as_str().unwrap().contains("tid"), "{}", reply.body);
        }
    }

    // Authorization runs after authentication: no token is still a 401, not a 403.
    assert_eq!(get(&node, "/admin/ping").await.status, 401);
}

// ---------------------------------------------------------------------------------------------
// 3. Key rotation
// ---------------------------------------------------------------------------------------------

/// Slow by nature (about 30 s): the gateway refetches an issuer's keys for an unknown `kid` at
/// most once per 30 s, counted from the fetch at start-up, so a key rotated in right after
/// start is accepted only once that floor has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_are_fetched_without_hammering_the_issuer() {
    let issuer = FakeIssuer::start(&[Key::Rsa1]).await;
    let app = python_app(&format!("{}\n[[routes]]\npath = \"/api/*\"\n", issuer.manifest()));
    let node = app.start(&[]);
    wait_until("the node fetched the issuer's keys", Duration::from_secs(10), async || issuer.fetches() >= 1).await;
    assert_eq!(get_with_token(&node, "/api/whoami", &issuer.token(Key::Rsa1, |_| {})).await.status, 200);

    // A burst of tokens naming forged kids costs the issuer at most one fetch.
    let burst = async || {
        let before = issuer.fetches();
        let calls = (0..20).map(|i| {
            let token = sign_as(Key::Rsa1, &format!("forged-{i}-{}", now()), &issuer.claims());
            let url = node.url("/api/whoami");
            async move { call(client().get(url).bearer_auth(token)).await }
        });
        for reply in futures_util::future::join_all(calls).await {
            assert_eq!((reply.status, reply.code()), (401, "invalid_token"), "{}", reply.body);
        }
        let extra = issuer.fetches() - before;
        assert!(extra <= 1, "20 forged kids caused {extra} fetches of the key set");
    };
    burst().await;

    // The issuer rotates a new key in and signs with it: accepted once the gateway refetches.
    issuer.publish(&[Key::Rsa1, Key::Rsa2]);
    let rotated = issuer.token(Key::Rsa2, |c| c["sub"] = json!("rotated"));
    let before = issuer.fetches();
    wait_until("a token signed with the new key is accepted", Duration::from_secs(45), async || {
        let reply = get_with_token(&node, "/api/whoami", &rotated).await;
        assert!(reply.status == 200 || reply.code() == "invalid_token", "{}", reply.body);
        reply.status == 200
    })
    .await;
    let reply = get_with_token(&node, "/api/whoami", &rotated).await;
    assert_eq!(reply.body["claims"]["sub"], "rotated");
    assert_eq!(issuer.fetches() - before, 1, "polling with the new kid fetched the keys once");
    assert_eq!(get_with_token(&node, "/api/whoami", &issuer.token(Key::Rsa1, |_| {})).await.status, 200);

    burst().await;
}

// ---------------------------------------------------------------------------------------------
// 4. The default policy
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_routes_need_a_token_unless_a_route_opens_them() {
    let issuer = FakeIssuer::start(&[Key::Rsa1]).await;
    let app = python_app(&format!(
        "{}\n[[routes]]\npath = \"/public/*\"\nauth = \"anonymous\"\n\n[[routes]]\npath = \"/api/*\"\n",
        issuer.manifest()
    ));
    let node = app.start(&[]);

    // A function no [[routes]] entry covers: a valid token, nothing more.
    let reply = get(&node, "/open/hello").await;
    assert_eq!((reply.status, reply.code()), (401, "unauthorized"));
    assert_eq!(reply.header("www-authenticate"), Some("Bearer realm=\"nimbus\""));
    let reply = get_with_token(&node, "/open/hello", &issuer.token(Key::Rsa1, |c| c["scope"] = json!(""))).await;
    assert_eq!((reply.status, reply.body["claims"]["sub"].as_str()), (200, Some("user-1")), "{}", reply.body);

    // An anonymous route is open, and a client cannot forge claims on it.
    let reply = call(client().get(node.url("/public/hello")).header("x-nimbus-claims", r#"{"sub":"admin"}"#)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!((&reply.body["claims"], &reply.body["claims_header"]), (&Value::Null, &Value::Null));

    // Paths nothing serves are a JSON 404, not a 401, even under a route that demands a token.
    for path in ["/nothing/here", "/api/nope", "/public/nope"] {
        let reply = get(&node, path).await;
        assert_eq!((reply.status, reply.code()), (404, "not_found"), "{path}: {}", reply.body);
        assert!(reply.is_error_shape());
    }
}

// ---------------------------------------------------------------------------------------------
// 5. API keys
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_created_checked_restricted_expired_and_revoked() {
    let app = python_app(
        "[[routes]]\npath = \"/keyed/*\"\nauth = \"api_key\"\n\n[[routes]]\npath = \"/other/*\"\nauth = \"api_key\"\n",
    );
    let node = app.start(&[]);
    use reqwest::Method;

    // The admin API is behind the admin token.
    let reply = call(client().post(node.url("/_nimbus/admin/keys")).json(&json!({"name": "x"}))).await;
    assert_eq!(reply.status, 401);

    let reply = admin(&node, &app, Method::POST, "/_nimbus/admin/keys", Some(json!({"name": "ci"}))).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let (id, key) = (reply.body["id"].as_str().unwrap().to_owned(), reply.body["key"].as_str().unwrap().to_owned());
    assert!(key.starts_with(&format!("nk_{id}_")), "{key}");
    assert_eq!((reply.body["name"].as_str(), reply.body["routes"].clone()), (Some("ci"), json!([])));

    // Both header names work; the function learns which key called.
    for header in ["x-api-key", "Ocp-Apim-Subscription-Key"] {
        let reply = call(client().get(node.url("/keyed/hello")).header(header, &key)).await;
        assert_eq!(reply.status, 200, "{header}: {}", reply.body);
        assert_eq!(reply.body["claims"]["api_key"], json!({"id": id, "name": "ci"}));
    }

    // Missing and wrong keys.
    let reply = get(&node, "/keyed/hello").await;
    assert_eq!((reply.status, reply.code()), (401, "api_key_required"));
    assert!(reply.header("www-authenticate").unwrap().starts_with("ApiKey"));
    let forged = format!("nk_{id}_{}", "0".repeat(64));
    for wrong in [forged.as_str(), "nk_0000000000000000_x", "not-a-key"] {
        let reply = get_with_key(&node, "/keyed/hello", wrong).await;
        assert_eq!((reply.status, reply.code()), (401, "invalid_api_key"), "{wrong}: {}", reply.body);
    }

    // A key restricted to some routes.
    let (_, restricted) = create_key(&node, &app, json!({"name": "other only", "routes": ["/other/*"]})).await;
    let reply = get_with_key(&node, "/keyed/hello", &restricted).await;
    assert_eq!((reply.status, reply.code()), (403, "forbidden"), "{}", reply.body);
    assert_eq!(get_with_key(&node, "/other/hello", &restricted).await.status, 200);

    // A key with a lifetime (whole seconds: "2s" is valid for at least one).
    let (_, short_lived) = create_key(&node, &app, json!({"name": "short", "expires_in": "2s"})).await;
    assert_eq!(get_with_key(&node, "/keyed/hello", &short_lived).await.status, 200);
    wait_until("the short-lived key expired", Duration::from_secs(5), async || {
        let reply = get_with_key(&node, "/keyed/hello", &short_lived).await;
        assert!(reply.status == 200 || reply.code() == "api_key_expired", "{}", reply.body);
        reply.status == 401
    })
    .await;

    // Listing and showing never reveal a secret or its hash.
    let reply = admin(&node, &app, Method::GET, "/_nimbus/admin/keys", None).await;
    assert_eq!(reply.status, 200);
    let listed = reply.body["keys"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{}", reply.body);
    let text = reply.body.to_string();
    for secret in [&key, &restricted, &short_lived] {
        assert!(!text.contains(secret.rsplit('_').next().unwrap()), "a secret is listed: {text}");
    }
    for entry in listed {
        assert!(entry.get("key").is_none() && entry.get("hash").is_none(), "{entry}");
    }
    let reply = admin(&node, &app, Method::GET, &format!("/_nimbus/admin/keys/{id}"), None).await;
    assert_eq!((reply.status, reply.body["name"].as_str()), (200, Some("ci")));
    assert!(reply.body.get("key").is_none() && reply.body.get("hash").is_none(), "{}", reply.body);

    // Revocation is immediate and for good.
    let reply = admin(&node, &app, Method::DELETE, &format!("/_nimbus/admin/keys/{id}"), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body["revoked"].is_u64(), "{}", reply.body);
    let reply = get_with_key(&node, "/keyed/hello", &key).await;
    assert_eq!((reply.status, reply.code()), (401, "api_key_revoked"));
    let reply = admin(&node, &app, Method::DELETE, "/_nimbus/admin/keys/0123456789abcdef", None).await;
    assert_eq!((reply.status, reply.code()), (404, "not_found"));

    // Bad requests to create a key: 400 in the JSON error shape.
    let bad = [
        json!({}),
        json!({"name": ""}),
        json!({"name": "x", "expires_in": "soon"}),
        json!({"name": "x", "expires_in": "0s"}),
        json!({"name": "x", "routes": ["no-leading-slash"]}),
        json!({"name": "x", "unknown": true}),
        json!(["name"]),
    ];
    for body in bad {
        let reply = admin(&node, &app, Method::POST, "/_nimbus/admin/keys", Some(body.clone())).await;
        assert_eq!((reply.status, reply.code()), (400, "invalid_request"), "{body}: {}", reply.body);
        assert!(reply.is_error_shape(), "{body}: {}", reply.body);
    }
    let reply = call(
        client()
            .post(node.url("/_nimbus/admin/keys"))
            .bearer_auth(admin_token(&app))
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!((reply.status, reply.code()), (400, "invalid_request"), "{}", reply.body);
}

/// A key's lifetime is counted from its creation time truncated to the second, so a key made
/// late in a second loses up to a second of its life: `"1s"` keys can be dead on arrival.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_lifetimes_count_from_the_moment_of_creation() {
    let app = python_app("[[routes]]\npath = \"/keyed/*\"\nauth = \"api_key\"\n");
    let node = app.start(&[]);
    // Create the key late in a second...
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_millis();
    tokio::time::sleep(Duration::from_millis(u64::from((1900 - millis) % 1000))).await;
    let created = Instant::now();
    let (_, key) = create_key(&node, &app, json!({"name": "one second", "expires_in": "1s"})).await;
    // ...and use it a quarter of its lifetime later, just past the next second's start.
    tokio::time::sleep(Duration::from_millis(250).saturating_sub(created.elapsed())).await;
    let reply = get_with_key(&node, "/keyed/hello", &key).await;
    assert_eq!(reply.status, 200, "a 1s key used after {:?}: {}", created.elapsed(), reply.body);
}

// ---------------------------------------------------------------------------------------------
// 6. Rate limits and quotas
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_refuse_with_retry_after_and_count_per_key() {
    let app = python_app(
        "[[routes]]\npath = \"/limited/*\"\nauth = \"anonymous\"\nrate_limit = { key = \"ip\", requests = 3, per = \"1m\" }\n\n\
         [[routes]]\npath = \"/perclient/*\"\nauth = \"anonymous\"\n\
         rate_limit = { key = \"header:x-client\", requests = 2, per = \"1m\" }\n",
    );
    let node = app.start(&[]);

    for remaining in [2, 1, 0] {
        let reply = get(&node, "/limited/hello").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.header("ratelimit-policy"), Some("\"rate\";q=3;w=60"));
        let state = reply.header("ratelimit").unwrap();
        assert!(state.starts_with(&format!("\"rate\";r={remaining};t=")), "{state}");
    }
    let reply = get(&node, "/limited/hello").await;
    assert_eq!((reply.status, reply.code()), (429, "rate_limited"), "{}", reply.body);
    let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry_after), "one request comes back every 20 s: {retry_after}");
    assert_eq!(reply.header("ratelimit-policy"), Some("\"rate\";q=3;w=60"));
    assert_eq!(reply.header("ratelimit"), Some(format!("\"rate\";r=0;t={retry_after}").as_str()));

    // Counted per header value: one client's exhaustion does not touch another's.
    let by_client =
        async |client_id: &str| call(client().get(node.url("/perclient/hello")).header("x-client", client_id)).await;
    assert_eq!(by_client("a").await.status, 200);
    assert_eq!(by_client("a").await.status, 200);
    assert_eq!(by_client("a").await.status, 429);
    assert_eq!(by_client("b").await.status, 200);
    assert_eq!(get(&node, "/perclient/hello").await.status, 200, "no header: counted by IP, apart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_are_counted_in_the_store_and_survive_a_restart() {
    let app = python_app(
        "[[routes]]\npath = \"/quota/*\"\nauth = \"api_key\"\nquota = { key = \"api_key\", requests = 2, per = \"day\" }\n",
    );
    let mut node = app.start(&[]);
    let (_, first) = create_key(&node, &app, json!({"name": "first"})).await;
    let (_, second) = create_key(&node, &app, json!({"name": "second"})).await;

    for remaining in [1, 0] {
        let reply = get_with_key(&node, "/quota/hello", &first).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.header("ratelimit-policy"), Some("\"quota\";q=2;w=86400"));
        assert!(reply.header("ratelimit").unwrap().starts_with(&format!("\"quota\";r={remaining};t=")));
    }
    let reply = get_with_key(&node, "/quota/hello", &first).await;
    assert_eq!((reply.status, reply.code()), (429, "quota_exceeded"), "{}", reply.body);
    let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry_after), "until the end of the UTC day: {retry_after}");
    assert_eq!(get_with_key(&node, "/quota/hello", &second).await.status, 200, "each key has its own quota");

    // A restarted node still knows the counts.
    let (status, _) = node.signal_and_wait("TERM", Duration::from_secs(15));
    assert!(status.success(), "{status}");
    let node = app.start(&[]);
    let reply = get_with_key(&node, "/quota/hello", &first).await;
    assert_eq!((reply.status, reply.code()), (429, "quota_exceeded"), "{}", reply.body);
    assert_eq!(get_with_key(&node, "/quota/hello", &second).await.status, 200);
    assert_eq!(get_with_key(&node, "/quota/hello", &second).await.status, 429, "1 before the restart + 2 after");
}

// ---------------------------------------------------------------------------------------------
// 7. CORS
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_preflights_and_decorates_refusals() {
    const APP_ORIGIN: &str = "https://app.example.com";
    const GLOBAL_ORIGIN: &str = "https://global.example.com";
    let issuer = FakeIssuer::start(&[Key::Rsa1]).await;
    let app = python_app(&format!(
        "{}\n[gateway.cors]\norigins = [\"{GLOBAL_ORIGIN}\"]\n\n\
         [[routes]]\npath = \"/cors/*\"\n\
         cors = {{ origins = [\"{APP_ORIGIN}\"], credentials = true, max_age = \"10m\" }}\n\n\
         [[routes]]\npath = \"/plain/*\"\nauth = \"anonymous\"\n",
        issuer.manifest()
    ));
    let node = app.start(&[]);
    let preflight = async |path: &str, origin: &str| {
        call(
            client()
                .request(reqwest::Method::OPTIONS, node.url(path))
                .header("origin", origin)
                .header("access-control-request-method", "GET")
                .header("access-control-request-headers", "authorization"),
        )
        .await
    };

    // A preflight from an allowed origin needs no token.
    let reply = preflight("/cors/hello", APP_ORIGIN).await;
    assert!(reply.status < 300, "{} {}", reply.status, reply.body);
    assert_eq!(reply.header("access-control-allow-origin"), Some(APP_ORIGIN));
    assert_eq!(reply.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(reply.header("access-control-max-age"), Some("600"));
    assert!(reply.header("access-control-allow-methods").unwrap().contains("GET"), "{:?}", reply.headers);
    assert!(reply.header("access-control-allow-headers").unwrap().contains("authorization"), "{:?}", reply.headers);

    // From another origin: no permission.
    let reply = preflight("/cors/hello", "https://evil.example.com").await;
    assert_eq!(reply.header("access-control-allow-origin"), None, "{:?}", reply.headers);

    // Refusals and answers both carry the CORS headers, so a browser script can read them.
    let reply = call(client().get(node.url("/cors/hello")).header("origin", APP_ORIGIN)).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("access-control-allow-origin"), Some(APP_ORIGIN));
    assert_eq!(reply.header("access-control-allow-credentials"), Some("true"));
    let token = issuer.token(Key::Rsa1, |_| {});
    let reply = call(client().get(node.url("/cors/hello")).header("origin", APP_ORIGIN).bearer_auth(token)).await;
    assert_eq!((reply.status, reply.header("access-control-allow-origin")), (200, Some(APP_ORIGIN)));

    // [gateway.cors] covers routes without their own, and the default policy's function routes.
    for path in ["/plain/hello", "/open/hello"] {
        let reply = call(client().get(node.url(path)).header("origin", GLOBAL_ORIGIN)).await;
        assert_eq!(reply.header("access-control-allow-origin"), Some(GLOBAL_ORIGIN), "{path}: {:?}", reply.headers);
        let reply = call(client().get(node.url(path)).header("origin", APP_ORIGIN)).await;
        assert_eq!(reply.header("access-control-allow-origin"), None, "{path}: {:?}", reply.headers);
        let reply = preflight(path, GLOBAL_ORIGIN).await;
        assert_eq!(reply.header("access-control-allow-origin"), Some(GLOBAL_ORIGIN), "{path}: {:?}", reply.headers);
    }
    assert_eq!(
        call(client().get(node.url("/cors/hello")).header("origin", GLOBAL_ORIGIN))
            .await
            .header("access-control-allow-origin"),
        None,
        "a route's own cors replaces the global one"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. The reverse proxy
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_routes_rewrite_paths_and_transform_headers() {
    let upstream = FakeUpstream::start().await;
    let app = python_app(&format!(
        "[[routes]]\npath = \"/up/*\"\nauth = \"anonymous\"\nbackend = \"{url}\"\nrewrite_prefix = \"/v1\"\n\
         request_headers = {{ set = {{ x-added = \"yes\", x-overwritten = \"by-gateway\" }}, remove = [\"x-drop\"] }}\n\
         response_headers = {{ set = {{ x-served-by = \"nimbus\" }}, remove = [\"x-upstream-secret\"] }}\n\n\
         [[routes]]\npath = \"/based/*\"\nauth = \"anonymous\"\nbackend = \"{url}/base/\"\n",
        url = upstream.url
    ));
    let node = app.start(&[]);
    let node_authority = node.url.trim_start_matches("http://");

    let reply = call(
        client()
            .get(node.url("/up/items/7?a=1&b=two%20words"))
            .header("x-drop", "1")
            .header("x-overwritten", "by-client")
            .header("x-custom", "kept")
            .header("x-nimbus-claims", r#"{"sub":"forged"}"#)
            .header("x-nimbus-function", "forged")
            .header("x-forwarded-for", "6.6.6.6")
            .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = &reply.body;
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/v1/items/7", "the matched prefix is rewritten");
    assert_eq!(seen["query"], "a=1&b=two%20words", "the query string is kept as sent");
    let headers = &seen["headers"];
    assert_eq!(headers["x-added"], "yes");
    assert_eq!(headers["x-overwritten"], "by-gateway");
    assert_eq!(headers["x-custom"], "kept");
    assert!(headers.get("x-drop").is_none(), "{headers}");
    let platform: Vec<&String> = headers.as_object().unwrap().keys().filter(|k| k.starts_with("x-nimbus-")).collect();
    assert!(platform.is_empty(), "client-sent platform headers reach the upstream: {platform:?}");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "an untrusted peer's X-Forwarded-For is replaced");
    assert_eq!(headers["x-forwarded-host"], node_authority);
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["host"], upstream.url.trim_start_matches("http://"));
    let traceparent = headers["traceparent"].as_str().unwrap();
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && !traceparent.contains("00f067aa0ba902b7"),
        "the trace goes on with the gateway's span: {traceparent}"
    );

    // Response transforms.
    assert_eq!(reply.header("x-served-by"), Some("nimbus"));
    assert_eq!(reply.header("x-upstream-kept"), Some("kept"));
    assert_eq!(reply.header("x-upstream-secret"), None);

    // Other methods pass through; an upstream URL's path is a base for every request.
    let reply = call(client().delete(node.url("/up/items/7"))).await;
    assert_eq!((reply.body["method"].as_str(), reply.body["path"].as_str()), (Some("DELETE"), Some("/v1/items/7")));
    let reply = get(&node, "/based/x?q=1").await;
    assert_eq!((reply.body["path"].as_str(), reply.body["query"].as_str()), (Some("/base/based/x"), Some("q=1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_bodies_stream_both_ways() {
    let upstream = FakeUpstream::start().await;
    let app =
        python_app(&format!("[[routes]]\npath = \"/up/*\"\nauth = \"anonymous\"\nbackend = \"{}\"\n", upstream.url));
    let node = app.start(&[]);

    // The response: the first chunk reaches the client long before the last is sent.
    let started = Instant::now();
    let mut response = client().get(node.url("/up/stream")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().expect("a first chunk");
    let first_at = started.elapsed();
    let mut all = first.to_vec();
    while let Some(chunk) = response.chunk().await.unwrap() {
        all.extend_from_slice(&chunk);
    }
    let last_at = started.elapsed();
    assert_eq!(String::from_utf8_lossy(&all), "chunk 0\nchunk 1\nchunk 2\n");
    assert!(
        last_at - first_at >= Duration::from_millis(450),
        "chunks were held back: first after {first_at:?}, last after {last_at:?}"
    );

    // The request: a whole body arrives whole...
    let payload = vec![b'x'; 100_000];
    let reply = call(client().post(node.url("/up/length")).body(payload)).await;
    assert_eq!((reply.status, reply.body["length"].as_u64()), (200, Some(100_000)), "{}", reply.body);

    // ...and a chunked upload reaches the upstream while the client is still sending.
    let mut uploads = upstream.uploads.lock().await;
    while uploads.try_recv().is_ok() {}
    let mut upload = ChunkedUpload::start(&node, "/up/length").await;
    upload.send(&[b'a'; 1000]).await;
    let seen = tokio::time::timeout(Duration::from_secs(5), uploads.recv()).await;
    assert_eq!(seen.ok().flatten(), Some(1000), "the first chunk did not reach the upstream before the body ended");
    upload.send(&[b'b'; 500]).await;
    let (status, raw) = upload.finish().await;
    assert_eq!(status, 200, "{raw}");
    assert!(raw.contains(r#"{"length":1500}"#), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_answer_502_504_and_413() {
    let upstream = FakeUpstream::start().await;
    let app = python_app(&format!(
        "[[routes]]\npath = \"/down/*\"\nauth = \"anonymous\"\nbackend = \"http://127.0.0.1:{closed}\"\n\n\
         [[routes]]\npath = \"/slowup/*\"\nauth = \"anonymous\"\nbackend = \"{url}\"\ntimeout = \"500ms\"\n\n\
         [[routes]]\npath = \"/small/*\"\nauth = \"anonymous\"\nbackend = \"{url}\"\nmax_body = \"1KB\"\n",
        closed = closed_port().await,
        url = upstream.url
    ));
    let node = app.start(&[]);

    let reply = get(&node, "/down/anything").await;
    assert_eq!((reply.status, reply.code()), (502, "upstream_unreachable"), "{}", reply.body);
    assert!(reply.is_error_shape());
    let reply = call(client().post(node.url("/down/anything")).body("x")).await;
    assert_eq!((reply.status, reply.code()), (502, "upstream_unreachable"), "{}", reply.body);

    let started = Instant::now();
    let reply = get(&node, "/slowup/slow").await;
    assert_eq!((reply.status, reply.code()), (504, "upstream_timeout"), "{}", reply.body);
    assert!(started.elapsed() < Duration::from_millis(2500), "took {:?}", started.elapsed());

    // A declared length over the limit is refused before the upstream is called...
    let reply = call(client().post(node.url("/small/length")).body(vec![b'x'; 5000])).await;
    assert_eq!((reply.status, reply.code()), (413, "payload_too_large"), "{}", reply.body);
    let reply = call(client().post(node.url("/small/length")).body(vec![b'x'; 1000])).await;
    assert_eq!((reply.status, reply.body["length"].as_u64()), (200, Some(1000)), "{}", reply.body);
    // ...and a chunked body without a length is cut off at the limit.
    let mut upload = ChunkedUpload::start(&node, "/small/length").await;
    upload.send(&[b'y'; 5000]).await;
    let (status, raw) = upload.finish().await;
    assert_eq!(status, 413, "{raw}");
    assert!(raw.contains("payload_too_large"), "{raw}");
}

/// `rewrite_prefix` is documented for every backend, but on a function route the gateway asks
/// whether a function serves the path as the client sent it, not the rewritten one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_routes_rewrite_their_prefix() {
    let app = python_app(
        "[[routes]]\npath = \"/legacy/*\"\nauth = \"anonymous\"\nrewrite_prefix = \"/public\"\n\n\
         [[routes]]\npath = \"/public/*\"\nauth = \"anonymous\"\n",
    );
    let node = app.start(&[]);
    assert_eq!(get(&node, "/public/hello").await.status, 200);
    let reply = get(&node, "/legacy/hello").await;
    assert_eq!((reply.status, reply.body["function"].as_str()), (200, Some("public")), "{}", reply.body);
}

/// The route's `max_body` defaults to `[server] max_request_body`, as functions honour; the proxy
/// applies no limit at all when the route sets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_routes_honour_the_server_body_limit() {
    let upstream = FakeUpstream::start().await;
    let app = python_app(&format!(
        "[server]\nmax_request_body = \"1KB\"\n\n[[routes]]\npath = \"/up/*\"\nauth = \"anonymous\"\nbackend = \"{}\"\n",
        upstream.url
    ));
    let node = app.start(&[]);
    assert_eq!(call(client().post(node.url("/up/length")).body(vec![b'x'; 500])).await.status, 200);
    let reply = call(client().post(node.url("/up/length")).body(vec![b'x'; 5000])).await;
    assert_eq!((reply.status, reply.code()), (413, "payload_too_large"), "{}", reply.body);
}

/// Routes are chosen on the path as sent, then that same path goes to the upstream. An upstream
/// that resolves `..` (most web servers and frameworks do, many also for `%2e%2e`) then serves a
/// path another route guards, under the policy of the route the request matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_paths_cannot_climb_out_of_their_route() {
    let upstream = FakeUpstream::start().await;
    let app = python_app(&format!(
        "[[routes]]\npath = \"/up/*\"\nauth = \"anonymous\"\nbackend = \"{url}\"\n\n\
         [[routes]]\npath = \"/secret/*\"\nroles = [\"admin\"]\nbackend = \"{url}\"\n",
        url = upstream.url
    ));
    let node = app.start(&[]);
    assert_eq!(raw_get(&node, "/secret/x").await.0, 401);
    // Either refused, or resolved first and then governed by /secret/*: never let through.
    for target in ["/up/../secret/x", "/up/%2e%2e/secret/x", "/up/%2E%2E/secret/x"] {
        let (status, raw) = raw_get(&node, target).await;
        assert!([400, 401, 404].contains(&status), "{target} was let through: {raw}");
    }
}

// ---------------------------------------------------------------------------------------------
// 9. OpenAPI
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_routes_and_their_security() {
    let issuer = FakeIssuer::start(&[Key::Rsa1]).await;
    let upstream = FakeUpstream::start().await;
    let app = python_app(&format!(
        "{}\n[[routes]]\npath = \"/api/*\"\nscopes = [\"chat\"]\n\n\
         [[routes]]\npath = \"/public/*\"\nauth = \"anonymous\"\n\n\
         [[routes]]\npath = \"/keyed/*\"\nauth = \"api_key\"\n\n\
         [[routes]]\npath = \"/up/*\"\nauth = \"anonymous\"\nbackend = \"{}\"\nmethods = [\"GET\", \"POST\"]\n",
        issuer.manifest(),
        upstream.url
    ));
    let node = app.start(&[]);

    let reply = get(&node, "/_nimbus/openapi.json").await;
    assert_eq!(reply.status, 200, "the document is public");
    let doc = &reply.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = &doc["paths"];
    let op = |path: &str, method: &str| paths[path][method].clone();

    assert_eq!(op("/api/whoami", "get")["security"], json!([{"bearer": ["chat"]}]));
    assert!(op("/api/whoami", "get")["responses"]["403"].is_object());
    assert_eq!(op("/open/hello", "get")["security"], json!([{"bearer": []}]), "the default policy");
    assert_eq!(op("/public/hello", "get")["security"], json!([]), "anonymous operations need nothing");
    assert_eq!(op("/keyed/hello", "get")["security"], json!([{"apiKey": []}]));
    assert!(paths["/api/whoami"].get("post").is_none(), "only the function's methods");

    let proxied = op("/up/{rest}", "get");
    assert_eq!(proxied["security"], json!([]));
    assert!(proxied["operationId"].as_str().unwrap().starts_with("proxy_"), "{proxied}");
    assert!(paths["/up/{rest}"]["post"].is_object() && paths["/up/{rest}"].get("delete").is_none());

    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"], json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}));
    assert_eq!(schemes["apiKey"], json!({"type": "apiKey", "in": "header", "name": "x-api-key"}));
    assert_eq!(schemes["oidc1"]["openIdConnectUrl"], format!("{}/.well-known/openid-configuration", issuer.url));
}

/// A route with `methods` claims its paths for every method: the others answer 405 (they never
/// fall through to a weaker policy), and the document leaves them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_follows_route_methods() {
    let issuer = FakeIssuer::start(&[Key::Rsa1]).await;
    let app = python_app(&format!(
        "{}\n[[routes]]\npath = \"/api/*\"\nmethods = [\"POST\"]\nscopes = [\"chat\"]\n",
        issuer.manifest()
    ));
    let node = app.start(&[]);
    let unscoped = issuer.token(Key::Rsa1, |c| c["scope"] = json!(""));
    assert_eq!(get_with_token(&node, "/api/whoami", &unscoped).await.status, 405, "GET is not the route's");
    let doc = get(&node, "/_nimbus/openapi.json").await.body;
    assert!(doc["paths"]["/api/whoami"].get("get").is_none(), "{}", doc["paths"]);
}

// ---------------------------------------------------------------------------------------------
// 10. Metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_counts_requests_and_rejections_per_route() {
    let issuer = FakeIssuer::start(&[Key::Rsa1]).await;
    let app = python_app(&format!("{}\n[[routes]]\npath = \"/api/*\"\nscopes = [\"chat\"]\n", issuer.manifest()));
    let node = app.start(&[]);

    assert_eq!(get_with_token(&node, "/api/whoami", &issuer.token(Key::Rsa1, |_| {})).await.status, 200);
    assert_eq!(get(&node, "/api/whoami").await.status, 401);
    assert_eq!(get_with_token(&node, "/api/whoami", "garbage").await.status, 401);
    let unscoped = issuer.token(Key::Rsa1, |c| c["scope"] = json!("read"));
    assert_eq!(get_with_token(&node, "/api/whoami", &unscoped).await.status, 403);

    let text = client()
        .get(node.url("/_nimbus/metrics"))
        .bearer_auth(admin_token(&app))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str, labels: &[&str]| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|label| l.contains(label)))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let route = r#"route="/api/*""#;
    assert_eq!(value("nimbus_gateway_requests_total", &[route, r#"class="2xx""#]), Some(1.0), "{text}");
    assert_eq!(value("nimbus_gateway_requests_total", &[route, r#"class="4xx""#]), Some(3.0), "{text}");
    assert_eq!(value("nimbus_gateway_rejections_total", &[route, r#"policy="authentication""#]), Some(2.0), "{text}");
    assert_eq!(value("nimbus_gateway_rejections_total", &[route, r#"policy="authorization""#]), Some(1.0), "{text}");
    assert_eq!(value("nimbus_gateway_request_duration_seconds_count", &[route]), Some(4.0), "{text}");
}

/// Guards the helpers' assumptions so that a broken fixture fails here and not as a puzzling 401.
#[test]
fn fixture_keys_sign_tokens_their_jwks_verify() {
    for key in [Key::Rsa1, Key::Rsa2, Key::Ec1] {
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk()).unwrap();
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let claims = json!({"sub": "x", "exp": now() + 60});
        let token = sign(key, &claims);
        let data = jsonwebtoken::decode::<Value>(&token, &decoding, &jsonwebtoken::Validation::new(key.alg())).unwrap();
        assert_eq!(data.claims["sub"], "x", "{key:?}");
        assert_eq!(jsonwebtoken::decode_header(&token).unwrap().kid.as_deref(), Some(key.kid()));
    }
}
