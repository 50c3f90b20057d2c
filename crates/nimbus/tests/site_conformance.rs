//! RFC 9110 conformance of the static site, differentially against nginx: Debian's nginx serves a
//! folder (`etag on`, `gzip_static on`, `brotli_static on`), Nimbus serves the same files as its
//! `[site] dir`, and every row of [`cases`] goes to both, over raw HTTP/1.1 (no client rewrites
//! the path or decodes the body). Each row says what RFC 9110 requires; both servers must answer
//! that alike (status, Content-Range, Content-Length, Accept-Ranges, Content-Encoding, the bytes
//! or the multipart parts). Where nginx itself departs from the RFC (`nginx_departs`) or makes
//! another choice the RFC allows (`nginx_differs`), Nimbus is checked against the row alone, and
//! nginx must still answer differently (so no stale note survives). Every GET row is sent to
//! Nimbus as a HEAD too, which must answer as the GET without its body (and without `Range` and
//! `If-Range`, which are for GET only, §14.2).
//!
//! The brotli and gzip variants in nginx's folder are the bytes Nimbus made at deploy time, so
//! ranges of compressed representations compare byte for byte. Each server's own validators
//! (ETag, Last-Modified) are fetched first and substituted into the rows (`{etag}`, `{lm}`,
//! `{etag:gzip}`, …).
//!
//! nginx comes from Debian (`scripts/test.sh` installs it): without it this test fails, it never
//! skips.

mod support;

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::App;

const NGINX: &str = "/usr/sbin/nginx";
const BROTLI_MODULE: &str = "/usr/lib/nginx/modules/ngx_http_brotli_static_module.so";

/// A text file of 49 bytes.
const A_TXT: &[u8] = b"hello world, this is a test file with some bytes\n";

/// The site both servers serve.
fn files() -> Vec<(&'static str, Vec<u8>)> {
    let page: String = (0..120).map(|i| format!("<p>Paragraph {i} of a page that compresses well.</p>\n")).collect();
    // Not compressible, and larger than Nimbus keeps in memory: ranges stream from the backend.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let big: Vec<u8> = (0..300_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    vec![
        ("a.txt", A_TXT.to_vec()),
        ("empty.txt", Vec::new()),
        ("page.html", format!("<!doctype html>\n<title>page</title>\n{page}").into_bytes()),
        ("big.bin", big),
        ("docs/index.html", b"<h1>docs</h1>\n".to_vec()),
        ("a b.txt", b"space\n".to_vec()),
        ("caf\u{e9}.txt", b"cafe\n".to_vec()),
    ]
}

/// One request and what RFC 9110 requires of the answer.
struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    /// The status the RFC requires (or, where it leaves a choice, the one Nimbus documents).
    status: u16,
    /// The Content-Range of each part of a 206 (one: a single part), or of a 416.
    ranges: Vec<&'static str>,
    /// The clause.
    rfc: &'static str,
    /// Where nginx departs from the RFC: why, with the section.
    nginx_departs: Option<&'static str>,
    /// Where the RFC allows both and nginx chose otherwise than Nimbus.
    nginx_differs: Option<&'static str>,
}

impl Case {
    fn departs(mut self, why: &'static str) -> Self {
        self.nginx_departs = Some(why);
        self
    }

    fn differs(mut self, why: &'static str) -> Self {
        self.nginx_differs = Some(why);
        self
    }
}

