//! Sign-in through external OpenID Connect providers (`[[identity.providers]]`): the sign-in page
//! offers "Sign in with …"; `/account/federate/{name}` sends the browser to the provider
//! (authorization code with PKCE, `state` and `nonce`); the callback exchanges the code, verifies
//! the provider's ID token (its JWKS, `iss`, `aud`, `exp`, `nonce`; asymmetric algorithms only),
//! then signs in the user linked to that provider account, else the user with the same *verified*
//! e-mail address (linking them), else a new user.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use nimbus_store::{Expect, Write};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Identity;
use crate::web::digest;

const NS: &str = "identity";
pub(crate) const STATE_TTL: u64 = 600;

pub(crate) struct Provider {
    pub name: String,
    issuer: String,
    client_id: String,
    client_secret: Option<String>,
    scopes: String,
    /// The provider's discovery document, fetched on first use.
    metadata: tokio::sync::OnceCell<Metadata>,
}

#[derive(Clone, Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

#[derive(Serialize, Deserialize)]
struct Pending {
    provider: String,
    /// The authorization request of the client that sent the user to sign in, if any.
    request: String,
    nonce: String,
    verifier: String,
    created: u64,
}

impl Provider {
    pub fn from_section(p: &nimbus_config::ProviderSection) -> Self {
        let scopes = match p.scopes.is_empty() {
            true => "openid email profile".to_owned(),
            false => p.scopes.join(" "),
        };
        Self {
            name: p.name.clone(),
            issuer: p.issuer.trim_end_matches('/').to_owned(),
            client_id: p.client_id.clone(),
            client_secret: p.client_secret.as_ref().map(|s| s.value().to_owned()),
            scopes,
            metadata: tokio::sync::OnceCell::new(),
        }
    }

    async fn metadata(&self, http: &reqwest::Client) -> Result<&Metadata, String> {
        self.metadata
            .get_or_try_init(|| async {
                let url = format!("{}/.well-known/openid-configuration", self.issuer);
                let m: Metadata =
                    get_json(http, &url).await.and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))?;
                if m.issuer.trim_end_matches('/') != self.issuer {
                    return Err(format!("{url} names another issuer"));
                }
                Ok(m)
            })
            .await
    }
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let response = http.get(url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {url} answered {}", response.status()));
    }
    response.json().await.map_err(|e| format!("GET {url}: {e}"))
}

fn callback_uri(id: &Identity, provider: &str) -> String {
    format!("{}/account/federate/{provider}/callback", id.issuer)
}

/// `GET /account/federate/{name}?request=…`: to the provider's authorization endpoint.
pub(crate) async fn start(
    State(id): State<Arc<Identity>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(provider) = id.providers.iter().find(|p| p.name == name) else {
        return id.error_page(StatusCode::NOT_FOUND, "No such sign-in provider.");
    };
    // Each start keeps a record for a while: bounded per source, with authorization requests.
    if id.pending_rate.hit(&id.source(peer, &headers), id.clock()).is_err() {
        metrics::counter!("nimbus_identity_requests_limited_total", "what" => "federate").increment(1);
        return id.error_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-ins were started from this network; try again later.",
        );
    }
    let metadata = match provider.metadata(&id.http).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(provider = %name, error = %e, "cannot reach the provider");
            return id
                .error_page(StatusCode::BAD_GATEWAY, &format!("{name} cannot be reached right now; try again later."));
        }
    };
    let state = nimbus_api::hex(&rand::random::<[u8; 32]>());
    let pending = Pending {
        provider: name.clone(),
        request: q.get("request").cloned().unwrap_or_default(),
        nonce: nimbus_api::hex(&rand::random::<[u8; 16]>()),
        verifier: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()),
        created: id.now(),
    };
    let value = serde_json::to_vec(&pending).expect("serializes");
    if let Err(e) = id.store.commit(vec![Write::put(NS, &format!("fed/{}", digest(&state)), value)]).await {
        tracing::error!(error = %e, "cannot store a federation state");
        return id.error_page(StatusCode::SERVICE_UNAVAILABLE, "Signing in is not possible right now; try again.");
    }
    let challenge =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(pending.verifier.as_bytes()));
    let mut url = match reqwest::Url::parse(&metadata.authorization_endpoint) {
        Ok(u) => u,
        Err(_) => return id.error_page(StatusCode::BAD_GATEWAY, "The provider's authorization endpoint is not a URL."),
    };
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &provider.client_id)
        .append_pair("redirect_uri", &callback_uri(&id, &name))
        .append_pair("scope", &provider.scopes)
        .append_pair("state", &state)
        .append_pair("nonce", &pending.nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    Redirect::to(url.as_str()).into_response()
}

