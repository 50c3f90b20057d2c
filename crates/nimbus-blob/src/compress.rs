//! Compressed variants of site files: made once at deploy time (`deploy.rs`), chosen per request by
//! `Accept-Encoding` (RFC 9110 §12.5.3), so a request costs no compression CPU.
//!
//! A variant is an object of its own beside its file, `<key>.br` or `<key>.gz`, as a precompressed
//! file in the site folder would be; one made by a deploy says which content it was made from
//! ([`VARIANT_OF`] in its metadata), so a file replaced another way (a PUT through the API) is never
//! answered with the old file's variant.

use std::io::Write as _;

use axum::http::{HeaderMap, header};

/// The metadata key of a generated variant: the ETag (hex SHA-256) of the content it compresses.
pub(crate) const VARIANT_OF: &str = "nimbus-variant-of";

/// Files smaller than this are sent as they are: compression would save less than a packet.
pub(crate) const MIN_SIZE: u64 = 1024;
/// Files larger than this are not compressed at deploy time (they are read whole to be).
const MAX_SIZE: u64 = 64 * 1024 * 1024;

/// A content coding Nimbus keeps variants in (§8.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    Br,
    Gzip,
}

impl Coding {
    /// Best first: at an equal qvalue, brotli is chosen over gzip (it is smaller).
    pub(crate) const ALL: [Coding; 2] = [Coding::Br, Coding::Gzip];

    /// The `Content-Encoding` token.
    pub(crate) fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// The suffix of the variant's key.
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Coding::Br => ".br",
            Coding::Gzip => ".gz",
        }
    }

    /// The variant's bytes: brotli at quality 10, gzip at level 9 (deploy time pays once). Brotli's
    /// best, 11, took twice as long on a documentation site for 2 % fewer bytes (BENCHMARKS.md).
    pub(crate) fn encode(self, data: &[u8]) -> Vec<u8> {
        match self {
            Coding::Br => {
                let params = brotli::enc::BrotliEncoderParams { quality: 10, lgwin: 22, ..Default::default() };
                let mut out = Vec::with_capacity(data.len() / 4);
                brotli::BrotliCompress(&mut &data[..], &mut out, &params).expect("compressing into memory");
                out
            }
            Coding::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                encoder.write_all(data).expect("compressing into memory");
                encoder.finish().expect("compressing into memory")
            }
        }
    }
}

/// Whether deploys make variants: yes, unless `NIMBUS_SITE_COMPRESS` is `0`, `false` or `off`.
pub(crate) fn enabled() -> bool {
    !matches!(std::env::var("NIMBUS_SITE_COMPRESS").as_deref().map(str::trim), Ok("0" | "false" | "off"))
}

/// Whether a file is worth variants: a text type (HTML, CSS, JavaScript, JSON, SVG, XML, plain
/// text…) or WebAssembly, of at least [`MIN_SIZE`] bytes, and not itself a variant.
pub(crate) fn compressible(key: &str, size: u64) -> bool {
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) || Coding::ALL.iter().any(|c| key.ends_with(c.suffix())) {
        return false;
    }
    let mime = mime_guess::from_path(key).first_or_octet_stream();
    let (kind, sub) = (mime.type_().as_str(), mime.subtype().as_str());
    let suffix = mime.suffix().map(|s| s.as_str());
    kind == "text"
        || matches!(sub, "javascript" | "json" | "xml" | "wasm" | "x-javascript" | "ecmascript")
        || matches!(suffix, Some("json" | "xml"))
}

/// A variant is kept only when it saves at least 10 %.
pub(crate) fn worth_keeping(original: usize, compressed: usize) -> bool {
    compressed.saturating_mul(10) <= original.saturating_mul(9)
}

/// The coding to send among those `available` (best first), or `None` for no coding (§12.5.3):
/// - no `Accept-Encoding`, or an empty one: none (any coding is acceptable without the field, but
///   a client that sends none seldom decodes);
/// - else the listed coding with the highest non-zero qvalue (`*` stands for codings not listed,
///   `x-gzip` for gzip, §8.4.1.3), brotli before gzip at an equal qvalue, unless `identity` (listed,
///   or through `*`) has a higher qvalue than every one of them;
/// - when none is acceptable, none, even if `identity;q=0` excludes that too (§12.1 lets a server
///   disregard what it cannot satisfy rather than answer 406).
pub(crate) fn choose(headers: &HeaderMap, available: &[Coding]) -> Option<Coding> {
    let mut lines = headers.get_all(header::ACCEPT_ENCODING).iter().peekable();
    lines.peek()?;
    let value = lines.map(|v| v.to_str().unwrap_or("")).collect::<Vec<_>>().join(",");
    let weights = weights(&value);
    let weight = |name: &str| weights.iter().find(|(n, _)| n == name).map(|(_, q)| *q);
    let star = weight("*");
    let best = available.iter().map(|c| (*c, weight(c.token()).or(star).unwrap_or(0))).filter(|(_, q)| *q > 0).fold(
        None::<(Coding, u16)>,
        |best, (c, q)| match best {
            Some((_, top)) if top >= q => best,
            _ => Some((c, q)),
        },
    )?;
    let identity = weight("identity").or(star).unwrap_or(0);
    (best.1 >= identity).then_some(best.0)
}

