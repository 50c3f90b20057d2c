//! What an attacker tried against the identity provider, each run against the real binary and
//! seen refused or contained: telling existing accounts apart by signing up, filling the store
//! with anonymous authorization requests (and sign-ups, reset mails), locking a client out for
//! everyone behind a proxy with wrong secrets, posing as another source with `X-Forwarded-For`,
//! and introspecting tokens without client authentication. (That expired records are purged runs
//! in `nimbus-identity`'s `purge.rs`, where the store's clock can be moved.)

mod support;

use std::collections::BTreeMap;

use serde_json::Value;
use support::{App, Node, nimbus, text};

const CB: &str = "http://localhost:9/cb";
const PASSWORD: &str = "correct horse battery";

fn manifest(server: &str) -> String {
    format!(
        r#"{server}
[identity]
audience = "api://hardening"

[[identity.clients]]
id = "web"
secret = "web-secret"
redirect_uris = ["{CB}"]

[[identity.clients]]
id = "spa"
public = true
redirect_uris = ["{CB}"]

[[identity.clients]]
id = "svc"
secret = "s3cret"
scopes = ["read"]
grant_types = ["client_credentials"]

[[identity.clients]]
id = "batch"
secret = "batch-secret"
scopes = ["read"]
grant_types = ["client_credentials"]
"#
    )
}

/// A node that believes `X-Forwarded-For` from loopback (the tests play the proxy).
fn behind_proxy() -> App {
    App::new(Some(&manifest("[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n")))
}

/// A node that trusts no proxy.
fn direct() -> App {
    App::new(Some(&manifest("")))
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn location(&self) -> &str {
        self.headers.get("location").map_or("", |v| v.to_str().unwrap())
    }

    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|v| v.starts_with(&format!("{name}=")))
    }

    /// The `Set-Cookie` of `name` without its value: the attributes a client sees.
    fn cookie_shape(&self, name: &str) -> String {
        let line = self.set_cookie(name).unwrap_or_else(|| panic!("no {name} cookie: {:?}", self.headers));
        let (pair, attributes) = line.split_once(';').unwrap();
        format!("{}=<{} chars>;{attributes}", name, pair.len() - name.len() - 1)
    }

    /// The redirect's query parameter names in order, and their values.
    fn redirect(&self) -> (String, Vec<(String, String)>) {
        let url = reqwest::Url::parse("http://relative.invalid/").unwrap().join(self.location()).unwrap();
        let target = format!("{}{}", url.origin().ascii_serialization(), url.path());
        (target, url.query_pairs().into_owned().collect())
    }

    /// Header names, without those that differ per response anyway.
    fn header_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .headers
            .keys()
            .map(|k| k.as_str().to_owned())
            .filter(|k| !["date", "x-request-id", "traceresponse"].contains(&k.as_str()))
            .collect();
        names.sort();
        names
    }
}

/// A user agent behind a proxy that names it with `X-Forwarded-For` (or that sends the header
/// itself, which only a trusted peer may): keeps cookies by hand, follows no redirect.
struct Browser {
    http: reqwest::Client,
    base: String,
    jar: BTreeMap<String, String>,
    forwarded_for: Option<String>,
}

