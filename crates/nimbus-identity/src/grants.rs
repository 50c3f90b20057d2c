//! The user grants: a code exchanged once (PKCE S256 checked, the redirect URI compared exactly; a
//! code that comes back revokes the tokens issued from it), refresh tokens rotated on every use
//! (`rt_<family>_<secret>`; presenting a rotated one revokes the family), the ID token, userinfo,
//! and revocation (RFC 7009).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use nimbus_store::{Expect, StoreError, Write};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Identity;
use crate::keys::now;
use crate::token::{Client, OAuthError, no_store};
use crate::users::User;
use crate::web::{CodeGrant, digest};

const NS: &str = "identity";

#[derive(Serialize, Deserialize)]
struct Family {
    client_id: String,
    user_id: String,
    scope: String,
    auth_time: u64,
    /// SHA-256 of the current token's secret; any other secret of this family is a replay.
    secret: String,
    expires: u64,
    revoked: bool,
}

fn server_error(what: &str, e: impl std::fmt::Display) -> OAuthError {
    tracing::error!(error = %e, "{what}");
    OAuthError::server(what)
}

fn invalid_grant(description: &str) -> OAuthError {
    OAuthError::new("invalid_grant", description)
}

pub(crate) async fn authorization_code(
    id: &Identity,
    client: &Client,
    form: &HashMap<String, String>,
) -> Result<Response, OAuthError> {
    let code = form.get("code").ok_or_else(|| OAuthError::new("invalid_request", "code is missing"))?;
    let key = format!("code/{}", digest(code));
    let record = id.store.get(NS, &key).await.map_err(|e| server_error("cannot read the code", e))?;
    let Some(record) = record else { return Err(invalid_grant("the code is unknown or expired")) };
    let mut grant: CodeGrant = serde_json::from_slice(&record.value).map_err(|e| server_error("unreadable code", e))?;
    if let Some(family) = &grant.used {
        // A second use: the first may have been an attacker's; revoke what it produced.
        revoke_family(id, family).await;
        let _ = id.store.commit(vec![Write::delete(NS, &key)]).await;
        return Err(invalid_grant("the code was already used; the tokens issued from it are revoked"));
    }
    if grant.expires <= id.now() {
        return Err(invalid_grant("the code has expired"));
    }
    if grant.request.client_id != client.id {
        return Err(invalid_grant("the code was issued to another client"));
    }
    if form.get("redirect_uri") != Some(&grant.request.redirect_uri) {
        return Err(invalid_grant("redirect_uri differs from the authorization request's"));
    }
    match (&grant.request.code_challenge, form.get("code_verifier")) {
        (Some(challenge), Some(verifier)) => {
            let valid_shape = (43..=128).contains(&verifier.len())
                && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
            let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
            if !valid_shape || !bool::from(computed.as_bytes().ct_eq(challenge.as_bytes())) {
                return Err(invalid_grant("code_verifier does not match the code_challenge"));
            }
        }
        (Some(_), None) => return Err(OAuthError::new("invalid_request", "code_verifier is missing")),
        (None, Some(_)) => return Err(invalid_grant("the authorization request had no code_challenge")),
        (None, None) => {}
    }
    let user = id.users.get(&grant.user_id).await.map_err(|_| invalid_grant("the user is gone"))?;
    if user.disabled {
        return Err(invalid_grant("the account is disabled"));
    }
    // Mark the code used and store its refresh family in one commit: whoever loses a race for the
    // same code finds the family and revokes it.
    let family = nimbus_api::hex(&rand::random::<[u8; 16]>());
    grant.used = Some(family.clone());
    let mut writes = vec![
        Write::put(NS, &key, serde_json::to_vec(&grant).expect("a code serializes"))
            .expect(Expect::Version(record.version)),
    ];
    let refresh = match client.grants.refresh_token {
        true => {
            let (write, token) = new_family(id, &family, client, &user, &grant.request.scope, grant.auth_time);
            writes.push(write);
            Some(token)
        }
        false => None,
    };
    match id.store.commit(writes).await {
        Ok(_) => {}
        Err(StoreError::Conflict { .. }) => {
            if let Ok(Some(now_used)) = id.store.get(NS, &key).await
                && let Ok(CodeGrant { used: Some(winner), .. }) = serde_json::from_slice(&now_used.value)
            {
                revoke_family(id, &winner).await;
            }
            return Err(invalid_grant("the code was already used; the tokens issued from it are revoked"));
        }
        Err(e) => return Err(server_error("cannot use the code", e)),
    }
    issue(id, client, &user, &grant.request.scope, grant.auth_time, grant.request.nonce.as_deref(), refresh)
}

