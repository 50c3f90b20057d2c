//! Blobs on cloud backends, against real servers: `[store] blobs = "s3://…"` on moto's S3 server
//! and `"az://…"` on Azurite. scripts/test.sh starts both and exports their endpoints
//! (`NIMBUS_TEST_S3_ENDPOINT`, `NIMBUS_TEST_AZURITE_ENDPOINT`); without them these tests fail,
//! they never skip. Every test makes its own bucket or container, so they run in parallel.
//!
//! The same scenarios run on both: the REST API (put, get, head, delete, ranges, listing with
//! prefix, delimiter and continuation), a 12 MB object (a multipart upload), the `$web` site, a
//! prefix in the URL (checked by listing the bucket directly; the orphan sweep lists it too), an
//! upload cut off midway, and a missing bucket stopping the start with a reason that names
//! `[store] blobs`.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use base64::Engine as _;
use serde_json::Value;
use support::{App, Node, admin_token};

#[derive(Clone, Copy)]
enum Kind {
    S3,
    Azure,
}

/// Azurite's well-known development account.
const AZ_ACCOUNT: &str = "devstoreaccount1";
const AZ_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const AZ_VERSION: &str = "2021-08-06";

/// A fresh bucket (S3) or container (Azure) on the test server.
struct Remote {
    kind: Kind,
    endpoint: String,
    bucket: String,
}

impl Remote {
    async fn new(kind: Kind) -> Self {
        let remote = Self::unmade(kind);
        let response = match kind {
            // moto creates buckets for anonymous requests.
            Kind::S3 => reqwest::Client::new().put(format!("{}/{}", remote.endpoint, remote.bucket)).send().await,
            Kind::Azure => remote.azure(reqwest::Method::PUT, &[("restype", "container")]).send().await,
        };
        let response = response.expect("the test server answers");
        assert!(response.status().is_success(), "cannot create {}: {}", remote.bucket, response.text().await.unwrap());
        remote
    }

    /// A name no other test uses, not created.
    fn unmade(kind: Kind) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let var = match kind {
            Kind::S3 => "NIMBUS_TEST_S3_ENDPOINT",
            Kind::Azure => "NIMBUS_TEST_AZURITE_ENDPOINT",
        };
        let endpoint = std::env::var(var).unwrap_or_else(|_| {
            panic!(
                "{var} is not set: run the tests with scripts/test.sh, which starts moto's S3 server and \
                 Azurite and exports their endpoints"
            )
        });
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let bucket = format!("t{}-{nanos}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        Self { kind, endpoint: endpoint.trim_end_matches('/').to_owned(), bucket }
    }

    /// `[store] blobs` for this bucket, with `prefix` when not empty.
    fn url(&self, prefix: &str) -> String {
        let scheme = match self.kind {
            Kind::S3 => "s3",
            Kind::Azure => "az",
        };
        match prefix {
            "" => format!("{scheme}://{}", self.bucket),
            _ => format!("{scheme}://{}/{prefix}", self.bucket),
        }
    }