impl Browser {
    fn new(node: &Node) -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { http, base: node.url.clone(), jar: BTreeMap::new(), forwarded_for: None }
    }

    fn at(node: &Node, address: &str) -> Self {
        Self { forwarded_for: Some(address.to_owned()), ..Self::new(node) }
    }

    async fn send(&mut self, mut request: reqwest::RequestBuilder) -> Reply {
        if !self.jar.is_empty() {
            request = request
                .header("cookie", self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "));
        }
        if let Some(address) = &self.forwarded_for {
            request = request.header("x-forwarded-for", address);
        }
        let response = request.send().await.unwrap();
        for line in response.headers().get_all("set-cookie") {
            let (pair, attributes) = line.to_str().unwrap().split_once(';').unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || attributes.contains("Max-Age=0") {
                self.jar.remove(name);
            } else {
                self.jar.insert(name.to_owned(), value.to_owned());
            }
        }
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        Reply { status, headers, body: response.text().await.unwrap() }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") { path.to_owned() } else { format!("{}{path}", self.base) }
    }

    async fn get(&mut self, path: &str) -> Reply {
        let request = self.http.get(self.url(path));
        self.send(request).await
    }

    /// Posts a hosted form with this browser's CSRF token (fetching a page first for it).
    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Reply {
        if !self.jar.contains_key("nimbus_csrf") {
            self.get("/account/signin").await;
        }
        let mut form = vec![("csrf", self.jar["nimbus_csrf"].clone())];
        form.extend(fields.iter().map(|(k, v)| (*k, v.to_string())));
        let request = self.http.post(self.url(path)).form(&form);
        self.send(request).await
    }

    /// An authorization request for `client` (PKCE S256): the pending request's id.
    async fn authorize(&mut self, node: &Node, client: &str) -> Reply {
        let query = [
            ("response_type", "code"),
            ("client_id", client),
            ("redirect_uri", CB),
            ("scope", "openid email"),
            ("state", "st-1"),
            ("code_challenge", "IGWXJ3qPfxMny4_5v7NiAUndTN35PM5C9uq1295ZClI"),
            ("code_challenge_method", "S256"),
        ];
        let url = reqwest::Url::parse_with_params(&node.url("/oauth2/authorize"), query).unwrap();
        self.get(url.as_str()).await
    }

    /// Signs up through an authorization request, as a new user does: the last answer.
    async fn sign_up(&mut self, node: &Node, email: &str) -> Reply {
        let first = self.authorize(node, "spa").await;
        let request = first
            .location()
            .strip_prefix("/account/signin?request=")
            .unwrap_or_else(|| panic!("{}", first.location()))
            .to_owned();
        self.post("/account/signup", &[("request", &request), ("email", email), ("password", PASSWORD), ("name", "")])
            .await
    }
}

/// Opens the node's store beside it (SQLite allows it; the CLI does the same).
async fn store(app: &App) -> std::sync::Arc<dyn nimbus_store::Store> {
    nimbus_store::open("sqlite", &app.data_dir(), nimbus_store::CORE_MIGRATIONS).await.unwrap()
}

async fn count(app: &App, prefix: &str) -> usize {
    store(app).await.list("identity", prefix, None, 10_000).await.unwrap().len()
}

