//! The example the README's first command runs (examples/hello) keeps working: its site, its public
//! function counting in a document container, its functions behind a token keeping notes in
//! documents and blobs, and the identity provider that issues that token.

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
    assert_eq!(hello, serde_json::json!({"hello": "you", "times": 1}));
    let again: Value = reqwest::get(node.url("/hello?name=you")).await.unwrap().json().await.unwrap();
    assert_eq!(again["times"], 2, "counted in the greetings container");
    let page = reqwest::get(node.url("/")).await.unwrap().text().await.unwrap();
    assert!(page.contains("Hello from Nimbus"), "{page}");
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
    let token = token["access_token"].as_str().unwrap();
    let http = reqwest::Client::new();
    let added = http
        .post(node.url("/api/notes"))
        .bearer_auth(token)
        .json(&serde_json::json!({"id": "n1", "title": "first", "text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201, "{}", node.stderr());
    let notes: Value = http.get(node.url("/api/notes")).bearer_auth(token).send().await.unwrap().json().await.unwrap();
    assert_eq!(notes, serde_json::json!({"notes": [{"id": "n1", "title": "first", "text": "hi"}]}));
    // An answer streamed from the local model through the function.
    let asked = http
        .post(node.url("/api/ask"))
        .bearer_auth(token)
        .json(&serde_json::json!({"question": "What is the capital of France?", "max_tokens": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), 200, "{}", node.stderr());
    let events = asked.text().await.unwrap();
    let answer: String = events.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert!(answer.contains("Paris"), "{events}");
}