    /// `nimbus` with the credentials and endpoint of the test server, and nothing else of the
    /// caller's cloud settings.
    fn command(&self) -> Command {
        let mut cmd = support::command();
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("AWS_") || key.starts_with("AZURE_") || key.starts_with("AZURITE_") {
                cmd.env_remove(&*key);
            }
        }
        match self.kind {
            Kind::S3 => cmd
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ENDPOINT_URL", &self.endpoint)
                .env("AWS_ALLOW_HTTP", "true"),
            // As for a real account, with the endpoint of Azurite's path-style URLs.
            Kind::Azure => cmd
                .env("AZURE_STORAGE_ACCOUNT_NAME", AZ_ACCOUNT)
                .env("AZURE_STORAGE_ACCOUNT_KEY", AZ_KEY)
                .env("AZURE_STORAGE_ENDPOINT", format!("{}/{AZ_ACCOUNT}", self.endpoint))
                .env("AZURE_ALLOW_HTTP", "true"),
        };
        cmd
    }

    fn start(&self, app: &App) -> Node {
        Node::start_with(self.command(), app.path(), &[])
    }

    /// Every key in the bucket, read from the server directly.
    async fn keys(&self) -> Vec<String> {
        let body = match self.kind {
            Kind::S3 => {
                reqwest::Client::new().get(format!("{}/{}?list-type=2", self.endpoint, self.bucket)).send().await
            }
            Kind::Azure => self.azure(reqwest::Method::GET, &[("comp", "list"), ("restype", "container")]).send().await,
        };
        let body = body.unwrap().error_for_status().unwrap().text().await.unwrap();
        let tag = match self.kind {
            Kind::S3 => "Key",
            Kind::Azure => "Name",
        };
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        body.split(&open).skip(1).filter_map(|s| s.split_once(&close)).map(|(k, _)| k.to_owned()).collect()
    }

    /// A request on the container signed with Azurite's account key (SharedKey).
    fn azure(&self, method: reqwest::Method, query: &[(&str, &str)]) -> reqwest::RequestBuilder {
        let date = http_date(std::time::SystemTime::now());
        let mut resource = format!("/{AZ_ACCOUNT}/{AZ_ACCOUNT}/{}", self.bucket);
        for (k, v) in query {
            resource.push_str(&format!("\n{k}:{v}"));
        }
        // VERB, then eleven standard headers (all empty here), then the x-ms- headers and the resource.
        let text = format!("{method}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{AZ_VERSION}\n{resource}");
        let key = jsonwebtoken::EncodingKey::from_base64_secret(AZ_KEY).unwrap();
        let mac = jsonwebtoken::crypto::sign(text.as_bytes(), &key, jsonwebtoken::Algorithm::HS256).unwrap();
        let mac = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(mac).unwrap();
        let signature = base64::engine::general_purpose::STANDARD.encode(mac);
        let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        reqwest::Client::new()
            .request(method, format!("{}/{AZ_ACCOUNT}/{}?{}", self.endpoint, self.bucket, query.join("&")))
            .header("x-ms-date", date)
            .header("x-ms-version", AZ_VERSION)
            .header("authorization", format!("SharedKey {AZ_ACCOUNT}:{signature}"))
    }
}

/// RFC 1123, as `x-ms-date` wants it.
fn http_date(at: std::time::SystemTime) -> String {
    let secs = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let (days, rest) = ((secs / 86400) as i64, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let month =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][month as usize - 1];
    format!("{weekday}, {day:02} {month} {year} {:02}:{:02}:{:02} GMT", rest / 3600, rest / 60 % 60, rest % 60)
}

fn app_on(remote: &Remote, prefix: &str, extra: &str) -> App {
    App::new(Some(&format!("{extra}[store]\nblobs = \"{}\"\n", remote.url(prefix))))
}

struct Api<'a> {
    node: &'a Node,
    token: String,
    http: reqwest::Client,
}

impl Api<'_> {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.node.url(&format!("/_nimbus/blob/{path}"))).bearer_auth(&self.token)
    }

    async fn put(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        let response = self.request(reqwest::Method::PUT, path).body(body).send().await.unwrap();
        assert_eq!(response.status(), 201, "PUT {path}");
        response
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, path).send().await.unwrap()
    }

    async fn json(&self, path: &str) -> Value {
        self.get(path).await.json().await.unwrap()
    }
}

