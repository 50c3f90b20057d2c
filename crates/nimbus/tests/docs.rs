//! The docs REST API end to end through the real binary: status codes, headers and error shapes
//! (the semantics on both backends are in crates/nimbus-docs/tests/conformance.rs), containers
//! from the manifest and the API, and functions reaching containers through their grants.

mod support;

use serde_json::{Value, json};
use support::{App, Node, admin_token};

const MANIFEST: &str = r#"
[docs.containers.conversations]
partition_key = "/userId"
indexes = ["/status"]
unique_keys = [["/slug"]]

[docs.containers.sessions]
partition_key = "/userId"
# 2 s, not 1: `_ts` is in whole seconds, so an item lives between ttl - 1 and ttl seconds, and with
# 1 s a read right after the write could already miss it.
default_ttl = "2s"
"#;

struct Client {
    http: reqwest::Client,
    token: String,
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Client {
    fn new(app: &App) -> Self {
        Self { http: reqwest::Client::new(), token: admin_token(app) }
    }

    async fn send(&self, node: &Node, method: &str, path: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Reply {
        let mut request = self
            .http
            .request(method.parse().unwrap(), node.url(path))
            .bearer_auth(&self.token)
            .header("content-type", "application/json");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        if let Some(body) = body {
            request = request.body(body.to_owned());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Reply { status, headers, body }
    }

    async fn json(&self, node: &Node, method: &str, path: &str, body: Value) -> Reply {
        self.send(node, method, path, Some(&body.to_string()), &[]).await
    }
}

fn code(r: &Reply) -> &str {
    r.body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn items_answer_with_the_right_statuses_and_etags() {
    let app = App::new(Some(MANIFEST));
    let node = app.start(&[]);
    let c = Client::new(&app);
    let items = "/_nimbus/docs/conversations/items";
    let created = c.json(&node, "POST", items, json!({"id": "c1", "userId": "u1", "title": "hi"})).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let etag = created.headers["etag"].to_str().unwrap().to_owned();
    assert_eq!(created.body["_etag"], etag.as_str());
    assert_eq!(c.json(&node, "POST", items, json!({"id": "c1", "userId": "u1"})).await.status, 409);

    let got = c.send(&node, "GET", "/_nimbus/docs/conversations/items/c1?pk=u1", None, &[]).await;
    assert_eq!((got.status, got.body["title"].as_str()), (200, Some("hi")));
    // pk as JSON: "u1" quoted is the same partition; 5 would be a number.
    assert_eq!(c.send(&node, "GET", "/_nimbus/docs/conversations/items/c1?pk=%22u1%22", None, &[]).await.status, 200);
    assert_eq!(c.send(&node, "GET", "/_nimbus/docs/conversations/items/c1?pk=u2", None, &[]).await.status, 404);
    let no_pk = c.send(&node, "GET", "/_nimbus/docs/conversations/items/c1", None, &[]).await;
    assert_eq!((no_pk.status, code(&no_pk)), (400, "invalid_request"));

    let body = json!({"id": "c1", "userId": "u1", "title": "renamed"}).to_string();
    let path = "/_nimbus/docs/conversations/items/c1?pk=u1";
    let stale = c.send(&node, "PUT", path, Some(&body), &[("if-match", "\"fffffff\"")]).await;
    assert_eq!((stale.status, code(&stale)), (412, "precondition_failed"));
    let replaced = c.send(&node, "PUT", path, Some(&body), &[("if-match", &etag)]).await;
    assert_eq!(replaced.status, 200);
    let patched =
        c.send(&node, "PATCH", path, Some(r#"[{"op": "set", "path": "/status", "value": "open"}]"#), &[]).await;
    assert_eq!((patched.status, patched.body["status"].as_str()), (200, Some("open")));
    let upserted = c
        .send(
            &node,
            "POST",
            items,
            Some(&json!({"id": "c2", "userId": "u1"}).to_string()),
            &[("x-nimbus-upsert", "true")],
        )
        .await;
    assert_eq!(upserted.status, 201, "created by the upsert");
    let again = c
        .send(
            &node,
            "POST",
            items,
            Some(&json!({"id": "c2", "userId": "u1"}).to_string()),
            &[("x-nimbus-upsert", "true")],
        )
        .await;
    assert_eq!(again.status, 200, "replaced by the upsert");
    let object_pk = c.send(&node, "GET", "/_nimbus/docs/conversations/items/c2?pk=%7B%22a%22%3A1%7D", None, &[]).await;
    assert_eq!((object_pk.status, code(&object_pk)), (400, "invalid_request"));
    assert_eq!(c.send(&node, "POST", "/_nimbus/docs/conversations/items/c2?pk=u1", Some("{}"), &[]).await.status, 405);
    assert_eq!(c.send(&node, "DELETE", path, None, &[]).await.status, 204);
    assert_eq!(c.send(&node, "DELETE", path, None, &[]).await.status, 404);
    let unknown = c.send(&node, "GET", "/_nimbus/docs/nothing/items/x?pk=a", None, &[]).await;
    assert_eq!((unknown.status, code(&unknown)), (404, "container_not_found"));
}

#[tokio::test]
async fn bad_input_gets_a_precise_error() {
    let app = App::new(Some(MANIFEST));
    let node = app.start(&[]);
    let c = Client::new(&app);
    let items = "/_nimbus/docs/conversations/items";
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "invalid_request"),
        (json!({"userId": "u"}).to_string(), 400, "invalid_request"),
        (json!({"id": 7, "userId": "u"}).to_string(), 400, "invalid_request"),
        (json!({"id": "x"}).to_string(), 400, "invalid_request"),
        (json!({"id": "x", "userId": "u", "big": "y".repeat(2 * 1024 * 1024)}).to_string(), 413, "item_too_large"),
        (json!({"id": "x", "userId": "u", "big": "y".repeat(7 * 1024 * 1024)}).to_string(), 413, "item_too_large"),
        (
            format!("{{\"id\": \"x\", \"userId\": \"u\", \"d\": {}1{}}}", "[".repeat(100), "]".repeat(100)),
            400,
            "invalid_request",
        ),
    ];
    for (body, status, expected) in cases {
        let r = c.send(&node, "POST", items, Some(&body), &[]).await;
        assert_eq!((r.status, code(&r)), (status, expected), "{}", &body[..body.len().min(80)]);
        assert!(r.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    c.json(&node, "POST", items, json!({"id": "a", "userId": "u", "slug": "s"})).await;
    let dup = c.json(&node, "POST", items, json!({"id": "b", "userId": "u", "slug": "s"})).await;
    assert_eq!((dup.status, code(&dup)), (409, "unique_key_violation"));
    let syntax = c.json(&node, "POST", "/_nimbus/docs/conversations/query", json!({"query": "SELECT * FORM c"})).await;
    assert_eq!((syntax.status, code(&syntax)), (400, "invalid_query"));
    assert!(syntax.body["error"]["message"].as_str().unwrap().contains("1:"), "{}", syntax.body);
    let unknown_field = c
        .json(&node, "POST", "/_nimbus/docs/conversations/query", json!({"query": "SELECT * FROM c", "limit": 3}))
        .await;
    assert_eq!(unknown_field.status, 400);
    let bad_param = c
        .json(
            &node,
            "POST",
            "/_nimbus/docs/conversations/query",
            json!({"query": "SELECT * FROM c WHERE c.a = @x", "parameters": [{"name": "x", "value": 1}]}),
        )
        .await;
    assert_eq!(bad_param.status, 400);
    let no_auth = reqwest::Client::new().get(node.url("/_nimbus/docs/conversations/items?pk=u")).send().await.unwrap();
    assert_eq!(no_auth.status(), 401);
}

#[tokio::test]
async fn queries_batches_and_feeds_over_http() {
    let app = App::new(Some(MANIFEST));
    let node = app.start(&[]);
    let c = Client::new(&app);
    let batch = c
        .json(
            &node,
            "POST",
            "/_nimbus/docs/conversations/batch",
            json!({"partitionKey": "u1", "operations": [
                {"op": "create", "item": {"id": "m1", "userId": "u1", "status": "open", "n": 2}},
                {"op": "create", "item": {"id": "m2", "userId": "u1", "status": "done", "n": 1}},
                {"op": "create", "item": {"id": "m3", "userId": "u1", "status": "open", "n": 3}},
            ]}),
        )
        .await;
    assert_eq!(batch.status, 200, "{}", batch.body);
    assert_eq!(batch.body["results"].as_array().unwrap().len(), 3);
    let failed = c
        .json(
            &node,
            "POST",
            "/_nimbus/docs/conversations/batch",
            json!({"partitionKey": "u1", "operations": [
                {"op": "delete", "id": "m1"},
                {"op": "create", "item": {"id": "m2", "userId": "u1"}},
            ]}),
        )
        .await;
    assert_eq!(
        (failed.status, code(&failed), failed.body["error"]["operationIndex"].as_u64()),
        (409, "conflict", Some(1))
    );
    assert_eq!(c.send(&node, "GET", "/_nimbus/docs/conversations/items/m1?pk=u1", None, &[]).await.status, 200);

    let query = json!({
        "query": "SELECT c.id, c.n FROM c WHERE c.status = @s ORDER BY c.n DESC",
        "parameters": [{"name": "@s", "value": "open"}],
        "maxItems": 1
    });
    let first = c.json(&node, "POST", "/_nimbus/docs/conversations/query", query.clone()).await;
    assert_eq!(first.body["items"], json!([{"id": "m3", "n": 3}]));
    let mut next = query;
    next["continuation"] = first.body["continuation"].clone();
    let second = c.json(&node, "POST", "/_nimbus/docs/conversations/query", next).await;
    assert_eq!(
        (second.body["items"].clone(), second.body["continuation"].clone()),
        (json!([{"id": "m1", "n": 2}]), Value::Null)
    );

    // `"partitionKey": null` is the null partition; leaving it out means every partition.
    c.json(&node, "POST", "/_nimbus/docs/conversations/items", json!({"id": "nil", "userId": null})).await;
    let null_partition = c
        .json(
            &node,
            "POST",
            "/_nimbus/docs/conversations/query",
            json!({"query": "SELECT VALUE c.id FROM c", "partitionKey": null}),
        )
        .await;
    assert_eq!(null_partition.body["items"], json!(["nil"]));
    let every = c
        .json(&node, "POST", "/_nimbus/docs/conversations/query", json!({"query": "SELECT VALUE COUNT(1) FROM c"}))
        .await;
    assert_eq!(every.body["items"], json!([4]));
    c.send(&node, "DELETE", "/_nimbus/docs/conversations/items/nil?pk=null", None, &[]).await;

    let now = c.send(&node, "GET", "/_nimbus/docs/conversations/feed?startFrom=now", None, &[]).await;
    assert_eq!(now.body["items"], json!([]));
    let from_now = now.body["continuation"].as_str().unwrap().to_owned();
    let bad_start = c.send(&node, "GET", "/_nimbus/docs/conversations/feed?startFrom=yesterday", None, &[]).await;
    assert_eq!(bad_start.status, 400);
    let feed = c.send(&node, "GET", "/_nimbus/docs/conversations/feed", None, &[]).await;
    assert_eq!(feed.body["items"].as_array().unwrap().len(), 3);
    let after = feed.body["continuation"].as_str().unwrap().to_owned();
    c.send(
        &node,
        "PATCH",
        "/_nimbus/docs/conversations/items/m2?pk=u1",
        Some(r#"[{"op":"incr","path":"/n","value":1}]"#),
        &[],
    )
    .await;
    let changed =
        c.send(&node, "GET", &format!("/_nimbus/docs/conversations/feed?continuation={after}"), None, &[]).await;
    assert_eq!(changed.body["items"][0]["id"], "m2");
    let since_now =
        c.send(&node, "GET", &format!("/_nimbus/docs/conversations/feed?continuation={from_now}"), None, &[]).await;
    let ids: Vec<&str> =
        since_now.body["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["m2"], "only what changed after the feed started");
    let metrics = c.send(&node, "GET", "/_nimbus/metrics", None, &[]).await;
    let metrics = metrics.body.as_str().unwrap_or_default();
    assert!(metrics.contains("nimbus_docs_query_candidates_count{container=\"conversations\"}"), "{metrics}");
    let listed = c.send(&node, "GET", "/_nimbus/docs/conversations/items?pk=u1&maxItems=2", None, &[]).await;
    assert_eq!((listed.body["items"].as_array().unwrap().len(), listed.body["continuation"].is_string()), (2, true));
}

#[tokio::test]
async fn containers_come_from_the_manifest_and_the_api_and_survive_restarts() {
    let app = App::new(Some(MANIFEST));
    let mut node = app.start(&[]);
    let c = Client::new(&app);
    let made = c.json(&node, "PUT", "/_nimbus/docs/notes", json!({"partitionKey": "/owner", "defaultTtl": 3600})).await;
    assert_eq!(made.status, 201, "{}", made.body);
    assert_eq!(c.json(&node, "PUT", "/_nimbus/docs/notes", json!({"partitionKey": "/owner"})).await.status, 409);
    assert_eq!(c.json(&node, "PUT", "/_nimbus/docs/conversations", json!({"partitionKey": "/x"})).await.status, 409);
    let bad = c.json(&node, "PUT", "/_nimbus/docs/Bad!", json!({"partitionKey": "/x"})).await;
    assert_eq!(bad.status, 400);
    let bad_path = c.json(&node, "PUT", "/_nimbus/docs/other", json!({"partitionKey": "owner"})).await;
    assert_eq!(bad_path.status, 400);
    let typo = c.json(&node, "PUT", "/_nimbus/docs/other", json!({"partitionKey": "/x", "defaultTTL": 60})).await;
    assert_eq!(typo.status, 400, "an unknown field is refused, not ignored: {}", typo.body);
    c.json(&node, "POST", "/_nimbus/docs/notes/items", json!({"id": "n1", "owner": "o"})).await;
    node.signal_and_wait("TERM", std::time::Duration::from_secs(10));

    let node = app.start(&[]);
    let all = c.send(&node, "GET", "/_nimbus/docs", None, &[]).await;
    let names: Vec<&str> =
        all.body["containers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["conversations", "notes", "sessions"]);
    let item = c.send(&node, "GET", "/_nimbus/docs/notes/items/n1?pk=o", None, &[]).await;
    assert_eq!(item.status, 200);
    assert!(item.body["_ts"].as_i64().is_some());
    assert_eq!(c.send(&node, "DELETE", "/_nimbus/docs/notes", None, &[]).await.status, 204);
    assert_eq!(c.send(&node, "GET", "/_nimbus/docs/notes/items/n1?pk=o", None, &[]).await.status, 404);
}

#[tokio::test]
async fn expired_items_vanish_at_once() {
    let app = App::new(Some(MANIFEST));
    let node = app.start(&[]);
    let c = Client::new(&app);
    c.json(&node, "POST", "/_nimbus/docs/sessions/items", json!({"id": "s", "userId": "u"})).await;
    assert_eq!(c.send(&node, "GET", "/_nimbus/docs/sessions/items/s?pk=u", None, &[]).await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(c.send(&node, "GET", "/_nimbus/docs/sessions/items/s?pk=u", None, &[]).await.status, 404);
    let listed = c.json(&node, "POST", "/_nimbus/docs/sessions/query", json!({"query": "SELECT * FROM c"})).await;
    assert_eq!(listed.body["items"], json!([]));
}
