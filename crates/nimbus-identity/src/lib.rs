//! The built-in OpenID Connect provider (the AD B2C / Cognito part).
//!
//! - `keys.rs`: RS256 signing keys kept in the store, rotated with `nimbus identity rotate-key`;
//! - `users.rs`: accounts with argon2id passwords, roles, groups, attributes;
//! - `web.rs` + `pages.rs`: `/oauth2/authorize` (code + PKCE), browser sessions, the hosted
//!   sign-in / sign-up / sign-out / reset / verify pages (plain HTML forms with CSRF tokens),
//!   RP-initiated logout;
//! - `token.rs` + `grants.rs`: the token endpoint (authorization code, refresh with rotation and
//!   reuse detection, client credentials), userinfo, revocation, introspection;
//! - `throttle.rs`: lockouts after failed sign-ins (per account, per source address), back-off
//!   after wrong client secrets (per client and source), limits on what one source may create;
//! - the client's address comes from `nimbus_api::client_ip` (`X-Forwarded-For` only from `[server] trusted_proxies`);
//! - `purge.rs`: deletes expired requests, codes, sessions, links and refresh families;
//! - `mail.rs`: verification and reset mail, by SMTP when configured, else into an outbox.
//!
//! Discovery is at `/.well-known/openid-configuration`. The gateway trusts this issuer in process
//! through [`Identity::jwks`]. `federation.rs` signs users in through external OpenID providers.
//!
//! Depends on `nimbus-config`, `nimbus-store` and `nimbus-api` only.

mod admin;
pub mod clients;
pub mod crypto;
mod federation;
mod grants;
mod keys;
mod mail;
mod pages;
mod purge;
mod throttle;
mod token;
pub mod users;
mod web;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use nimbus_store::Store;
use serde_json::{Value, json};

pub use admin::check_names;
pub use keys::KeyError;
pub use mail::{Mail, outbox};
pub use users::{User, UserError, Users};

/// Default lifetimes, as Azure AD B2C's: one hour for access and ID tokens, 14 days for refresh.
const ACCESS_TTL: u64 = 3600;
const ID_TTL: u64 = 3600;
const REFRESH_TTL: u64 = 14 * 86_400;
/// How often each node rereads the signing keys (a rotation on another node, or by the CLI).
const KEY_RELOAD: Duration = Duration::from_secs(30);
/// Failed sign-ins: 5 per account, 50 per source address, each within 15 minutes, lock 15 minutes.
const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Wrong client secrets per client and source: 5 free, then 30 s, 1 min, 2 min … at most 15 min.
const CLIENT_FREE_FAILURES: u32 = 5;
const CLIENT_BACKOFF: Duration = Duration::from_secs(30);
/// What one source address may start without signing in, per 10 minutes (a pending request
/// lives 10 minutes, so this bounds the live ones): authorization requests and federated sign-ins.
const PENDING_PER_SOURCE: u32 = 60;
/// Sign-ups and password-reset requests per source address and 10 minutes.
const FORMS_PER_SOURCE: u32 = 30;
const SOURCE_WINDOW: Duration = Duration::from_secs(600);
/// Mail nobody signed in asked for (reset links, sign-up notices) per address and hour.
const MAIL_PER_ADDRESS: u32 = 3;

pub struct Identity {
    issuer: String,
    audience: String,
    access_ttl: u64,
    id_ttl: u64,
    refresh_ttl: u64,
    session_ttl: u64,
    code_ttl: u64,
    keys: keys::KeyRing,
    /// The manifest's clients; others are registered in the store (`clients.rs`).
    clients: HashMap<String, Arc<token::Client>>,
    store: Arc<dyn Store>,
    users: Users,
    theme: pages::Theme,
    css: Option<String>,
    signup: bool,
    /// Failed sign-ins per account and per source (see [`LOCKOUT`]).
    signin_throttle: throttle::Lockout,
    ip_throttle: throttle::Lockout,
    /// Wrong client secrets per (client, source): exponential back-off.
    client_throttle: throttle::Backoff,
    /// Pending authorization requests and federation states stored per source.
    pending_rate: throttle::Rate,
    /// Sign-ups and reset requests per source (keyed with the form's name).
    form_rate: throttle::Rate,
    /// Unasked-for mail per address.
    mail_rate: throttle::Rate,
    /// `[server] trusted_proxies`: the peers whose `X-Forwarded-For` names the client.
    trusted_proxies: Vec<nimbus_config::Cidr>,
    purger: purge::Purger,
    providers: Vec<federation::Provider>,
    /// Outbound HTTP (federated providers).
    http: reqwest::Client,
    smtp: Option<Arc<mail::Smtp>>,
    /// Rereading the signing keys; purging what expired; mails being sent.
    pub(crate) tasks: nimbus_api::Tasks,
}

