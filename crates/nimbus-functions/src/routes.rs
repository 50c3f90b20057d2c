//! The route table of function triggers: path patterns with `{param}` segments and an optional
//! trailing `*`, matched most specific first (literals before parameters before wildcards).

use axum::http::Method;
use nimbus_config::{PathPattern, Segment};
use serde_json::{Map, Value};

#[derive(Debug, Clone)]
struct Route {
    pattern: String,
    segments: Vec<Segment>,
    wildcard: bool,
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
    pub fn add(&mut self, pattern: &str, methods: &[String], function: &str) -> Result<(), String> {
        let (segments, wildcard) = parse(pattern)?;
        let methods = methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| format!("invalid method \"{m}\""))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for other in &self.routes {
            let same_shape = other.wildcard == wildcard
                && other.segments.len() == segments.len()
                && other.segments.iter().zip(&segments).all(|(a, b)| match (a, b) {
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
        self.routes.push(Route {
            pattern: pattern.to_owned(),
            segments,
            wildcard,
            methods,
            function: function.to_owned(),
        });
        // Most specific first: no wildcard, then more literal segments, then longer patterns.
        self.routes.sort_by_key(|r| {
            let literals = r.segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count();
            (r.wildcard, std::cmp::Reverse(literals), std::cmp::Reverse(r.segments.len()))
        });
        Ok(())
    }

    pub fn find(&self, method: &Method, path: &str) -> Match<'_> {
        let parts: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
        let mut path_matched = false;
        for route in &self.routes {
            let Some(params) = route.capture(&parts) else { continue };
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
    fn capture(&self, parts: &[&str]) -> Option<Map<String, Value>> {
        let n = self.segments.len();
        // `/files/*` matches `/files`, `/files/` and `/files/a/b` (the SDKs match the same way).
        let fits = if self.wildcard { parts.len() >= n } else { parts.len() == n };
        if !fits {
            return None;
        }
        let mut params = Map::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(lit) if lit == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(_) if part.is_empty() => return None,
                Segment::Param(name) => {
                    params.insert(name.clone(), Value::String(decode(part)));
                }
            }
        }
        if self.wildcard {
            params.insert("*".into(), Value::String(decode(&parts[n..].join("/"))));
        }
        Some(params)
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

fn parse(pattern: &str) -> Result<(Vec<Segment>, bool), String> {
    if pattern.starts_with("/_nimbus/") || pattern == "/_nimbus" {
        return Err(format!("route \"{pattern}\": paths under /_nimbus/ belong to the platform"));
    }
    let parsed = PathPattern::parse(pattern).map_err(|e| format!("route {e}"))?;
    Ok((parsed.segments, parsed.wildcard))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let mut t = RouteTable::default();
        t.add("/hello", &["GET".into()], "hello").unwrap();
        t.add("/items/{id}", &["GET".into(), "PUT".into()], "item").unwrap();
        t.add("/items/new", &[], "new-item").unwrap();
        t.add("/files/*", &[], "files").unwrap();
        t.add("/*", &["GET".into()], "catch-all").unwrap();
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
        strict.add("/hello", &[], "hello").unwrap();
        assert_eq!(strict.find(&Method::GET, "/hello/"), Match::NotFound);
        assert_eq!(strict.find(&Method::GET, "/items//"), Match::NotFound);
    }

    #[test]
    fn refuses_bad_and_overlapping_routes() {
        let mut t = table();
        assert!(t.add("/items/{other}", &["GET".into()], "dup").unwrap_err().contains("overlaps"));
        t.add("/items/{other}", &["DELETE".into()], "remover").unwrap();
        assert!(t.add("hello", &[], "x").is_err());
        assert!(t.add("/_nimbus/x", &[], "x").is_err());
        assert!(t.add("/a*", &[], "x").is_err());
        assert!(t.add("/a/*/b", &[], "x").is_err());
        assert!(t.add("/a/{b c}", &[], "x").is_err());
        assert!(t.add("/a/x{b}", &[], "x").is_err());
    }
}
