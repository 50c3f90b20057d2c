//! `GET /_nimbus/openapi.json`: the app's HTTP surface as OpenAPI 3.1 — every function route and
//! every `[[routes]]` entry, each with the security its policy demands.

use std::collections::BTreeMap;

use nimbus_config::{AuthMode, PathPattern, Segment};
use serde_json::{Map, Value, json};

use crate::gateway::{Gateway, Operation};
use crate::route::{Backend, Route};

const METHODS: [&str; 7] = ["get", "head", "post", "put", "patch", "delete", "options"];

pub(crate) fn document(gateway: &Gateway, functions: &[Operation]) -> Value {
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for op in functions {
        let Ok(pattern) = PathPattern::parse(&op.path) else { continue };
        let methods: Vec<String> = match op.methods.is_empty() {
            true => METHODS.iter().map(|m| m.to_string()).collect(),
            false => op.methods.iter().map(|m| m.to_ascii_lowercase()).collect(),
        };
        let item = paths.entry(openapi_path(&pattern)).or_default();
        for method in methods {
            // A method the route governing the path refuses (405) is not part of the API.
            let Some(route) = governing(gateway, &method, &op.path) else { continue };
            let id = format!("{}_{method}", op.function);
            item.insert(method.clone(), operation(route, &pattern, &id, &format!("function `{}`", op.function)));
        }
    }
    for route in gateway.routes() {
        let (Backend::Upstream(_), Some(pattern)) = (&route.backend, &route.pattern) else { continue };
        let methods: Vec<String> = match route.methods.is_empty() {
            true => METHODS.iter().map(|m| m.to_string()).collect(),
            false => route.methods.iter().map(|m| m.as_str().to_ascii_lowercase()).collect(),
        };
        let item = paths.entry(openapi_path(pattern)).or_default();
        for method in methods {
            let id = format!("proxy_{}_{method}", route.label.trim_matches('/').replace(['/', '{', '}', '*'], "_"));
            item.entry(method).or_insert_with(|| operation(route, pattern, &id, "proxied to an upstream"));
        }
    }
    let mut schemes = Map::new();
    schemes.insert("bearer".into(), json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}));
    for (i, url) in gateway.openid_configuration.iter().enumerate() {
        schemes.insert(format!("oidc{}", i + 1), json!({"type": "openIdConnect", "openIdConnectUrl": url}));
    }
    schemes.insert("apiKey".into(), json!({"type": "apiKey", "in": "header", "name": "x-api-key"}));
    json!({
        "openapi": "3.1.0",
        "info": {"title": gateway.app, "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": schemes,
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}}
                    }}
                }
            }
        }
    })
}

/// The `[[routes]]` entry that governs `method` on a function pattern, as requests find it: the
/// most specific pattern that matches the pattern written as a path, its entry for that method,
/// else the default; `None` when that pattern's entries refuse the method.
fn governing<'g>(gateway: &'g Gateway, method: &str, path: &str) -> Option<&'g Route> {
    let method = axum::http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap_or_default();
    let Some(first) = gateway.routes().iter().find(|r| r.claims(path)) else { return Some(gateway.default_route()) };
    let mut claimants = gateway.routes().iter().filter(|r| r.label == first.label);
    claimants.find(|r| r.allows(&method)).map(|r| r.as_ref())
}

fn operation(route: &Route, pattern: &PathPattern, id: &str, summary: &str) -> Value {
    let mut parameters: Vec<Value> = pattern
        .segments
        .iter()
        .filter_map(|s| match s {
            Segment::Param(name) => {
                Some(json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            }
            Segment::Literal(_) => None,
        })
        .collect();
    if pattern.wildcard {
        parameters.push(json!({
            "name": "rest", "in": "path", "required": true,
            "description": "the rest of the path (may contain `/`)", "schema": {"type": "string"}
        }));
    }
    let error = json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut responses = Map::new();
    responses.insert("default".into(), json!({"description": "the function's answer"}));
    let security = match route.auth {
        AuthMode::Anonymous => json!([]),
        AuthMode::Jwt => {
            responses.insert("401".into(), with_description(&error, "no valid bearer token"));
            if !(route.scopes.is_empty() && route.roles.is_empty() && route.claims.is_empty()) {
                responses
                    .insert("403".into(), with_description(&error, "the token lacks a required scope, role or claim"));
            }
            json!([{"bearer": route.scopes}])
        }
        AuthMode::ApiKey => {
            responses.insert("401".into(), with_description(&error, "no valid API key"));
            json!([{"apiKey": []}])
        }
    };
    if route.rate.is_some() || route.quota.is_some() {
        responses.insert("429".into(), with_description(&error, "rate limit or quota exceeded; see Retry-After"));
    }
    json!({
        "operationId": id,
        "summary": summary,
        "parameters": parameters,
        "security": security,
        "responses": responses,
    })
}

fn with_description(base: &Value, description: &str) -> Value {
    let mut v = base.clone();
    v["description"] = json!(description);
    v
}

/// `/items/{id}/*` as OpenAPI writes it: `/items/{id}/{rest}`.
fn openapi_path(pattern: &PathPattern) -> String {
    let mut out = String::new();
    for s in &pattern.segments {
        out.push('/');
        match s {
            Segment::Literal(l) => out.push_str(l),
            Segment::Param(p) => out.push_str(&format!("{{{p}}}")),
        }
    }
    if pattern.wildcard {
        out.push_str("/{rest}");
    }
    if out.is_empty() { "/".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_paths_as_openapi_does() {
        assert_eq!(openapi_path(&PathPattern::parse("/items/{id}/*").unwrap()), "/items/{id}/{rest}");
        assert_eq!(openapi_path(&PathPattern::parse("/hello").unwrap()), "/hello");
        assert_eq!(openapi_path(&PathPattern::parse("/*").unwrap()), "/{rest}");
    }
}