/// Put, get, head, ranges, listing and delete through the REST API; the bytes in the bucket.
async fn objects_through_the_api(kind: Kind) {
    let remote = Remote::new(kind).await;
    let app = app_on(&remote, "", "");
    let node = remote.start(&app);
    let api = Api { node: &node, token: admin_token(&app), http: reqwest::Client::new() };

    let created: Value = api
        .request(reqwest::Method::PUT, "uploads/docs/a.txt")
        .header("content-type", "text/plain")
        .header("x-nimbus-meta-owner", "ada")
        .body("alpha and omega")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((created["size"].as_u64(), created["content_type"].as_str()), (Some(15), Some("text/plain")));
    api.put("uploads/docs/b.txt", "beta").await;
    api.put("uploads/docs/deep/c.txt", "gamma").await;
    api.put("uploads/top.txt", "top").await;
    api.put("uploads/empty.txt", "").await;
    assert_eq!(remote.keys().await.len(), 5, "one object in the bucket per blob");

    let got = api.get("uploads/docs/a.txt").await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "text/plain");
    assert_eq!(got.headers()["x-nimbus-meta-owner"], "ada");
    assert_eq!(got.text().await.unwrap(), "alpha and omega");
    assert_eq!(api.get("uploads/empty.txt").await.text().await.unwrap(), "");

    let head = api.request(reqwest::Method::HEAD, "uploads/docs/a.txt").send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "15");
    assert_eq!(head.headers()["etag"], format!("\"{}\"", created["etag"].as_str().unwrap()));

    let part =
        api.request(reqwest::Method::GET, "uploads/docs/a.txt").header("range", "bytes=6-8").send().await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 6-8/15");
    assert_eq!(part.text().await.unwrap(), "and");
    let tail =
        api.request(reqwest::Method::GET, "uploads/docs/a.txt").header("range", "bytes=-5").send().await.unwrap();
    assert_eq!((tail.status().as_u16(), tail.text().await.unwrap()), (206, "omega".to_owned()));
    let beyond =
        api.request(reqwest::Method::GET, "uploads/docs/a.txt").header("range", "bytes=15-").send().await.unwrap();
    assert_eq!(beyond.status(), 416);

    let top = api.json("uploads?delimiter=/").await;
    assert_eq!(top["prefixes"], serde_json::json!(["docs/"]));
    let names: Vec<&str> = top["objects"].as_array().unwrap().iter().map(|o| o["key"].as_str().unwrap()).collect();
    assert_eq!(names, ["empty.txt", "top.txt"]);
    let docs = api.json("uploads?prefix=docs/&delimiter=/").await;
    assert_eq!(docs["prefixes"], serde_json::json!(["docs/deep/"]));
    assert_eq!(docs["objects"].as_array().unwrap().len(), 2);
    let page = api.json("uploads?prefix=docs/&max=2").await;
    let first: Vec<&str> = page["objects"].as_array().unwrap().iter().map(|o| o["key"].as_str().unwrap()).collect();
    assert_eq!(first, ["docs/a.txt", "docs/b.txt"]);
    let next = page["continuation"].as_str().expect("a continuation after a full page");
    let rest = api.json(&format!("uploads?prefix=docs/&max=2&continuation={next}")).await;
    assert_eq!(rest["objects"][0]["key"], "docs/deep/c.txt");
    assert!(rest["continuation"].is_null(), "{rest}");

    // A replaced object's old bytes and a deleted object's bytes leave the bucket.
    api.put("uploads/top.txt", "top, again").await;
    assert_eq!(api.get("uploads/top.txt").await.text().await.unwrap(), "top, again");
    let deleted = api.request(reqwest::Method::DELETE, "uploads/docs/b.txt").send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(api.get("uploads/docs/b.txt").await.status(), 404);
    assert_eq!(remote.keys().await.len(), 4, "replaced and deleted bytes are gone: {:?}", remote.keys().await);
}

/// 12 MB goes up as a multipart upload (parts of 5 MiB, S3's minimum) and comes back byte-exact,
/// whole and in a range that crosses a part boundary.
async fn a_large_object_round_trips(kind: Kind) {
    let remote = Remote::new(kind).await;
    let app = app_on(&remote, "", "");
    let node = remote.start(&app);
    let api = Api { node: &node, token: admin_token(&app), http: reqwest::Client::new() };
    let data: Vec<u8> = (0..12_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();

    let started = std::time::Instant::now();
    let info: Value = api.put("big/blob.bin", data.clone()).await.json().await.unwrap();
    assert_eq!(info["size"], 12_000_000);
    let got = api.get("big/blob.bin").await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-length"], "12000000");
    let body = got.bytes().await.unwrap();
    assert!(body[..] == data[..], "the 12 MB object comes back byte-exact");
    let boundary = 5 * 1024 * 1024;
    let range = format!("bytes={}-{}", boundary - 10, boundary + 9);
    let part = api.request(reqwest::Method::GET, "big/blob.bin").header("range", range).send().await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap()[..], data[boundary - 10..boundary + 10]);
    eprintln!("12 MB up and down twice in {:?}", started.elapsed());
}

