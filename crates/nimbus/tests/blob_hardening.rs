//! Attacks on the blob API from the hardening review, performed through the real binary: each is
//! refused or contained. Uploaded script cannot run on the app's origin; uploads are bounded
//! (`[blob] max_object_size`, a signed PUT's `maxSize`), streaming; a crash's orphaned bytes are
//! swept; ranges past the end mean the end; signed URLs never follow a forged `Host`.

mod support;

use std::io::{Read as _, Write as _};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use support::{App, Node, admin_token};

/// Sends a request head (request line and headers, without the blank line) and `body` as raw
/// bytes on a fresh connection that closes after the answer; answers the status and the answer
/// as text.
fn raw(node: &Node, head: &str, body: &[u8]) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(node.url.trim_start_matches("http://")).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(stream, "{head}\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    (answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0), answer)
}

/// `size` bytes in chunked transfer coding, in 64 KiB chunks; `end` adds the last chunk.
fn chunked(size: usize, end: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut left = size;
    while left > 0 {
        let n = left.min(64 * 1024);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend(std::iter::repeat_n(b'z', n));
        out.extend_from_slice(b"\r\n");
        left -= n;
    }
    if end {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    out
}

/// The files in the local backend's byte store.
fn data_files(app: &App) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(app.data_dir().join("blobs/data"))
        .map(|d| d.map(|e| e.unwrap().file_name().into_string().unwrap()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

async fn sign(node: &Node, token: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new().post(node.url("/_nimbus/blob/sign")).bearer_auth(token).json(&body).send().await.unwrap()
}

async fn signed_url(node: &Node, token: &str, body: Value) -> String {
    let signed = sign(node, token, body).await;
    assert_eq!(signed.status(), 200);
    signed.json::<Value>().await.unwrap()["url"].as_str().unwrap().to_owned()
}

/// A signed PUT of HTML with a script, read back by a signed GET on the app's own origin: served
/// sandboxed, unsniffed and as an attachment, so the script never runs beside `/account/*`. Passive
/// types stay inline (sandboxed too); a web container's pages are inline; the site is as it was.
#[tokio::test]
async fn uploaded_script_cannot_run_on_the_apps_origin() {
    let app = App::new(Some("[blob]\nweb_containers = [\"pages\"]\n\n[site]\ndir = \"web\"\n"));
    std::fs::create_dir_all(app.path().join("web")).unwrap();
    std::fs::write(app.path().join("web/index.html"), "<h1>home</h1><script>app()</script>").unwrap();
    let node = app.start(&[]);
    let token = admin_token(&app);
    let http = reqwest::Client::new();
    let evil = "<script>fetch('/account/', {credentials: 'include'}).then(steal)</script>";

    let put = signed_url(
        &node,
        &token,
        json!({"container": "uploads", "key": "evil.html", "method": "PUT", "expiresIn": 60}),
    )
    .await;
    let uploaded = http.put(&put).header("content-type", "text/html").body(evil).send().await.unwrap();
    assert_eq!(uploaded.status(), 201);
    let get = signed_url(
        &node,
        &token,
        json!({"container": "uploads", "key": "evil.html", "method": "GET", "expiresIn": 60}),
    )
    .await;
    let contained = |r: &reqwest::Response, what: &str| {
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(r.headers()["content-security-policy"], "sandbox", "{what}");
    };
    for response in [
        http.get(&get).send().await.unwrap(),
        http.head(&get).send().await.unwrap(),
        http.get(node.url("/_nimbus/blob/uploads/evil.html")).bearer_auth(&token).send().await.unwrap(),
    ] {
        assert_eq!(response.status(), 200);
        contained(&response, "evil.html");
        assert_eq!(
            response.headers()["content-disposition"],
            "attachment; filename=\"evil.html\"; filename*=UTF-8''evil.html"
        );
    }

    // SVG runs script too; a type guessed from the key (no Content-Type sent) counts the same; a
    // name that would break the header is made safe.
    let admin_put = |key: &'static str, content_type: Option<&'static str>, body: &'static str| {
        let mut request = http.put(node.url(&format!("/_nimbus/blob/{key}"))).bearer_auth(&token).body(body);
        if let Some(t) = content_type {
            request = request.header("content-type", t);
        }
        request.send()
    };
    let admin_get = |key: &'static str| http.get(node.url(&format!("/_nimbus/blob/{key}"))).bearer_auth(&token).send();
    admin_put("uploads/logo.svg", Some("image/svg+xml"), "<svg onload='steal()'/>").await.unwrap();
    admin_put("uploads/guessed.xhtml", None, "<html/>").await.unwrap();
    admin_put("uploads/a%22b%3B%20c.html", Some("text/html"), "x").await.unwrap();
    for key in ["uploads/logo.svg", "uploads/guessed.xhtml"] {
        let r = admin_get(key).await.unwrap();
        contained(&r, key);
        assert!(r.headers()["content-disposition"].to_str().unwrap().starts_with("attachment;"), "{key}");
    }
    let r = admin_get("uploads/a%22b%3B%20c.html").await.unwrap();
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"a_b__c.html\"; filename*=UTF-8''a%22b%3B%20c.html"
    );

    // Passive types stay inline, sandboxed all the same.
    admin_put("uploads/cat.png", Some("image/png"), "<html><script>x()</script>").await.unwrap();
    let r = admin_get("uploads/cat.png").await.unwrap();
    contained(&r, "cat.png");
    assert_eq!(r.headers()["content-type"], "image/png");
    assert!(r.headers().get("content-disposition").is_none());

    // A declared web container's pages render inline, still in the sandbox.
    admin_put("pages/doc.html", Some("text/html"), "<h1>doc</h1>").await.unwrap();
    let r = admin_get("pages/doc.html").await.unwrap();
    contained(&r, "pages/doc.html");
    assert!(r.headers().get("content-disposition").is_none());

    // The site ($web at /) is served as before: its own pages, scripts and all.
    let home = http.get(node.url("/")).send().await.unwrap();
    assert_eq!(home.headers()["content-type"], "text/html");
    assert!(home.headers().get("content-security-policy").is_none());
    assert!(home.headers().get("content-disposition").is_none());
}

/// Uploads are bounded: a declared length over `[blob] max_object_size` is refused before a byte
/// is read, a chunked upload that passes it is stopped there and leaves no bytes (past 5 MiB too,
/// where it goes in parts), and a signed PUT carries its own bound, which cannot be edited off.
#[tokio::test]
async fn uploads_are_bounded_and_leave_nothing_when_refused() {
    let app = App::new(Some("[blob]\nmax_object_size = \"6MiB\"\n"));
    let node = app.start(&[]);
    let token = admin_token(&app);
    let limit = 6 * 1024 * 1024;
    let put = |key: &str, extra: &str| {
        format!("PUT /_nimbus/blob/uploads/{key} HTTP/1.1\r\nauthorization: Bearer {token}{extra}")
    };

    let (status, answer) = raw(&node, &put("declared.bin", &format!("\r\ncontent-length: {}", limit + 1)), b"");
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("\"payload_too_large\""), "{answer}");

    let (status, answer) =
        raw(&node, &put("chunked.bin", "\r\ntransfer-encoding: chunked"), &chunked(limit + 1, false));
    assert_eq!(status, 413, "{answer}");
    assert_eq!(data_files(&app), Vec::<String>::new(), "the parts written before the limit are gone");
    let missing = reqwest::Client::new().get(node.url("/_nimbus/blob/uploads/chunked.bin")).bearer_auth(&token).send();
    assert_eq!(missing.await.unwrap().status(), 404);

    let (status, answer) = raw(&node, &put("exact.bin", "\r\ntransfer-encoding: chunked"), &chunked(limit, true));
    assert_eq!(status, 201, "{answer}");
    assert_eq!(data_files(&app).len(), 1);

    // A signed PUT with a bound of its own.
    let http = reqwest::Client::new();
    let url = signed_url(
        &node,
        &token,
        json!({"container": "uploads", "key": "avatar.png", "method": "PUT", "expiresIn": "5m", "maxSize": 10}),
    )
    .await;
    assert!(url.contains("maxsize=10&"), "{url}");
    let over = http.put(&url).body("01234567890").send().await.unwrap();
    assert_eq!(over.status(), 413);
    assert_eq!(over.json::<Value>().await.unwrap()["error"]["code"], "payload_too_large");
    for edited in [url.replace("maxsize=10", "maxsize=10000000"), url.replace("maxsize=10&", "")] {
        let refused = http.put(&edited).body("01234567890").send().await.unwrap();
        assert_eq!(refused.status(), 403, "{edited}");
        assert_eq!(refused.json::<Value>().await.unwrap()["error"]["code"], "invalid_signature");
    }
    assert_eq!(http.put(&url).body("0123456789").send().await.unwrap().status(), 201);
    let (status, _) = raw(
        &node,
        &format!("PUT {} HTTP/1.1\r\ntransfer-encoding: chunked", url.trim_start_matches(&node.url)),
        &chunked(11, true),
    );
    assert_eq!(status, 413, "a chunked signed PUT is bounded too");
    let sized = sign(
        &node,
        &token,
        json!({"container": "uploads", "key": "a", "method": "PUT", "expiresIn": 60, "maxSize": "1KB"}),
    )
    .await;
    assert_eq!(sized.status(), 200);
    for bad in [
        json!({"method": "GET", "maxSize": 10}),
        json!({"method": "PUT", "maxSize": 0}),
        json!({"method": "PUT", "maxSize": "ten"}),
    ] {
        let mut body = json!({"container": "uploads", "key": "a", "expiresIn": 60});
        body.as_object_mut().unwrap().extend(bad.as_object().unwrap().clone());
        let refused = sign(&node, &token, body.clone()).await;
        assert_eq!(refused.status(), 400, "{body}");
    }

    // Without [blob], the default (5 GB) holds.
    let plain = App::new(None);
    let node = plain.start(&[]);
    let token = admin_token(&plain);
    let head = format!(
        "PUT /_nimbus/blob/uploads/huge.bin HTTP/1.1\r\nauthorization: Bearer {token}\r\ncontent-length: 5000000001"
    );
    assert_eq!(raw(&node, &head, b"").0, 413);
}

