//! HTTP values of the manifest read straight into `http` types: methods, header names and values,
//! CORS origins. The gateway takes them as they are; nothing parses them again.

use std::fmt;

use http::{HeaderName, HeaderValue, Method};
use serde::{Deserialize, Deserializer, de};

/// The address a node listens on: an IP address, or `localhost` (127.0.0.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenHost(pub std::net::IpAddr);

impl std::str::FromStr for ListenHost {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "localhost" => Ok(Self(std::net::Ipv4Addr::LOCALHOST.into())),
            other => other
                .parse()
                .map(Self)
                .map_err(|_| format!("\"{other}\" is not an IP address (e.g. \"127.0.0.1\" or \"0.0.0.0\")")),
        }
    }
}

impl<'de> Deserialize<'de> for ListenHost {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::from_str(d, str::parse)
    }
}

/// The methods a route or a CORS policy may name: upper-case, as HTTP writes them.
pub const METHODS: [Method; 7] =
    [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS];

/// Parses a method token: one of [`METHODS`], upper-case.
pub fn parse_method(s: &str) -> Result<Method, String> {
    METHODS.iter().find(|m| m.as_str() == s).cloned().ok_or_else(|| {
        let names: Vec<&str> = METHODS.iter().map(Method::as_str).collect();
        format!("\"{s}\" is not one of {}", names.join(", "))
    })
}

/// Parses a header name (any case; `http` keeps it lower-case).
pub(crate) fn parse_header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.as_bytes()).map_err(|_| format!("\"{s}\" is not a header name"))
}

/// Parses a header value: printable ASCII (and tabs).
pub(crate) fn parse_header_value(s: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(s).map_err(|_| format!("{s:?} is not a header value: use printable ASCII"))
}

/// One list element, parsed by `parse` with the error on the element.
struct Item<T>(T);

macro_rules! item {
    ($ty:ty, $parse:path) => {
        impl<'de> Deserialize<'de> for Item<$ty> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                crate::from_str(d, |s| $parse(s).map(Item))
            }
        }
    };
}
item!(Method, parse_method);
item!(HeaderName, parse_header_name);
item!(HeaderValue, parse_header_value);
item!(globset::Glob, parse_glob);

/// `methods = ["GET", "POST"]`.
/// An `http(s)://` base URL with a host and no query or fragment, as an HTTP request can be sent to.
pub(crate) fn parse_base_url(s: &str) -> Result<http::Uri, String> {
    let refused = || format!("\"{s}\" is not an http(s):// URL");
    let url = url::Url::parse(s).map_err(|_| refused())?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(refused());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("\"{s}\": a base URL takes no query or fragment"));
    }
    match url.as_str().parse::<http::Uri>() {
        Ok(uri) if uri.authority().is_some() => Ok(uri),
        _ => Err(format!("\"{s}\" is not a URL an HTTP request can be sent to")),
    }
}

pub(crate) fn base_url<'de, D: Deserializer<'de>>(d: D) -> Result<http::Uri, D::Error> {
    crate::from_str(d, parse_base_url)
}

pub(crate) fn methods<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Method>, D::Error> {
    Ok(Vec::<Item<Method>>::deserialize(d)?.into_iter().map(|i| i.0).collect())
}

/// `headers = ["authorization", "x-client"]`.
pub(crate) fn header_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HeaderName>, D::Error> {
    Ok(Vec::<Item<HeaderName>>::deserialize(d)?.into_iter().map(|i| i.0).collect())
}

/// `set = { x-added = "yes" }`, in the manifest's order.
pub(crate) fn header_map<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(HeaderName, HeaderValue)>, D::Error> {
    ordered_map(d, "a table of header names and values", "header")
}

/// `[site] cache_control = { "assets/**" = "public, max-age=31536000, immutable" }`, in the
/// manifest's order (the first glob that matches a path gives its header).
pub(crate) fn cache_rules<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(globset::Glob, HeaderValue)>, D::Error> {
    ordered_map(d, "a table of path globs and Cache-Control values", "glob")
}

fn parse_glob(s: &str) -> Result<globset::Glob, String> {
    globset::Glob::new(s).map_err(|e| format!("\"{s}\" is not a glob: {}", e.kind()))
}

