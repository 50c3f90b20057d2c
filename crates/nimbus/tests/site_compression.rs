//! Compressed site files end to end: `nimbus site deploy` and `[site] dir` store brotli and gzip
//! variants of compressible files, requests choose by `Accept-Encoding` (RFC 9110 §12.5.3), each
//! variant is a representation of its own (ETag, ranges, 304s), and rollbacks, hot fixes and
//! precompressed files of the folder keep working. Bodies are checked by decoding them with the
//! `brotli` and `gzip` tools (`scripts/test.sh` installs them).

mod support;

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::{App, Node, admin_token};

/// Text that compresses well, `n` paragraphs of it.
fn text(n: usize, word: &str) -> String {
    (0..n).map(|i| format!("<p>{word} paragraph {i}: the quick brown fox jumps over the lazy dog.</p>\n")).collect()
}

/// Bytes that do not compress (xorshift).
fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn decode(tool: &str, bytes: &[u8]) -> Vec<u8> {
    let mut child = Command::new(tool)
        .args(["-d", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool} is missing ({e}): run scripts/test.sh, which installs it"));
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{tool} could not decode {} bytes", bytes.len());
    out.stdout
}

async fn get(node: &Node, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(node.url(path));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

fn site_cli(app: &App, args: &[&str]) -> String {
    let mut all = vec!["site", "--app", app.path().to_str().unwrap()];
    all.extend_from_slice(args);
    let out = support::nimbus(&all);
    assert!(out.status.success(), "nimbus {all:?}: {}", support::text(&out.stderr));
    support::text(&out.stdout)
}

/// The node caches `$web` lookups for a second; wait it out before looking at a switched site.
async fn settle() {
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
}

/// The decoded body of `path` in `coding` (`None`: identity).
async fn body_in(node: &Node, path: &str, coding: Option<&str>) -> String {
    let r = get(node, path, &[("accept-encoding", coding.unwrap_or("identity"))]).await;
    assert_eq!(header(&r, "content-encoding").as_deref(), coding, "{path}");
    let bytes = r.bytes().await.unwrap().to_vec();
    let decoded = match coding {
        Some("br") => decode("brotli", &bytes),
        Some("gzip") => decode("gzip", &bytes),
        _ => bytes,
    };
    String::from_utf8(decoded).unwrap()
}

#[tokio::test]
async fn deploys_store_variants_and_requests_choose_them_by_accept_encoding() {
    let app = App::new(None);
    let node = app.start(&[]);
    let site = app.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    let page = text(60, "home");
    std::fs::write(site.join("index.html"), &page).unwrap();
    std::fs::write(site.join("small.css"), "body { color: red }").unwrap();
    std::fs::write(site.join("random.txt"), noise(4000)).unwrap();
    std::fs::write(site.join("photo.jpg"), noise(4000)).unwrap();
    let out = site_cli(&app, &["deploy", site.to_str().unwrap()]);
    assert!(out.contains("4 uploaded"), "variants are not counted as files: {out}");
    settle().await;

    // q-values, brotli first at an equal q, exclusions, identity.
    for (accept, coding) in [
        ("gzip, deflate, br", Some("br")),
        ("br;q=0.8, gzip;q=0.8", Some("br")),
        ("br;q=0.5, gzip;q=0.8", Some("gzip")),
        ("br;q=0, gzip", Some("gzip")),
        ("gzip, identity;q=0", Some("gzip")),
        ("*", Some("br")),
        ("gzip;q=0.5, identity", None),
        ("identity", None),
        ("", None),
    ] {
        let r = get(&node, "/", &[("accept-encoding", accept)]).await;
        assert_eq!((r.status().as_u16(), header(&r, "content-encoding").as_deref()), (200, coding), "{accept:?}");
        assert_eq!(header(&r, "vary").as_deref(), Some("accept-encoding"), "{accept:?}");
        assert_eq!(header(&r, "content-type").as_deref(), Some("text/html"), "{accept:?}");
    }
    assert_eq!(body_in(&node, "/", Some("br")).await, page);
    assert_eq!(body_in(&node, "/", Some("gzip")).await, page);
    assert_eq!(body_in(&node, "/", None).await, page);

    // Nothing to choose for small, incompressible or binary files: no variant, no Vary.
    for path in ["/small.css", "/random.txt", "/photo.jpg"] {
        let r = get(&node, path, &[("accept-encoding", "br, gzip")]).await;
        assert_eq!(header(&r, "content-encoding"), None, "{path}");
        assert_eq!(header(&r, "vary"), None, "{path}");
        assert_eq!(get(&node, &format!("{path}.br"), &[]).await.status(), 404, "{path}");
    }

    // Each representation has its own strong ETag, and conditional requests use it.
    let etag = |coding: &'static str| {
        let node = &node;
        async move { header(&get(node, "/", &[("accept-encoding", coding)]).await, "etag").unwrap() }
    };
    let (br, gz, plain) = (etag("br").await, etag("gzip").await, etag("identity").await);
    assert!(br != gz && gz != plain && br != plain, "{br} {gz} {plain}");
    let r = get(&node, "/", &[("accept-encoding", "gzip"), ("if-none-match", &gz)]).await;
    assert_eq!(r.status(), 304);
    assert_eq!(header(&r, "etag"), Some(gz.clone()));
    assert_eq!(header(&r, "vary").as_deref(), Some("accept-encoding"), "RFC 9110 §15.4.5");
    let r = get(&node, "/", &[("accept-encoding", "br"), ("if-none-match", &gz)]).await;
    assert_eq!((r.status().as_u16(), header(&r, "content-encoding").as_deref()), (200, Some("br")));
    let r = get(&node, "/", &[("accept-encoding", "br"), ("if-match", &plain)]).await;
    assert_eq!(r.status(), 412, "the identity tag is another representation's");

    // Ranges apply to the representation sent.
    let whole = get(&node, "/", &[("accept-encoding", "br")]).await.bytes().await.unwrap();
    let r = get(&node, "/", &[("accept-encoding", "br"), ("range", "bytes=0-9")]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-encoding").as_deref(), Some("br"));
    assert_eq!(header(&r, "content-range"), Some(format!("bytes 0-9/{}", whole.len())));
    assert_eq!(r.bytes().await.unwrap(), whole.slice(0..10));
    let r = get(&node, "/", &[("accept-encoding", "br"), ("range", "bytes=0-9"), ("if-range", &br)]).await;
    assert_eq!(r.status(), 206);
    let r = get(&node, "/", &[("accept-encoding", "br"), ("range", "bytes=0-9"), ("if-range", &plain)]).await;
    assert_eq!(r.status(), 200, "If-Range with another representation's tag: the whole");

    // HEAD answers the GET's headers without the body.
    let http = reqwest::Client::new();
    let head = http.head(node.url("/")).header("accept-encoding", "br").send().await.unwrap();
    let got = get(&node, "/", &[("accept-encoding", "br")]).await;
    for name in ["content-encoding", "content-length", "etag", "vary", "content-type", "last-modified"] {
        assert_eq!(header(&head, name), header(&got, name), "{name}");
    }
    assert!(head.bytes().await.unwrap().is_empty());

    // The deploy lists its files, not the variants.
    let listed: Value = serde_json::from_str(&site_cli(&app, &["--json", "list"])).unwrap();
    assert_eq!(listed[0]["files"], 4);
}

#[tokio::test]
async fn variants_follow_rollbacks_and_never_outlive_a_hot_fix() {
    let app = App::new(None);
    let node = app.start(&[]);
    let deploy = |name: &str, word: &str| {
        let dir = app.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), text(40, word)).unwrap();
        site_cli(&app, &["deploy", dir.to_str().unwrap(), "--prune"])
    };
    deploy("v1", "first");
    deploy("v2", "second");
    settle().await;
    assert_eq!(body_in(&node, "/", Some("br")).await, text(40, "second"));
    let again = deploy("v2", "second");
    assert!(again.contains("Nothing changed"), "an unchanged file keeps its variants: {again}");

    let out = site_cli(&app, &["rollback"]);
    assert!(out.contains("deploy 1 is live"), "{out}");
    settle().await;
    assert_eq!(body_in(&node, "/", Some("br")).await, text(40, "first"));
    assert_eq!(body_in(&node, "/", Some("gzip")).await, text(40, "first"));

    // A hot fix through the API replaces the file: its old variants are not served for it.
    let token = admin_token(&app);
    let put = reqwest::Client::new()
        .put(node.url("/_nimbus/blob/$web/index.html"))
        .bearer_auth(&token)
        .header("content-type", "text/html")
        .body(text(40, "hot fix"))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    settle().await;
    let r = get(&node, "/", &[("accept-encoding", "br, gzip")]).await;
    assert_eq!(header(&r, "content-encoding"), None);
    assert_eq!(r.text().await.unwrap(), text(40, "hot fix"));
}