/// A node killed mid-upload leaves the upload's bytes behind, and so does a crash between an
/// upload and its record; the next node sweeps those once they are old, and never the bytes a
/// record or a kept deploy refers to, nor young ones (an upload whose record is still to come).
#[tokio::test]
async fn a_crash_leaves_orphaned_bytes_that_the_sweep_removes() {
    let app = App::new(None);
    let dir = app.path().to_str().unwrap();
    let cli = |args: &[&str]| {
        let out = support::nimbus(args);
        assert!(out.status.success(), "nimbus {args:?}: {}", support::text(&out.stderr));
    };
    let file = app.path().join("report.txt");
    std::fs::write(&file, "kept: a record refers to it").unwrap();
    cli(&["blob", "--app", dir, "put", file.to_str().unwrap(), "uploads/report.txt"]);
    for (version, page) in [("v1", "one"), ("v2", "two")] {
        let site = app.path().join(version);
        std::fs::create_dir_all(&site).unwrap();
        std::fs::write(site.join("index.html"), page).unwrap();
        cli(&["site", "--app", dir, "deploy", site.to_str().unwrap(), "--prune"]);
    }
    let referenced = data_files(&app);
    assert_eq!(referenced.len(), 3, "the report, and each deploy's page (deploy 1 kept for rollback)");

    // An upload in parts, cut off by SIGKILL: its staging file stays.
    let mut node = app.start(&[]);
    let mut stream = std::net::TcpStream::connect(node.url.trim_start_matches("http://")).unwrap();
    let token = admin_token(&app);
    write!(stream, "PUT /_nimbus/blob/uploads/big.bin HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 20000000\r\n\r\n").unwrap();
    stream.write_all(&vec![7u8; 11 * 1024 * 1024]).unwrap();
    support::wait_until("the upload writes its first part", Duration::from_secs(10), async || {
        data_files(&app).iter().any(|f| f.contains('#'))
    })
    .await;
    node.signal_and_wait("KILL", Duration::from_secs(10));
    drop(stream);
    let staging: Vec<String> = data_files(&app).into_iter().filter(|f| f.contains('#')).collect();
    assert_eq!(staging.len(), 1, "{:?}", data_files(&app));

    // Bytes whose record never came (a crash between the two), and young bytes of the same kind.
    let data = app.data_dir().join("blobs/data");
    std::fs::write(data.join("0123456789abcdef0123456789abcdef"), "orphan").unwrap();
    std::fs::write(data.join("fedcba9876543210fedcba9876543210"), "young").unwrap();
    let two_days_ago = SystemTime::now() - Duration::from_secs(48 * 3600);
    for name in data_files(&app).iter().filter(|n| !n.starts_with("fedcba")) {
        std::fs::File::options().write(true).open(data.join(name)).unwrap().set_modified(two_days_ago).unwrap();
    }

    let node = app.start(&[]);
    node.wait_for_log(|l| l.contains("orphaned blob bytes swept"), Duration::from_secs(10));
    assert!(node.stderr().contains("deleted=2"), "{}", node.stderr());
    let mut expected = referenced.clone();
    expected.push("fedcba9876543210fedcba9876543210".into());
    expected.sort();
    assert_eq!(data_files(&app), expected);

    let http = reqwest::Client::new();
    let report = http.get(node.url("/_nimbus/blob/uploads/report.txt")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(report.text().await.unwrap(), "kept: a record refers to it");
    assert_eq!(http.get(node.url("/")).send().await.unwrap().text().await.unwrap(), "two");
    cli(&["site", "--app", dir, "rollback"]);
    tokio::time::sleep(Duration::from_millis(1100)).await; // the site caches lookups for a second
    assert_eq!(
        http.get(node.url("/")).send().await.unwrap().text().await.unwrap(),
        "one",
        "deploy 1's bytes were kept"
    );
}

/// RFC 9110 §14.1.2: a last position past the end (even past what 64 bits hold) means the end;
/// a first position past the end is unsatisfiable, and the 416 says the length.
#[tokio::test]
async fn ranges_past_the_end_mean_the_end() {
    let app = App::new(Some("[site]\ndir = \"web\"\n"));
    std::fs::create_dir_all(app.path().join("web")).unwrap();
    std::fs::write(app.path().join("web/index.html"), "hello world").unwrap();
    let node = app.start(&[]);
    let token = admin_token(&app);
    let http = reqwest::Client::new();
    let put = http.put(node.url("/_nimbus/blob/uploads/r.txt")).bearer_auth(&token).body("hello world").send();
    assert_eq!(put.await.unwrap().status(), 201);
    let get =
        signed_url(&node, &token, json!({"container": "uploads", "key": "r.txt", "method": "GET", "expiresIn": 60}))
            .await;

    for url in [node.url("/_nimbus/blob/uploads/r.txt"), get, node.url("/")] {
        for range in ["bytes=0-18446744073709551615", "bytes=0-99999999999999999999999", "bytes=-99999999999999999999"]
        {
            let r = http.get(&url).bearer_auth(&token).header("range", range).send().await.unwrap();
            assert_eq!(r.status(), 206, "{url} {range}");
            assert_eq!(r.headers()["content-range"], "bytes 0-10/11", "{url} {range}");
            assert_eq!(r.text().await.unwrap(), "hello world");
        }
        let r =
            http.get(&url).bearer_auth(&token).header("range", "bytes=6-18446744073709551615").send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (206, "world".to_owned()), "{url}");
        for range in ["bytes=18446744073709551615-", "bytes=99999999999999999999-"] {
            let r = http.get(&url).bearer_auth(&token).header("range", range).send().await.unwrap();
            assert_eq!(r.status(), 416, "{url} {range}");
            assert_eq!(r.headers()["content-range"], "bytes */11", "{url} {range}");
        }
    }
}

