//! The example the README's first command runs (examples/hello) keeps working: its public function,
//! its function behind a token, and the identity provider that issues that token.

mod support;

use serde_json::Value;
use support::{App, Node};

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != ".nimbus" {
                copy_dir(&entry.path(), &target);
            }
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn the_hello_example_serves_public_and_protected_functions() {
    let app = App::new(None);
    copy_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello"), app.path());
    let node: Node = app.start(&[]);
    let hello: Value = reqwest::get(node.url("/hello?name=you")).await.unwrap().json().await.unwrap();
    assert_eq!(hello, serde_json::json!({"hello": "you"}));
    assert_eq!(reqwest::get(node.url("/api/me")).await.unwrap().status(), 401);
    let token: Value = reqwest::Client::new()
        .post(node.url("/oauth2/token"))
        .basic_auth("demo", Some("demo-secret"))
        .form(&[("grant_type", "client_credentials"), ("scope", "api")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let me: Value = reqwest::Client::new()
        .get(node.url("/api/me"))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["you"]["sub"], "demo");
}
