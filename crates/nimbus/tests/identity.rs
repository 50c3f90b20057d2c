//! The built-in identity provider end to end: discovery, JWKS, the client credentials grant, the
//! gateway's trust in the node's own tokens, introspection, and signing-key rotation by the CLI.

mod support;

use serde_json::Value;
use support::{App, Node, nimbus, text};

const MANIFEST: &str = r#"
[identity]
audience = "api://test"

[[identity.clients]]
id = "svc"
secret = "s3cret"
scopes = ["read", "write"]
grant_types = ["client_credentials"]

[[identity.clients]]
id = "spa"
public = true
redirect_uris = ["http://localhost/cb"]

[workers.main]
runtime = "python"
entry = "app.py"

[[routes]]
path = "/api/*"
scopes = ["write"]
"#;

const APP_PY: &str = r#"import nimbus
app = nimbus.App()

@app.http("/api/whoami", methods=["GET"])
async def whoami(req, ctx):
    return {"claims": req.claims}
"#;

fn app() -> App {
    app_with(MANIFEST)
}

fn app_with(manifest: &str) -> App {
    let app = App::new(Some(manifest));
    std::fs::write(app.path().join("app.py"), APP_PY).unwrap();
    app
}

async fn token(node: &Node, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(node.url("/oauth2/token")).form(form);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let resp = request.send().await.unwrap();
    let status = resp.status().as_u16();
    if status != 200 {
        assert_eq!(resp.headers()["cache-control"], "no-store");
    }
    (status, resp.json().await.unwrap())
}

async fn whoami(node: &Node, token: &str) -> (u16, Value) {
    let resp = reqwest::Client::new().get(node.url("/api/whoami")).bearer_auth(token).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn service_clients_get_tokens_the_gateway_trusts() {
    let app = app();
    let node = app.start(&[]);
    let discovery: Value =
        reqwest::get(node.url("/.well-known/openid-configuration")).await.unwrap().json().await.unwrap();
    assert_eq!(discovery["issuer"], node.url.as_str());
    assert_eq!(discovery["token_endpoint"], node.url("/oauth2/token").as_str());
    let jwks: Value = reqwest::get(discovery["jwks_uri"].as_str().unwrap()).await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert!(jwks["keys"][0].get("d").is_none(), "only public parts are published");

    let (status, body) =
        token(&node, &[("grant_type", "client_credentials"), ("scope", "write")], Some(("svc", "s3cret"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["token_type"].as_str(), body["scope"].as_str()), (Some("Bearer"), Some("write")));
    let access = body["access_token"].as_str().unwrap().to_owned();
    let (status, reply) = whoami(&node, &access).await;
    assert_eq!(status, 200, "{reply}");
    let claims = &reply["claims"];
    assert_eq!((claims["sub"].as_str(), claims["aud"].as_str()), (Some("svc"), Some("api://test")));
    assert_eq!(claims["iss"], node.url.as_str());

    // client_secret_post works too; a token without the route's scope is refused by the gateway.
    let form =
        [("grant_type", "client_credentials"), ("scope", "read"), ("client_id", "svc"), ("client_secret", "s3cret")];
    let (status, body) = token(&node, &form, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(whoami(&node, body["access_token"].as_str().unwrap()).await.0, 403);

    // Introspection: active for our token, inactive for garbage.
    let introspect = |t: String| {
        reqwest::Client::new()
            .post(node.url("/oauth2/introspect"))
            .basic_auth("svc", Some("s3cret"))
            .form(&[("token", t)])
            .send()
    };
    let active: Value = introspect(access.clone()).await.unwrap().json().await.unwrap();
    assert_eq!((active["active"].as_bool(), active["client_id"].as_str()), (Some(true), Some("svc")));
    let inactive: Value = introspect("garbage".into()).await.unwrap().json().await.unwrap();
    assert_eq!(inactive, serde_json::json!({"active": false}));
}

#[tokio::test]
async fn the_token_endpoint_refuses_bad_requests_in_oauth_shape() {
    let app = app();
    let node = app.start(&[]);
    let cc = [("grant_type", "client_credentials")];
    let (status, body) = token(&node, &cc, Some(("svc", "wrong"))).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));
    let (status, body) = token(&node, &cc, Some(("nobody", "s3cret"))).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));
    let (status, body) = token(&node, &cc, None).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));
    let (status, body) =
        token(&node, &[("grant_type", "client_credentials"), ("client_id", "spa"), ("client_secret", "")], None).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "a public client has no secret");
    let (status, body) =
        token(&node, &[("grant_type", "client_credentials"), ("scope", "admin")], Some(("svc", "s3cret"))).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_scope")));
    let (status, body) = token(&node, &[("grant_type", "password")], Some(("svc", "s3cret"))).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unsupported_grant_type")));
    let (status, body) = token(&node, &[("scope", "read")], Some(("svc", "s3cret"))).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));
    let resp = reqwest::Client::new().post(node.url("/oauth2/token")).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn rotated_keys_keep_old_tokens_valid_and_survive_restarts() {
    // A fixed issuer: the restarted node listens on another port, and tokens name their issuer.
    let app = app_with(&MANIFEST.replace("[identity]\n", "[identity]\nissuer = \"http://issuer.test\"\n"));
    let mut node = app.start(&[]);
    let cc = [("grant_type", "client_credentials"), ("scope", "write")];
    let old = token(&node, &cc, Some(("svc", "s3cret"))).await.1["access_token"].as_str().unwrap().to_owned();
    let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();

    let out = nimbus(&["identity", "--app", app.path().to_str().unwrap(), "--json", "rotate-key"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rotated: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(rotated["kid"].as_str().unwrap(), kid(&old));

    // A restart picks the new key at once (running nodes within 30 s); the old key stays published.
    node.signal_and_wait("TERM", std::time::Duration::from_secs(10));
    let node = app.start(&[]);
    let new = token(&node, &cc, Some(("svc", "s3cret"))).await.1["access_token"].as_str().unwrap().to_owned();
    assert_eq!(kid(&new), rotated["kid"].as_str().unwrap());
    let jwks: Value = reqwest::get(node.url("/oauth2/jwks")).await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "{jwks}");
    assert_eq!(whoami(&node, &old).await.0, 200, "tokens of the retired key verify until they expire");
    assert_eq!(whoami(&node, &new).await.0, 200);

    let bare = App::new(None);
    let out = nimbus(&["identity", "--app", bare.path().to_str().unwrap(), "rotate-key"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no [identity] section"), "{}", text(&out.stderr));
}