/// A TOML table read into its pairs, each key and value parsed by its type, a key given twice refused.
fn ordered_map<'de, D, K, V>(d: D, expecting: &'static str, key: &'static str) -> Result<Vec<(K, V)>, D::Error>
where
    D: Deserializer<'de>,
    K: PartialEq + fmt::Display,
    Item<K>: Deserialize<'de>,
    Item<V>: Deserialize<'de>,
{
    struct Visitor<K, V>(&'static str, &'static str, std::marker::PhantomData<(K, V)>);
    impl<'de, K, V> de::Visitor<'de> for Visitor<K, V>
    where
        K: PartialEq + fmt::Display,
        Item<K>: Deserialize<'de>,
        Item<V>: Deserialize<'de>,
    {
        type Value = Vec<(K, V)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out: Self::Value = Vec::new();
            while let Some((Item(k), Item(v))) = map.next_entry::<Item<K>, Item<V>>()? {
                if out.iter().any(|(seen, _)| *seen == k) {
                    return Err(de::Error::custom(format!("{} \"{k}\" is given twice", self.1)));
                }
                out.push((k, v));
            }
            Ok(out)
        }
    }
    d.deserialize_map(Visitor(expecting, key, std::marker::PhantomData))
}

/// CORS `origins`: any (`["*"]`), or a list of `scheme://host[:port]` origins as header values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    Any,
    List(Vec<HeaderValue>),
}

impl Default for Origins {
    fn default() -> Self {
        Self::List(Vec::new())
    }
}

impl Origins {
    pub fn is_empty(&self) -> bool {
        matches!(self, Self::List(l) if l.is_empty())
    }
}

/// One written origin: `*` or an origin.
enum OriginItem {
    Any,
    One(HeaderValue),
}

impl<'de> Deserialize<'de> for OriginItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::from_str(d, |s| {
            if s == "*" {
                return Ok(Self::Any);
            }
            let origin = url::Url::parse(s).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && !s.ends_with('/')
                    && u.query().is_none()
                    && u.fragment().is_none()
            });
            match origin.then(|| HeaderValue::from_str(s).ok()).flatten() {
                Some(v) => Ok(Self::One(v)),
                None => Err(format!("\"{s}\" is not an origin like \"https://app.example.com\"")),
            }
        })
    }
}

impl<'de> Deserialize<'de> for Origins {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::<OriginItem>::deserialize(d)?;
        let any = items.iter().any(|i| matches!(i, OriginItem::Any));
        match (any, items.len()) {
            (true, 1) => Ok(Self::Any),
            (true, _) => Err(de::Error::custom("\"*\" already allows every origin; list it alone")),
            (false, _) => Ok(Self::List(
                items
                    .into_iter()
                    .filter_map(|i| match i {
                        OriginItem::One(v) => Some(v),
                        OriginItem::Any => None,
                    })
                    .collect(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_upper_case_tokens_of_the_list() {
        assert_eq!(parse_method("PATCH"), Ok(Method::PATCH));
        for bad in ["get", "FETCH", "CONNECT", "TRACE", ""] {
            assert!(parse_method(bad).unwrap_err().contains("is not one of GET, HEAD"), "{bad}");
        }
    }

    #[test]
    fn header_names_and_values() {
        assert_eq!(parse_header_name("X-Client").unwrap(), "x-client");
        for bad in ["bad header", "", "x:y", "é"] {
            assert!(parse_header_name(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_header_value("a\tb c").unwrap(), "a\tb c");
        assert!(parse_header_value("line\nbreak").is_err());
    }

    #[derive(Deserialize)]
    struct Cors {
        origins: Origins,
    }

    fn origins(toml: &str) -> Result<Origins, String> {
        toml::from_str::<Cors>(toml).map(|c| c.origins).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn origins_are_any_or_a_list() {
        assert_eq!(origins("origins = [\"*\"]"), Ok(Origins::Any));
        assert_eq!(
            origins("origins = [\"https://a.example\", \"http://localhost:3000\"]"),
            Ok(Origins::List(vec![
                HeaderValue::from_static("https://a.example"),
                HeaderValue::from_static("http://localhost:3000")
            ]))
        );
        assert!(origins("origins = [\"*\", \"https://a.example\"]").unwrap_err().contains("list it alone"));
        for bad in ["https://a.example/", "https://a.example/path", "ftp://a.example", "a.example"] {
            assert!(origins(&format!("origins = [\"{bad}\"]")).unwrap_err().contains("is not an origin"), "{bad}");
        }
    }
}