/// `GET /account/federate/{name}/callback?code=…&state=…`.
pub(crate) async fn callback(
    State(id): State<Arc<Identity>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let fail = |e: &str| {
        tracing::warn!(provider = %name, error = %e, "federated sign-in failed");
        id.error_page(StatusCode::BAD_REQUEST, &format!("Signing in with {name} did not work. Go back and try again."))
    };
    let Some(provider) = id.providers.iter().find(|p| p.name == name) else {
        return id.error_page(StatusCode::NOT_FOUND, "No such sign-in provider.");
    };
    let Some(state) = q.get("state") else { return fail("no state") };
    let key = format!("fed/{}", digest(state));
    let Ok(Some(record)) = id.store.get(NS, &key).await else { return fail("unknown state") };
    if id.store.commit(vec![Write::delete(NS, &key).expect(Expect::Version(record.version))]).await.is_err() {
        return fail("state already used");
    }
    let Ok(pending) = serde_json::from_slice::<Pending>(&record.value) else { return fail("unreadable state") };
    if pending.provider != name || pending.created + STATE_TTL <= id.now() {
        return fail("state expired or for another provider");
    }
    if let Some(error) = q.get("error") {
        return fail(&format!("the provider answered {error}"));
    }
    let Some(code) = q.get("code") else { return fail("no code") };
    let claims = match exchange(&id, provider, code, &pending).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let user = match link(&id, provider, &claims).await {
        Ok(u) => u,
        Err(e) => return fail(&e),
    };
    if user.disabled {
        return id.error_page(StatusCode::FORBIDDEN, "This account is disabled.");
    }
    crate::web::signed_in(&id, &user, &pending.request).await
}

/// The code for tokens at the provider, and its verified ID token's claims.
async fn exchange(id: &Identity, provider: &Provider, code: &str, pending: &Pending) -> Result<Value, String> {
    let metadata = provider.metadata(&id.http).await?;
    let redirect_uri = callback_uri(id, &provider.name);
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri.as_str()),
        ("code_verifier", pending.verifier.as_str()),
        ("client_id", provider.client_id.as_str()),
    ];
    if let Some(secret) = &provider.client_secret {
        form.push(("client_secret", secret.as_str()));
    }
    let response = id.http.post(&metadata.token_endpoint).form(&form).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("the token endpoint answered {}", response.status()));
    }
    let tokens: Value = response.json().await.map_err(|e| e.to_string())?;
    let id_token = tokens.get("id_token").and_then(Value::as_str).ok_or("no id_token in the answer")?;
    let header = jsonwebtoken::decode_header(id_token).map_err(|e| e.to_string())?;
    if matches!(
        header.alg,
        jsonwebtoken::Algorithm::HS256 | jsonwebtoken::Algorithm::HS384 | jsonwebtoken::Algorithm::HS512
    ) {
        return Err("the ID token uses a shared-secret algorithm".into());
    }
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_value(get_json(&id.http, &metadata.jwks_uri).await?).map_err(|e| e.to_string())?;
    let jwk = match &header.kid {
        Some(kid) => jwks.find(kid),
        None if jwks.keys.len() == 1 => jwks.keys.first(),
        None => None,
    }
    .ok_or("the ID token's signing key is not in the provider's JWKS")?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[&metadata.issuer]);
    validation.set_audience(&[&provider.client_id]);
    validation.leeway = 60;
    let claims = jsonwebtoken::decode::<Value>(id_token, &key, &validation).map_err(|e| e.to_string())?.claims;
    if claims.get("nonce").and_then(Value::as_str) != Some(pending.nonce.as_str()) {
        return Err("the ID token's nonce differs".into());
    }
    Ok(claims)
}

/// The local user for a provider account: linked before, or with the same verified address
/// (then linked), or new.
async fn link(id: &Identity, provider: &Provider, claims: &Value) -> Result<crate::users::User, String> {
    let sub = claims.get("sub").and_then(Value::as_str).ok_or("the ID token has no sub")?;
    let link_key = format!("fedlink/{}/{}", digest(&provider.name), digest(sub));
    if let Ok(Some(record)) = id.store.get(NS, &link_key).await
        && let Ok(user) = id.users.get(&String::from_utf8_lossy(&record.value)).await
    {
        return Ok(user);
    }
    let email = claims.get("email").and_then(Value::as_str).ok_or("the provider did not share an e-mail address")?;
    let verified = claims.get("email_verified").and_then(Value::as_bool).unwrap_or(false);
    let user = match id.users.by_email(email).await.map_err(|e| e.to_string())? {
        Some(existing) if verified => existing,
        Some(_) => {
            return Err("an account with this address exists and the provider has not verified the address".into());
        }
        None => {
            let name = claims.get("name").and_then(Value::as_str);
            let created = id.users.create(email, None, name).await.map_err(|e| e.to_string())?;
            id.users
                .update(&created.id, |u| {
                    u.email_verified = verified;
                    Ok(())
                })
                .await
                .map_err(|e| e.to_string())?
        }
    };
    id.store.commit(vec![Write::put(NS, &link_key, user.id.clone())]).await.map_err(|e| e.to_string())?;
    Ok(user)
}
