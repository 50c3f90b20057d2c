//! `nimbus docs` against the store a running node serves from: a JSON Lines import of a thousand
//! items that the node's REST API sees, queries with parameters and a partition key, an export
//! that gives back what went in, single items read, written and removed, and errors that name
//! the container or the file and line.

mod support;

use std::io::Write as _;
use std::process::{Output, Stdio};

use serde_json::{Value, json};
use support::{App, Node, admin_token, text};

const MANIFEST: &str = r#"
[docs.containers.conversations]
partition_key = "/userId"
indexes = ["/status"]
"#;

fn docs(app: &App, args: &[&str]) -> Output {
    let mut all = vec!["docs", "--app", app.path().to_str().unwrap()];
    all.extend_from_slice(args);
    support::nimbus(&all)
}

/// `nimbus docs ARGS` with `input` on standard input.
fn docs_with_stdin(app: &App, args: &[&str], input: &str) -> Output {
    let mut child = support::command()
        .args(["docs", "--app", app.path().to_str().unwrap()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn failed(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "stdout: {}\nstderr: {}", text(&out.stdout), text(&out.stderr));
    text(&out.stderr)
}

fn jsonl(items: &[Value]) -> String {
    items.iter().map(|i| format!("{i}\n")).collect()
}

/// The items as they went in: system properties dropped, sorted by id.
fn plain(mut items: Vec<Value>) -> Vec<Value> {
    for item in &mut items {
        let map = item.as_object_mut().unwrap();
        for system in ["_etag", "_lsn", "_ts"] {
            map.remove(system);
        }
    }
    items.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    items
}

fn lines(output: &str) -> Vec<Value> {
    output.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn rest_query(app: &App, node: &Node, query: &str) -> Value {
    let reply = reqwest::Client::new()
        .post(node.url("/_nimbus/docs/conversations/query"))
        .bearer_auth(admin_token(app))
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    reply.json::<Value>().await.unwrap()["items"].clone()
}

#[tokio::test]
async fn a_thousand_items_go_in_and_come_back_out() {
    let app = App::new(Some(MANIFEST));
    let node = app.start(&[]);
    let items: Vec<Value> = (0..1000)
        .map(|n| {
            // Partitions "u0".."u9", plus the number 7 and the string "7": two partitions.
            let user = match n % 12 {
                10 => json!(7),
                11 => json!("7"),
                k => json!(format!("u{k}")),
            };
            let status = if n % 3 == 0 { "open" } else { "done" };
            json!({"id": format!("i{n:04}"), "userId": user, "status": status, "n": n, "text": "héllo \"wörld\"\n", "tags": ["a", n]})
        })
        .collect();
    let file = app.path().join("items.jsonl");
    std::fs::write(&file, jsonl(&items)).unwrap();
    let out = ok(&docs(&app, &["import", "conversations", file.to_str().unwrap(), "--batch", "50"]));
    assert_eq!(out.trim(), "Imported 1000 items into conversations.");

    // The running node sees them.
    assert_eq!(rest_query(&app, &node, "SELECT VALUE COUNT(1) FROM c").await, json!([1000]));

    // Queries: JSON lines, or an array with --json; parameters and a partition key.
    let open = lines(&ok(&docs(
        &app,
        &[
            "query",
            "conversations",
            "SELECT c.id FROM c WHERE c.status = @s AND c.n < @max ORDER BY c.id",
            "--param",
            "@s=open",
            "--param",
            "max=30",
        ],
    )));
    let expected: Vec<Value> = (0..30).filter(|n| n % 3 == 0).map(|n| json!({"id": format!("i{n:04}")})).collect();
    assert_eq!(open, expected);
    let numbers: Value = serde_json::from_str(&ok(&docs(
        &app,
        &["--json", "query", "conversations", "SELECT VALUE c.n FROM c ORDER BY c.n", "--pk", "7"],
    )))
    .unwrap();
    let expected: Vec<Value> = (0..1000).filter(|n| n % 12 == 10).map(Value::from).collect();
    assert_eq!(numbers, json!(expected));
    let strings = lines(&ok(&docs(&app, &["query", "conversations", "SELECT VALUE c.n FROM c", "--pk", "\"7\""])));
    assert_eq!(strings.len(), (0..1000).filter(|n| n % 12 == 11).count());
    assert!(strings.iter().all(|n| n.as_u64().unwrap() % 12 == 11));

    // An export gives back what went in, to a file or to standard output.
    let export = app.path().join("export.jsonl");
    let out = ok(&docs(&app, &["export", "conversations", export.to_str().unwrap()]));
    assert_eq!(out.trim(), format!("Exported 1000 items from conversations to {}.", export.display()));
    let exported = std::fs::read_to_string(&export).unwrap();
    assert_eq!(plain(lines(&exported)), items);
    assert_eq!(ok(&docs(&app, &["export", "conversations"])), exported);
    assert_eq!(ok(&docs(&app, &["export", "conversations", "-"])), exported);

    // Importing an export again (system properties and all) changes nothing but versions.
    let out = ok(&docs(&app, &["import", "conversations", export.to_str().unwrap()]));
    assert_eq!(out.trim(), "Imported 1000 items into conversations.");
    assert_eq!(plain(lines(&ok(&docs(&app, &["export", "conversations"])))), items);
    assert_eq!(rest_query(&app, &node, "SELECT VALUE COUNT(1) FROM c").await, json!([1000]));
}

#[test]
fn an_import_stops_at_the_first_bad_line_and_names_it() {
    let app = App::new(Some(MANIFEST));
    let item = |n: u32| json!({"id": format!("i{n}"), "userId": "u"}).to_string();
    let count = |app: &App| -> Value {
        serde_json::from_str(&ok(&docs(app, &["--json", "query", "conversations", "SELECT VALUE COUNT(1) FROM c"])))
            .unwrap()
    };

    // Not JSON: nothing after the line is read.
    let file = app.path().join("broken.jsonl");
    let body = format!("{}\n{}\n\n{}\n{{\"id\": oops}}\n{}\n", item(1), item(2), item(3), item(4));
    std::fs::write(&file, body).unwrap();
    let out = docs(&app, &["import", "conversations", file.to_str().unwrap()]);
    assert_eq!(text(&out.stdout).trim(), "Imported 3 items into conversations; stopped at line 5.");
    let error = failed(&out);
    assert!(error.contains(&format!("{}:5: not valid JSON (column 8)", file.display())), "{error}");
    assert_eq!(count(&app), json!([3]));

    // Not an item the container accepts (no partition key): the lines before it are in.
    let file = app.path().join("nopk.jsonl");
    std::fs::write(&file, format!("{}\n{}\n{}\n", item(10), json!({"id": "x"}), item(11))).unwrap();
    let out = docs(&app, &["import", "conversations", file.to_str().unwrap(), "--batch", "1"]);
    assert_eq!(text(&out.stdout).trim(), "Imported 1 item into conversations; stopped at line 2.");
    let error = failed(&out);
    assert!(error.contains(&format!("{}:2: the item has no partition key /userId", file.display())), "{error}");
    assert_eq!(count(&app), json!([4]));
    let out = docs(&app, &["--json", "import", "conversations", file.to_str().unwrap(), "--batch", "1"]);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), json!({"imported": 1, "failedLine": 2}));

    // From standard input, and into a container that does not exist.
    let out = docs_with_stdin(&app, &["import", "conversations", "-"], &format!("{}\nnull\n", item(20)));
    assert!(failed(&out).contains("stdin:2: an item is a JSON object"), "{}", text(&out.stderr));
    let out = docs(&app, &["import", "nothing", file.to_str().unwrap()]);
    let error = failed(&out);
    assert!(error.contains("no docs container \"nothing\""), "{error}");
    let out = docs(&app, &["import", "conversations", "/nonexistent.jsonl"]);
    assert!(failed(&out).contains("/nonexistent.jsonl"));
}

#[tokio::test]
async fn single_items_are_read_written_and_removed() {
    let app = App::new(Some(MANIFEST));
    let node = app.start(&[]);
    let out = docs_with_stdin(&app, &["put", "conversations", "-"], r#"{"id": "a", "userId": 5, "title": "number"}"#);
    assert!(ok(&out).starts_with("Wrote item \"a\" to conversations (etag "), "{}", text(&out.stdout));
    let file = app.path().join("item.json");
    std::fs::write(&file, "{\n  \"id\": \"a\",\n  \"userId\": \"5\",\n  \"title\": \"string\"\n}\n").unwrap();
    ok(&docs(&app, &["put", "conversations", file.to_str().unwrap()]));

    // --pk is JSON, else the bare string: 5 and "5" are two partitions.
    let number: Value = serde_json::from_str(&ok(&docs(&app, &["get", "conversations", "a", "--pk", "5"]))).unwrap();
    assert_eq!(number["title"], "number");
    let string: Value =
        serde_json::from_str(&ok(&docs(&app, &["--json", "get", "conversations", "a", "--pk", "\"5\""]))).unwrap();
    assert_eq!((&string["title"], string["_etag"].is_string()), (&json!("string"), true));
    let served = reqwest::Client::new()
        .get(node.url("/_nimbus/docs/conversations/items/a?pk=5"))
        .bearer_auth(admin_token(&app))
        .send()
        .await
        .unwrap();
    assert_eq!(served.json::<Value>().await.unwrap()["title"], "number");

    assert_eq!(
        ok(&docs(&app, &["rm", "conversations", "a", "--pk", "5"])).trim(),
        "Deleted item \"a\" from conversations."
    );
    let error = failed(&docs(&app, &["get", "conversations", "a", "--pk", "5"]));
    assert!(error.contains("conversations: no item \"a\" in partition 5"), "{error}");
    let error = failed(&docs(&app, &["rm", "conversations", "a", "--pk", "5"]));
    assert!(error.contains("conversations: no item \"a\""), "{error}");
    let other: Value = serde_json::from_str(&ok(&docs(&app, &["get", "conversations", "a", "--pk", "\"5\""]))).unwrap();
    assert_eq!(other["title"], "string", "the other partition's item stays");

    // Errors name what is wrong.
    std::fs::write(&file, "{\"id\": \"b\",\n \"userId\": }").unwrap();
    let error = failed(&docs(&app, &["put", "conversations", file.to_str().unwrap()]));
    assert!(
        error.contains(&format!("{}: not valid JSON: expected value at line 2 column 12", file.display())),
        "{error}"
    );
    let error = failed(&docs(&app, &["get", "other", "a", "--pk", "5"]));
    assert!(error.contains("no docs container \"other\""), "{error}");
    let error = failed(&docs(&app, &["query", "conversations", "SELECT * FROM c WHERE c.a = @a"]));
    assert!(error.contains("conversations: the query uses parameter @a, which is not given"), "{error}");
    let error = failed(&docs(&app, &["query", "conversations", "SELECT * FROM c", "--param", "@a"]));
    assert!(error.contains("--param @a: write @NAME=VALUE"), "{error}");
}