/// A signed URL names the node's public URL: a forged `Host` (or `X-Forwarded-*`) on the signing
/// request does not point it elsewhere; with `[identity] issuer`, that is the public URL.
#[tokio::test]
async fn signed_urls_never_follow_a_forged_host() {
    let forged = |node: &Node, token: &str| {
        reqwest::Client::new()
            .post(node.url("/_nimbus/blob/sign"))
            .bearer_auth(token)
            .header("host", "evil.example")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example")
            .json(&json!({"container": "uploads", "key": "a.txt", "method": "PUT", "expiresIn": 60}))
            .send()
    };
    let app = App::new(None);
    let node = app.start(&[]);
    let signed: Value = forged(&node, &admin_token(&app)).await.unwrap().json().await.unwrap();
    let url = signed["url"].as_str().unwrap();
    assert!(url.starts_with(&node.url("/_nimbus/blob/uploads/a.txt?")), "{url}");
    assert_eq!(reqwest::Client::new().put(url).body("mine").send().await.unwrap().status(), 201);

    let app = App::new(Some("[identity]\nissuer = \"https://files.example.com/\"\n"));
    let node = app.start(&[]);
    let signed: Value = forged(&node, &admin_token(&app)).await.unwrap().json().await.unwrap();
    let url = signed["url"].as_str().unwrap();
    assert!(url.starts_with("https://files.example.com/_nimbus/blob/uploads/a.txt?exp="), "{url}");
    assert_eq!(format!("https://files.example.com{}", signed["path"].as_str().unwrap()), url);
}