fn outbox(app: &App) -> Vec<Value> {
    let out = nimbus(&["identity", "--app", app.path().to_str().unwrap(), "--json", "outbox"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn token(node: &Node, client: (&str, &str), forwarded_for: Option<&str>) -> (u16, Option<u64>, Value) {
    let mut request = reqwest::Client::new()
        .post(node.url("/oauth2/token"))
        .basic_auth(client.0, Some(client.1))
        .form(&[("grant_type", "client_credentials")]);
    if let Some(address) = forwarded_for {
        request = request.header("x-forwarded-for", address);
    }
    let response = request.send().await.unwrap();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().parse().unwrap());
    (response.status().as_u16(), retry_after, response.json().await.unwrap())
}

// ----- 1. sign-up must not tell existing accounts apart -------------------------------------

#[tokio::test]
async fn a_sign_up_for_a_taken_address_looks_like_a_new_one_and_signs_nobody_in() {
    let app = direct();
    let node = app.start(&[]);
    let owner = Browser::new(&node).sign_up(&node, "owner@example.com").await;
    assert_eq!(owner.status, 303, "{}", owner.body);
    let sessions = count(&app, "session/").await;

    // The attacker signs up once with a free address and once with the owner's: the answers
    // differ in nothing but random values.
    let fresh = Browser::new(&node).sign_up(&node, "fresh@example.com").await;
    let mut attacker = Browser::new(&node);
    let taken = attacker.sign_up(&node, "Owner@Example.com").await;
    for reply in [&fresh, &taken] {
        assert_eq!(reply.status, 303, "{}", reply.body);
    }
    assert_eq!(fresh.header_names(), taken.header_names());
    assert_eq!(fresh.body, taken.body);
    assert_eq!(fresh.cookie_shape("nimbus_sid"), taken.cookie_shape("nimbus_sid"));
    let ((fresh_target, fresh_query), (taken_target, taken_query)) = (fresh.redirect(), taken.redirect());
    assert_eq!(fresh_target, taken_target);
    let shape = |q: &[(String, String)]| {
        q.iter()
            .map(|(k, v)| (k.clone(), if k == "code" { v.len().to_string() } else { v.clone() }))
            .collect::<Vec<_>>()
    };
    assert_eq!(shape(&fresh_query), shape(&taken_query));

    // Without an authorization request too: both go to the account page with a cookie.
    let fields = |email: &'static str| [("email", email), ("password", PASSWORD), ("name", "")];
    let fresh = Browser::new(&node).post("/account/signup", &fields("fresh2@example.com")).await;
    let taken = Browser::new(&node).post("/account/signup", &fields("owner@example.com")).await;
    assert_eq!((fresh.status, fresh.location()), (303, "/account"));
    assert_eq!((taken.status, taken.location()), (303, "/account"));
    assert_eq!(fresh.cookie_shape("nimbus_sid"), taken.cookie_shape("nimbus_sid"));

    // What the attacker holds is worth nothing: no session was stored for the owner's account
    // (only the two new accounts got one), the cookie signs nobody in, and the code is refused
    // exactly as an invented one.
    assert_eq!(count(&app, "session/").await, sessions + 2);
    let account = attacker.get("/account").await;
    assert_eq!((account.status, account.location()), (303, "/account/signin"));
    let code = taken_query.iter().find(|(k, _)| k == "code").unwrap().1.clone();
    let redeem = async |code: &str| {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", CB),
            ("client_id", "spa"),
            ("code_verifier", "nimbus-test-verifier-0123456789-abcdefghijklmnopqrstuvwxyz"),
        ];
        let response = reqwest::Client::new().post(node.url("/oauth2/token")).form(&form).send().await.unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap())
    };
    let (decoy, invented) = (redeem(&code).await, redeem(&"0".repeat(64)).await);
    assert_eq!(decoy.0, 400);
    assert_eq!(decoy, invented);

    // The owner hears of it, a few times an hour at most however often the attacker tries.
    for _ in 0..4 {
        let again = Browser::new(&node).post("/account/signup", &fields("owner@example.com")).await;
        assert_eq!(again.status, 303);
    }
    let mail = outbox(&app);
    let notices = mail
        .iter()
        .filter(|m| m["to"] == "owner@example.com" && m["subject"].as_str().unwrap().starts_with("Someone tried"))
        .count();
    assert_eq!(notices, 3, "{mail:?}");

    // The owner's password still works.
    let signed_in =
        Browser::new(&node).post("/account/signin", &[("email", "owner@example.com"), ("password", PASSWORD)]).await;
    assert_eq!((signed_in.status, signed_in.location()), (303, "/account"), "{}", signed_in.body);
}

// ----- 2. what anonymous requests may store --------------------------------------------------

#[tokio::test]
async fn anonymous_authorization_requests_are_bounded_per_source() {
    let app = direct();
    let node = app.start(&[]);
    let mut user = Browser::new(&node);
    let signed_up = user.post("/account/signup", &[("email", "sso@example.com"), ("password", PASSWORD)]).await;
    assert_eq!(signed_up.status, 303);

    // A flood from one address, each request claiming another `X-Forwarded-For` (not believed
    // from a peer that is no trusted proxy): 60 are kept, then the client is told to come back.
    for i in 0..60 {
        let reply = Browser::at(&node, &format!("198.51.100.{i}")).authorize(&node, "web").await;
        assert!(reply.location().starts_with("/account/signin?request="), "{i}: {}", reply.location());
    }
    let refused = Browser::at(&node, "198.51.100.200").authorize(&node, "web").await;
    assert_eq!(refused.status, 303);
    let (target, query) = refused.redirect();
    assert_eq!(target, CB);
    let query: BTreeMap<_, _> = query.into_iter().collect();
    assert_eq!(query["error"], "temporarily_unavailable", "{query:?}");
    assert_eq!((query["state"].as_str(), query["iss"].as_str()), ("st-1", node.url.as_str()));
    assert!(!query.contains_key("code"));
    assert_eq!(count(&app, "authreq/").await, 60, "nothing more was stored");

    // A signed-in user is not held back: the session answers with a code, nothing is pending.
    let reply = user.authorize(&node, "web").await;
    assert!(reply.location().starts_with(&format!("{CB}?code=")), "{}", reply.location());

    // Behind a trusted proxy the limit is per client address: another client is not held back.
    let app = behind_proxy();
    let node = app.start(&[]);
    for _ in 0..60 {
        assert_eq!(Browser::at(&node, "203.0.113.7").authorize(&node, "web").await.status, 303);
    }
    let flooder = Browser::at(&node, "203.0.113.7").authorize(&node, "web").await;
    assert!(flooder.location().contains("error=temporarily_unavailable"), "{}", flooder.location());
    let spoofed = Browser::at(&node, "198.51.100.9, 203.0.113.7").authorize(&node, "web").await;
    assert!(spoofed.location().contains("error=temporarily_unavailable"), "a forged prefix changes nothing");
    let other = Browser::at(&node, "198.51.100.9").authorize(&node, "web").await;
    assert!(other.location().starts_with("/account/signin?request="), "{}", other.location());
}

