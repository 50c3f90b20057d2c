//! The gateway's and the identity provider's state on PostgreSQL, end to end: the same node,
//! restarted against the same database, keeps its signing keys, API keys and quota counts.
//! (The store primitives themselves pass the conformance suite on both backends.)

mod support;

use std::time::Duration;

use nimbus_store::testing::{Backend, TestDb};
use serde_json::{Value, json};
use support::{App, Node, admin_token};

const MANIFEST: &str = r#"
[identity]
audience = "api://pg"
issuer = "http://pg.test"

[[identity.clients]]
id = "svc"
secret = "s3cret"
scopes = ["api"]
grant_types = ["client_credentials"]

[workers.main]
runtime = "python"
entry = "app.py"

[[routes]]
path = "/api/*"
scopes = ["api"]

[[routes]]
path = "/paid/*"
auth = "api_key"
quota = { key = "api_key", requests = 3, per = "day" }
"#;

const APP_PY: &str = r#"import nimbus
app = nimbus.App()

@app.http("/api/whoami", methods=["GET"])
async def whoami(req, ctx):
    return {"claims": req.claims}

@app.http("/paid/thing", methods=["GET"])
async def thing(req, ctx):
    return {"ok": True}
"#;

async fn service_token(node: &Node) -> String {
    let body: Value = reqwest::Client::new()
        .post(node.url("/oauth2/token"))
        .basic_auth("svc", Some("s3cret"))
        .form(&[("grant_type", "client_credentials"), ("scope", "api")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned()
}

async fn status(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn gateway_and_identity_state_lives_in_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let app = App::new(Some(MANIFEST));
    std::fs::write(app.path().join("app.py"), APP_PY).unwrap();
    let http = reqwest::Client::new();

    let mut node = app.start(&["--store", db.url()]);
    let token = service_token(&node).await;
    assert_eq!(status(http.get(node.url("/api/whoami")).bearer_auth(&token)).await, 200);
    let created: Value = http
        .post(node.url("/_nimbus/admin/keys"))
        .bearer_auth(admin_token(&app))
        .json(&json!({"name": "partner"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        assert_eq!(status(http.get(node.url("/paid/thing")).header("x-api-key", &key)).await, 200);
    }
    node.signal_and_wait("TERM", Duration::from_secs(10));

    // A new node on the same database: same signing key, same API key, same quota count.
    let node = app.start(&["--store", db.url()]);
    assert_eq!(status(http.get(node.url("/api/whoami")).bearer_auth(&token)).await, 200, "the old token verifies");
    let again = service_token(&node).await;
    let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid;
    assert_eq!(kid(&again), kid(&token), "one signing key in the database");
    assert_eq!(status(http.get(node.url("/paid/thing")).header("x-api-key", &key)).await, 200);
    assert_eq!(
        status(http.get(node.url("/paid/thing")).header("x-api-key", &key)).await,
        429,
        "the third of 3 was the last"
    );
    db.cleanup().await;
}
