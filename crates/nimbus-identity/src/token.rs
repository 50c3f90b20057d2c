//! The back channel: `POST /oauth2/token` (RFC 6749 §3.2) with the `authorization_code` (PKCE
//! S256), `refresh_token` (rotated on every use; a rotated token that comes back revokes its whole
//! family) and `client_credentials` grants; `/oauth2/userinfo`; `POST /oauth2/revoke` (RFC 7009);
//! `POST /oauth2/introspect` (RFC 7662). Confidential clients authenticate with HTTP Basic or
//! `client_id` + `client_secret` in the form (secrets compared in constant time); public clients
//! name themselves with `client_id` and prove the code with PKCE. Errors use OAuth's own shape:
//! `{"error": "invalid_client", "error_description": "…"}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Identity;
use crate::keys::now;

/// An OAuth error answer.
#[derive(Debug)]
pub(crate) struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
    /// The client used HTTP Basic: a 401 then carries a `WWW-Authenticate: Basic` challenge.
    basic: bool,
    /// Seconds for `Retry-After`.
    retry_after: Option<u64>,
}

impl OAuthError {
    pub fn new(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
            basic: false,
            retry_after: None,
        }
    }

    /// A body the form extractor refused: too large (413) or not a form (400).
    pub fn rejected(rejection: &axum::extract::rejection::FormRejection) -> Self {
        let mut e = Self::new("invalid_request", "the body must be application/x-www-form-urlencoded");
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            e.status = StatusCode::PAYLOAD_TOO_LARGE;
            e.description = "the request body is too large".into();
        }
        e
    }

    /// A 500 whose detail went to the log.
    pub fn server(description: &str) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "server_error",
            description: description.to_owned(),
            basic: false,
            retry_after: None,
        }
    }

    fn invalid_client(basic: bool) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: "client authentication failed".into(),
            basic,
            retry_after: None,
        }
    }

    /// Too many wrong secrets from this source for this client: 429 until `wait` has passed.
    fn throttled(wait: std::time::Duration) -> Self {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            error: "invalid_client",
            description: format!("too many failed attempts; retry in {seconds} s"),
            basic: false,
            retry_after: Some(seconds),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, axum::Json(json!({"error": self.error, "error_description": self.description})))
                .into_response();
        no_store(response.headers_mut());
        if self.basic {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"nimbus\""));
        }
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub(crate) fn no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// What a client may do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grants {
    pub authorization_code: bool,
    pub refresh_token: bool,
    pub client_credentials: bool,
}

/// A client as the manifest declares it.
pub(crate) struct Client {
    pub id: String,
    pub public: bool,
    /// SHA-256 of the secret, so that comparisons take the same time whatever its length.
    secret: Option<[u8; 32]>,
    pub redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub grants: Grants,
}

impl Client {
    /// Without `grant_types`, a public client gets the code flow and refresh tokens, a
    /// confidential one those and client credentials.
    pub fn from_section(c: &nimbus_config::ClientSection) -> Self {
        use nimbus_config::GrantType;
        let has = |g| c.grant_types.is_empty() || c.grant_types.contains(&g);
        Self {
            id: c.id.clone(),
            public: c.public,
            secret: c.secret.as_ref().map(|s| Sha256::digest(s.value().as_bytes()).into()),
            redirect_uris: c.redirect_uris.clone(),
            scopes: c.scopes.clone(),
            grants: Grants {
                authorization_code: has(GrantType::AuthorizationCode),
                refresh_token: has(GrantType::RefreshToken),
                client_credentials: !c.public && has(GrantType::ClientCredentials),
            },
        }
    }

    /// A client that lists no scopes may ask for the OpenID ones.
    pub fn allows_scope(&self, scope: &str) -> bool {
        match self.scopes.is_empty() {
            true => matches!(scope, "openid" | "profile" | "email" | "offline_access"),
            false => self.scopes.iter().any(|s| s == scope),
        }
    }

    pub fn new(
        id: String,
        public: bool,
        secret: Option<[u8; 32]>,
        redirect_uris: Vec<String>,
        scopes: Vec<String>,
        grants: Grants,
    ) -> Self {
        Self { id, public, secret, redirect_uris, scopes, grants }
    }

    fn secret_matches(&self, presented: &str) -> bool {
        let Some(expected) = &self.secret else { return false };
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(presented.ct_eq(expected))
    }
}

