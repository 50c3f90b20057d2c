//! Cross-field rules that types alone cannot express. Every problem is collected, not just the
//! first, so that one `nimbus validate` run shows them all.

use std::collections::BTreeSet;

use crate::schema::*;
use crate::{Backend, Origins};

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

/// `routes[0].rate_limit.key`: keys joined by `.`, array elements as `[i]`.
pub(crate) fn path_string(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
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
    check_gateway(&mut c, m);
    check_ai(&mut c, m);
    c.problems
}

fn check_gateway(c: &mut Checker, m: &Manifest) {
    let mut seen = BTreeSet::new();
    for (i, issuer) in m.gateway.issuers.iter().enumerate() {
        if let Err(e) = check_secure_url(&issuer.issuer) {
            c.fail(p!["gateway", "issuers", i, "issuer"], e);
        }
        if !seen.insert(issuer.issuer.trim_end_matches('/')) {
            c.fail(p!["gateway", "issuers", i, "issuer"], format!("\"{}\" is declared twice", issuer.issuer));
        }
        if let Some(uri) = &issuer.jwks_uri
            && let Err(e) = check_secure_url(uri)
        {
            c.fail(p!["gateway", "issuers", i, "jwks_uri"], e);
        }
        let identity_audience = m.identity.as_ref().and_then(|id| id.audience.as_ref());
        if issuer.audience.is_none() && identity_audience.is_none() {
            c.fail(
                p!["gateway", "issuers", i],
                "needs `audience` (the `aud` its tokens carry for this API), or `[identity] audience` to share",
            );
        }
    }
    if let Some(cors) = &m.gateway.cors {
        check_cors(c, p!["gateway", "cors"], cors);
    }
}

/// Token issuers and their keys must be fetched over HTTPS, except on this machine (tests, a
/// second local node).
fn check_secure_url(s: &str) -> Result<(), String> {
    let url = url::Url::parse(s).map_err(|_| format!("\"{s}\" is not a URL"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(format!("\"{s}\" has no host")),
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!("\"{s}\" must use https (plain http is only accepted for localhost)")),
        other => Err(format!("\"{s}\": `{other}` is not http(s)")),
    }
}

fn check_cors(c: &mut Checker, path: Vec<Seg>, cors: &CorsSection) {
    let at = |key: &str| {
        let mut p = path.clone();
        p.push(Seg::from(key));
        p
    };
    if cors.origins.is_empty() {
        c.fail(at("origins"), "list the allowed origins, e.g. [\"https://app.example.com\"], or [\"*\"] for any");
    }
    if cors.origins == Origins::Any && cors.credentials {
        c.fail(at("credentials"), "browsers refuse credentials with origin \"*\"; list the origins");
    }
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
    }
}

fn check_routes(c: &mut Checker, m: &Manifest) {
    let mut seen = BTreeSet::new();
    for (i, r) in m.routes.iter().enumerate() {
        if !seen.insert(r.path.to_string()) {
            c.fail(p!["routes", i, "path"], format!("\"{}\" is declared twice", r.path));
        }
        if r.auth == Some(AuthMode::Anonymous) && !(r.scopes.is_empty() && r.roles.is_empty() && r.claims.is_empty()) {
            c.fail(p!["routes", i, "auth"], "an anonymous route cannot require scopes, roles or claims");
        }
        if r.auth == Some(AuthMode::ApiKey) && !(r.scopes.is_empty() && r.roles.is_empty() && r.claims.is_empty()) {
            c.fail(p!["routes", i, "auth"], "scopes, roles and claims come from tokens: use `auth = \"jwt\"`");
        }
        if let Some(cors) = &r.cors {
            check_cors(c, p!["routes", i, "cors"], cors);
        }
        if r.max_body.is_some_and(|b| b.0 == 0) {
            c.fail(p!["routes", i, "max_body"], "must be at least 1B");
        }
        if r.timeout.is_some_and(|t| t.get().is_zero()) {
            c.fail(p!["routes", i, "timeout"], "must be longer than 0s");
        }
        if r.semantic_cache && r.backend != Backend::Ai {
            c.fail(p!["routes", i, "semantic_cache"], "only routes with `backend = \"ai\"` have a semantic cache");
        } else if r.semantic_cache && m.ai.as_ref().is_none_or(|ai| ai.cache.is_none()) {
            c.fail(p!["routes", i, "semantic_cache"], "needs an `[ai.cache]` section (similarity, ttl, scope)");
        }
        if matches!(r.backend, Backend::Upstream(_)) && r.respond_async {
            c.fail(p!["routes", i, "async"], "only function routes run asynchronously");
        }
        if let Some(prefix) = &r.rewrite_prefix {
            if !prefix.starts_with('/') {
                c.fail(p!["routes", i, "rewrite_prefix"], format!("\"{prefix}\" must start with `/`"));
            }
            if !r.path.wildcard {
                c.fail(p!["routes", i, "rewrite_prefix"], "needs a `path` that ends in `*` (the part kept)");
            }
        }
        for (name, _) in &r.request_headers.set {
            if name.as_str().starts_with("x-nimbus-") {
                c.fail(
                    p!["routes", i, "request_headers", "set"],
                    format!("\"{name}\": x-nimbus-* headers belong to the platform"),
                );
            }
        }
        if let Some(limit) = &r.rate_limit
            && limit.per.get().is_zero()
        {
            c.fail(p!["routes", i, "rate_limit", "per"], "must be longer than 0s");
        }
    }
}

