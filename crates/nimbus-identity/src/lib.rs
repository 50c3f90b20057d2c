//! The built-in OpenID Connect provider (the AD B2C / Cognito part).
//!
//! In place: RS256 signing keys kept in the store and rotated with `nimbus identity rotate-key`
//! (`keys.rs`), discovery at `/.well-known/openid-configuration`, the JWKS at `/oauth2/jwks`, the
//! token endpoint with the `client_credentials` grant for confidential clients of
//! `[[identity.clients]]`, and introspection (`token.rs`). The gateway trusts this issuer in process
//! through [`Identity::jwks`]. Users, hosted pages, the authorization code flow with PKCE, refresh
//! tokens and federation come next (see ARCHITECTURE.md).
//!
//! Depends on `nimbus-config`, `nimbus-store` and `nimbus-api` only.

mod keys;
mod token;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use nimbus_store::Store;
use serde_json::{Value, json};

pub use keys::KeyError;

/// Default lifetimes, as Azure AD B2C's: one hour for access and ID tokens.
const ACCESS_TTL: u64 = 3600;
const ID_TTL: u64 = 3600;
/// How often each node rereads the signing keys (a rotation on another node, or by the CLI).
const KEY_RELOAD: Duration = Duration::from_secs(30);

pub struct Identity {
    issuer: String,
    audience: String,
    access_ttl: u64,
    keys: keys::KeyRing,
    clients: HashMap<String, token::Client>,
}

impl Identity {
    /// Opens the signing keys (making the first one) for `[identity]`. `issuer` is the public URL
    /// of this node when the manifest does not name one.
    pub async fn start(
        manifest: &nimbus_config::Manifest,
        app: &str,
        issuer: String,
        store: Arc<dyn Store>,
    ) -> Result<Arc<Self>, KeyError> {
        let section = manifest.identity.as_ref();
        let ttl = |d: Option<&Option<nimbus_config::Duration>>, default: u64| {
            d.and_then(|d| d.as_ref()).map_or(default, |d| d.get().as_secs().max(1))
        };
        let access_ttl = ttl(section.map(|s| &s.access_token_ttl), ACCESS_TTL);
        let id_ttl = ttl(section.map(|s| &s.id_token_ttl), ID_TTL);
        let issuer = section.and_then(|s| s.issuer.clone()).unwrap_or(issuer).trim_end_matches('/').to_owned();
        let identity = Arc::new(Self {
            audience: section.and_then(|s| s.audience.clone()).unwrap_or_else(|| default_audience(app)),
            access_ttl,
            keys: keys::KeyRing::open(store, access_ttl.max(id_ttl)).await?,
            clients: section
                .map(|s| s.clients.iter().map(|c| (c.id.clone(), token::Client::from_section(c))).collect())
                .unwrap_or_default(),
            issuer,
        });
        let weak = Arc::downgrade(&identity);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(KEY_RELOAD);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(identity) = weak.upgrade() else { return };
                if let Err(e) = identity.keys.reload().await {
                    tracing::warn!(error = %e, "cannot reread the signing keys");
                }
            }
        });
        Ok(identity)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The public signing keys (a JWK set), for the gateway's in-process trust of this issuer.
    pub fn jwks(&self) -> Value {
        self.keys.jwks()
    }

    /// Rereads the keys from the store (after a rotation elsewhere).
    pub async fn reload_keys(&self) -> Result<(), KeyError> {
        self.keys.reload().await
    }

    /// The OIDC endpoints, at the paths the discovery document announces.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/oauth2/jwks", get(jwks))
            .route("/oauth2/token", post(token::token))
            .route("/oauth2/introspect", post(token::introspect))
            .with_state(self.clone())
    }
}

/// Makes a new signing key and retires the others, in `store` (`nimbus identity rotate-key`).
/// Running nodes pick it up within [`KEY_RELOAD`]; the old keys stay published until tokens they
/// signed have expired.
pub async fn rotate_key(manifest: &nimbus_config::Manifest, store: Arc<dyn Store>) -> Result<String, KeyError> {
    let section = manifest.identity.as_ref();
    let retention = section
        .map(|s| [s.access_token_ttl, s.id_token_ttl].iter().flatten().map(|d| d.get().as_secs()).max().unwrap_or(0))
        .unwrap_or(0)
        .max(ACCESS_TTL.max(ID_TTL));
    keys::KeyRing::open(store, retention).await?.rotate().await
}

fn default_audience(app: &str) -> String {
    format!("api://{app}")
}

async fn discovery(axum::extract::State(identity): axum::extract::State<Arc<Identity>>) -> axum::Json<Value> {
    let base = &identity.issuer;
    axum::Json(json!({
        "issuer": base,
        "jwks_uri": format!("{base}/oauth2/jwks"),
        "token_endpoint": format!("{base}/oauth2/token"),
        "introspection_endpoint": format!("{base}/oauth2/introspect"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "subject_types_supported": ["public"],
        "response_types_supported": ["code"],
    }))
}

async fn jwks(
    axum::extract::State(identity): axum::extract::State<Arc<Identity>>,
) -> impl axum::response::IntoResponse {
    ([(axum::http::header::CACHE_CONTROL, "public, max-age=300")], axum::Json(identity.keys.jwks()))
}