/// The members of an `Accept-Encoding` value as (lowercase coding, qvalue in thousandths); a member
/// whose weight is not a qvalue (§12.4.2) is left out.
fn weights(value: &str) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for member in value.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let mut parts = member.split(';');
        let mut name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if name == "x-gzip" {
            name = "gzip".into();
        }
        let mut q = Some(1000);
        for param in parts {
            if let Some((k, v)) = param.split_once('=')
                && k.trim().eq_ignore_ascii_case("q")
            {
                q = qvalue(v.trim());
            }
        }
        if let Some(q) = q {
            out.push((name, q));
        }
    }
    out
}

/// `0`, `0.5`, `1`, `1.000`: at most three decimals, at most 1 (§12.4.2).
fn qvalue(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if !matches!(whole, "0" | "1") || fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u16>().ok()?;
    let q = if whole == "1" { 1000 + thousandths } else { thousandths };
    (q <= 1000).then_some(q)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn pick(accept: Option<&str>) -> Option<&'static str> {
        let mut headers = HeaderMap::new();
        if let Some(a) = accept {
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(a).unwrap());
        }
        choose(&headers, &Coding::ALL).map(Coding::token)
    }

    #[test]
    fn chooses_by_qvalue_with_brotli_first() {
        assert_eq!(pick(None), None);
        assert_eq!(pick(Some("")), None);
        assert_eq!(pick(Some("gzip, deflate, br")), Some("br"));
        assert_eq!(pick(Some("gzip")), Some("gzip"));
        assert_eq!(pick(Some("GZIP")), Some("gzip"));
        assert_eq!(pick(Some("x-gzip")), Some("gzip"));
        assert_eq!(pick(Some("br;q=0.5, gzip;q=0.8")), Some("gzip"));
        assert_eq!(pick(Some("br;q=0, gzip")), Some("gzip"));
        assert_eq!(pick(Some("br ; q=0 , gzip ; q=0")), None);
        assert_eq!(pick(Some("*")), Some("br"));
        assert_eq!(pick(Some("*;q=0.1, gzip")), Some("gzip"));
        assert_eq!(pick(Some("*;q=0")), None, "nothing acceptable: sent as it is");
        assert_eq!(pick(Some("identity")), None);
        assert_eq!(pick(Some("gzip;q=0.5, identity")), None, "identity preferred");
        assert_eq!(pick(Some("gzip, identity;q=0")), Some("gzip"));
        assert_eq!(pick(Some("identity;q=0")), None, "no acceptable coding: disregarded");
        assert_eq!(pick(Some("gzip;q=2")), None, "not a qvalue");
        assert_eq!(pick(Some("gzip;q=0.0001")), None);
        assert_eq!(pick(Some("gzip;q=1.000")), Some("gzip"));
        assert_eq!(pick(Some("deflate, compress")), None);
    }

    #[test]
    fn only_text_worth_it_is_compressed() {
        for (key, yes) in [
            ("index.html", true),
            ("app.css", true),
            ("app.js", true),
            ("app.mjs", true),
            ("data.json", true),
            ("logo.svg", true),
            ("feed.xml", true),
            ("notes.txt", true),
            ("main.wasm", true),
            ("site.webmanifest", true),
            ("photo.jpg", false),
            ("font.woff2", false),
            ("app.css.gz", false),
            ("app.css.br", false),
        ] {
            assert_eq!(compressible(key, 5000), yes, "{key}");
        }
        assert!(!compressible("index.html", MIN_SIZE - 1));
        assert!(worth_keeping(1000, 900) && !worth_keeping(1000, 901));
    }

    #[test]
    fn variants_decode_to_the_original() {
        let text = "<p>hello, compressible world</p>\n".repeat(100);
        let br = Coding::Br.encode(text.as_bytes());
        let mut decoded = Vec::new();
        brotli::BrotliDecompress(&mut &br[..], &mut decoded).unwrap();
        assert_eq!(decoded, text.as_bytes());
        let gz = Coding::Gzip.encode(text.as_bytes());
        let mut decoded = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut decoded).unwrap();
        assert_eq!(decoded, text);
        assert!(br.len() < gz.len() && gz.len() < text.len() / 10);
    }
}