/// The client a request authenticates as: HTTP Basic (RFC 6749 §2.3.1, form-urlencoded parts) or
/// `client_id` + `client_secret` in the body; never both.
pub(crate) async fn authenticate(
    identity: &Identity,
    peer: SocketAddr,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Arc<Client>, OAuthError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' ').filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic")).map(|(_, c)| c));
    let (id, secret, via_basic) = match (basic, form.get("client_secret")) {
        (Some(_), Some(_)) => return Err(OAuthError::new("invalid_request", "use one client authentication method")),
        (Some(credentials), None) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credentials.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(OAuthError::invalid_client(true))?;
            let (id, secret) = decoded.split_once(':').ok_or(OAuthError::invalid_client(true))?;
            (form_decode(id), form_decode(secret), true)
        }
        (None, Some(secret)) => {
            let id = form.get("client_id").ok_or_else(|| OAuthError::new("invalid_request", "client_id is missing"))?;
            (id.clone(), secret.clone(), false)
        }
        (None, None) => {
            // A public client only names itself; what it presents (a PKCE verifier, its refresh
            // token) is the proof.
            let client = match form.get("client_id") {
                Some(id) => identity.client(id).await,
                None => None,
            };
            return match client {
                Some(client) if client.public => Ok(client),
                _ => Err(OAuthError::invalid_client(false)),
            };
        }
    };
    let client = identity.client(&id).await;
    // Guessing is braked per client and source address (unknown client ids share one key per
    // source): a few wrong secrets are free, then each one makes that source wait twice as long
    // (30 s … 15 min). The right secret from another source, or from this one once the wait is
    // over, still works: one guesser cannot lock a client out for everyone behind its proxy.
    let key = format!("{}|{}", client.as_ref().map_or("?", |c| c.id.as_str()), identity.source(peer, headers));
    if let Some(wait) = identity.client_throttle.locked(&key, identity.clock()) {
        metrics::counter!("nimbus_identity_client_auth_failures_total", "outcome" => "throttled").increment(1);
        return Err(OAuthError::throttled(wait));
    }
    match client {
        Some(client) if client.secret_matches(&secret) => Ok(client),
        _ => {
            identity.client_throttle.failed(&key, identity.clock());
            metrics::counter!("nimbus_identity_client_auth_failures_total", "outcome" => "wrong").increment(1);
            Err(OAuthError::invalid_client(via_basic))
        }
    }
}

fn form_decode(s: &str) -> String {
    url_decode(&s.replace('+', " "))
}

fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) async fn token(
    State(identity): State<Arc<Identity>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    form: Result<axum::Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Result<Response, OAuthError> {
    let axum::Form(form) = form.map_err(|r| OAuthError::rejected(&r))?;
    let grant = form.get("grant_type").ok_or_else(|| OAuthError::new("invalid_request", "grant_type is missing"))?;
    match grant.as_str() {
        "client_credentials" => {
            let client = authenticate(&identity, peer, &headers, &form).await?;
            if !client.grants.client_credentials {
                return Err(OAuthError::new("unauthorized_client", "this client may not use client_credentials"));
            }
            let scope = granted_scope(&client, form.get("scope"))?;
            let (token, expires_in) = identity.access_token(&client.id, &client.id, &scope, Value::Null)?;
            metrics::counter!("nimbus_identity_tokens_issued_total", "grant" => "client_credentials").increment(1);
            let mut response = axum::Json(json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": expires_in,
                "scope": scope,
            }))
            .into_response();
            no_store(response.headers_mut());
            Ok(response)
        }
        "authorization_code" => {
            let client = authenticate(&identity, peer, &headers, &form).await?;
            crate::grants::authorization_code(&identity, &client, &form).await
        }
        "refresh_token" => {
            let client = authenticate(&identity, peer, &headers, &form).await?;
            crate::grants::refresh(&identity, &client, &form).await
        }
        other => {
            Err(OAuthError::new("unsupported_grant_type", format!("\"{other}\" is not a grant type this server knows")))
        }
    }
}

