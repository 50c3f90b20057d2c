//! Blobs and the static website end to end: `[site] dir` published into `$web` at start and served
//! at `/` (index and error documents, SPA fallback, conditional requests, ranges, precompressed
//! variants, Cache-Control rules), and the blob REST API (streamed uploads, listing, metadata,
//! refused keys, uploads cut off midway).

mod support;

use std::io::{Read as _, Write as _};

use serde_json::Value;
use support::{App, Node, admin_token};

fn site_app(extra: &str) -> App {
    let app = App::new(Some(&format!(
        "[site]\ndir = \"web\"\nerror_document = \"404.html\"\n{extra}\
         cache_control = {{ \"assets/**\" = \"public, max-age=31536000, immutable\" }}\n"
    )));
    let web = app.path().join("web");
    std::fs::create_dir_all(web.join("docs")).unwrap();
    std::fs::create_dir_all(web.join("assets")).unwrap();
    std::fs::write(web.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(web.join("docs/index.html"), "<h1>docs</h1>").unwrap();
    std::fs::write(web.join("404.html"), "<h1>missing</h1>").unwrap();
    std::fs::write(web.join("assets/app.css"), "body { color: red }").unwrap();
    std::fs::write(web.join("assets/app.css.gz"), b"\x1f\x8bfake-gzip").unwrap();
    app
}

async fn get(node: &Node, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(node.url(path));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn the_site_serves_pages_with_http_caching_semantics() {
    let app = site_app("");
    let node = app.start(&[]);

    let home = get(&node, "/", &[]).await;
    assert_eq!(home.status(), 200);
    assert_eq!(home.headers()["content-type"], "text/html");
    let etag = home.headers()["etag"].to_str().unwrap().to_owned();
    let modified = home.headers()["last-modified"].to_str().unwrap().to_owned();
    assert_eq!(home.text().await.unwrap(), "<h1>home</h1>");
    assert_eq!(get(&node, "/docs/", &[]).await.text().await.unwrap(), "<h1>docs</h1>");
    assert_eq!(get(&node, "/docs", &[]).await.text().await.unwrap(), "<h1>docs</h1>");

    let missing = get(&node, "/nope", &[]).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.text().await.unwrap(), "<h1>missing</h1>", "the error document");

    assert_eq!(get(&node, "/", &[("if-none-match", &etag)]).await.status(), 304);
    assert_eq!(get(&node, "/", &[("if-none-match", "\"other\"")]).await.status(), 200);
    assert_eq!(get(&node, "/", &[("if-modified-since", &modified)]).await.status(), 304);

    let part = get(&node, "/", &[("range", "bytes=4-7")]).await;
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 4-7/13");
    assert_eq!(part.text().await.unwrap(), "home");
    assert_eq!(get(&node, "/", &[("range", "bytes=100-")]).await.status(), 416);

    let css = get(&node, "/assets/app.css", &[]).await;
    assert_eq!(css.headers()["content-type"], "text/css");
    assert_eq!(css.headers()["cache-control"], "public, max-age=31536000, immutable");
    assert_eq!(css.text().await.unwrap(), "body { color: red }");
    let gz = get(&node, "/assets/app.css", &[("accept-encoding", "gzip, deflate")]).await;
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    assert_eq!(gz.headers()["content-type"], "text/css");
    assert_eq!(gz.headers()["vary"], "accept-encoding");

    let head = reqwest::Client::new().head(node.url("/")).send().await.unwrap();
    assert_eq!(head.headers()["content-length"], "13");
    assert_eq!(head.bytes().await.unwrap().len(), 0);
}

#[tokio::test]
async fn single_page_apps_get_their_index_for_unknown_routes() {
    let app = site_app("spa = true\n");
    let node = app.start(&[]);
    let route = get(&node, "/chat/42", &[]).await;
    assert_eq!(route.status(), 200);
    assert_eq!(route.text().await.unwrap(), "<h1>home</h1>");
    assert_eq!(get(&node, "/missing.png", &[]).await.status(), 404, "file-like paths stay 404");
}

#[tokio::test]
async fn publishing_uploads_changes_and_removes_what_is_gone() {
    let app = site_app("");
    let mut node = app.start(&[]);
    node.signal_and_wait("TERM", std::time::Duration::from_secs(10));
    std::fs::write(app.path().join("web/index.html"), "<h1>new home</h1>").unwrap();
    std::fs::remove_dir_all(app.path().join("web/docs")).unwrap();
    let node = app.start(&[]);
    node.wait_for_log(
        |l| l.contains("site published") && l.contains("uploaded=1") && l.contains("deleted=1"),
        std::time::Duration::from_secs(5),
    );
    assert_eq!(get(&node, "/", &[]).await.text().await.unwrap(), "<h1>new home</h1>");
    assert_eq!(get(&node, "/docs/", &[]).await.status(), 404);
}

#[tokio::test]
async fn the_blob_api_stores_lists_and_refuses_bad_keys() {
    let app = App::new(None);
    let node = app.start(&[]);
    let token = admin_token(&app);
    let http = reqwest::Client::new();
    let put = |key: &str, body: &'static str| {
        http.put(node.url(&format!("/_nimbus/blob/uploads/{key}")))
            .bearer_auth(&token)
            .header("content-type", "text/plain")
            .header("x-nimbus-meta-owner", "ada")
            .body(body)
            .send()
    };
    let created: Value = put("docs/a.txt", "alpha").await.unwrap().json().await.unwrap();
    assert_eq!((created["size"].as_u64(), created["content_type"].as_str()), (Some(5), Some("text/plain")));
    assert!(created.get("data").is_none(), "where the bytes are stays inside: {created}");
    put("docs/b.txt", "beta").await.unwrap();
    put("top.txt", "top").await.unwrap();

    let got = http.get(node.url("/_nimbus/blob/uploads/docs/a.txt")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(got.headers()["x-nimbus-meta-owner"], "ada");
    assert_eq!(got.text().await.unwrap(), "alpha");
    let listing: Value = http
        .get(node.url("/_nimbus/blob/uploads?delimiter=/"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listing["prefixes"], serde_json::json!(["docs/"]));
    assert_eq!(listing["objects"][0]["key"], "top.txt");
    let page: Value = http
        .get(node.url("/_nimbus/blob/uploads?prefix=docs/&max=1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["objects"].as_array().unwrap().len(), 1);
    let next = page["continuation"].as_str().unwrap();
    let rest: Value = http
        .get(node.url(&format!("/_nimbus/blob/uploads?prefix=docs/&continuation={next}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["objects"][0]["key"], "docs/b.txt");

    // Copies keep the bytes, content type and metadata; a missing source is a 404, a copy through a
    // signed URL a 400.
    let copy = |source: &str, target: &str| {
        http.put(node.url(&format!("/_nimbus/blob/{target}")))
            .bearer_auth(&token)
            .header("x-nimbus-copy-source", source)
            .send()
    };
    let copied: Value = copy("uploads/docs/a.txt", "backup/a.txt").await.unwrap().json().await.unwrap();
    assert_eq!((copied["key"].as_str(), copied["size"].as_u64()), (Some("a.txt"), Some(5)));
    let got = http.get(node.url("/_nimbus/blob/backup/a.txt")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(
        (got.headers()["x-nimbus-meta-owner"].to_str().unwrap(), got.headers()["content-type"].to_str().unwrap()),
        ("ada", "text/plain")
    );
    assert_eq!(got.text().await.unwrap(), "alpha");
    assert_eq!(copy("uploads/none.txt", "backup/b.txt").await.unwrap().status(), 404);
    assert_eq!(copy("uploads/../etc", "backup/b.txt").await.unwrap().status(), 400);

    let delete = http.delete(node.url("/_nimbus/blob/uploads/top.txt")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(delete.status(), 204);
    let gone = http.get(node.url("/_nimbus/blob/uploads/top.txt")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(gone.status(), 404);
    assert_eq!(http.get(node.url("/_nimbus/blob/uploads/docs/a.txt")).send().await.unwrap().status(), 401);

    // Sent as written (an HTTP client library would resolve the dots first).
    for key in ["a/../b", "a/%2e%2e/b", "..%2f..%2fetc", "a%5c..%5cb", "a%00b", "a//b"] {
        let status = raw_put(&node, &token, &format!("/_nimbus/blob/uploads/{key}"));
        assert_eq!(status, 400, "{key}");
    }
    let bad = http.put(node.url("/_nimbus/blob/Bad_Name/x")).bearer_auth(&token).body("x").send().await.unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn an_upload_cut_off_midway_leaves_no_object() {
    let app = App::new(None);
    let node = app.start(&[]);
    let token = admin_token(&app);
    let addr = node.url.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "PUT /_nimbus/blob/uploads/cut.bin HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 100000\r\n\r\n"
    )
    .unwrap();
    stream.write_all(&[7u8; 1000]).unwrap();
    drop(stream);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let got =
        reqwest::Client::new().get(node.url("/_nimbus/blob/uploads/cut.bin")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(got.status(), 404);
    let mut data = Vec::new();
    for entry in walk(&app.data_dir().join("blobs")) {
        std::fs::File::open(entry).unwrap().read_to_end(&mut data).unwrap();
    }
    assert!(data.is_empty(), "no bytes of the cut upload are kept");
}

/// A PUT of one byte with the path exactly as given; answers the status code.
fn raw_put(node: &Node, token: &str, path: &str) -> u16 {
    let mut stream = std::net::TcpStream::connect(node.url.trim_start_matches("http://")).unwrap();
    write!(stream, "PUT {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().unwrap().is_dir() {
                out.extend(walk(&entry.path()));
            } else {
                out.push(entry.path());
            }
        }
    }
    out
}

/// Signed URLs let a browser upload or download one object without the admin token; expired,
/// tampered and wrong-method uses are refused with 403.
#[tokio::test]
async fn signed_urls_open_one_object_for_one_method_for_a_while() {
    let app = App::new(None);
    let node = app.start(&[]);
    let token = admin_token(&app);
    let http = reqwest::Client::new();
    let sign = |method: &str, key: &str, expires: Value| {
        http.post(node.url("/_nimbus/blob/sign"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"container": "uploads", "key": key, "method": method, "expiresIn": expires}))
            .send()
    };
    let put: Value = sign("PUT", "photos/cat one.jpg", Value::from("15m")).await.unwrap().json().await.unwrap();
    let put_url = put["url"].as_str().unwrap().to_owned();
    assert!(put_url.starts_with(&node.url), "{put_url}");
    let uploaded = http.put(&put_url).header("content-type", "image/jpeg").body("meow").send().await.unwrap();
    assert_eq!(uploaded.status(), 201);
    assert_eq!(http.get(&put_url).send().await.unwrap().status(), 403, "a PUT signature does not read");

    let get: Value = sign("GET", "photos/cat one.jpg", Value::from(60)).await.unwrap().json().await.unwrap();
    let get_url = get["url"].as_str().unwrap().to_owned();
    let read = http.get(&get_url).send().await.unwrap();
    assert_eq!(read.headers()["content-type"], "image/jpeg");
    assert_eq!(read.text().await.unwrap(), "meow");
    let tampered = get_url.replace("cat%20one", "dog");
    let refused = http.get(&tampered).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_signature");
    let later = get_url.replace("exp=", "exp=9");
    assert_eq!(http.get(&later).send().await.unwrap().status(), 403, "a changed expiry breaks the signature");

    let short: Value = sign("GET", "photos/cat one.jpg", Value::from(1)).await.unwrap().json().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let expired = http.get(short["url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(expired.status(), 403);
    assert_eq!(expired.json::<Value>().await.unwrap()["error"]["code"], "signature_expired");

    assert_eq!(sign("DELETE", "x", Value::from(60)).await.unwrap().status(), 400);
    assert_eq!(sign("GET", "x", Value::from(0)).await.unwrap().status(), 400);
    assert_eq!(sign("GET", "../x", Value::from(60)).await.unwrap().status(), 400);
    let unsigned = http.post(node.url("/_nimbus/blob/sign")).json(&serde_json::json!({})).send().await.unwrap();
    assert_eq!(unsigned.status(), 401);
}

/// `nimbus blob` works on the store a running node serves from.
#[tokio::test]
async fn the_blob_cli_puts_lists_gets_and_removes() {
    let app = App::new(None);
    let node = app.start(&[]);
    let dir = app.path().to_str().unwrap();
    let file = app.path().join("report.txt");
    std::fs::write(&file, "quarterly numbers").unwrap();
    let out = support::nimbus(&["blob", "--app", dir, "put", file.to_str().unwrap(), "reports/2026/q4.txt"]);
    assert!(out.status.success(), "{}", support::text(&out.stderr));
    let served = reqwest::Client::new()
        .get(node.url("/_nimbus/blob/reports/2026/q4.txt"))
        .bearer_auth(admin_token(&app))
        .send()
        .await
        .unwrap();
    assert_eq!(served.headers()["content-type"], "text/plain");
    assert_eq!(served.text().await.unwrap(), "quarterly numbers");
    let listed = support::text(&support::nimbus(&["blob", "--app", dir, "ls", "reports/2026/"]).stdout);
    assert!(listed.contains("q4.txt") && listed.contains("17"), "{listed}");
    let out = support::nimbus(&["blob", "--app", dir, "cp", "reports/2026/q4.txt", "archive/q4.txt"]);
    assert!(out.status.success(), "{}", support::text(&out.stderr));
    let out = support::nimbus(&["blob", "--app", dir, "get", "archive/q4.txt", "-"]);
    assert_eq!(support::text(&out.stdout), "quarterly numbers");
    let out = support::nimbus(&["blob", "--app", dir, "get", "reports/2026/q4.txt", "-"]);
    assert_eq!(support::text(&out.stdout), "quarterly numbers");
    assert!(support::nimbus(&["blob", "--app", dir, "rm", "reports/2026/q4.txt"]).status.success());
    let out = support::nimbus(&["blob", "--app", dir, "get", "reports/2026/q4.txt", "-"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(support::text(&out.stderr).contains("no object"), "{}", support::text(&out.stderr));
}

/// Files in the local backend's byte store: what a deploy keeps or collects.
fn stored_bytes(app: &App) -> usize {
    std::fs::read_dir(app.data_dir().join("blobs/data")).map_or(0, |d| d.count())
}

fn site_cli(app: &App, args: &[&str]) -> String {
    let mut all = vec!["site", "--app", app.path().to_str().unwrap()];
    all.extend_from_slice(args);
    let out = support::nimbus(&all);
    assert!(out.status.success(), "nimbus {all:?}: {}", support::text(&out.stderr));
    support::text(&out.stdout)
}

/// The node caches `$web` lookups for a second; wait it out before looking at a switched site.
async fn page(node: &Node, path: &str) -> (u16, String) {
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = get(node, path, &[]).await;
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn site_deploys_switch_at_once_and_roll_back() {
    let app = App::new(None);
    let node = app.start(&[]);
    let v1 = app.path().join("v1");
    std::fs::create_dir_all(v1.join("js")).unwrap();
    std::fs::write(v1.join("index.html"), "v1").unwrap();
    std::fs::write(v1.join("js/app.js"), "app").unwrap();
    std::fs::write(v1.join("old.txt"), "old").unwrap();
    let out = site_cli(&app, &["deploy", v1.to_str().unwrap()]);
    assert!(out.contains("Deploy 1 is live: 3 uploaded, 0 unchanged, 0 removed"), "{out}");
    assert_eq!(page(&node, "/").await, (200, "v1".into()));

    let v2 = app.path().join("v2");
    std::fs::create_dir_all(v2.join("js")).unwrap();
    std::fs::write(v2.join("index.html"), "v2").unwrap();
    std::fs::write(v2.join("js/app.js"), "app").unwrap();
    std::fs::write(v2.join("new.txt"), "new").unwrap();
    let done: Value =
        serde_json::from_str(&site_cli(&app, &["--json", "deploy", v2.to_str().unwrap(), "--prune"])).unwrap();
    assert_eq!(done, serde_json::json!({"id": 2, "uploaded": 2, "unchanged": 1, "deleted": 1}));
    assert_eq!(page(&node, "/").await, (200, "v2".into()));
    assert_eq!(get(&node, "/old.txt", &[]).await.status(), 404);
    assert_eq!(get(&node, "/new.txt", &[]).await.text().await.unwrap(), "new");
    assert_eq!(stored_bytes(&app), 5, "deploy 1's bytes are kept for rollback; app.js is shared");
    let again = site_cli(&app, &["deploy", v2.to_str().unwrap(), "--prune"]);
    assert!(again.contains("Nothing changed"), "{again}");

    // A hot fix through the API replaces a deployed object without losing deploy 2's bytes.
    let token = admin_token(&app);
    let http = reqwest::Client::new();
    let put = http.put(node.url("/_nimbus/blob/$web/index.html")).bearer_auth(&token).body("hot fix").send().await;
    assert_eq!(put.unwrap().status(), 201);
    assert_eq!(stored_bytes(&app), 6);

    let out = site_cli(&app, &["rollback"]);
    assert!(out.contains("deploy 1 is live"), "{out}");
    assert_eq!(page(&node, "/").await, (200, "v1".into()));
    assert_eq!(get(&node, "/old.txt", &[]).await.text().await.unwrap(), "old");
    assert_eq!(get(&node, "/new.txt", &[]).await.status(), 404);
    assert_eq!(stored_bytes(&app), 5, "the hot fix belonged to no deploy: collected");
    let listed: Value = serde_json::from_str(&site_cli(&app, &["--json", "list"])).unwrap();
    let ids: Vec<(u64, bool)> =
        listed.as_array().unwrap().iter().map(|d| (d["id"].as_u64().unwrap(), d["current"] == true)).collect();
    assert_eq!(ids, vec![(2, false), (1, true)]);
    let out = support::nimbus(&["site", "--app", app.path().to_str().unwrap(), "rollback"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(support::text(&out.stderr).contains("oldest one kept"), "{}", support::text(&out.stderr));

    // Keeping one deploy collects the bytes only the others referred to.
    site_cli(&app, &["deploy", v2.to_str().unwrap(), "--prune", "--keep", "1"]);
    assert_eq!(page(&node, "/").await, (200, "v2".into()));
    assert_eq!(stored_bytes(&app), 3);
    let listed: Value = serde_json::from_str(&site_cli(&app, &["--json", "list"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_first_deploy_over_objects_put_by_hand_can_be_rolled_back() {
    let app = App::new(None);
    let node = app.start(&[]);
    let http = reqwest::Client::new();
    let token = admin_token(&app);
    http.put(node.url("/_nimbus/blob/$web/index.html")).bearer_auth(&token).body("by hand").send().await.unwrap();
    let dir = app.path().join("site");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "deployed").unwrap();
    let out = site_cli(&app, &["deploy", dir.to_str().unwrap()]);
    assert!(out.contains("Deploy 2 is live"), "{out}");
    assert_eq!(page(&node, "/").await, (200, "deployed".into()));
    site_cli(&app, &["rollback"]);
    assert_eq!(page(&node, "/").await, (200, "by hand".into()));
    let out = support::nimbus(&["site", "--app", app.path().to_str().unwrap(), "deploy", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(support::text(&out.stderr).contains("not a folder"));
}

#[tokio::test]
async fn a_full_disk_answers_507_and_keeps_no_half_object() {
    // The blob directory is a 1 MiB tmpfs, mounted in a mount namespace of the node's own (so
    // nothing outside sees it, and it goes with the node); unshare maps the caller to root there.
    let blobs = tempfile::tempdir().unwrap();
    let app = App::new(Some(&format!("[store]\nblobs = \"file://{}\"\n", blobs.path().display())));
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--map-root-user", "sh", "-c", r#"mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@""#])
        .arg(blobs.path())
        .arg(support::BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("NIMBUS_") {
            cmd.env_remove(key);
        }
    }
    let node = Node::start_with(cmd, app.path(), &[]);
    let http = reqwest::Client::new();
    let token = admin_token(&app);
    let put = |key: &str, body: Vec<u8>| {
        http.put(node.url(&format!("/_nimbus/blob/uploads/{key}"))).bearer_auth(&token).body(body).send()
    };
    let full = put("big.bin", vec![7u8; 2 * 1024 * 1024]).await.unwrap();
    assert_eq!(full.status(), 507, "{}", node.stderr());
    let body: Value = full.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_storage");
    let missing = http.get(node.url("/_nimbus/blob/uploads/big.bin")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    // Past 5 MiB an upload goes in parts; the parts written so far go too.
    assert_eq!(put("bigger.bin", vec![7u8; 6 * 1024 * 1024]).await.unwrap().status(), 507);
    // The failed upload left nothing behind: a smaller object still fits.
    assert_eq!(put("small.bin", vec![1u8; 600 * 1024]).await.unwrap().status(), 201);
    let got = http.get(node.url("/_nimbus/blob/uploads/small.bin")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(got.bytes().await.unwrap().len(), 600 * 1024);
}

/// The blob API answers GET and HEAD of objects by the same RFC 9110 rules as the site (one
/// implementation): preconditions, several ranges in parts, and 405 with Allow for other methods.
#[tokio::test]
async fn the_blob_api_reads_objects_by_rfc_9110() {
    let app = App::new(None);
    let node = app.start(&[]);
    let token = admin_token(&app);
    let http = reqwest::Client::new();
    let url = node.url("/_nimbus/blob/uploads/r.txt");
    let put = http.put(&url).bearer_auth(&token).header("content-type", "text/plain").body("hello world").send();
    assert_eq!(put.await.unwrap().status(), 201);
    let read = |headers: &[(&'static str, &'static str)]| {
        let mut request = http.get(&url).bearer_auth(&token);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.send()
    };
    let etag = read(&[]).await.unwrap().headers()["etag"].to_str().unwrap().to_owned();
    let r = http.get(&url).bearer_auth(&token).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag.as_str());
    let r = read(&[("if-match", "\"stale\"")]).await.unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "precondition_failed");
    assert_eq!(read(&[("if-unmodified-since", "Sat, 01 Jan 2000 00:00:00 GMT")]).await.unwrap().status(), 412);
    assert_eq!(read(&[("range", "bytes=0-4"), ("if-range", "\"stale\"")]).await.unwrap().status(), 200);

    let parts = read(&[("range", "bytes=0-4,6-10")]).await.unwrap();
    assert_eq!(parts.status(), 206);
    let content_type = parts.headers()["content-type"].to_str().unwrap().to_owned();
    let boundary = content_type.strip_prefix("multipart/byteranges; boundary=").expect("multipart");
    let body = parts.text().await.unwrap();
    assert_eq!(
        body,
        format!(
            "\r\n--{boundary}\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-4/11\r\n\r\nhello\
             \r\n--{boundary}\r\nContent-Type: text/plain\r\nContent-Range: bytes 6-10/11\r\n\r\nworld\
             \r\n--{boundary}--\r\n"
        )
    );

    let post = http.post(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD, PUT, DELETE");
    assert_eq!(post.json::<Value>().await.unwrap()["error"]["code"], "method_not_allowed");
}