#[tokio::test]
async fn sign_ups_and_reset_mail_are_bounded() {
    let app = direct();
    let node = app.start(&[]);
    let mut browser = Browser::new(&node);
    for i in 0..30 {
        let email = format!("user{i}@example.com");
        let reply = browser.post("/account/signup", &[("email", &email), ("password", PASSWORD)]).await;
        assert_eq!(reply.status, 303, "{i}: {}", reply.body);
    }
    let refused =
        Browser::new(&node).post("/account/signup", &[("email", "one-more@example.com"), ("password", PASSWORD)]).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.body.contains("Too many sign-ups"), "{}", refused.body);
    assert_eq!(count(&app, "user/").await, 30);

    // Reset links: a few an hour per account, whoever asks; then a limit per source.
    for _ in 0..5 {
        let reply = browser.post("/account/reset", &[("email", "user0@example.com")]).await;
        assert_eq!(reply.status, 200);
        assert!(reply.body.contains("Check your e-mail"), "{}", reply.body);
    }
    let mail = outbox(&app);
    let resets = mail
        .iter()
        .filter(|m| m["to"] == "user0@example.com" && m["subject"].as_str().unwrap().starts_with("Reset"))
        .count();
    assert_eq!(resets, 3, "{mail:?}");
    assert_eq!(count(&app, "reset/").await, 3);
    for _ in 5..30 {
        assert_eq!(browser.post("/account/reset", &[("email", "nobody@example.com")]).await.status, 200);
    }
    assert_eq!(browser.post("/account/reset", &[("email", "nobody@example.com")]).await.status, 429);
}

// ----- 3. wrong client secrets must not lock a client out for everyone ----------------------

#[tokio::test]
async fn wrong_client_secrets_back_off_one_client_at_one_source_only() {
    let app = behind_proxy();
    let node = app.start(&[]);
    let attacker = Some("203.0.113.7");
    for i in 0..6 {
        let (status, _, body) = token(&node, ("svc", "guess"), attacker).await;
        assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{i}");
    }
    // The guesser now waits, even with the right secret, and even when it forges a prefix.
    let (status, retry_after, body) = token(&node, ("svc", "s3cret"), attacker).await;
    assert_eq!((status, body["error"].as_str()), (429, Some("invalid_client")), "{body}");
    assert!(retry_after.is_some_and(|s| (1..=30).contains(&s)), "{retry_after:?}");
    assert_eq!(token(&node, ("svc", "s3cret"), Some("198.51.100.9, 203.0.113.7")).await.0, 429);
    // Nobody else does: the client from another address, or the proxy's own requests; nor another
    // client from the guesser's address.
    assert_eq!(token(&node, ("svc", "s3cret"), Some("198.51.100.9")).await.0, 200);
    assert_eq!(token(&node, ("svc", "s3cret"), None).await.0, 200);
    assert_eq!(token(&node, ("batch", "batch-secret"), attacker).await.0, 200);
    // Unknown client ids are counted too (one key per address), without touching real clients.
    for _ in 0..6 {
        assert_eq!(token(&node, ("nobody", "guess"), Some("192.0.2.1")).await.0, 401);
    }
    assert_eq!(token(&node, ("other-nobody", "guess"), Some("192.0.2.1")).await.0, 429);
    assert_eq!(token(&node, ("svc", "s3cret"), Some("192.0.2.1")).await.0, 200);

    // From a peer that is no trusted proxy, `X-Forwarded-For` changes nothing: every guess counts
    // against the peer itself, whatever address it claims.
    let app = direct();
    let node = app.start(&[]);
    for i in 0..6 {
        assert_eq!(token(&node, ("svc", "guess"), Some(&format!("198.51.100.{i}"))).await.0, 401);
    }
    assert_eq!(token(&node, ("svc", "s3cret"), Some("192.0.2.77")).await.0, 429);
}

