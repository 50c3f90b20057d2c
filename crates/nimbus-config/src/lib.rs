//! `nimbus.toml`: the app manifest. Read once at start into a validated [`AppConfig`], or the
//! problems found, each naming the file, line, column and key path (and the closest valid key when
//! a key is unknown). Every value is read into its type here (grants, methods, path patterns, limit
//! keys, backends, header names, store URLs, JSON paths); components take the types and parse
//! nothing again. Sections of components this version does not have are refused, not ignored.

mod diagnostic;
mod duration;
mod env;
mod grant;
mod json_path;
mod pattern;
mod period;
mod policy;
mod schema;
mod size;
mod store;
mod validate;
mod web;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use diagnostic::{ConfigError, Diagnostic};
pub use duration::Duration;
pub use env::EnvString;
pub use grant::Grant;
pub use json_path::JsonPath;
pub use pattern::{PathPattern, Segment};
pub use policy::{Backend, LimitKey, TokenAlgorithm};
pub use schema::*;
pub use size::ByteSize;
pub use store::{BlobsUrl, StoreUrl};
pub use web::{ListenHost, METHODS, Origins, parse_method};

/// The manifest's file name inside an app folder.
pub const MANIFEST_FILE: &str = "nimbus.toml";

/// A validated app: the folder, the manifest (or defaults when the folder has none) and the
/// values derived from them.
#[derive(Debug)]
pub struct AppConfig {
    /// The app folder (absolute).
    pub dir: PathBuf,
    /// The manifest file, if the folder has one.
    pub manifest_path: Option<PathBuf>,
    pub manifest: Manifest,
}

impl AppConfig {
    /// The app's name: `[app] name`, or the folder's name.
    pub fn name(&self) -> String {
        self.manifest.app.name.clone().unwrap_or_else(|| {
            self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "app".into())
        })
    }
}

/// Reads and validates the manifest of the app folder `dir`. A folder without `nimbus.toml` gets
/// the defaults; a folder that does not exist is an error.
pub fn load(dir: &Path) -> Result<AppConfig, ConfigError> {
    let dir = std::path::absolute(dir).map_err(|e| ConfigError::io(dir, e))?;
    if !dir.is_dir() {
        return Err(ConfigError::NotADirectory(dir));
    }
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(AppConfig { dir, manifest_path: None, manifest: Manifest::default() });
        }
        Err(e) => return Err(ConfigError::io(&path, e)),
    };
    let manifest = parse(&path, &text)?;
    Ok(AppConfig { dir, manifest_path: Some(path), manifest })
}

/// Parses and validates manifest text; `path` is only used to name the file in errors.
///
/// Three stages, each reporting before the next runs: sections this version does not have (every
/// one), then the values (the first that does not read, with its key path), then the cross-field
/// rules (every one).
pub fn parse(path: &Path, text: &str) -> Result<Manifest, ConfigError> {
    let located = |offset: usize, at: &[validate::Seg], message: String| {
        let message = match at.is_empty() {
            true => message,
            false => format!("{}: {message}", validate::path_string(at)),
        };
        Diagnostic::at(path, text, offset, message)
    };
    let doc = toml::de::DeTable::parse(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        ConfigError::Invalid(vec![located(offset, &[], diagnostic::explain(e.message()))])
    })?;
    let unbuilt: Vec<Diagnostic> = doc
        .get_ref()
        .iter()
        .filter_map(|(key, _)| {
            let missing = unbuilt(key.get_ref())?;
            let at = [validate::Seg::Key(key.get_ref().to_string())];
            Some(located(key.span().start, &at, format!("{missing}; remove the `[{}]` section", key.get_ref())))
        })
        .collect();
    if !unbuilt.is_empty() {
        return Err(ConfigError::Invalid(sorted(unbuilt)));
    }
    let manifest = Manifest::deserialize(toml::de::Deserializer::from(doc.clone())).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let at = diagnostic::path_at(&doc, offset);
        ConfigError::Invalid(vec![located(offset, &at, diagnostic::explain(e.message()))])
    })?;
    let problems = validate::check(&manifest);
    if problems.is_empty() {
        let mut manifest = manifest;
        add_implicit_routes(&mut manifest);
        return Ok(manifest);
    }
    let diagnostics = problems
        .into_iter()
        .map(|p| located(diagnostic::offset_of(&doc, &p.path).unwrap_or(0), &p.path, p.message))
        .collect();
    Err(ConfigError::Invalid(sorted(diagnostics)))
}

/// `[ai]` with no route of `backend = "ai"` serves at `/v1/*` (where OpenAI's SDKs look), with the
/// default policy of a route: a valid token, and the semantic cache when `[ai.cache]` is set. A
/// route the manifest declares at `/v1/*` wins.
fn add_implicit_routes(manifest: &mut Manifest) {
    let declared = manifest.routes.iter().any(|r| r.backend == Backend::Ai || r.path.to_string() == "/v1/*");
    if let Some(ai) = &manifest.ai
        && !declared
    {
        let mut route = RouteSection::new(PathPattern::parse("/v1/*").expect("a valid pattern"), Backend::Ai);
        route.semantic_cache = ai.cache.is_some();
        manifest.routes.push(route);
    }
}

fn sorted(mut diagnostics: Vec<Diagnostic>) -> Vec<Diagnostic> {
    diagnostics.sort_by_key(|d| (d.line, d.column));
    diagnostics
}

/// Reads a string through `parse` inside the deserializer's visit, so that an error carries the
/// string's own span (an array element's, not the whole array's) and so its key path.
pub(crate) fn from_str<'de, D, T, F>(deserializer: D, parse: F) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    F: FnOnce(&str) -> Result<T, String>,
{
    struct Visitor<F>(F);
    impl<T, F: FnOnce(&str) -> Result<T, String>> serde::de::Visitor<'_> for Visitor<F> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(Visitor(parse))
}

/// Top-level sections of components this version does not have: refused, not ignored (nothing
/// would read them), and so are grants for them.
pub(crate) fn unbuilt(section: &str) -> Option<&'static str> {
    match section {
        "queues" => {
            Some("declaring queues is not in this version of nimbus yet (a queue exists once a message is sent to it)")
        }
        _ => None,
    }
}
