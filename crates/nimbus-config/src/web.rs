//! HTTP values of the manifest read straight into `http` types: methods, header names and values,
//! CORS origins. The gateway takes them as they are; nothing parses them again.

use std::fmt;

use http::{HeaderName, HeaderValue, Method};
use serde::{Deserialize, Deserializer, de};

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

/// `methods = ["GET", "POST"]`.
pub(crate) fn methods<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Method>, D::Error> {
    Ok(Vec::<Item<Method>>::deserialize(d)?.into_iter().map(|i| i.0).collect())
}

/// `headers = ["authorization", "x-client"]`.
pub(crate) fn header_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HeaderName>, D::Error> {
    Ok(Vec::<Item<HeaderName>>::deserialize(d)?.into_iter().map(|i| i.0).collect())
}

/// `set = { x-added = "yes" }`, in the manifest's order.
pub(crate) fn header_map<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(HeaderName, HeaderValue)>, D::Error> {
    struct Visitor;
    impl<'de> de::Visitor<'de> for Visitor {
        type Value = Vec<(HeaderName, HeaderValue)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table of header names and values")
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out: Self::Value = Vec::new();
            while let Some((Item(name), Item(value))) = map.next_entry::<Item<HeaderName>, Item<HeaderValue>>()? {
                if out.iter().any(|(n, _)| *n == name) {
                    return Err(de::Error::custom(format!("header \"{name}\" is set twice")));
                }
                out.push((name, value));
            }
            Ok(out)
        }
    }
    d.deserialize_map(Visitor)
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
