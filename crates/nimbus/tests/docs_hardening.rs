//! Attacks on the docs API from the hardening review, performed through the real binary: each is
//! refused or contained, and the node stays up and responsive. Queries that would exhaust memory
//! end within their budget (`query_too_expensive`) or as undefined values; JOINs stop once the
//! page is full; queries run off the request threads, end at the time limit (`408
//! query_timeout`) and stop when their client leaves; continuations cannot be forged; errors are
//! JSON and name what was too large.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{App, Node, admin_token};

const MANIFEST: &str = r#"
[docs.containers.t]
partition_key = "/pk"
"#;

struct Client {
    http: reqwest::Client,
    token: String,
    base: String,
}

impl Client {
    fn new(app: &App, node: &Node) -> Self {
        Self { http: reqwest::Client::new(), token: admin_token(app), base: node.url("") }
    }

    async fn send(&self, method: &str, path: &str, body: Option<String>, content_type: &str) -> (u16, Value) {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", content_type);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// POSTs `body` over a raw connection and reads the answer even when the server refuses the
    /// body before reading it all (it may close while the client still writes: a client library
    /// reports that as a broken pipe instead of the answer the server sent).
    async fn post_large(&self, path: &str, body: String) -> (u16, Value) {
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            self.token,
            body.len()
        );
        let answer = tokio::task::spawn_blocking(move || {
            let mut conn = std::net::TcpStream::connect(&addr).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let _ = conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(body.as_bytes()));
            let mut answer = Vec::new();
            let _ = conn.read_to_end(&mut answer);
            String::from_utf8_lossy(&answer).into_owned()
        })
        .await
        .unwrap();
        let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, serde_json::from_str(body).unwrap_or(Value::String(answer.clone())))
    }

    async fn query(&self, body: Value) -> (u16, Value) {
        self.send("POST", "/_nimbus/docs/t/query", Some(body.to_string()), "application/json").await
    }

    async fn put(&self, item: Value) {
        let (status, body) =
            self.send("POST", "/_nimbus/docs/t/items", Some(item.to_string()), "application/json").await;
        assert_eq!(status, 201, "{body}");
    }

    async fn health(&self) -> u16 {
        self.http.get(format!("{}/_nimbus/health", self.base)).send().await.unwrap().status().as_u16()
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// The JSON error shape: a code and a message that is not empty.
fn is_error_json(body: &Value) -> bool {
    body["error"]["code"].is_string() && body["error"]["message"].as_str().is_some_and(|m| !m.is_empty())
}

/// An item of about 1 MB whose array JOINs explode.
fn big_item() -> Value {
    let arr: Vec<Value> = (0..20_000).map(|i| json!(format!("element-{i:08}-{}", "y".repeat(30)))).collect();
    json!({"id": "big", "pk": "p", "arr": arr})
}

const FOUR_JOINS: &str = "SELECT VALUE COUNT(1) FROM c JOIN a IN c.arr JOIN b IN c.arr JOIN d IN c.arr JOIN e IN c.arr";

#[tokio::test]
async fn queries_that_would_exhaust_memory_are_contained() {
    let app = App::new(Some(MANIFEST));
    let node = app.start(&[]);
    let c = Client::new(&app, &node);
    c.put(big_item()).await;

    // 10,000 characters replaced by 10,000 each: 100 MB, then 10^12 bytes. A string beyond the
    // per-value limit is undefined, so the row is left out.
    let replace = "SELECT VALUE LENGTH(REPLACE(REPLACE(REPLICATE('a',10000),'a',REPLICATE('b',10000)),'b',REPLICATE('c',10000))) FROM c";
    let (status, body) = c.query(json!({"query": replace})).await;
    assert_eq!((status, &body["items"]), (200, &json!([])), "{body}");
    // REPLICATE is Cosmos DB's: at most 10,000 characters.
    let (_, body) =
        c.query(json!({"query": "SELECT VALUE [LENGTH(REPLICATE('ab', 5000)), REPLICATE('ab', 5001)]"})).await;
    assert_eq!(body["items"], json!([[10000]]), "{body}");

    // 400 million rows of a 1 MB item, one wanted: the evaluation stops after two.
    let started = Instant::now();
    let (status, body) =
        c.query(json!({"query": "SELECT c FROM c JOIN a IN c.arr JOIN b IN c.arr", "maxItems": 1})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"].as_array().map(Vec::len), Some(1));
    assert!(body["continuation"].is_string(), "more rows follow");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());

    // Rows that DISTINCT and ORDER BY must hold all of: refused at the budget.
    let distinct = "SELECT DISTINCT a, b FROM c JOIN a IN c.arr JOIN b IN c.arr ORDER BY b";
    let (status, body) = c.query(json!({"query": distinct})).await;
    assert_eq!((status, code(&body)), (400, "query_too_expensive"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("64 MiB"), "{body}");
    // Copies of the item, one row: refused too.
    let copies = format!("SELECT VALUE [{}] FROM c", vec!["c"; 100].join(", "));
    let (status, body) = c.query(json!({"query": copies})).await;
    assert_eq!((status, code(&body)), (400, "query_too_expensive"), "{body}");

    assert_eq!(c.health().await, 200);
    let (status, body) = c.query(json!({"query": "SELECT VALUE c.id FROM c"})).await;
    assert_eq!((status, body["items"].clone()), (200, json!(["big"])));
}

#[tokio::test]
async fn hostile_queries_neither_freeze_the_node_nor_run_on() {
    let app = App::new(Some(MANIFEST));
    let node = app.start(&[]);
    let c = Client::new(&app, &node);
    let arr: Vec<u32> = (0..300).collect();
    c.put(json!({"id": "h", "pk": "p", "arr": arr})).await;

    // Ten queries of 8.1 billion rows each, all at once.
    let started = Instant::now();
    let hostile: Vec<_> = (0..10)
        .map(|_| {
            let (http, token, url) = (c.http.clone(), c.token.clone(), node.url("/_nimbus/docs/t/query"));
            tokio::spawn(async move {
                let response =
                    http.post(url).bearer_auth(token).json(&json!({"query": FOUR_JOINS})).send().await.unwrap();
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap(), Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut slowest = Duration::ZERO;
    let mut probes = 0;
    while !hostile.iter().all(|h| h.is_finished()) && started.elapsed() < Duration::from_secs(9) {
        let asked = Instant::now();
        assert_eq!(c.health().await, 200);
        slowest = slowest.max(asked.elapsed());
        probes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(probes >= 10, "the queries ended too early to tell ({probes} probes)");
    assert!(slowest < Duration::from_millis(500), "health took {slowest:?} while the queries ran");
    for h in hostile {
        let (status, body, ended) = h.await.unwrap();
        assert_eq!((status, code(&body)), (408, "query_timeout"), "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("10s"), "{body}");
        let took = ended - started;
        assert!(took < Duration::from_secs(16), "a query ran {took:?}");
    }
    assert_eq!(c.health().await, 200);
    let (status, body) = c.query(json!({"query": "SELECT VALUE ARRAY_LENGTH(c.arr) FROM c"})).await;
    assert_eq!((status, body["items"].clone()), (200, json!([300])));
}

#[tokio::test]
async fn a_query_stops_when_its_client_leaves() {
    let app = App::new(Some(MANIFEST));
    let node = app.start(&[]);
    let c = Client::new(&app, &node);
    let arr: Vec<u32> = (0..300).collect();
    c.put(json!({"id": "h", "pk": "p", "arr": arr})).await;

    // More hostile queries than the node evaluates at once, each abandoned after 300 ms.
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let evaluators = std::thread::available_parallelism().map_or(2, |n| n.get());
    let abandoned: Vec<_> = (0..evaluators + 2)
        .map(|_| {
            let request = impatient
                .post(node.url("/_nimbus/docs/t/query"))
                .bearer_auth(&c.token)
                .json(&json!({"query": FOUR_JOINS}));
            tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    for a in abandoned {
        assert!(a.await.unwrap().is_err(), "the client gave up before the answer");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Had they run on to their time limit, this would wait for an evaluator for seconds.
    let asked = Instant::now();
    let (status, body) = c.query(json!({"query": "SELECT VALUE c.id FROM c"})).await;
    assert_eq!((status, body["items"].clone()), (200, json!(["h"])));
    assert!(asked.elapsed() < Duration::from_secs(3), "waited {:?} for an evaluator", asked.elapsed());
}

#[tokio::test]
async fn continuations_cannot_be_forged() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let app = App::new(Some(MANIFEST));
    let node = app.start(&[]);
    let c = Client::new(&app, &node);
    for i in 0..5 {
        c.put(json!({"id": format!("i{i}"), "pk": "p", "n": i})).await;
    }
    let query = json!({"query": "SELECT VALUE c.id FROM c ORDER BY c.n", "maxItems": 2});
    let (_, first) = c.query(query.clone()).await;
    assert_eq!(first["items"], json!(["i0", "i1"]));
    let token = first["continuation"].as_str().unwrap().to_owned();

    let next = |continuation: &str| {
        let mut q = query.clone();
        q["continuation"] = json!(continuation);
        q
    };
    let (status, second) = c.query(next(&token)).await;
    assert_eq!((status, second["items"].clone()), (200, json!(["i2", "i3"])));

    // The offset pushed to the end of u64 (the old token was base64 of "q:<offset>:<fingerprint>"),
    // with and without the signature; a flipped character; a token from nothing.
    let (text, tag) = token.split_once('.').unwrap();
    let inner = String::from_utf8(b64.decode(text).unwrap()).unwrap();
    let fingerprint = inner.rsplit(':').next().unwrap();
    let wrapped = b64.encode(format!("q:18446744073709551615:{fingerprint}"));
    let mut flipped = token.clone().into_bytes();
    flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
    let forged = [
        wrapped.clone(),
        format!("{wrapped}.{tag}"),
        String::from_utf8(flipped).unwrap(),
        b64.encode(format!("q:2:{fingerprint}")),
        "bm90IG91cnM".to_owned(),
        format!("{token}x"),
    ];
    for f in &forged {
        let (status, body) = c.query(next(f)).await;
        assert_eq!((status, code(&body)), (400, "invalid_continuation"), "{f}: {body}");
    }
    // A genuine token of another query.
    let (status, body) = c.query(json!({"query": "SELECT * FROM c", "continuation": token})).await;
    assert_eq!((status, code(&body)), (400, "invalid_continuation"), "{body}");
    let (status, body) = c.send("GET", "/_nimbus/docs/t/feed?continuation=zzz", None, "application/json").await;
    assert_eq!((status, code(&body)), (400, "invalid_continuation"), "{body}");
    assert_eq!(c.health().await, 200);
}

#[tokio::test]
async fn refusals_are_json_and_name_what_they_refuse() {
    let app = App::new(Some(MANIFEST));
    let node = app.start(&[]);
    let c = Client::new(&app, &node);
    let json = "application/json";
    let cases = [
        ("GET", "/_nimbus/docs/t/items?maxItems=many", None, json, 400),
        ("GET", "/_nimbus/docs/t/feed?maxItems=-1", None, json, 400),
        ("GET", "/_nimbus/docs/t/items/%FF?pk=p", None, json, 400),
        ("POST", "/_nimbus/docs/t/query", Some("{\"query\": "), json, 400),
        ("POST", "/_nimbus/docs/t/query", Some("SELECT * FROM c"), "text/plain", 400),
        ("POST", "/_nimbus/docs/t/items", Some("{not json"), "application/x-www-form-urlencoded", 400),
        ("POST", "/_nimbus/docs/t/batch", Some("[]"), json, 400),
        ("PATCH", "/_nimbus/docs/t/items/x?pk=p", Some("{"), json, 400),
        ("POST", "/_nimbus/docs/t/items/x?pk=p", None, json, 405),
    ];
    for (method, path, body, content_type, status) in cases {
        let (got, answer) = c.send(method, path, body.map(str::to_owned), content_type).await;
        let expected = if status == 405 { "method_not_allowed" } else { "invalid_request" };
        assert_eq!((got, code(&answer)), (status, expected), "{method} {path}: {answer}");
        assert!(is_error_json(&answer), "{method} {path}: {answer}");
    }
    // JSON is JSON whatever the content type says.
    let (status, body) = c
        .send("POST", "/_nimbus/docs/t/query", Some(json!({"query": "SELECT * FROM c"}).to_string()), "text/plain")
        .await;
    assert_eq!((status, body["items"].clone()), (200, json!([])));

    // Query bodies over the limit are called query bodies, not items: 3 MB (read, then refused)
    // and 7 MB (refused while read).
    for size in [3 << 20, 7 << 20] {
        let body = json!({"query": "SELECT * FROM c", "parameters": [{"name": "@x", "value": "q".repeat(size)}]});
        let (status, answer) = c.post_large("/_nimbus/docs/t/query", body.to_string()).await;
        assert_eq!((status, code(&answer)), (413, "payload_too_large"), "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("the query body is") && !message.contains("item"), "{message}");
    }
    let big = json!({"id": "x", "pk": "p", "big": "y".repeat(3 << 20)}).to_string();
    let (status, answer) = c.send("POST", "/_nimbus/docs/t/items", Some(big), "application/json").await;
    assert_eq!((status, code(&answer)), (413, "item_too_large"), "{answer}");
    assert_eq!(c.health().await, 200);
}