#[tokio::test]
async fn sign_in_throttles_read_the_source_through_trusted_proxies_only() {
    let app = behind_proxy();
    let node = app.start(&[]);
    assert_eq!(
        Browser::new(&node)
            .post("/account/signup", &[("email", "eve@example.com"), ("password", PASSWORD)])
            .await
            .status,
        303
    );
    // 50 failures from one client address (each for another account, so no account locks) lock
    // that address out …
    let mut guesser = Browser::at(&node, "203.0.113.7");
    for i in 0..50 {
        let email = format!("guess{i}@example.com");
        assert_eq!(
            guesser.post("/account/signin", &[("email", &email), ("password", "wrong")]).await.status,
            401,
            "{i}"
        );
    }
    let locked = guesser.post("/account/signin", &[("email", "eve@example.com"), ("password", PASSWORD)]).await;
    assert_eq!(locked.status, 429, "{}", locked.body);
    // … and nobody else behind the same proxy.
    let mut eve = Browser::at(&node, "198.51.100.9");
    let reply = eve.post("/account/signin", &[("email", "eve@example.com"), ("password", PASSWORD)]).await;
    assert_eq!((reply.status, reply.location()), (303, "/account"), "{}", reply.body);

    // Without a trusted proxy the header is no way out of the lock.
    let app = direct();
    let node = app.start(&[]);
    for i in 0..50 {
        let mut browser = Browser::at(&node, &format!("198.51.100.{i}"));
        let email = format!("guess{i}@example.com");
        assert_eq!(browser.post("/account/signin", &[("email", &email), ("password", "wrong")]).await.status, 401);
    }
    let mut fresh = Browser::at(&node, "192.0.2.200");
    assert_eq!(fresh.post("/account/signin", &[("email", "x@example.com"), ("password", "wrong")]).await.status, 429);
}

// ----- 4. introspection needs client authentication -----------------------------------------

#[tokio::test]
async fn introspection_needs_client_authentication() {
    let app = direct();
    let node = app.start(&[]);
    let (status, _, issued) = token(&node, ("svc", "s3cret"), None).await;
    assert_eq!(status, 200, "{issued}");
    let access = issued["access_token"].as_str().unwrap();
    let http = reqwest::Client::new();
    let introspect = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.unwrap();
        let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
        (response.status().as_u16(), challenge, response.json::<Value>().await.unwrap())
    };
    let url = node.url("/oauth2/introspect");
    let refused = [
        http.post(&url).form(&[("token", access)]),
        http.post(&url).form(&[("token", access), ("client_id", "spa")]),
        http.post(&url).form(&[("token", access), ("client_id", "svc")]),
        http.post(&url).basic_auth("svc", Some("wrong")).form(&[("token", access)]),
        http.post(&url).form(&[("token", access), ("client_id", "svc"), ("client_secret", "wrong")]),
    ];
    for (i, request) in refused.into_iter().enumerate() {
        let (status, challenge, body) = introspect(request).await;
        assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{i}: {body}");
        assert!(body.get("active").is_none(), "{i}: nothing about the token: {body}");
        assert!(challenge.is_some_and(|c| c.starts_with("Basic")), "{i}");
    }
    let (status, _, body) =
        introspect(http.post(&url).basic_auth("svc", Some("s3cret")).form(&[("token", access)])).await;
    assert_eq!((status, body["active"].as_bool()), (200, Some(true)), "{body}");
    let form = [("token", access), ("client_id", "batch"), ("client_secret", "batch-secret")];
    let (status, _, body) = introspect(http.post(&url).form(&form)).await;
    assert_eq!((status, body["active"].as_bool()), (200, Some(true)), "{body}");
}
