//! The admin token and the routes it guards: `/_nimbus/admin/*` and `/_nimbus/metrics`.
//!
//! The token is generated on a node's first start and kept in `<data dir>/admin-token` with mode
//! 0600; whoever can read that file administers the node.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use nimbus_api::ApiError;
use rand::Rng;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::Platform;

const TOKEN_FILE: &str = "admin-token";
const TOKEN_PREFIX: &str = "nimbus_admin_";

/// The node's admin token. `Debug` never shows it.
#[derive(Clone)]
pub struct AdminToken(Arc<str>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("cannot read the admin token {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write the admin token {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the admin token file {} is damaged (expected one `nimbus_admin_…` line); delete it to generate a new token", path.display())]
    Damaged { path: PathBuf },
}

impl AdminToken {
    /// Loads the token of the data dir, generating it on first start. Returns the token, the
    /// file's path, and whether it was just created.
    pub fn load_or_create(data_dir: &Path) -> Result<(Self, PathBuf, bool), AdminTokenError> {
        let path = data_dir.join(TOKEN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let token = text.trim();
                let valid = token
                    .strip_prefix(TOKEN_PREFIX)
                    .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
                if !valid {
                    return Err(AdminTokenError::Damaged { path });
                }
                // Keep the secret private even if someone loosened the file's permissions.
                let meta =
                    std::fs::metadata(&path).map_err(|source| AdminTokenError::Read { path: path.clone(), source })?;
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), "admin token file was readable by others; setting mode 0600");
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                        .map_err(|source| AdminTokenError::Write { path: path.clone(), source })?;
                }
                Ok((Self(token.into()), path, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes: [u8; 32] = rand::rng().random();
                let token = format!("{TOKEN_PREFIX}{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
                write_private(&path, &token).map_err(|source| AdminTokenError::Write { path: path.clone(), source })?;
                Ok((Self(token.into()), path, true))
            }
            Err(source) => Err(AdminTokenError::Read { path, source }),
        }
    }

    /// Compares in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

/// Writes the file under a temporary name with mode 0600 and renames it into place, so a crash
/// never leaves a half-written token behind.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Puts a component's admin routes (under `/_nimbus/admin/`) behind the admin token.
pub fn admin_only(routes: Router, token: AdminToken) -> Router {
    routes.route_layer(axum::middleware::from_fn_with_state(token, require_admin))
}

pub(crate) fn routes(platform: Platform) -> Router {
    Router::new()
        .route("/_nimbus/metrics", get(metrics))
        .route("/_nimbus/admin/info", get(info))
        .route("/_nimbus/admin/{*rest}", any(|| async { ApiError::not_found("no such admin endpoint") }))
        .route_layer(axum::middleware::from_fn_with_state(platform.admin_token.clone(), require_admin))
        .with_state(platform)
}

async fn require_admin(State(token): State<AdminToken>, req: Request, next: Next) -> Response {
    let presented = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match presented.and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))) {
        None => ApiError::unauthorized(
            "this endpoint needs the admin token: send `Authorization: Bearer <token>` (nimbus up prints where the token is stored)",
        )
        .into_response(),
        Some(t) if token.matches(t.trim()) => next.run(req).await,
        Some(_) => ApiError::unauthorized("the bearer token is not this node's admin token").into_response(),
    }
}

async fn metrics(State(platform): State<Platform>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], platform.metrics.render()).into_response()
}

async fn info(State(platform): State<Platform>) -> Response {
    let node = &platform.node;
    axum::Json(json!({
        "app": node.app,
        "version": node.version,
        "dataDir": node.data_dir,
        "uptimeSeconds": node.started.elapsed().as_secs_f64(),
        "store": {"backend": platform.store.kind().as_str(), "location": platform.store.location()},
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let (a, path, created) = AdminToken::load_or_create(dir.path()).unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (b, _, created) = AdminToken::load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert!(b.matches(&a.0));
        assert!(!a.matches("nimbus_admin_wrong"));
        assert_eq!(format!("{a:?}"), "AdminToken(***)");
    }

    #[test]
    fn damaged_or_loose_token_files_are_handled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        std::fs::write(&path, "").unwrap();
        assert!(matches!(AdminToken::load_or_create(dir.path()), Err(AdminTokenError::Damaged { .. })));
        std::fs::remove_file(&path).unwrap();
        let (token, path, _) = AdminToken::load_or_create(dir.path()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (again, _, _) = AdminToken::load_or_create(dir.path()).unwrap();
        assert!(again.matches(&token.0));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