/// The scopes a client gets: what it asked for, each allowed to it, or all its scopes when it
/// asked for none.
fn granted_scope(client: &Client, requested: Option<&String>) -> Result<String, OAuthError> {
    let Some(requested) = requested.filter(|s| !s.trim().is_empty()) else { return Ok(client.scopes.join(" ")) };
    let mut granted = Vec::new();
    for scope in requested.split_whitespace() {
        if !client.scopes.iter().any(|s| s == scope) {
            return Err(OAuthError::new("invalid_scope", format!("scope \"{scope}\" is not allowed to this client")));
        }
        if !granted.contains(&scope) {
            granted.push(scope);
        }
    }
    Ok(granted.join(" "))
}

/// RFC 7662: a confidential client asks whether a token is active. Inactive tokens answer
/// `{"active": false}` and nothing more. Only a client that authenticates (§2.1: a secret; a
/// public client that merely names itself does not) may ask: else 401 `invalid_client`.
pub(crate) async fn introspect(
    State(identity): State<Arc<Identity>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    form: Result<axum::Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Result<Response, OAuthError> {
    let axum::Form(form) = form.map_err(|r| OAuthError::rejected(&r))?;
    match authenticate(&identity, peer, &headers, &form).await {
        Ok(client) if !client.public => {}
        Ok(_) => {
            let mut e = OAuthError::invalid_client(true);
            e.description =
                "introspection needs client authentication (client_secret_basic or client_secret_post)".into();
            return Err(e);
        }
        // A 401 names the scheme to authenticate with (RFC 6749 §5.2).
        Err(mut e) if e.status == StatusCode::UNAUTHORIZED => {
            e.basic = true;
            return Err(e);
        }
        Err(e) => return Err(e),
    }
    let token = form.get("token").ok_or_else(|| OAuthError::new("invalid_request", "token is missing"))?;
    let answer = match identity.verify(token) {
        Some(mut claims) => {
            claims["active"] = json!(true);
            claims["token_type"] = json!("Bearer");
            claims
        }
        None => json!({"active": false}),
    };
    let mut response = axum::Json(answer).into_response();
    no_store(response.headers_mut());
    Ok(response)
}

impl Identity {
    /// Signs an access token for `sub`, answering it and its lifetime in seconds.
    pub(crate) fn access_token(
        &self,
        sub: &str,
        client_id: &str,
        scope: &str,
        extra: Value,
    ) -> Result<(String, u64), OAuthError> {
        let key = self.keys.current().ok_or_else(|| {
            tracing::error!("no signing key");
            OAuthError::server("no signing key")
        })?;
        let iat = now();
        let mut claims = json!({
            "iss": self.issuer,
            "sub": sub,
            "aud": self.audience,
            "iat": iat,
            "nbf": iat,
            "exp": iat + self.access_ttl,
            "jti": nimbus_api::hex(&rand::random::<[u8; 16]>()),
            "client_id": client_id,
            "scope": scope,
        });
        if let (Value::Object(extra), Some(map)) = (extra, claims.as_object_mut()) {
            map.extend(extra);
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(key.kid.clone());
        header.typ = Some("at+jwt".into());
        let token = jsonwebtoken::encode(&header, &claims, &key.encoding).map_err(|e| {
            tracing::error!(error = %e, "cannot sign a token");
            OAuthError::server("cannot sign")
        })?;
        Ok((token, self.access_ttl))
    }

    /// The claims of a token this issuer signed and that is still valid, for introspection.
    pub(crate) fn verify(&self, token: &str) -> Option<Value> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        let key = self.keys.find(header.kid.as_deref()?)?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_issuer(&[&self.issuer]);
        validation.validate_aud = false;
        jsonwebtoken::decode::<Value>(token, &key.decoding, &validation).ok().map(|d| d.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_basic_credentials_parts() {
        assert_eq!(form_decode("a%3Ab+c"), "a:b c");
        assert_eq!(url_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn grants_only_allowed_scopes() {
        let grants = Grants { authorization_code: false, refresh_token: false, client_credentials: true };
        let scopes = vec!["read".into(), "write".into()];
        let client = Client { id: "c".into(), public: false, secret: None, redirect_uris: vec![], scopes, grants };
        assert_eq!(granted_scope(&client, None).unwrap(), "read write");
        assert_eq!(granted_scope(&client, Some(&"write read write".into())).unwrap(), "write read");
        assert!(granted_scope(&client, Some(&"admin".into())).is_err());
        assert!(!client.secret_matches("anything"));
    }
}
