//! The route table of function triggers: path patterns with `{param}` segments and an optional
//! trailing `*`, matched most specific first (literals before parameters before wildcards).

use axum::http::Method;
use nimbus_config::{PathPattern, Segment};
use serde_json::{Map, Value};

#[derive(Debug, Clone)]
struct Route {
    pattern: String,
    parsed: PathPattern,
    /// Empty means every method.
    methods: Vec<Method>,
    function: String,
}

#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    routes: Vec<Route>,
}

#[derive(Debug, PartialEq)]
pub(crate) enum Match<'a> {
    Found { function: &'a str, params: Map<String, Value> },
    MethodNotAllowed,
    NotFound,
}

impl RouteTable {
    /// Adds a route; refuses malformed patterns and a second function on the same pattern and method.
    pub fn add(&mut self, parsed: PathPattern, methods: &[String], function: &str) -> Result<(), String> {
        let pattern = parsed.to_string();
        if pattern.starts_with("/_nimbus/") || pattern == "/_nimbus" {
            return Err(format!("route \"{pattern}\" of `{function}`: paths under /_nimbus/ belong to the platform"));
        }
        let methods = methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| format!("invalid method \"{m}\""))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for other in &self.routes {
            let same_shape = other.parsed.wildcard == parsed.wildcard
                && other.parsed.segments.len() == parsed.segments.len()
                && other.parsed.segments.iter().zip(&parsed.segments).all(|(a, b)| match (a, b) {
                    (Segment::Literal(x), Segment::Literal(y)) => x == y,
                    (Segment::Param(_), Segment::Param(_)) => true,
                    _ => false,
                });
            let overlap =
                other.methods.is_empty() || methods.is_empty() || other.methods.iter().any(|m| methods.contains(m));
            if same_shape && overlap {
                return Err(format!(
                    "route \"{pattern}\" of `{function}` overlaps \"{}\" of `{}`",
                    other.pattern, other.function
                ));
            }
        }
        self.routes.push(Route { pattern, parsed, methods, function: function.to_owned() });
        // Most specific first: no wildcard, then more literal segments, then longer patterns.
        self.routes.sort_by_key(|r| r.parsed.specificity());
        Ok(())
    }

    /// Whether any route's pattern matches `path`, whatever the method.
    pub fn serves(&self, path: &str) -> bool {
        self.routes.iter().any(|r| r.parsed.capture(path).is_some())
    }

    pub fn find(&self, method: &Method, path: &str) -> Match<'_> {
        let mut path_matched = false;
        for route in &self.routes {
            let Some(params) = route.capture(path) else { continue };
            path_matched = true;
            // HEAD is served wherever GET is, as HTTP expects (the worker omits the body).
            let head_as_get = method == Method::HEAD && route.methods.contains(&Method::GET);
            if route.methods.is_empty() || route.methods.contains(method) || head_as_get {
                return Match::Found { function: &route.function, params };
            }
        }
        if path_matched { Match::MethodNotAllowed } else { Match::NotFound }
    }
}

impl Route {
    fn capture(&self, path: &str) -> Option<Map<String, Value>> {
        let captured = self.parsed.capture(path)?;
        Some(captured.into_iter().map(|(name, raw)| (name.to_owned(), Value::String(decode(raw)))).collect())
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(p: &str) -> PathPattern {
        PathPattern::parse(p).unwrap()
    }

    fn table() -> RouteTable {
        let mut t = RouteTable::default();
        t.add(pat("/hello"), &["GET".into()], "hello").unwrap();
        t.add(pat("/items/{id}"), &["GET".into(), "PUT".into()], "item").unwrap();
        t.add(pat("/items/new"), &[], "new-item").unwrap();
        t.add(pat("/files/*"), &[], "files").unwrap();
        t.add(pat("/*"), &["GET".into()], "catch-all").unwrap();
        t
    }

    fn found(t: &RouteTable, method: Method, path: &str) -> (String, Value) {
        match t.find(&method, path) {
            Match::Found { function, params } => (function.to_owned(), Value::Object(params)),
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn matches_most_specific_first() {
        let t = table();
        assert_eq!(found(&t, Method::GET, "/hello").0, "hello");
        assert_eq!(found(&t, Method::GET, "/items/42"), ("item".into(), serde_json::json!({"id": "42"})));
        assert_eq!(found(&t, Method::GET, "/items/a%20b").1, serde_json::json!({"id": "a b"}));
        assert_eq!(found(&t, Method::POST, "/items/new").0, "new-item");
        assert_eq!(found(&t, Method::GET, "/files/a/b.txt"), ("files".into(), serde_json::json!({"*": "a/b.txt"})));
        assert_eq!(found(&t, Method::GET, "/files/").1, serde_json::json!({"*": ""}));
        assert_eq!(found(&t, Method::GET, "/files"), ("files".into(), serde_json::json!({"*": ""})));
        assert_eq!(found(&t, Method::GET, "/filesx").0, "catch-all");
        assert_eq!(found(&t, Method::GET, "/elsewhere/x").0, "catch-all");
    }

    #[test]
    fn reports_wrong_methods_and_misses() {
        let t = table();
        assert_eq!(t.find(&Method::POST, "/hello"), Match::MethodNotAllowed);
        assert_eq!(found(&t, Method::HEAD, "/hello").0, "hello");
        assert_eq!(t.find(&Method::DELETE, "/items/42"), Match::MethodNotAllowed);
        let mut strict = RouteTable::default();
        strict.add(pat("/hello"), &[], "hello").unwrap();
        assert_eq!(strict.find(&Method::GET, "/hello/"), Match::NotFound);
        assert_eq!(strict.find(&Method::GET, "/items//"), Match::NotFound);
    }

    #[test]
    fn refuses_bad_and_overlapping_routes() {
        let mut t = table();
        assert!(t.add(pat("/items/{other}"), &["GET".into()], "dup").unwrap_err().contains("overlaps"));
        t.add(pat("/items/{other}"), &["DELETE".into()], "remover").unwrap();
        assert!(t.add(pat("/_nimbus/x"), &[], "x").unwrap_err().contains("belong to the platform"));
        assert!(t.add(pat("/x"), &["G ET".into()], "x").unwrap_err().contains("invalid method"));
        // Malformed patterns never reach the table: parsing them fails first.
        for bad in ["hello", "/a*", "/a/*/b", "/a/{b c}", "/a/x{b}"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