impl Identity {
    /// Opens the signing keys (making the first one) for `[identity]`. `issuer` is the public URL
    /// of this node when the manifest does not name one.
    pub async fn start(
        app: &nimbus_config::AppConfig,
        issuer: String,
        store: Arc<dyn Store>,
    ) -> Result<Arc<Self>, StartError> {
        let manifest = &app.manifest;
        let section = manifest.identity.as_ref();
        let ttl = |d: Option<&Option<nimbus_config::Duration>>, default: u64| {
            d.and_then(|d| d.as_ref()).map_or(default, |d| d.get().as_secs().max(1))
        };
        let access_ttl = ttl(section.map(|s| &s.access_token_ttl), ACCESS_TTL);
        let id_ttl = ttl(section.map(|s| &s.id_token_ttl), ID_TTL);
        let issuer = section.and_then(|s| s.issuer.clone()).unwrap_or(issuer).trim_end_matches('/').to_owned();
        let css = match section.and_then(|s| s.css.as_ref()) {
            Some(path) => {
                let full = app.dir.join(path);
                Some(std::fs::read_to_string(&full).map_err(|e| StartError::Css(full.display().to_string(), e))?)
            }
            None => None,
        };
        let smtp = match section.and_then(|s| s.smtp.as_ref()) {
            Some(smtp) => Some(Arc::new(mail::Smtp::new(smtp).map_err(StartError::Smtp)?)),
            None => None,
        };
        let identity = Arc::new(Self {
            audience: section.and_then(|s| s.audience.clone()).unwrap_or_else(|| default_audience(&app.name())),
            access_ttl,
            id_ttl,
            refresh_ttl: ttl(section.map(|s| &s.refresh_token_ttl), REFRESH_TTL),
            session_ttl: ttl(section.map(|s| &s.session_ttl), web::SESSION_TTL.as_secs()),
            code_ttl: ttl(section.map(|s| &s.code_ttl), web::CODE_TTL),
            keys: keys::KeyRing::open(store.clone(), access_ttl.max(id_ttl)).await?,
            clients: section
                .map(|s| s.clients.iter().map(|c| (c.id.clone(), Arc::new(token::Client::from_section(c)))).collect())
                .unwrap_or_default(),
            users: Users::new(store.clone()),
            store,
            theme: pages::Theme {
                app: section.and_then(|s| s.display_name.clone()).unwrap_or_else(|| app.name()),
                has_css: css.is_some(),
            },
            css,
            signup: section.is_none_or(|s| s.signup),
            signin_throttle: throttle::Lockout::new(5, LOCKOUT, LOCKOUT),
            ip_throttle: throttle::Lockout::new(50, LOCKOUT, LOCKOUT),
            client_throttle: throttle::Backoff::new(CLIENT_FREE_FAILURES, CLIENT_BACKOFF, LOCKOUT, LOCKOUT),
            pending_rate: throttle::Rate::new(PENDING_PER_SOURCE, SOURCE_WINDOW),
            form_rate: throttle::Rate::new(FORMS_PER_SOURCE, SOURCE_WINDOW),
            mail_rate: throttle::Rate::new(MAIL_PER_ADDRESS, Duration::from_secs(3600)),
            trusted_proxies: manifest.server.trusted_proxies.clone(),
            purger: purge::Purger::new(),
            providers: section
                .map(|s| s.providers.iter().map(federation::Provider::from_section).collect())
                .unwrap_or_default(),
            smtp,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| StartError::Http(e.to_string()))?,
            issuer,
            tasks: nimbus_api::Tasks::new("identity"),
        });
        // Every node rereads the keys, so a rotation made by another node or the CLI reaches it.
        let weak = Arc::downgrade(&identity);
        let mut first = true;
        identity.tasks.every("key-reload", KEY_RELOAD, move || {
            let (weak, skip) = (weak.clone(), std::mem::take(&mut first));
            async move {
                if let Some(identity) = weak.upgrade().filter(|_| !skip)
                    && let Err(e) = identity.keys.reload().await
                {
                    tracing::warn!(error = %e, "cannot reread the signing keys");
                }
            }
        });
        // One node at a time deletes what expired (under a store lease).
        let weak = Arc::downgrade(&identity);
        identity.tasks.every("purge", purge::PURGE_EVERY, move || {
            let weak = weak.clone();
            async move {
                if let Some(identity) = weak.upgrade() {
                    identity.purge_round().await;
                }
            }
        });
        Ok(identity)
    }

    /// Now, by the store's clock (which tests move forward to expire records).
    pub(crate) fn clock(&self) -> Duration {
        self.store.clock().now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
    }

    /// [`Identity::clock`] in whole seconds, as records keep their times.
    pub(crate) fn now(&self) -> u64 {
        self.clock().as_secs()
    }

    /// The key of the request's source address (see `source.rs`).
    pub(crate) fn source(&self, peer: SocketAddr, headers: &axum::http::HeaderMap) -> String {
        nimbus_api::source_key(nimbus_api::client_ip(peer.ip(), headers, &self.trusted_proxies))
    }

    /// A client by id: the manifest's, else one registered in the store.
    pub(crate) async fn client(&self, id: &str) -> Option<Arc<token::Client>> {
        match self.clients.get(id) {
            Some(c) => Some(c.clone()),
            None => clients::load(self.store.as_ref(), id).await,
        }
    }

    /// Stops rereading the keys and purging, and waits for mails being sent, within `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.tasks.shutdown(grace).await;
    }

    pub fn users(&self) -> &Users {
        &self.users
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

    /// `/_nimbus/admin/users` and `/_nimbus/admin/outbox`, for the binary to put behind the admin token.
    pub fn admin_router(self: &Arc<Self>) -> Router {
        admin::router(self.clone())
    }

    /// The OIDC endpoints, at the paths the discovery document announces.
    pub fn router(self: &Arc<Self>) -> Router {
        // Endpoints single-page apps call from their own origin answer OPTIONS, so that a CORS
        // layer the binary puts around this router sees the preflight.
        let preflight = || async { axum::http::StatusCode::NO_CONTENT };
        Router::new()
            .route("/.well-known/openid-configuration", get(discovery).options(preflight))
            .route("/oauth2/jwks", get(jwks).options(preflight))
            .route("/oauth2/authorize", get(web::authorize))
            .route("/oauth2/token", post(token::token).options(preflight))
            .route("/oauth2/userinfo", get(grants::userinfo).post(grants::userinfo).options(preflight))
            .route("/oauth2/revoke", post(grants::revoke).options(preflight))
            .route("/oauth2/introspect", post(token::introspect))
            .route("/oauth2/logout", get(web::logout).post(web::logout_confirmed))
            .route("/account", get(web::account))
            .route("/account/signin", get(web::signin_page).post(web::signin))
            .route("/account/signup", get(web::signup_page).post(web::signup))
            .route("/account/signout", get(web::signout_page).post(web::signout))
            .route("/account/reset", get(web::reset_page).post(web::reset))
            .route("/account/reset/confirm", get(web::reset_confirm_page).post(web::reset_confirm))
            .route("/account/verify", get(web::verify))
            .route("/account/theme.css", get(web::theme_css))
            .route("/account/federate/{name}", get(federation::start))
            .route("/account/federate/{name}/callback", get(federation::callback))
            // Forms and token requests are small; a large body is an attack, not a user.
            .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
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

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("[identity] css: cannot read {0}: {1}")]
    Css(String, std::io::Error),
    #[error("cannot make an HTTP client: {0}")]
    Http(String),
    #[error("{0}")]
    Smtp(String),
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
        "authorization_endpoint": format!("{base}/oauth2/authorize"),
        "userinfo_endpoint": format!("{base}/oauth2/userinfo"),
        "revocation_endpoint": format!("{base}/oauth2/revoke"),
        "end_session_endpoint": format!("{base}/oauth2/logout"),
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "email", "email_verified", "name", "roles", "groups"],
        "response_modes_supported": ["query"],
        "prompt_values_supported": ["none", "login"],
        "authorization_response_iss_parameter_supported": true,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
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