#[tokio::test]
async fn the_site_folder_is_published_with_variants_and_its_own_precompressed_files_win() {
    let app = App::new(Some("[site]\ndir = \"web\"\n"));
    let web = app.path().join("web");
    std::fs::create_dir_all(&web).unwrap();
    std::fs::write(web.join("app.js"), text(50, "script")).unwrap();
    // A precompressed file of the folder stands for its coding (its bytes are served as they are).
    let own_gzip = b"\x1f\x8bthe folder's own gzip".to_vec();
    std::fs::write(web.join("app.js.gz"), &own_gzip).unwrap();
    let node = app.start(&[]);
    assert_eq!(body_in(&node, "/app.js", Some("br")).await, text(50, "script"));
    let r = get(&node, "/app.js", &[("accept-encoding", "gzip")]).await;
    assert_eq!(header(&r, "content-encoding").as_deref(), Some("gzip"));
    assert_eq!(r.bytes().await.unwrap().to_vec(), own_gzip);
}

#[tokio::test]
async fn compression_can_be_turned_off_for_a_deploy() {
    let app = App::new(None);
    let node = app.start(&[]);
    let dir = app.path().join("site");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), text(40, "plain")).unwrap();
    let out = support::command()
        .env("NIMBUS_SITE_COMPRESS", "off")
        .args(["site", "--app", app.path().to_str().unwrap(), "deploy", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support::text(&out.stderr));
    settle().await;
    let r = get(&node, "/", &[("accept-encoding", "br, gzip")]).await;
    assert_eq!(header(&r, "content-encoding"), None);
    assert_eq!(header(&r, "vary"), None);
}