/// `[site] dir` is published into `$web` on the backend and served at `/`.
async fn the_site_is_served_from_the_backend(kind: Kind) {
    let remote = Remote::new(kind).await;
    let app = app_on(&remote, "", "[site]\ndir = \"web\"\n");
    std::fs::create_dir_all(app.path().join("web/docs")).unwrap();
    std::fs::write(app.path().join("web/index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(app.path().join("web/docs/index.html"), "<h1>docs</h1>").unwrap();
    let node = remote.start(&app);
    let home = reqwest::get(node.url("/")).await.unwrap();
    assert_eq!(home.status(), 200);
    assert_eq!(home.headers()["content-type"], "text/html");
    assert_eq!(home.text().await.unwrap(), "<h1>home</h1>");
    assert_eq!(reqwest::get(node.url("/docs/")).await.unwrap().text().await.unwrap(), "<h1>docs</h1>");
    assert_eq!(remote.keys().await.len(), 2, "the pages' bytes are in the bucket");
}

/// `s3://bucket/prefix` and `az://container/prefix` keep every object under the prefix. The
/// orphan sweep of the next start lists them there, and leaves them (referenced, and young).
async fn a_prefix_keeps_objects_under_it(kind: Kind) {
    let remote = Remote::new(kind).await;
    let app = app_on(&remote, "tenants/acme", "");
    let mut node = remote.start(&app);
    let api = Api { node: &node, token: admin_token(&app), http: reqwest::Client::new() };
    api.put("uploads/a.txt", "alpha").await;
    api.put("uploads/b/c.txt", "gamma").await;
    assert_eq!(api.get("uploads/b/c.txt").await.text().await.unwrap(), "gamma");
    let keys = remote.keys().await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("tenants/acme/")), "{keys:?}");
    node.signal_and_wait("TERM", std::time::Duration::from_secs(10));
    let node = remote.start(&app);
    node.wait_for_log(|l| l.contains("orphaned blob bytes swept"), std::time::Duration::from_secs(10));
    assert!(node.stderr().contains("seen=2 deleted=0"), "{}", node.stderr());
    assert_eq!(remote.keys().await.len(), 2);
}

/// An upload cut off after two parts went up leaves no object, and no multipart upload pending
/// on S3 (Azure keeps uncommitted blocks out of sight and drops them itself).
async fn an_upload_cut_off_midway_leaves_nothing(kind: Kind) {
    use std::io::Write as _;
    let remote = Remote::new(kind).await;
    let app = app_on(&remote, "", "");
    let node = remote.start(&app);
    let token = admin_token(&app);
    let mut stream = std::net::TcpStream::connect(node.url.trim_start_matches("http://")).unwrap();
    write!(
        stream,
        "PUT /_nimbus/blob/uploads/cut.bin HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 20000000\r\n\r\n"
    )
    .unwrap();
    stream.write_all(&vec![7u8; 11 * 1024 * 1024]).unwrap();
    drop(stream);
    let api = Api { node: &node, token, http: reqwest::Client::new() };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let pending = match kind {
            Kind::S3 => {
                let uploads = reqwest::get(format!("{}/{}?uploads", remote.endpoint, remote.bucket)).await.unwrap();
                uploads.text().await.unwrap().contains("<UploadId>")
            }
            Kind::Azure => false,
        };
        if !pending && remote.keys().await.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the cut upload left bytes behind: {:?}", remote.keys().await);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(api.get("uploads/cut.bin").await.status(), 404);
}

/// A bucket that does not exist stops the start, naming the setting and the reason.
async fn a_missing_bucket_stops_the_start(kind: Kind) {
    let remote = Remote::unmade(kind);
    let app = app_on(&remote, "", "");
    let mut child = remote
        .command()
        .args(["up", &app.path().to_string_lossy(), "--port", "0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("nimbus up started on a missing bucket");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let failed = support::text(&child.wait_with_output().unwrap().stderr);
    assert!(failed.contains(&format!("[store] blobs = \"{}\"", remote.url(""))), "{failed}");
    let reason = match kind {
        Kind::S3 => "NoSuchBucket",
        Kind::Azure => "ContainerNotFound",
    };
    assert!(failed.contains(reason), "{failed}");
}

/// Each scenario as one test per backend: `scenario::s3` and `scenario::azure`.
macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn s3() {
                super::$scenario(super::Kind::S3).await
            }
            #[tokio::test]
            async fn azure() {
                super::$scenario(super::Kind::Azure).await
            }
        }
    )*};
}

on_both!(
    objects_through_the_api,
    a_large_object_round_trips,
    the_site_is_served_from_the_backend,
    a_prefix_keeps_objects_under_it,
    an_upload_cut_off_midway_leaves_nothing,
    a_missing_bucket_stops_the_start,
);
