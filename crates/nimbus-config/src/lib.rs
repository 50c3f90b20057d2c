//! `nimbus.toml`: the app manifest. Read once at start into a validated [`AppConfig`], or a list of
//! every problem found, each naming the file, line and column (and the closest valid key when a key
//! is unknown). Components receive typed sections; none of them parses TOML.

mod diagnostic;
mod duration;
mod env;
mod grant;
mod pattern;
mod schema;
mod size;
mod validate;

use std::path::{Path, PathBuf};

pub use diagnostic::{ConfigError, Diagnostic};
pub use duration::Duration;
pub use env::EnvString;
pub use grant::Grant;
pub use pattern::{PathPattern, Segment};
pub use schema::*;
pub use size::ByteSize;
pub use validate::TOKEN_ALGORITHMS;

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
pub fn parse(path: &Path, text: &str) -> Result<Manifest, ConfigError> {
    let manifest: Manifest = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ConfigError::Invalid(vec![Diagnostic::at(path, text, span.start, diagnostic::explain(e.message()))])
    })?;
    let problems = validate::check(&manifest);
    if problems.is_empty() {
        return Ok(manifest);
    }
    let doc = toml::de::DeTable::parse(text).ok();
    let mut diagnostics: Vec<Diagnostic> = problems
        .into_iter()
        .map(|p| {
            let offset = doc.as_ref().and_then(|d| diagnostic::offset_of(d, &p.path)).unwrap_or(0);
            Diagnostic::at(path, text, offset, format!("`{}`: {}", p.path_string(), p.message))
        })
        .collect();
    diagnostics.sort_by_key(|d| (d.line, d.column));
    Err(ConfigError::Invalid(diagnostics))
}