pub(crate) async fn refresh(
    id: &Identity,
    client: &Client,
    form: &HashMap<String, String>,
) -> Result<Response, OAuthError> {
    if !client.grants.refresh_token {
        return Err(OAuthError::new("unauthorized_client", "this client may not use refresh tokens"));
    }
    let token =
        form.get("refresh_token").ok_or_else(|| OAuthError::new("invalid_request", "refresh_token is missing"))?;
    let (family_id, secret) = parse_refresh(token).ok_or_else(|| invalid_grant("the refresh token is not valid"))?;
    let key = format!("refresh/{family_id}");
    let record = id.store.get(NS, &key).await.map_err(|e| server_error("cannot read the refresh token", e))?;
    let Some(record) = record else { return Err(invalid_grant("the refresh token is not valid")) };
    let mut family: Family =
        serde_json::from_slice(&record.value).map_err(|e| server_error("unreadable refresh token", e))?;
    if family.revoked || family.expires <= id.now() {
        return Err(invalid_grant("the refresh token is revoked or expired"));
    }
    if family.client_id != client.id {
        return Err(invalid_grant("the refresh token was issued to another client"));
    }
    if !bool::from(digest(secret).as_bytes().ct_eq(family.secret.as_bytes())) {
        // A rotated token came back: someone holds a copy. End the whole family.
        revoke_family(id, family_id).await;
        return Err(invalid_grant("the refresh token was already used; its family is revoked"));
    }
    let user = id.users.get(&family.user_id).await.map_err(|_| invalid_grant("the user is gone"))?;
    if user.disabled {
        return Err(invalid_grant("the account is disabled"));
    }
    let next = nimbus_api::hex(&rand::random::<[u8; 32]>());
    family.secret = digest(&next);
    let value = serde_json::to_vec(&family).expect("a family serializes");
    match id.store.commit(vec![Write::put(NS, &key, value).expect(Expect::Version(record.version))]).await {
        Ok(_) => {}
        Err(StoreError::Conflict { .. }) => {
            revoke_family(id, family_id).await;
            return Err(invalid_grant("the refresh token was used twice at once; its family is revoked"));
        }
        Err(e) => return Err(server_error("cannot rotate the refresh token", e)),
    }
    let scope = family.scope.clone();
    issue(id, client, &user, &scope, family.auth_time, None, Some(format!("rt_{family_id}_{next}")))
}

/// A new refresh family's record (to commit) and its first token.
fn new_family(
    id: &Identity,
    family: &str,
    client: &Client,
    user: &User,
    scope: &str,
    auth_time: u64,
) -> (Write, String) {
    let secret = nimbus_api::hex(&rand::random::<[u8; 32]>());
    let record = Family {
        client_id: client.id.clone(),
        user_id: user.id.clone(),
        scope: scope.to_owned(),
        auth_time,
        secret: digest(&secret),
        expires: id.now() + id.refresh_ttl,
        revoked: false,
    };
    let value = serde_json::to_vec(&record).expect("a family serializes");
    (Write::put(NS, &format!("refresh/{family}"), value).expect(Expect::Absent), format!("rt_{family}_{secret}"))
}

async fn revoke_family(id: &Identity, family: &str) {
    let key = format!("refresh/{family}");
    for _ in 0..5 {
        let Ok(Some(record)) = id.store.get(NS, &key).await else { return };
        let Ok(mut f) = serde_json::from_slice::<Family>(&record.value) else { return };
        f.revoked = true;
        let value = serde_json::to_vec(&f).expect("a family serializes");
        match id.store.commit(vec![Write::put(NS, &key, value).expect(Expect::Version(record.version))]).await {
            Err(StoreError::Conflict { .. }) => continue,
            _ => {
                metrics::counter!("nimbus_identity_refresh_families_revoked_total").increment(1);
                return;
            }
        }
    }
}

fn parse_refresh(token: &str) -> Option<(&str, &str)> {
    let (family, secret) = token.strip_prefix("rt_")?.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(family, 32) && hex(secret, 64)).then_some((family, secret))
}

/// The token response: an access token, an ID token when `openid` was granted, the refresh token.
fn issue(
    id: &Identity,
    client: &Client,
    user: &User,
    scope: &str,
    auth_time: u64,
    nonce: Option<&str>,
    refresh: Option<String>,
) -> Result<Response, OAuthError> {
    let mut extra = serde_json::Map::new();
    extra.insert("roles".into(), json!(user.roles));
    if !user.groups.is_empty() {
        extra.insert("groups".into(), json!(user.groups));
    }
    for (k, v) in &user.attributes {
        extra.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let (access, expires_in) = id.access_token(&user.id, &client.id, scope, Value::Object(extra))?;
    let mut body = json!({"access_token": access, "token_type": "Bearer", "expires_in": expires_in, "scope": scope});
    if scope.split(' ').any(|s| s == "openid") {
        body["id_token"] = json!(id.id_token(user, &client.id, scope, auth_time, nonce)?);
    }
    if let Some(refresh) = refresh {
        body["refresh_token"] = json!(refresh);
    }
    metrics::counter!("nimbus_identity_tokens_issued_total", "grant" => "user").increment(1);
    let mut response = axum::Json(body).into_response();
    no_store(response.headers_mut());
    Ok(response)
}

/// The claims about `user` that `scope` releases (ID token, userinfo).
fn profile(user: &User, scope: &str) -> serde_json::Map<String, Value> {
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), json!(user.id));
    let has = |s: &str| scope.split(' ').any(|x| x == s);
    if has("email") {
        claims.insert("email".into(), json!(user.email));
        claims.insert("email_verified".into(), json!(user.email_verified));
    }
    if has("profile")
        && let Some(name) = &user.name
    {
        claims.insert("name".into(), json!(name));
    }
    claims
}