fn check_ai(c: &mut Checker, m: &Manifest) {
    let Some(ai) = &m.ai else {
        if let Some(i) = m.routes.iter().position(|r| r.backend == Backend::Ai) {
            c.fail(p!["routes", i, "backend"], "\"ai\" needs an `[ai]` section with its backends");
        }
        for (name, f) in &m.functions {
            if let Some(i) = f.grants.iter().position(|g| g.component == "ai") {
                c.fail(p!["functions", name, "grants", i], "an `ai:` grant needs an `[ai]` section with its backends");
            }
        }
        return;
    };
    if let Some(cache) = &ai.cache {
        if !(0.5..=1.0).contains(&cache.similarity) {
            c.fail(p!["ai", "cache", "similarity"], "must be from 0.5 to 1.0 (cosine similarity)");
        }
        if !(1..=30 * 86_400).contains(&cache.ttl.get().as_secs()) {
            c.fail(p!["ai", "cache", "ttl"], "must be 1s to 30d");
        }
        if !(1..=1_000_000).contains(&cache.max_entries) {
            c.fail(p!["ai", "cache", "max_entries"], "must be 1 to 1000000");
        }
    }
    if let Some(limit) = &ai.token_limit
        && !(1..=86_400).contains(&limit.per.get().as_secs())
    {
        c.fail(p!["ai", "token_limit", "per"], "must be 1s to 1d (use `quota` for days and months)");
    }
    if let Some(local) = &ai.local {
        if !(1..=64).contains(&local.max_active) {
            c.fail(p!["ai", "local", "max_active"], "must be 1 to 64");
        }
        if local.queue > 10_000 {
            c.fail(p!["ai", "local", "queue"], "at most 10000");
        }
    }
    let mut seen = BTreeSet::new();
    for (i, b) in ai.backends.iter().enumerate() {
        if b.name == "local" {
            c.fail(
                p!["ai", "backends", i, "name"],
                "\"local\" names the embedded model (`[ai.local]`); choose another",
            );
        } else if !is_name(&b.name) {
            c.fail(
                p!["ai", "backends", i, "name"],
                "must be 1-63 characters of lowercase letters, digits, `-` and `_`, starting with a letter or digit",
            );
        } else if !seen.insert(b.name.as_str()) {
            c.fail(p!["ai", "backends", i, "name"], format!("\"{}\" is declared twice", b.name));
        }
        if b.timeout.get().is_zero() {
            c.fail(p!["ai", "backends", i, "timeout"], "must be longer than 0s");
        }
        if let Some(v) = &b.api_version
            && (v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        {
            c.fail(
                p!["ai", "backends", i, "api_version"],
                format!("\"{v}\" is not an API version like \"2024-10-21\""),
            );
        }
        for model in b.models.iter().chain(b.model_map.keys()).chain(b.model_map.values()) {
            if model.is_empty() || model.len() > 256 || model.chars().any(char::is_control) {
                c.fail(p!["ai", "backends", i], format!("{model:?} is not a model name (1-256 characters)"));
            }
        }
    }
    if ai.retries > 10 {
        c.fail(p!["ai", "retries"], "at most 10 (each waits for every backend first)");
    }
    if ai.circuit_breaker.cool_down.get().is_zero() {
        c.fail(p!["ai", "circuit_breaker", "cool_down"], "must be longer than 0s");
    }
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
    let mut names = BTreeSet::new();
    for (i, provider) in id.providers.iter().enumerate() {
        if let Err(e) = check_secure_url(&provider.issuer) {
            c.fail(p!["identity", "providers", i, "issuer"], e);
        }
        if !is_name(&provider.name) {
            c.fail(
                p!["identity", "providers", i, "name"],
                "must be 1-63 characters of lowercase letters, digits, `-` and `_` (it is part of the callback URL)",
            );
        }
        if !names.insert(&provider.name) {
            c.fail(p!["identity", "providers", i, "name"], format!("provider \"{}\" is declared twice", provider.name));
        }
    }
}

fn check_docs(c: &mut Checker, m: &Manifest) {
    for (name, container) in &m.docs.containers {
        if !is_name(name) {
            c.fail(p!["docs", "containers", name], "container names are 1-63 lowercase letters, digits, `-` and `_`");
        }
        for (i, set) in container.unique_keys.iter().enumerate() {
            if set.is_empty() {
                c.fail(p!["docs", "containers", name, "unique_keys", i], "a unique key lists one or more JSON paths");
            }
        }
    }
}

fn is_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}