fn case(
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &[(&'static str, &'static str)],
    status: u16,
    ranges: &[&'static str],
    rfc: &'static str,
) -> Case {
    Case {
        name,
        method,
        path,
        headers: headers.to_vec(),
        status,
        ranges: ranges.to_vec(),
        rfc,
        nginx_departs: None,
        nginx_differs: None,
    }
}

fn get(name: &'static str, path: &'static str, headers: &[(&'static str, &'static str)], status: u16) -> Case {
    case(name, "GET", path, headers, status, &[], "")
}

/// Why Nimbus answers 400 where nginx normalizes dot segments.
const DOTS: &str = "nginx removes dot segments (RFC 3986 §5.2.4); Nimbus's gateway refuses any `.` or `..` segment, \
                    encoded or not, with 400, so that no path can climb";

const PAST: &str = "Sat, 01 Jan 2000 00:00:00 GMT";
const LATER: &str = "Fri, 01 Jan 2100 00:00:00 GMT";

fn cases() -> Vec<Case> {
    let a = "/a.txt";
    let page = "/page.html";
    let big = "/big.bin";
    let r = |v| ("range", v);
    let ae = |v| ("accept-encoding", v);
    let allow = "§15.5.6: a 405 MUST carry Allow; nginx's static module sends none";
    vec![
        // §14: ranges of one representation.
        case("single range", "GET", a, &[r("bytes=0-4")], 206, &["bytes 0-4/49"], "§14.1.2"),
        case("open-ended", "GET", a, &[r("bytes=44-")], 206, &["bytes 44-48/49"], "§14.1.2: to the end"),
        case("suffix", "GET", a, &[r("bytes=-5")], 206, &["bytes 44-48/49"], "§14.1.2: the last N bytes"),
        case("suffix longer than the file", "GET", a, &[r("bytes=-100")], 206, &["bytes 0-48/49"], "§14.1.2: all of it"),
        case("last past the end", "GET", a, &[r("bytes=40-1000")], 206, &["bytes 40-48/49"], "§14.1.2: means the end"),
        case("last past u64", "GET", a, &[r("bytes=0-99999999999999999999")], 206, &["bytes 0-48/49"], "§14.1.2: no overflow")
            .departs("§14.1.2: recipients MUST anticipate large numerals and a last position past the end means the end; nginx answers 416"),
        case("first at the end", "GET", a, &[r("bytes=49-")], 416, &["bytes */49"], "§14.1.2, §15.5.17: unsatisfiable, 416 with the length"),
        case("out of bounds", "GET", a, &[r("bytes=100-200")], 416, &["bytes */49"], "§15.5.17"),
        case("zero suffix", "GET", a, &[r("bytes=-0")], 416, &["bytes */49"], "§14.1.2: a suffix must be non-zero"),
        case("two ranges", "GET", a, &[r("bytes=0-4,6-10")], 206, &["bytes 0-4/49", "bytes 6-10/49"], "§14.6: multipart/byteranges"),
        case("two ranges, later first", "GET", a, &[r("bytes=10-20,0-4")], 206, &["bytes 10-20/49", "bytes 0-4/49"], "§14.2: served in the order asked"),
        case("overlapping ranges", "GET", a, &[r("bytes=0-5,3-8")], 206, &["bytes 0-5/49", "bytes 3-8/49"], "§14.2: MAY ignore overlaps; served while small"),
        case("overlaps beyond the whole", "GET", a, &[r("bytes=0-40,10-48")], 200, &[], "§14.2, §17.15: more bytes than the whole: ignored"),
        case("one of two satisfiable", "GET", a, &[r("bytes=0-4,100-200")], 206, &["bytes 0-4/49"], "§14.1.1: unsatisfiable specs dropped; one part"),
        case("none of two satisfiable", "GET", a, &[r("bytes=100-200,300-400")], 416, &["bytes */49"], "§14.1.1: unsatisfiable"),
        case("not digits", "GET", a, &[r("bytes=x-1")], 416, &["bytes */49"], "§14.2: an invalid specifier MAY be rejected"),
        case("last before first", "GET", a, &[r("bytes=5-1")], 416, &["bytes */49"], "§14.1.1: invalid int-range"),
        case("one spec invalid", "GET", a, &[r("bytes=0-4,x")], 416, &["bytes */49"], "§14.1.1: invalid if any spec is"),
        get("unknown unit", a, &[r("items=0-4")], 200).rfc("§14.2: MUST ignore a unit it does not understand"),
        case("unit case", "GET", a, &[r("Bytes=0-4")], 206, &["bytes 0-4/49"], "§14.1: units are case-insensitive"),
        get("spaces around =", a, &[r("bytes = 0-4")], 200).rfc("§14.1.1: not a ranges-specifier: ignored"),
        get("no spec", a, &[r("bytes=")], 200).rfc("§14.2: invalid, MAY be ignored"),
        case("empty list element", "GET", a, &[r("bytes=0-4,,6-10")], 206, &["bytes 0-4/49", "bytes 6-10/49"], "§5.6.1.2: empty elements are ignored")
            .departs("§5.6.1.2 says a recipient MUST ignore empty list elements; nginx refuses the Range (416)"),
        case("leading zeros", "GET", a, &[r("bytes=00-04")], 206, &["bytes 0-4/49"], "§14.1.1: 1*DIGIT"),
        case("spaces in the list", "GET", a, &[r("bytes=0-4, 6-10")], 206, &["bytes 0-4/49", "bytes 6-10/49"], "§5.6.1: OWS around commas"),
        get("empty file, first-last", "/empty.txt", &[r("bytes=0-")], 200).rfc("§14.2: MAY ignore Range for zero length"),
        get("empty file, suffix", "/empty.txt", &[r("bytes=-5")], 200).rfc("§14.2: MAY ignore Range for zero length"),
        case("large object", "GET", big, &[r("bytes=100000-100099")], 206, &["bytes 100000-100099/300000"], "§14.1.2"),
        case("large object, two ranges", "GET", big, &[r("bytes=0-9,299990-")], 206, &["bytes 0-9/300000", "bytes 299990-299999/300000"], "§14.6"),
        case("large object, suffix", "GET", big, &[r("bytes=-10")], 206, &["bytes 299990-299999/300000"], "§14.1.2"),
        case("HEAD with Range", "HEAD", a, &[r("bytes=0-4")], 200, &[], "§14.2: GET is the only method with range handling")
            .departs("§14.2: a Range on HEAD MUST be ignored; nginx answers 206"),
        // §13.1: each precondition alone.
        get("If-Match current", a, &[("if-match", "{etag}")], 200).rfc("§13.1.1"),
        get("If-Match stale", a, &[("if-match", "\"stale\"")], 412).rfc("§13.1.1: false → 412"),
        get("If-Match list", a, &[("if-match", "\"x\", {etag}")], 200).rfc("§13.1.1: any member"),
        get("If-Match weak", a, &[("if-match", "W/{etag}")], 412).rfc("§13.1.1, §8.8.3.2: strong comparison"),
        get("If-Match *", a, &[("if-match", "*")], 200).rfc("§13.1.1: a current representation exists"),
        get("If-None-Match current", a, &[("if-none-match", "{etag}")], 304).rfc("§13.1.2"),
        get("If-None-Match weak", a, &[("if-none-match", "W/{etag}")], 304).rfc("§13.1.2, §8.8.3.2: weak comparison"),
        get("If-None-Match stale", a, &[("if-none-match", "\"stale\"")], 200).rfc("§13.1.2"),
        get("If-None-Match *", a, &[("if-none-match", "*")], 304).rfc("§13.1.2"),
        get("If-None-Match list", a, &[("if-none-match", "\"x\", {etag}")], 304).rfc("§13.1.2"),
        get("If-Modified-Since equal", a, &[("if-modified-since", "{lm}")], 304).rfc("§13.1.3"),
        get("If-Modified-Since earlier", a, &[("if-modified-since", PAST)], 200).rfc("§13.1.3"),
        get("If-Modified-Since later", a, &[("if-modified-since", LATER)], 304)
            .rfc("§13.1.3: modified no later than the date → 304")
            .departs("§13.1.3 asks 'earlier or equal'; nginx's default `if_modified_since exact` answers 304 only to the exact date"),
        get("If-Modified-Since asctime", a, &[("if-modified-since", "{lm:asctime}")], 304).rfc("§5.6.7: recipients accept all three date formats"),
        get("If-Modified-Since invalid", a, &[("if-modified-since", "yesterday")], 200).rfc("§13.1.3: MUST ignore an invalid date"),
        get("If-Unmodified-Since equal", a, &[("if-unmodified-since", "{lm}")], 200).rfc("§13.1.4"),
        get("If-Unmodified-Since earlier", a, &[("if-unmodified-since", PAST)], 412).rfc("§13.1.4: false → 412"),
        get("If-Unmodified-Since invalid", a, &[("if-unmodified-since", "yesterday")], 200)
            .rfc("§13.1.4: MUST ignore an invalid date")
            .departs("§13.1.4: an invalid date MUST be ignored; nginx answers 412"),
        case("If-Range current", "GET", a, &[r("bytes=0-4"), ("if-range", "{etag}")], 206, &["bytes 0-4/49"], "§13.1.5"),
        get("If-Range stale", a, &[r("bytes=0-4"), ("if-range", "\"stale\"")], 200).rfc("§13.1.5: false → the whole"),
        get("If-Range weak", a, &[r("bytes=0-4"), ("if-range", "W/{etag}")], 200).rfc("§13.1.5: strong comparison"),
        case("If-Range date equal", "GET", a, &[r("bytes=0-4"), ("if-range", "{lm}")], 206, &["bytes 0-4/49"], "§13.1.5: exact match"),
        get("If-Range date earlier", a, &[r("bytes=0-4"), ("if-range", PAST)], 200).rfc("§13.1.5"),
        get("If-Range date later", a, &[r("bytes=0-4"), ("if-range", LATER)], 200).rfc("§13.1.5: exact, not 'earlier or equal'"),
        get("If-Range garbage", a, &[r("bytes=0-4"), ("if-range", "garbage")], 200).rfc("§13.1.5"),
        get("If-Range stale, unsatisfiable", a, &[r("bytes=100-"), ("if-range", "\"stale\"")], 200).rfc("§13.1.5: Range ignored, so no 416"),
        get("If-Range without Range", a, &[("if-range", "{etag}")], 200).rfc("§13.1.5: MUST ignore without Range"),
        // §13.2.2: precedence.
        get("If-Match beats If-Unmodified-Since", a, &[("if-match", "{etag}"), ("if-unmodified-since", PAST)], 200)
            .rfc("§13.1.4: MUST ignore If-Unmodified-Since beside If-Match")
            .departs("§13.1.4, §13.2.2: If-Unmodified-Since MUST be ignored beside If-Match; nginx evaluates both (412)"),
        get("stale If-Match, good date", a, &[("if-match", "\"stale\""), ("if-unmodified-since", "{lm}")], 412).rfc("§13.2.2 step 1"),
        get("If-None-Match beats If-Modified-Since", a, &[("if-none-match", "{etag}"), ("if-modified-since", PAST)], 304)
            .rfc("§13.1.3: MUST ignore If-Modified-Since beside If-None-Match")
            .departs("§13.1.3, §13.2.2: If-Modified-Since MUST be ignored beside If-None-Match; nginx evaluates both (200)"),
        get("stale If-None-Match, equal date", a, &[("if-none-match", "\"stale\""), ("if-modified-since", "{lm}")], 200).rfc("§13.1.3, §13.2.2 step 3"),
        get("If-Match before If-None-Match", a, &[("if-match", "\"stale\""), ("if-none-match", "{etag}")], 412).rfc("§13.2.2: step 1 before step 3"),
        get("304 before Range", a, &[("if-none-match", "{etag}"), r("bytes=0-4")], 304).rfc("§14.2: Range after preconditions"),
        get("412 before Range", a, &[("if-match", "\"stale\""), r("bytes=0-4")], 412).rfc("§13.2.2"),
        get("412 before 416", a, &[("if-unmodified-since", PAST), r("bytes=100-")], 412).rfc("§13.2.2 step 2 before step 5"),
        get("If-Modified-Since before Range", a, &[("if-modified-since", "{lm}"), r("bytes=0-4")], 304).rfc("§13.2.2 step 4"),
        case("If-Match and If-Range", "GET", a, &[("if-match", "{etag}"), ("if-range", "{etag}"), r("bytes=0-4")], 206, &["bytes 0-4/49"], "§13.2.2 steps 1, 5"),
        // §15.5.6: methods a file does not allow.
        case("POST", "POST", a, &[], 405, &[], "§15.5.6").departs(allow),
        case("PUT", "PUT", a, &[], 405, &[], "§15.5.6").departs(allow),
        case("DELETE", "DELETE", a, &[], 405, &[], "§15.5.6").departs(allow),
        case("OPTIONS", "OPTIONS", a, &[], 405, &[], "§15.5.6").departs(allow),
        case("POST with If-None-Match", "POST", a, &[("if-none-match", "*")], 405, &[], "§13.2.1: preconditions ignored when the answer is not 2xx")
            .departs(allow),
        case("POST to a missing file", "POST", "/missing.txt", &[], 404, &[], "§15.5.5"),
        // Paths (RFC 3986 §6.2.2 normalization, as nginx does).
        get("%2e segment", "/%2e/a.txt", &[], 400)
            .rfc("RFC 3986 §6.2.2: %2e is '.'; a server may refuse the path")
            .differs(DOTS),
        get("%2e%2e back to the root", "/docs/%2e%2e/a.txt", &[], 400).rfc("RFC 3986 §5.2.4").differs(DOTS),
        get("%2e%2e above the root", "/%2e%2e/a.txt", &[], 400).rfc("refused: climbs above the root"),
        get("%2F slash", "/docs%2Findex.html", &[], 200).rfc("decoded like nginx"),
        get("double slash at the start", "//a.txt", &[], 200).rfc("empty segments merged"),
        get("double slash inside", "/docs//index.html", &[], 200).rfc("empty segments merged"),
        get("UTF-8 name", "/caf%C3%A9.txt", &[], 200).rfc("RFC 3986 §2.1"),
        get("space", "/a%20b.txt", &[], 200).rfc("RFC 3986 §2.1"),
        get("encoded unreserved", "/%61.txt", &[], 200).rfc("RFC 3986 §6.2.2.2: %61 is 'a'"),
        get("NUL", "/a.txt%00", &[], 400).rfc("refused: a control character"),
        get("folder index", "/docs/", &[], 200).rfc("the index document"),
        get("missing", "/missing.txt", &[], 404).rfc("§15.5.5"),
        get("query", "/a.txt?x=1", &[], 200).rfc("the query names no file"),
        // §12.5.3: content codings (nginx: gzip_static, brotli_static).
        get("gzip", page, &[ae("gzip")], 200).rfc("§12.5.3"),
        get("br", page, &[ae("br")], 200).rfc("§12.5.3"),
        get("gzip, br", page, &[ae("gzip, br")], 200).rfc("§12.5.3: equal q, brotli chosen"),
        get("br excluded", page, &[ae("br;q=0, gzip")], 200).rfc("§12.5.3: q=0 is not acceptable"),
        get("br preferred by q", page, &[ae("gzip;q=0.5, br;q=0.9")], 200).rfc("§12.5.3: highest qvalue"),
        get("gzip preferred by q", page, &[ae("br;q=0.5, gzip;q=0.8")], 200)
            .rfc("§12.5.3: highest qvalue")
            .departs("§12.5.3 prefers the highest qvalue (gzip, 0.8); nginx's brotli_static sends br whenever br is acceptable"),
        get("star", page, &[ae("*")], 200)
            .rfc("§12.5.3: * matches any coding not listed")
            .differs("every coding is acceptable at q=1: Nimbus sends br, nginx identity"),
        get("identity", page, &[ae("identity")], 200).rfc("§12.5.3"),
        get("empty Accept-Encoding", page, &[ae("")], 200).rfc("§12.5.3: no coding wanted"),
        get("gzip refused", page, &[ae("gzip;q=0")], 200).rfc("§12.5.3"),
        get("x-gzip", page, &[ae("x-gzip")], 200)
            .rfc("§8.4.1.3: x-gzip is gzip")
            .departs("§8.4.1.3: a recipient SHOULD take x-gzip as gzip; nginx's gzip_static does not"),
        get("identity preferred by q", page, &[ae("gzip;q=0.5, identity")], 200)
            .rfc("§12.5.3: identity has the highest qvalue")
            .departs("§12.5.3 prefers the highest qvalue (identity, 1); nginx's gzip_static sends gzip"),
        get("no variant for a small file", a, &[ae("gzip, br")], 200).rfc("nothing worth compressing"),
        get("identity;q=0, nothing else", a, &[ae("identity;q=0")], 200).rfc("§12.1: MAY disregard rather than 406"),
        get("gzip, If-None-Match gzip tag", page, &[ae("gzip"), ("if-none-match", "{etag:gzip}")], 304).rfc("§13.1.2: the gzip representation's tag"),
        get("gzip, If-None-Match identity tag", page, &[ae("gzip"), ("if-none-match", "{etag}")], 200).rfc("§8.8.3: each representation its own tag"),
        get("gzip, If-Match gzip tag", page, &[ae("gzip"), ("if-match", "{etag:gzip}")], 200).rfc("§13.1.1"),
        get("br, If-Match identity tag", page, &[ae("br"), ("if-match", "{etag}")], 412).rfc("§13.1.1: another representation's tag"),
        case("identity range", "GET", page, &[r("bytes=0-9")], 206, &["bytes 0-9/{len}"], "§14.1.2"),
        case("br range", "GET", page, &[ae("br"), r("bytes=0-9")], 206, &["bytes 0-9/{len:br}"], "§14.1.2: ranges of the encoded bytes")
            .differs("§14.2 lets a server ignore Range: nginx does for precompressed files, Nimbus serves the range of the br representation"),
        case("gzip suffix range", "GET", page, &[ae("gzip"), r("bytes=-20")], 206, &["bytes {len:gzip-20}-{len:gzip-1}/{len:gzip}"], "§14.1.2")
            .differs("§14.2 lets a server ignore Range: nginx does for precompressed files"),
        case("gzip, If-Range gzip tag", "GET", page, &[ae("gzip"), ("if-range", "{etag:gzip}"), r("bytes=0-9")], 206, &["bytes 0-9/{len:gzip}"], "§13.1.5")
            .differs("§14.2 lets a server ignore Range: nginx does for precompressed files"),
        get("br, two ranges", page, &[ae("br"), r("bytes=0-9,20-29")], 200).rfc("§14.2: MAY ignore; a multipart body cannot carry a coding"),
    ]
}

impl Case {
    fn rfc(mut self, clause: &'static str) -> Self {
        self.rfc = clause;
        self
    }
}

/// An answer as received.
#[derive(Debug, Clone, Default)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The Content-Range of each part (a multipart body's, or the single one) with its bytes.
    fn parts(&self) -> Vec<(String, Vec<u8>)> {
        let multipart = self.header("content-type").and_then(|t| t.split_once("boundary=")).map(|(_, b)| b.to_owned());
        let Some(boundary) = multipart else {
            return match self.header("content-range") {
                Some(range) => vec![(range.to_owned(), self.body.clone())],
                None => Vec::new(),
            };
        };
        let delimiter = format!("--{}", boundary.trim_matches('"'));
        let mut parts = Vec::new();
        for chunk in split(&self.body, delimiter.as_bytes()).into_iter().skip(1) {
            if chunk.starts_with(b"--") {
                break;
            }
            let Some(end) = find(chunk, b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&chunk[..end]);
            let range = head
                .lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-range")))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default();
            let data = &chunk[end + 4..chunk.len().saturating_sub(2)];
            parts.push((range, data.to_vec()));
        }
        parts
    }

    fn brief(&self) -> String {
        let ranges: Vec<String> = self.parts().into_iter().map(|(r, _)| r).collect();
        let mut out = self.status.to_string();
        if !ranges.is_empty() {
            out.push_str(&format!(" [{}]", ranges.join(", ")));
        } else if let Some(r) = self.header("content-range") {
            out.push_str(&format!(" [{r}]"));
        }
        if let Some(c) = self.header("content-encoding") {
            out.push_str(&format!(" {c}"));
        }
        if self.status == 405 {
            out.push_str(if self.header("allow").is_some() { " allow" } else { " no-allow" });
        }
        out
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn split<'a>(mut hay: &'a [u8], needle: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    while let Some(at) = find(hay, needle) {
        out.push(&hay[..at]);
        hay = &hay[at + needle.len()..];
    }
    out.push(hay);
    out
}

/// Sends one request exactly as written on a fresh connection and reads the whole answer.
fn send(addr: &str, method: &str, path: &str, headers: &[(&str, String)]) -> Reply {
    let mut stream = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if matches!(method, "POST" | "PUT") {
        request.push_str("content-length: 0\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let end = find(&raw, b"\r\n\r\n").unwrap_or_else(|| panic!("no answer head from {addr}: {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body);
    }
    Reply { status, headers, body }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = find(raw, b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&raw[..line_end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        raw = &raw[line_end + 2 + size + 2..];
    }
    out
}

/// Debian's nginx on a free port, serving `root`; stopped when dropped.
struct Nginx {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(root: &Path) -> Self {
        for needed in [NGINX, BROTLI_MODULE] {
            assert!(
                Path::new(needed).exists(),
                "{needed} is missing: the conformance test compares Nimbus with Debian's nginx and its brotli \
                 module; run scripts/test.sh, which installs them (nginx, libnginx-mod-http-brotli-static)"
            );
        }
        let dir = tempfile::Builder::new().prefix("nimbus-nginx-").tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.path().display();
        let conf = format!(
            "load_module {BROTLI_MODULE};\n\
             daemon off;\nmaster_process off;\nworker_processes 1;\n\
             pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               types {{ text/html html; text/plain txt; }}\n  default_type application/octet-stream;\n\
               server {{\n    listen 127.0.0.1:{port};\n    root {root};\n\
                 etag on;\n    gzip_static on;\n    gzip_vary on;\n    brotli_static on;\n  }}\n}}\n",
            root = root.display()
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new(NGINX)
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nginx");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "nginx did not start on {addr}: {log}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr, _dir: dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server's own validators and lengths, by path and coding, for the rows' placeholders.
#[derive(Default)]
struct Facts(HashMap<String, String>);

impl Facts {
    fn learn(addr: &str, paths: &[&str]) -> Self {
        let mut facts = HashMap::new();
        for path in paths {
            for (suffix, accept) in [("", None), (":gzip", Some("gzip")), (":br", Some("br"))] {
                let headers: Vec<(&str, String)> =
                    accept.map(|a| ("accept-encoding", a.to_owned())).into_iter().collect();
                let reply = send(addr, "GET", path, &headers);
                let key = |what: &str| format!("{path} {what}{suffix}");
                if let Some(etag) = reply.header("etag") {
                    facts.insert(key("etag"), etag.to_owned());
                }
                if let Some(lm) = reply.header("last-modified") {
                    facts.insert(key("lm"), lm.to_owned());
                    facts.insert(key("lm:asctime"), asctime(lm));
                }
                facts.insert(key("len"), reply.body.len().to_string());
            }
        }
        Self(facts)
    }

    /// `{etag}`, `{lm}`, `{len}`, `{etag:gzip}`, `{len:br-20}`… of `path`, substituted.
    fn fill(&self, path: &str, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').map(|c| open + c).expect("a closed placeholder");
            out.push_str(&rest[..open]);
            let name = &rest[open + 1..close];
            let (name, minus) = match name.rsplit_once('-') {
                Some((n, m)) if m.bytes().all(|b| b.is_ascii_digit()) => (n, m.parse::<u64>().unwrap()),
                _ => (name, 0),
            };
            let value = self.0.get(&format!("{path} {name}")).unwrap_or_else(|| panic!("no {name} for {path}"));
            match minus {
                0 => out.push_str(value),
                m => out.push_str(&(value.parse::<u64>().unwrap() - m).to_string()),
            }
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        out
    }
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) in asctime form (`Sun Nov  6 08:49:37 1994`).
fn asctime(imf: &str) -> String {
    let f: Vec<&str> = imf.split([' ', ',']).filter(|s| !s.is_empty()).collect();
    format!("{} {} {:>2} {} {}", f[0], f[2], f[1].trim_start_matches('0'), f[4], f[3])
}

/// What one server answered to one row, checked against the row.
fn check_against_rfc(case: &Case, facts: &Facts, reply: &Reply) -> Result<(), String> {
    if reply.status != case.status {
        return Err(format!("status {} (RFC: {})", reply.status, case.status));
    }
    let expected: Vec<String> = case.ranges.iter().map(|r| facts.fill(path_of(case), r)).collect();
    let got: Vec<String> = match reply.status {
        206 => reply.parts().into_iter().map(|(r, _)| r).collect(),
        416 => reply.header("content-range").map(str::to_owned).into_iter().collect(),
        _ => Vec::new(),
    };
    if got != expected {
        return Err(format!("content-range {got:?} (RFC: {expected:?})"));
    }
    if reply.status == 405 && reply.header("allow").is_none() {
        return Err("405 without Allow".into());
    }
    if reply.status == 304 && reply.header("etag").is_none() {
        return Err("304 without ETag (§15.4.5)".into());
    }
    Ok(())
}

/// The rows' paths without their query, for placeholders.
fn path_of(case: &Case) -> &'static str {
    case.path.split('?').next().unwrap_or(case.path)
}

/// Whether two servers' answers agree on what the RFC decides.
fn same(nimbus: &Reply, nginx: &Reply) -> Result<(), String> {
    if nimbus.status != nginx.status {
        return Err(format!("status {} vs nginx {}", nimbus.status, nginx.status));
    }
    let coding = |r: &Reply| r.header("content-encoding").map(str::to_owned);
    if coding(nimbus) != coding(nginx) {
        return Err(format!("content-encoding {:?} vs nginx {:?}", coding(nimbus), coding(nginx)));
    }
    match nimbus.status {
        200 => {
            if nimbus.body != nginx.body {
                return Err(format!("body of {} bytes vs nginx {}", nimbus.body.len(), nginx.body.len()));
            }
            let length = |r: &Reply| r.header("content-length").map(str::to_owned);
            if length(nimbus) != length(nginx) {
                return Err(format!("content-length {:?} vs nginx {:?}", length(nimbus), length(nginx)));
            }
            // nginx announces ranges only where it serves them (not on its precompressed files).
            let ranges = |r: &Reply| r.header("accept-ranges").map(str::to_owned);
            if coding(nimbus).is_none() && ranges(nimbus) != ranges(nginx) {
                return Err(format!("accept-ranges {:?} vs nginx {:?}", ranges(nimbus), ranges(nginx)));
            }
        }
        206 => {
            if nimbus.parts() != nginx.parts() {
                return Err(format!("parts {} vs nginx {}", nimbus.brief(), nginx.brief()));
            }
            if nimbus.parts().len() == 1 && nimbus.header("content-length") != nginx.header("content-length") {
                return Err("content-length differs".into());
            }
        }
        416 if nimbus.header("content-range") != nginx.header("content-range") => {
            return Err(format!(
                "content-range {:?} vs nginx {:?}",
                nimbus.header("content-range"),
                nginx.header("content-range")
            ));
        }
        405 if nimbus.header("allow").is_some() != nginx.header("allow").is_some() => {
            return Err("allow presence differs".into());
        }
        _ => {}
    }
    Ok(())
}

/// §9.3.2: a HEAD answers the headers its GET would, without the body; Range and If-Range are for
/// GET only (§14.2), so the GET it mirrors leaves them out.
fn check_head(nimbus: &str, case: &Case, headers: &[(&str, String)]) -> Result<(), String> {
    let plain: Vec<(&str, String)> =
        headers.iter().filter(|(k, _)| !matches!(*k, "range" | "if-range")).cloned().collect();
    let get = send(nimbus, "GET", case.path, &plain);
    let head = send(nimbus, "HEAD", case.path, headers);
    if !head.body.is_empty() {
        return Err(format!("HEAD sent {} bytes of body", head.body.len()));
    }
    if head.status != get.status {
        return Err(format!("HEAD status {} vs GET {}", head.status, get.status));
    }
    if head.status == 304 {
        // hyper drops a 304's Content-Length for a GET and keeps it for a HEAD: there it must be the
        // 200's (§8.6, §15.4.5).
        let unconditional: Vec<(&str, String)> = plain.iter().filter(|(k, _)| !k.starts_with("if-")).cloned().collect();
        let whole = send(nimbus, "GET", case.path, &unconditional);
        if head.header("content-length").is_some_and(|n| Some(n) != whole.header("content-length")) {
            return Err(format!(
                "HEAD 304 content-length {:?} vs the 200's {:?}",
                head.header("content-length"),
                whole.header("content-length")
            ));
        }
    } else if head.header("content-length") != get.header("content-length") {
        return Err(format!(
            "HEAD content-length {:?} vs GET {:?}",
            head.header("content-length"),
            get.header("content-length")
        ));
    }
    for name in [
        "content-type",
        "content-range",
        "content-encoding",
        "etag",
        "last-modified",
        "accept-ranges",
        "vary",
        "cache-control",
        "allow",
    ] {
        if head.header(name) != get.header(name) {
            return Err(format!("HEAD {name} {:?} vs GET {:?}", head.header(name), get.header(name)));
        }
    }
    Ok(())
}

fn write_files(root: &Path, files: &[(&str, Vec<u8>)]) {
    for (name, bytes) in files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

#[test]
fn the_site_answers_as_rfc_9110_requires_compared_with_nginx() {
    let app = App::new(Some("[site]\ndir = \"web\"\n"));
    let files = files();
    write_files(&app.path().join("web"), &files);
    let node = app.start(&[]);
    let nimbus = node.url.trim_start_matches("http://").to_owned();

    // nginx serves the same files, with the variants Nimbus made at deploy time beside them.
    let nginx_root: PathBuf = app.path().join("nginx-root");
    write_files(&nginx_root, &files);
    for (suffix, accept) in [(".gz", "gzip"), (".br", "br")] {
        let reply = send(&nimbus, "GET", "/page.html", &[("accept-encoding", accept.to_owned())]);
        assert_eq!(reply.header("content-encoding"), Some(accept), "Nimbus made a {accept} variant of page.html");
        std::fs::write(nginx_root.join(format!("page.html{suffix}")), &reply.body).unwrap();
    }
    let nginx = Nginx::start(&nginx_root);

    let cases = cases();
    assert!(cases.len() >= 60, "{} rows", cases.len());
    let mut paths: Vec<&str> = cases.iter().map(path_of).filter(|p| !p.contains('%') && !p.contains("//")).collect();
    paths.sort_unstable();
    paths.dedup();
    let (nimbus_facts, nginx_facts) = (Facts::learn(&nimbus, &paths), Facts::learn(&nginx.addr, &paths));

    let mut rows = Vec::new();
    let mut failed = 0;
    for (i, case) in cases.iter().enumerate() {
        let fill = |facts: &Facts| -> Vec<(&str, String)> {
            case.headers.iter().map(|(k, v)| (*k, facts.fill(path_of(case), v))).collect()
        };
        let (ours, theirs) = (fill(&nimbus_facts), fill(&nginx_facts));
        let n = send(&nimbus, case.method, case.path, &ours);
        let x = send(&nginx.addr, case.method, case.path, &theirs);
        let mut verdict = check_against_rfc(case, &nimbus_facts, &n).map_err(|e| format!("Nimbus: {e}"));
        if verdict.is_ok() {
            verdict = match (case.nginx_departs.or(case.nginx_differs), same(&n, &x)) {
                (None, Err(e)) => Err(e),
                (Some(_), Ok(())) => Err("the row says nginx answers otherwise, but it agrees now".into()),
                _ => Ok(()),
            };
        }
        if verdict.is_ok() && case.method == "GET" {
            verdict = check_head(&nimbus, case, &ours);
        }
        let note = case
            .nginx_departs
            .map(|w| format!("nginx departs: {w}"))
            .or(case.nginx_differs.map(|w| format!("nginx differs: {w}")))
            .unwrap_or_default();
        if verdict.is_err() {
            failed += 1;
        }
        rows.push(format!(
            "{:>3} {:<6} {:<36} {:<8} {:<40} {:<40} {:<4} {}\n      {} {}{}",
            i + 1,
            if verdict.is_ok() { "ok" } else { "FAIL" },
            case.name,
            case.method,
            format!("nimbus {}", n.brief()),
            format!("nginx {}", x.brief()),
            case.status,
            verdict.err().unwrap_or_default(),
            case.rfc,
            case.path,
            if note.is_empty() { String::new() } else { format!("  [{note}]") },
        ));
    }
    let departs = cases.iter().filter(|c| c.nginx_departs.is_some()).count();
    let differs = cases.iter().filter(|c| c.nginx_differs.is_some()).count();
    let table = rows.join("\n");
    assert!(
        failed == 0,
        "{failed} of {} rows fail ({departs} where nginx departs from RFC 9110, {differs} where it chose otherwise):\n{table}\n\nNimbus stderr:\n{}",
        cases.len(),
        node.stderr()
    );
    println!("{} rows, {departs} where nginx departs, {differs} where it differs:\n{table}", cases.len());
}