impl Identity {
    fn id_token(
        &self,
        user: &User,
        client_id: &str,
        scope: &str,
        auth_time: u64,
        nonce: Option<&str>,
    ) -> Result<String, OAuthError> {
        let key = self.keys.current().ok_or_else(|| server_error("no signing key", "none"))?;
        let iat = now();
        let mut claims = profile(user, scope);
        // The hosted pages always ask for the e-mail address, so the ID token names it.
        claims.insert("email".into(), json!(user.email));
        claims.insert("email_verified".into(), json!(user.email_verified));
        if let Some(name) = &user.name {
            claims.insert("name".into(), json!(name));
        }
        for (k, v) in [
            ("iss", json!(self.issuer)),
            ("aud", json!(client_id)),
            ("iat", json!(iat)),
            ("exp", json!(iat + self.id_ttl)),
            ("auth_time", json!(auth_time)),
        ] {
            claims.insert(k.into(), v);
        }
        if let Some(nonce) = nonce {
            claims.insert("nonce".into(), json!(nonce));
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &Value::Object(claims), &key.encoding)
            .map_err(|e| server_error("cannot sign an ID token", e))
    }

    /// The client an `id_token_hint` was issued to (its `aud`), if this issuer signed it; expired
    /// hints are accepted, as logout allows.
    pub(crate) fn verify_id_token_hint(&self, token: &str) -> Option<String> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        let key = self.keys.find(header.kid.as_deref()?)?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_issuer(&[&self.issuer]);
        validation.validate_aud = false;
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Value>(token, &key.decoding, &validation).ok()?;
        data.claims.get("aud").and_then(Value::as_str).map(str::to_owned)
    }
}

/// `GET`/`POST /oauth2/userinfo` with an access token of this issuer.
pub(crate) async fn userinfo(State(id): State<Arc<Identity>>, headers: HeaderMap) -> Response {
    let refuse = |error: &str| {
        let mut r = (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": error}))).into_response();
        if let Ok(v) = format!("Bearer error=\"{error}\"").parse() {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        r
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let Some(claims) = token.and_then(|t| id.verify(t)) else { return refuse("invalid_token") };
    if claims.get("aud").and_then(Value::as_str) != Some(id.audience.as_str()) {
        return refuse("invalid_token");
    }
    let Some(sub) = claims.get("sub").and_then(Value::as_str) else { return refuse("invalid_token") };
    let Ok(user) = id.users.get(sub).await else { return refuse("invalid_token") };
    if user.disabled {
        return refuse("invalid_token");
    }
    let scope = claims.get("scope").and_then(Value::as_str).unwrap_or("");
    let mut response = axum::Json(Value::Object(profile(&user, scope))).into_response();
    no_store(response.headers_mut());
    response
}

/// RFC 7009: revokes a refresh token (its family); answers 200 whatever the token was.
pub(crate) async fn revoke(
    State(id): State<Arc<Identity>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    form: Result<axum::Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Result<Response, OAuthError> {
    let axum::Form(form) = form.map_err(|r| OAuthError::rejected(&r))?;
    let client = crate::token::authenticate(&id, peer, &headers, &form).await?;
    let token = form.get("token").ok_or_else(|| OAuthError::new("invalid_request", "token is missing"))?;
    if let Some((family_id, secret)) = parse_refresh(token)
        && let Ok(Some(record)) = id.store.get(NS, &format!("refresh/{family_id}")).await
        && let Ok(family) = serde_json::from_slice::<Family>(&record.value)
        && family.client_id == client.id
        && bool::from(digest(secret).as_bytes().ct_eq(family.secret.as_bytes()))
    {
        revoke_family(&id, family_id).await;
    }
    let mut response = StatusCode::OK.into_response();
    no_store(response.headers_mut());
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_refresh_tokens() {
        let t = format!("rt_{}_{}", "a".repeat(32), "b".repeat(64));
        assert_eq!(parse_refresh(&t), Some((&t[3..35], &t[36..])));
        assert_eq!(parse_refresh("rt_x_y"), None);
        assert_eq!(parse_refresh("garbage"), None);
    }
}
