//! Cross-field rules that types alone cannot express. Every problem is collected, not just the
//! first, so that one `nimbus validate` run shows them all.

use std::collections::BTreeSet;

use crate::schema::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

#[derive(Debug)]
pub(crate) struct Problem {
    pub path: Vec<Seg>,
    pub message: String,
}

impl Problem {
    pub fn path_string(&self) -> String {
        let mut out = String::new();
        for seg in &self.path {
            match seg {
                Seg::Key(k) if out.is_empty() => out.push_str(k),
                Seg::Key(k) => {
                    out.push('.');
                    out.push_str(k);
                }
                Seg::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }
}

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

/// Builds a path from keys and indexes: `p!["functions", name, "min_instances"]`.
macro_rules! p {
    ($($seg:expr),* $(,)?) => { vec![$(Seg::from($seg)),*] };
}

impl From<&str> for Seg {
    fn from(k: &str) -> Self {
        Seg::Key(k.to_owned())
    }
}
impl From<&String> for Seg {
    fn from(k: &String) -> Self {
        Seg::Key(k.clone())
    }
}
impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

impl Checker {
    fn fail(&mut self, path: Vec<Seg>, message: impl Into<String>) {
        self.problems.push(Problem { path, message: message.into() });
    }
}

pub(crate) fn check(m: &Manifest) -> Vec<Problem> {
    let mut c = Checker::default();
    if let Some(name) = &m.app.name
        && !is_name(name)
    {
        c.fail(
            p!["app", "name"],
            "must be 1-63 characters of lowercase letters, digits, `-` and `_`, starting with a letter or digit",
        );
    }
    if m.server.host.parse::<std::net::IpAddr>().is_err() && m.server.host != "localhost" {
        c.fail(
            p!["server", "host"],
            format!("\"{}\" is not an IP address (e.g. \"127.0.0.1\" or \"0.0.0.0\")", m.server.host),
        );
    }
    for (key, d) in [("request_timeout", m.server.request_timeout), ("async_retention", m.server.async_retention)] {
        if d.get().is_zero() {
            c.fail(p!["server", key], "must be longer than 0s");
        }
    }
    check_workers(&mut c, m);
    check_functions(&mut c, m);
    check_routes(&mut c, m);
    check_identity(&mut c, m);
    check_docs(&mut c, m);
    check_store(&mut c, m);
    if let Some(ai) = &m.ai {
        for (i, b) in ai.backends.iter().enumerate() {
            if !is_http_url(&b.url) {
                c.fail(p!["ai", "backends", i, "url"], format!("\"{}\" is not an http(s) URL", b.url));
            }
        }
        if let Some(limit) = &ai.token_limit
            && limit.tokens == 0
        {
            c.fail(p!["ai", "token_limit", "tokens"], "must be at least 1");
        }
    }
    for (i, issuer) in m.gateway.issuers.iter().enumerate() {
        if !is_http_url(&issuer.issuer) {
            c.fail(p!["gateway", "issuers", i, "issuer"], format!("\"{}\" is not an http(s) URL", issuer.issuer));
        }
        if issuer.algorithms.iter().any(|a| a.eq_ignore_ascii_case("none")) {
            c.fail(p!["gateway", "issuers", i, "algorithms"], "`none` is never an allowed algorithm");
        }
    }
    c.problems
}

fn check_workers(c: &mut Checker, m: &Manifest) {
    for (name, w) in &m.workers {
        if !is_name(name) {
            c.fail(p!["workers", name], "worker names are lowercase letters, digits, `-` and `_`");
        }
        match w.runtime {
            Runtime::Command => {
                if w.command.is_empty() {
                    c.fail(
                        p!["workers", name, "runtime"],
                        "a command worker needs `command`, e.g. [\"uvicorn\", \"main:app\", \"--uds\", \"{socket}\"]",
                    );
                } else if !w.command.iter().any(|a| a.contains("{socket}")) {
                    c.fail(
                        p!["workers", name, "command"],
                        "no argument contains `{socket}`: the server must listen on the socket nimbus gives it",
                    );
                }
                if w.routes.is_empty() {
                    c.fail(
                        p!["workers", name, "runtime"],
                        "a command worker needs `routes`: the paths its server answers",
                    );
                }
                if w.entry.is_some() {
                    c.fail(
                        p!["workers", name, "entry"],
                        "`entry` is for python and node workers; a command worker runs `command`",
                    );
                }
            }
            Runtime::Python | Runtime::Node => {
                if w.entry.is_none() {
                    c.fail(
                        p!["workers", name, "runtime"],
                        "missing `entry`: the file that declares the functions, e.g. \"functions/app.py\"",
                    );
                }
                if !w.command.is_empty() {
                    c.fail(p!["workers", name, "command"], "`command` is only for `runtime = \"command\"`");
                }
                if !w.routes.is_empty() {
                    c.fail(
                        p!["workers", name, "routes"],
                        "SDK workers declare their routes in code; `routes` is only for `runtime = \"command\"`",
                    );
                }
            }
        }
        if w.start_timeout.is_some_and(|t| t.get().is_zero()) {
            c.fail(p!["workers", name, "start_timeout"], "must be longer than 0s");
        }
        if w.python.is_some() && w.runtime != Runtime::Python {
            c.fail(p!["workers", name, "python"], "`python` only applies to `runtime = \"python\"`");
        }
        if w.node.is_some() && w.runtime != Runtime::Node {
            c.fail(p!["workers", name, "node"], "`node` only applies to `runtime = \"node\"`");
        }
        for key in w.env.keys() {
            if key.starts_with("NIMBUS_") {
                c.fail(p!["workers", name, "env", key], "`NIMBUS_*` variables are set by nimbus itself");
            }
        }
        for (i, route) in w.routes.iter().enumerate() {
            if let Err(e) = crate::PathPattern::parse(route) {
                c.fail(p!["workers", name, "routes", i], e);
            }
        }
    }
}

fn check_functions(c: &mut Checker, m: &Manifest) {
    for (name, f) in &m.functions {
        if let Some(max) = f.max_instances {
            if max == 0 {
                c.fail(p!["functions", name, "max_instances"], "must be at least 1");
            } else if f.min_instances > max {
                c.fail(
                    p!["functions", name, "min_instances"],
                    format!("min_instances ({}) is greater than max_instances ({max})", f.min_instances),
                );
            }
        }
        if f.concurrency == Some(0) {
            c.fail(p!["functions", name, "concurrency"], "must be at least 1");
        }
        for (key, d) in [("timeout", f.timeout), ("queue_timeout", f.queue_timeout), ("idle_timeout", f.idle_timeout)] {
            if d.is_some_and(|t| t.get().is_zero()) {
                c.fail(p!["functions", name, key], "must be longer than 0s");
            }
        }
        for (i, grant) in f.grants.iter().enumerate() {
            if let Err(e) = check_grant(grant) {
                c.fail(p!["functions", name, "grants", i], e);
            }
        }
    }
}

/// Grants read `docs:<container>:r|rw`, `blob:<container>:r|rw`, `queues:<name>`, `ai:<model or *>`,
/// `durable:<orchestration or *>`.
fn check_grant(grant: &str) -> Result<(), String> {
    let parts: Vec<&str> = grant.split(':').collect();
    let ok = match parts.as_slice() {
        ["docs" | "blob", name, "r" | "rw"] => !name.is_empty(),
        ["queues" | "ai" | "durable", name] => !name.is_empty(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid grant \"{grant}\": expected \"docs:<container>:r|rw\", \"blob:<container>:r|rw\", \"queues:<name>\", \"ai:<model>\" or \"durable:<name>\""
        ))
    }
}

fn check_routes(c: &mut Checker, m: &Manifest) {
    const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    let mut seen = BTreeSet::new();
    for (i, r) in m.routes.iter().enumerate() {
        if let Err(e) = crate::PathPattern::parse(&r.path) {
            c.fail(p!["routes", i, "path"], e);
        }
        if !seen.insert(&r.path) {
            c.fail(p!["routes", i, "path"], format!("\"{}\" is declared twice", r.path));
        }
        for method in &r.methods {
            if !METHODS.contains(&method.as_str()) {
                c.fail(p!["routes", i, "methods"], format!("\"{method}\" is not one of {}", METHODS.join(", ")));
            }
        }
        if r.auth == Some(AuthMode::Anonymous) && !(r.scopes.is_empty() && r.roles.is_empty()) {
            c.fail(p!["routes", i, "auth"], "an anonymous route cannot require scopes or roles");
        }
        if let Some(limit) = &r.rate_limit {
            if limit.requests == 0 {
                c.fail(p!["routes", i, "rate_limit", "requests"], "must be at least 1");
            }
            if limit.per.get().is_zero() {
                c.fail(p!["routes", i, "rate_limit", "per"], "must be longer than 0s");
            }
            if !is_limit_key(&limit.key) {
                c.fail(
                    p!["routes", i, "rate_limit", "key"],
                    format!(
                        "\"{}\" is not a limit key: use ip, sub, api_key, header:<name> or claim:<name>",
                        limit.key
                    ),
                );
            }
        }
    }
}

fn is_limit_key(key: &str) -> bool {
    matches!(key, "ip" | "sub" | "api_key")
        || key.strip_prefix("header:").is_some_and(|h| !h.is_empty())
        || key.strip_prefix("claim:").is_some_and(|h| !h.is_empty())
}

fn check_identity(c: &mut Checker, m: &Manifest) {
    let Some(id) = &m.identity else { return };
    let mut ids = BTreeSet::new();
    for (i, client) in id.clients.iter().enumerate() {
        if client.id.is_empty() {
            c.fail(p!["identity", "clients", i, "id"], "must not be empty");
        }
        if !ids.insert(&client.id) {
            c.fail(p!["identity", "clients", i, "id"], format!("client id \"{}\" is declared twice", client.id));
        }
        match (client.public, &client.secret) {
            (true, Some(_)) => {
                c.fail(p!["identity", "clients", i, "secret"], "a public client has no secret (it uses PKCE)")
            }
            (false, None) => c.fail(
                p!["identity", "clients", i],
                "a confidential client needs `secret` (or set `public = true` for a browser app)",
            ),
            _ => {}
        }
        if client.public && client.grant_types.contains(&GrantType::ClientCredentials) {
            c.fail(p!["identity", "clients", i, "grant_types"], "client_credentials needs a confidential client");
        }
        for (j, uri) in client.redirect_uris.iter().enumerate() {
            match url::Url::parse(uri) {
                Ok(u) if u.fragment().is_none() => {}
                Ok(_) => c.fail(
                    p!["identity", "clients", i, "redirect_uris", j],
                    "a redirect URI must not contain a fragment",
                ),
                Err(e) => c.fail(
                    p!["identity", "clients", i, "redirect_uris", j],
                    format!("\"{uri}\" is not an absolute URI: {e}"),
                ),
            }
        }
    }
    for (i, provider) in id.providers.iter().enumerate() {
        if !is_http_url(&provider.issuer) {
            c.fail(p!["identity", "providers", i, "issuer"], format!("\"{}\" is not an http(s) URL", provider.issuer));
        }
    }
}

fn check_docs(c: &mut Checker, m: &Manifest) {
    for (name, container) in &m.docs.containers {
        if !is_name(name) {
            c.fail(p!["docs", "containers", name], "container names are 1-63 lowercase letters, digits, `-` and `_`");
        }
        if !is_json_path(&container.partition_key) {
            c.fail(
                p!["docs", "containers", name, "partition_key"],
                format!("\"{}\" is not a JSON path like \"/userId\"", container.partition_key),
            );
        }
        for (i, path) in container.indexes.iter().enumerate() {
            if !is_json_path(path) {
                c.fail(
                    p!["docs", "containers", name, "indexes", i],
                    format!("\"{path}\" is not a JSON path like \"/status\""),
                );
            }
        }
        for (i, set) in container.unique_keys.iter().enumerate() {
            if set.is_empty() || !set.iter().all(|p| is_json_path(p)) {
                c.fail(
                    p!["docs", "containers", name, "unique_keys", i],
                    "each unique key is a non-empty list of JSON paths",
                );
            }
        }
    }
}

fn check_store(c: &mut Checker, m: &Manifest) {
    if let Some(url) = &m.store.url {
        let v = url.value();
        let ok = v == "sqlite"
            || v.starts_with("sqlite://")
            || v.starts_with("postgres://")
            || v.starts_with("postgresql://");
        if !ok {
            c.fail(
                p!["store", "url"],
                format!(
                    "\"{}\" is not a store URL: use \"sqlite\", \"sqlite:///path/file.db\" or \"postgres://…\"",
                    url.written()
                ),
            );
        }
    }
    if let Some(blobs) = &m.store.blobs {
        let v = blobs.value();
        let ok = v == "file" || v.starts_with("file://") || v.starts_with("s3://") || v.starts_with("az://");
        if !ok {
            c.fail(p!["store", "blobs"], format!("\"{}\" is not a blob store URL: use \"file\", \"file:///path\", \"s3://bucket\" or \"az://container\"", blobs.written()));
        }
    }
}

fn is_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn is_json_path(s: &str) -> bool {
    s.len() > 1 && s.starts_with('/') && !s.ends_with('/') && !s.contains("//")
}

fn is_http_url(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}
