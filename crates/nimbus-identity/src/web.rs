//! The browser side: `GET /oauth2/authorize` (authorization code with PKCE), browser sessions, the
//! hosted sign-in, sign-up, sign-out, password-reset and e-mail-verification pages, and
//! RP-initiated logout (`/oauth2/logout`).
//!
//! Sessions are a random cookie (`nimbus_sid`: HttpOnly, SameSite=Lax, Secure over https) whose
//! SHA-256 names a store record, so a node restart or another node keeps users signed in. Forms
//! carry a CSRF token that must equal the `nimbus_csrf` cookie (double submit).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use nimbus_store::{Expect, StoreError, Write};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Identity;
use crate::pages::{Page, esc, field, hidden, message};
use crate::users::{User, UserError};

const NS: &str = "identity";
const SESSION_COOKIE: &str = "nimbus_sid";
const CSRF_COOKIE: &str = "nimbus_csrf";
/// How long a pending authorization request, a code, a reset or verification link live.
pub(crate) const REQUEST_TTL: u64 = 600;
pub(crate) const CODE_TTL: u64 = 60;
pub(crate) const RESET_TTL: u64 = 3600;
pub(crate) const VERIFY_TTL: u64 = 7 * 86_400;

const EXPIRED_FORM: &str = "This form has expired. Go back, reload the page and try again.";

type Form = Result<axum::Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>;

/// A validated authorization request, kept while the user signs in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AuthRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub created: u64,
}

/// What a code stands for, until it is exchanged (once).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CodeGrant {
    pub request: AuthRequest,
    pub user_id: String,
    pub auth_time: u64,
    pub expires: u64,
    /// Set when exchanged: the refresh family its tokens belong to, revoked if the code comes back.
    pub used: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Session {
    user_id: String,
    auth_time: u64,
    expires: u64,
}

#[derive(Serialize, Deserialize)]
struct OneTime {
    user_id: String,
    expires: u64,
}

pub(crate) fn digest(secret: &str) -> String {
    nimbus_api::hex(&Sha256::digest(secret.as_bytes()))
}

fn random_token() -> String {
    nimbus_api::hex(&rand::random::<[u8; 32]>())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

impl Identity {
    fn set_cookie(&self, response: &mut Response, name: &str, value: &str, max_age: Option<u64>) {
        let secure = if self.issuer.starts_with("https://") { "; Secure" } else { "" };
        let age = max_age.map(|a| format!("; Max-Age={a}")).unwrap_or_default();
        let text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax{secure}{age}");
        if let Ok(v) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }

    /// The signed-in user of this browser, if the session is live and the account enabled.
    async fn session_user(&self, headers: &HeaderMap) -> Option<(User, u64)> {
        let sid = cookie(headers, SESSION_COOKIE)?;
        let record = self.store.get(NS, &format!("session/{}", digest(&sid))).await.ok()??;
        let session: Session = serde_json::from_slice(&record.value).ok()?;
        if session.expires <= self.now() {
            return None;
        }
        let user = self.users.get(&session.user_id).await.ok()?;
        (!user.disabled).then_some((user, session.auth_time))
    }

    async fn start_session(&self, response: &mut Response, user: &User) -> Result<u64, StoreError> {
        let sid = random_token();
        let auth_time = self.now();
        let session = Session { user_id: user.id.clone(), auth_time, expires: auth_time + self.session_ttl };
        let value = serde_json::to_vec(&session).expect("a session serializes");
        self.store.commit(vec![Write::put(NS, &format!("session/{}", digest(&sid)), value)]).await?;
        self.set_cookie(response, SESSION_COOKIE, &sid, Some(self.session_ttl));
        Ok(auth_time)
    }

    async fn end_session(&self, headers: &HeaderMap, response: &mut Response) {
        if let Some(sid) = cookie(headers, SESSION_COOKIE) {
            let _ = self.store.commit(vec![Write::delete(NS, &format!("session/{}", digest(&sid)))]).await;
        }
        self.set_cookie(response, SESSION_COOKIE, "", Some(0));
    }

    /// A page with a form: reuses the browser's CSRF cookie or sets a new one.
    fn form_page(&self, headers: &HeaderMap, title: &str, body: impl FnOnce(&str) -> String) -> Response {
        let (csrf, fresh) = match cookie(headers, CSRF_COOKIE).filter(|c| c.len() == 64) {
            Some(c) => (c, false),
            None => (random_token(), true),
        };
        let mut response = Page::new(title, body(&hidden("csrf", &csrf))).render(&self.theme);
        if fresh {
            self.set_cookie(&mut response, CSRF_COOKIE, &csrf, None);
        }
        response
    }

    /// The posted form, when it could be read and carries this browser's CSRF token; else the
    /// page that says why.
    fn posted(&self, headers: &HeaderMap, form: Form) -> Result<HashMap<String, String>, Box<Response>> {
        let form = match form {
            Ok(axum::Form(form)) => form,
            Err(rejection) => return Err(Box::new(self.form_rejected(&rejection))),
        };
        if !csrf_ok(headers, &form) {
            return Err(Box::new(self.error_page(StatusCode::FORBIDDEN, EXPIRED_FORM)));
        }
        Ok(form)
    }

    fn form_rejected(&self, rejection: &axum::extract::rejection::FormRejection) -> Response {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => self.error_page(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large."),
            _ => self.error_page(StatusCode::BAD_REQUEST, "The form could not be read."),
        }
    }

    pub(crate) fn error_page(&self, status: StatusCode, text: &str) -> Response {
        Page::new("Something went wrong", message("error", text)).status(status).render(&self.theme)
    }

    pub(crate) async fn one_time(&self, kind: &str, user_id: &str, ttl: u64) -> Result<String, StoreError> {
        let token = random_token();
        let value = serde_json::to_vec(&OneTime { user_id: user_id.to_owned(), expires: self.now() + ttl })
            .expect("serializes");
        self.store.commit(vec![Write::put(NS, &format!("{kind}/{}", digest(&token)), value)]).await?;
        Ok(token)
    }

    /// Takes a one-time token (a reset or verification link): valid once, until it expires.
    async fn take_one_time(&self, kind: &str, token: &str) -> Option<String> {
        let key = format!("{kind}/{}", digest(token));
        let record = self.store.get(NS, &key).await.ok()??;
        self.store.commit(vec![Write::delete(NS, &key).expect(Expect::Version(record.version))]).await.ok()?;
        let grant: OneTime = serde_json::from_slice(&record.value).ok()?;
        (grant.expires > self.now()).then_some(grant.user_id)
    }

    async fn peek_one_time(&self, kind: &str, token: &str) -> bool {
        let key = format!("{kind}/{}", digest(token));
        let Ok(Some(record)) = self.store.get(NS, &key).await else { return false };
        serde_json::from_slice::<OneTime>(&record.value).is_ok_and(|g| g.expires > self.now())
    }

    /// Issues a code for `request` and answers the redirect that carries it back to the client.
    async fn complete(&self, request: &AuthRequest, user: &User, auth_time: u64) -> Response {
        let code = random_token();
        let grant = CodeGrant {
            request: request.clone(),
            user_id: user.id.clone(),
            auth_time,
            expires: self.now() + self.code_ttl,
            used: None,
        };
        let value = serde_json::to_vec(&grant).expect("a code serializes");
        if let Err(e) = self.store.commit(vec![Write::put(NS, &format!("code/{}", digest(&code)), value)]).await {
            tracing::error!(error = %e, "cannot store an authorization code");
            return self.error_page(StatusCode::SERVICE_UNAVAILABLE, "The sign-in could not be completed; try again.");
        }
        self.code_redirect(request, &code)
    }

    /// The redirect that carries `code` back to the client.
    fn code_redirect(&self, request: &AuthRequest, code: &str) -> Response {
        let mut params = vec![("code", code), ("iss", self.issuer.as_str())];
        if let Some(state) = &request.state {
            params.push(("state", state));
        }
        redirect_with(&request.redirect_uri, &params)
    }

    async fn pending(&self, id: &str) -> Option<AuthRequest> {
        if id.len() != 64 {
            return None;
        }
        let record = self.store.get(NS, &format!("authreq/{id}")).await.ok()??;
        let request: AuthRequest = serde_json::from_slice(&record.value).ok()?;
        (request.created + REQUEST_TTL > self.now()).then_some(request)
    }

    async fn outbox(&self, to: &str, subject: &str, body: &str) {
        crate::mail::send(self, to, subject, body).await;
    }
}

fn csrf_ok(headers: &HeaderMap, form: &HashMap<String, String>) -> bool {
    match (cookie(headers, CSRF_COOKIE), form.get("csrf")) {
        (Some(c), Some(f)) if c.len() == 64 => bool::from(c.as_bytes().ct_eq(f.as_bytes())),
        _ => false,
    }
}

/// `uri` with `params` added to its query (the client's own query kept).
fn redirect_with(uri: &str, params: &[(&str, &str)]) -> Response {
    let mut target = uri.to_owned();
    for (i, (k, v)) in params.iter().enumerate() {
        let sep = if i == 0 && !uri.contains('?') { '?' } else { '&' };
        target.push(sep);
        target.push_str(k);
        target.push('=');
        target.push_str(&encode(v));
    }
    Redirect::to(&target).into_response()
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ----- /oauth2/authorize ---------------------------------------------------------------------

pub(crate) async fn authorize(
    State(id): State<Arc<Identity>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    // Until the redirect URI is known to be the client's, errors are shown here, never redirected.
    let client = match q.get("client_id") {
        Some(c) => id.client(c).await,
        None => None,
    };
    let Some(client) = client else {
        return id.error_page(
            StatusCode::BAD_REQUEST,
            "The application that sent you here is not registered (unknown client_id).",
        );
    };
    let Some(redirect_uri) = q.get("redirect_uri").filter(|r| client.redirect_uris.iter().any(|u| u == *r)) else {
        return id.error_page(
            StatusCode::BAD_REQUEST,
            "The application asked to send you back to an address it has not registered (redirect_uri).",
        );
    };
    let state = q.get("state").cloned();
    let fail = |error: &str, description: &str| {
        let mut params = vec![("error", error), ("error_description", description), ("iss", id.issuer.as_str())];
        if let Some(state) = &state {
            params.push(("state", state));
        }
        redirect_with(redirect_uri, &params)
    };
    if q.get("response_type").map(String::as_str) != Some("code") {
        return fail("unsupported_response_type", "only response_type=code is supported");
    }
    if !client.grants.authorization_code {
        return fail("unauthorized_client", "this client may not use the authorization code flow");
    }
    let challenge = q.get("code_challenge").cloned();
    match (q.get("code_challenge_method").map(String::as_str), &challenge) {
        (Some("S256"), Some(c))
            if c.len() == 43 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => {}
        (Some("S256"), _) => {
            return fail("invalid_request", "code_challenge must be a base64url SHA-256 (43 characters)");
        }
        (Some(_), _) => return fail("invalid_request", "only code_challenge_method=S256 is supported"),
        (None, Some(_)) => {
            return fail("invalid_request", "code_challenge_method=S256 is required with code_challenge");
        }
        (None, None) if client.public => {
            return fail("invalid_request", "PKCE (code_challenge, S256) is required for public clients");
        }
        (None, None) => {}
    }
    let scope = q.get("scope").map(|s| s.split_whitespace().collect::<Vec<_>>().join(" ")).unwrap_or_default();
    if let Some(bad) = scope.split(' ').filter(|s| !s.is_empty()).find(|s| !client.allows_scope(s)) {
        return fail("invalid_scope", &format!("scope \"{bad}\" is not allowed to this client"));
    }
    if [q.get("state"), q.get("nonce")].iter().flatten().any(|v| v.len() > 1024) {
        return fail("invalid_request", "state and nonce are at most 1024 characters");
    }
    let request = AuthRequest {
        client_id: client.id.clone(),
        redirect_uri: redirect_uri.clone(),
        scope,
        state: state.clone(),
        nonce: q.get("nonce").cloned(),
        code_challenge: challenge,
        created: id.now(),
    };
    let prompt = q.get("prompt").map(String::as_str).unwrap_or("");
    let session = if prompt.split(' ').any(|p| p == "login") { None } else { id.session_user(&headers).await };
    if let Some((user, auth_time)) = session {
        return id.complete(&request, &user, auth_time).await;
    }
    if prompt.split(' ').any(|p| p == "none") {
        return fail("login_required", "the user is not signed in");
    }
    // Anyone may start a sign-in, and each one is kept for a while: bounded per source.
    if id.pending_rate.hit(&id.source(peer, &headers), id.clock()).is_err() {
        metrics::counter!("nimbus_identity_requests_limited_total", "what" => "authorize").increment(1);
        return fail("temporarily_unavailable", "too many sign-ins were started from this network; try again later");
    }
    let pending = random_token();
    let value = serde_json::to_vec(&request).expect("a request serializes");
    if let Err(e) = id.store.commit(vec![Write::put(NS, &format!("authreq/{pending}"), value)]).await {
        tracing::error!(error = %e, "cannot store an authorization request");
        return id.error_page(StatusCode::SERVICE_UNAVAILABLE, "Signing in is not possible right now; try again.");
    }
    Redirect::to(&format!("/account/signin?request={pending}")).into_response()
}

// ----- sign-in -------------------------------------------------------------------------------

fn signin_form(id: &Identity, csrf: &str, request: &str, email: &str, note: Option<(&str, &str)>) -> String {
    let mut body = note.map(|(kind, text)| message(kind, text)).unwrap_or_default();
    let q = if request.is_empty() { String::new() } else { format!("?request={}", esc(request)) };
    body.push_str(&format!(
        "<form method=\"post\" action=\"/account/signin\">{csrf}{req}{email}{password}<button type=\"submit\">Sign in</button></form>\
         <nav><a href=\"/account/reset\">Forgot your password?</a>{signup}</nav>",
        req = hidden("request", request),
        email = field("E-mail", "email", "email", email, "autocomplete=\"email\" required maxlength=\"254\""),
        password = field("Password", "password", "password", "", "autocomplete=\"current-password\" required maxlength=\"128\""),
        signup = if id.signup { format!("<a href=\"/account/signup{q}\">Create an account</a>") } else { String::new() },
    ));
    for provider in &id.providers {
        body.push_str(&format!(
            "<p><a class=\"provider\" href=\"/account/federate/{}{q}\">Sign in with {}</a></p>",
            esc(&provider.name),
            esc(&provider.name)
        ));
    }
    body
}

pub(crate) async fn signin_page(
    State(id): State<Arc<Identity>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let request = q.get("request").cloned().unwrap_or_default();
    id.form_page(&headers, "Sign in", |csrf| signin_form(&id, csrf, &request, "", None))
}

pub(crate) async fn signin(
    State(id): State<Arc<Identity>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Form,
) -> Response {
    let form = match id.posted(&headers, form) {
        Ok(form) => form,
        Err(page) => return *page,
    };
    let email = form.get("email").map(|e| e.trim()).unwrap_or("");
    let password = form.get("password").map(String::as_str).unwrap_or("");
    let request = form.get("request").cloned().unwrap_or_default();
    let again = |text: &str, status: StatusCode| {
        let body = |csrf: &str| {
            signin_form(&id, csrf, &request, &email.chars().take(254).collect::<String>(), Some(("error", text)))
        };
        let mut response = id.form_page(&headers, "Sign in", body);
        *response.status_mut() = status;
        response
    };
    if email.len() > 254 || password.len() > 1024 {
        return again("The e-mail or password is too long.", StatusCode::BAD_REQUEST);
    }
    let account_key = format!("account:{}", email.to_lowercase());
    let ip_key = format!("ip:{}", id.source(peer, &headers));
    let now = id.clock();
    if let Some(wait) = id.signin_throttle.locked(&account_key, now).or_else(|| id.ip_throttle.locked(&ip_key, now)) {
        metrics::counter!("nimbus_identity_signins_total", "outcome" => "throttled").increment(1);
        return again(
            &format!("Too many failed attempts. Try again in {} minute(s).", minutes(wait)),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let user = match id.users.authenticate(email, password).await {
        Ok(user) => user,
        Err(e) => {
            tracing::error!(error = %e, "sign-in failed on the store");
            return id.error_page(StatusCode::SERVICE_UNAVAILABLE, "Signing in is not possible right now; try again.");
        }
    };
    let Some(user) = user else {
        id.signin_throttle.failed(&account_key, id.clock());
        id.ip_throttle.failed(&ip_key, id.clock());
        metrics::counter!("nimbus_identity_signins_total", "outcome" => "failed").increment(1);
        // One message whether the account exists, is disabled or the password is wrong.
        return again("The e-mail or password is wrong.", StatusCode::UNAUTHORIZED);
    };
    id.signin_throttle.succeeded(&account_key);
    metrics::counter!("nimbus_identity_signins_total", "outcome" => "ok").increment(1);
    signed_in(&id, &user, &request).await
}

/// After a sign-in or sign-up: the session, then back to the client (or to the account page).
pub(crate) async fn signed_in(id: &Identity, user: &User, request: &str) -> Response {
    let pending = if request.is_empty() { None } else { id.pending(request).await };
    let mut response = match &pending {
        Some(_) => Response::new(axum::body::Body::empty()),
        None => Redirect::to("/account").into_response(),
    };
    let auth_time = match id.start_session(&mut response, user).await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot store a session");
            return id.error_page(StatusCode::SERVICE_UNAVAILABLE, "Signing in is not possible right now; try again.");
        }
    };
    if let Some(pending) = pending {
        let _ = id.store.commit(vec![Write::delete(NS, &format!("authreq/{request}"))]).await;
        let mut done = id.complete(&pending, user, auth_time).await;
        for cookie in response.headers().get_all(header::SET_COOKIE) {
            done.headers_mut().append(header::SET_COOKIE, cookie.clone());
        }
        return done;
    }
    response
}

// ----- sign-up -------------------------------------------------------------------------------

fn signup_form(csrf: &str, request: &str, email: &str, name: &str, note: Option<(&str, &str)>) -> String {
    let mut body = note.map(|(kind, text)| message(kind, text)).unwrap_or_default();
    let q = if request.is_empty() { String::new() } else { format!("?request={}", esc(request)) };
    body.push_str(&format!(
        "<form method=\"post\" action=\"/account/signup\">{csrf}{req}{email}{name}{password}<button type=\"submit\">Create account</button></form>\
         <nav><a href=\"/account/signin{q}\">Already have an account? Sign in</a></nav>",
        req = hidden("request", request),
        email = field("E-mail", "email", "email", email, "autocomplete=\"email\" required maxlength=\"254\""),
        name = field("Name (optional)", "name", "text", name, "autocomplete=\"name\" maxlength=\"256\""),
        password = field("Password (at least 8 characters)", "password", "password", "", "autocomplete=\"new-password\" required minlength=\"8\" maxlength=\"128\""),
    ));
    body
}

pub(crate) async fn signup_page(
    State(id): State<Arc<Identity>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !id.signup {
        return id.error_page(StatusCode::NOT_FOUND, "This application does not take new accounts.");
    }
    let request = q.get("request").cloned().unwrap_or_default();
    id.form_page(&headers, "Create an account", |csrf| signup_form(csrf, &request, "", "", None))
}

pub(crate) async fn signup(
    State(id): State<Arc<Identity>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Form,
) -> Response {
    if !id.signup {
        return id.error_page(StatusCode::NOT_FOUND, "This application does not take new accounts.");
    }
    let form = match id.posted(&headers, form) {
        Ok(form) => form,
        Err(page) => return *page,
    };
    let email = form.get("email").map(|e| e.trim()).unwrap_or("");
    let name = form.get("name").map(|n| n.trim()).unwrap_or("");
    let password = form.get("password").map(String::as_str).unwrap_or("");
    let request = form.get("request").cloned().unwrap_or_default();
    let again = |text: &str, status: StatusCode| {
        let (email, name): (String, String) = (email.chars().take(254).collect(), name.chars().take(256).collect());
        let mut response = id.form_page(&headers, "Create an account", |csrf| {
            signup_form(csrf, &request, &email, &name, Some(("error", text)))
        });
        *response.status_mut() = status;
        response
    };
    if password.len() > 1024 {
        return again("a password has at most 128 characters", StatusCode::BAD_REQUEST);
    }
    // Each sign-up costs a password hash and makes records: bounded per source.
    if let Err(wait) = id.form_rate.hit(&format!("signup:{}", id.source(peer, &headers)), id.clock()) {
        metrics::counter!("nimbus_identity_requests_limited_total", "what" => "signup").increment(1);
        let text = format!("Too many sign-ups from this network. Try again in {} minute(s).", minutes(wait));
        return again(&text, StatusCode::TOO_MANY_REQUESTS);
    }
    match id.users.create(email, Some(password), Some(name).filter(|n| !n.is_empty())).await {
        Ok(user) => {
            if let Ok(token) = id.one_time("verify", &user.id, VERIFY_TTL).await {
                let link = format!("{}/account/verify?token={token}", id.issuer);
                id.outbox(
                    &user.email,
                    &format!("Confirm your e-mail for {}", id.theme.app),
                    &format!("Open this link to confirm your address:\n\n{link}\n"),
                )
                .await;
            }
            metrics::counter!("nimbus_identity_signups_total").increment(1);
            signed_in(&id, &user, &request).await
        }
        Err(UserError::Taken) => {
            // Answer as a new account is answered (the password was hashed all the same), but
            // sign nobody in; tell the address's owner instead (a few times an hour at most).
            let owner = crate::users::normalize_email(email).unwrap_or_else(|_| email.to_lowercase());
            if id.mail_rate.hit(&owner, id.clock()).is_ok() {
                id.outbox(
                    &owner,
                    &format!("Someone tried to create an account for {}", id.theme.app),
                    &format!(
                        "Someone tried to create an account with this address, which already has one. \
                         If it was you, sign in, or reset your password at {}/account/reset\n\
                         If it was not, you need not do anything: nobody was signed in.\n",
                        id.issuer
                    ),
                )
                .await;
            }
            metrics::counter!("nimbus_identity_signups_taken_total").increment(1);
            decoy(&id, &request).await
        }
        Err(UserError::Invalid(text)) => again(&text, StatusCode::BAD_REQUEST),
        Err(e) => {
            tracing::error!(error = %e, "sign-up failed on the store");
            id.error_page(StatusCode::SERVICE_UNAVAILABLE, "Creating an account is not possible right now; try again.")
        }
    }
}

/// What a sign-up for an address that has an account answers: what a new account gets (the
/// redirect back to the client with a code, or to the account page, with a session cookie), except
/// that the code and the session are random values stored nowhere. The browser is signed in to
/// nothing, the client's token request with the code fails as for any unknown code, and the
/// pending request is used up as a sign-up uses it.
async fn decoy(id: &Identity, request: &str) -> Response {
    let pending = if request.is_empty() { None } else { id.pending(request).await };
    let mut response = match &pending {
        Some(pending) => {
            let _ = id.store.commit(vec![Write::delete(NS, &format!("authreq/{request}"))]).await;
            id.code_redirect(pending, &random_token())
        }
        None => Redirect::to("/account").into_response(),
    };
    id.set_cookie(&mut response, SESSION_COOKIE, &random_token(), Some(id.session_ttl));
    response
}

fn minutes(wait: Duration) -> u64 {
    wait.as_secs().div_ceil(60).max(1)
}

// ----- account, sign-out, logout --------------------------------------------------------------

pub(crate) async fn account(State(id): State<Arc<Identity>>, headers: HeaderMap) -> Response {
    match id.session_user(&headers).await {
        Some((user, _)) => id.form_page(&headers, "Your account", |csrf| {
            format!(
                "<p>Signed in as <strong>{}</strong>{}.</p><form method=\"post\" action=\"/account/signout\">{csrf}<button type=\"submit\">Sign out</button></form>",
                esc(&user.email),
                if user.email_verified { "" } else { " (address not confirmed yet)" }
            )
        }),
        None => Redirect::to("/account/signin").into_response(),
    }
}

pub(crate) async fn signout_page(State(id): State<Arc<Identity>>, headers: HeaderMap) -> Response {
    id.form_page(&headers, "Sign out", |csrf| {
        format!(
            "<form method=\"post\" action=\"/account/signout\">{csrf}<button type=\"submit\">Sign out</button></form>"
        )
    })
}

pub(crate) async fn signout(State(id): State<Arc<Identity>>, headers: HeaderMap, form: Form) -> Response {
    if let Err(page) = id.posted(&headers, form) {
        return *page;
    }
    let mut response = Page::new("Signed out", message("note", "You are signed out.")).render(&id.theme);
    id.end_session(&headers, &mut response).await;
    response
}

/// OpenID Connect RP-initiated logout. With a valid `id_token_hint` (proof that the client asks),
/// the session ends at once; without one, the user confirms first (a form with a CSRF token), so
/// that another site cannot sign users out by sending them here. Afterwards the browser returns to
/// `post_logout_redirect_uri` when it is one of the client's registered redirect URIs.
pub(crate) async fn logout(
    State(id): State<Arc<Identity>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let hinted = q.get("id_token_hint").and_then(|t| id.verify_id_token_hint(t));
    if hinted.is_some() {
        return finish_logout(&id, &headers, hinted.as_deref(), &q).await;
    }
    id.form_page(&headers, "Sign out?", |csrf| {
        let mut fields = csrf.to_owned();
        for name in ["client_id", "post_logout_redirect_uri", "state"] {
            if let Some(value) = q.get(name) {
                fields.push_str(&hidden(name, value));
            }
        }
        format!(
            "<form method=\"post\" action=\"/oauth2/logout\">{fields}<button type=\"submit\">Sign out</button></form>"
        )
    })
}

pub(crate) async fn logout_confirmed(State(id): State<Arc<Identity>>, headers: HeaderMap, form: Form) -> Response {
    let form = match id.posted(&headers, form) {
        Ok(form) => form,
        Err(page) => return *page,
    };
    finish_logout(&id, &headers, form.get("client_id").map(String::as_str), &form).await
}

async fn finish_logout(
    id: &Identity,
    headers: &HeaderMap,
    client_id: Option<&str>,
    q: &HashMap<String, String>,
) -> Response {
    let client = match client_id {
        Some(c) => id.client(c).await,
        None => None,
    };
    let target =
        q.get("post_logout_redirect_uri").filter(|u| client.is_some_and(|c| c.redirect_uris.iter().any(|r| r == *u)));
    let mut response = match target {
        Some(uri) => {
            let state: Vec<(&str, &str)> = q.get("state").map(|s| vec![("state", s.as_str())]).unwrap_or_default();
            redirect_with(uri, &state)
        }
        None => Page::new("Signed out", message("note", "You are signed out.")).render(&id.theme),
    };
    id.end_session(headers, &mut response).await;
    response
}

// ----- password reset and e-mail verification -------------------------------------------------

pub(crate) async fn reset_page(State(id): State<Arc<Identity>>, headers: HeaderMap) -> Response {
    id.form_page(&headers, "Reset your password", |csrf| {
        format!(
            "<form method=\"post\" action=\"/account/reset\">{csrf}{}<button type=\"submit\">Send a reset link</button></form>",
            field("E-mail", "email", "email", "", "autocomplete=\"email\" required maxlength=\"254\"")
        )
    })
}

pub(crate) async fn reset(
    State(id): State<Arc<Identity>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Form,
) -> Response {
    let form = match id.posted(&headers, form) {
        Ok(form) => form,
        Err(page) => return *page,
    };
    if let Err(wait) = id.form_rate.hit(&format!("reset:{}", id.source(peer, &headers)), id.clock()) {
        metrics::counter!("nimbus_identity_requests_limited_total", "what" => "reset").increment(1);
        let text = format!("Too many requests from this network. Try again in {} minute(s).", minutes(wait));
        return Page::new("Reset your password", message("error", &text))
            .status(StatusCode::TOO_MANY_REQUESTS)
            .render(&id.theme);
    }
    let email = form.get("email").map(|e| e.trim()).unwrap_or("");
    // At most a few links an hour per account: no mail-bombing, no pile of live links.
    if let Ok(Some(user)) = id.users.by_email(email).await
        && !user.disabled
        && id.mail_rate.hit(&user.email, id.clock()).is_ok()
        && let Ok(token) = id.one_time("reset", &user.id, RESET_TTL).await
    {
        let link = format!("{}/account/reset/confirm?token={token}", id.issuer);
        id.outbox(
            &user.email,
            &format!("Reset your password for {}", id.theme.app),
            &format!("Open this link within an hour to choose a new password:\n\n{link}\n"),
        )
        .await;
    }
    Page::new(
        "Check your e-mail",
        message("note", "If an account uses this address, we have sent it a link to reset the password."),
    )
    .render(&id.theme)
}

pub(crate) async fn reset_confirm_page(
    State(id): State<Arc<Identity>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let token = q.get("token").cloned().unwrap_or_default();
    if !id.peek_one_time("reset", &token).await {
        return id.error_page(StatusCode::BAD_REQUEST, "This reset link is not valid any more. Ask for a new one.");
    }
    id.form_page(&headers, "Choose a new password", |csrf| {
        format!(
            "<form method=\"post\" action=\"/account/reset/confirm\">{csrf}{}{}<button type=\"submit\">Save password</button></form>",
            hidden("token", &token),
            field("New password", "password", "password", "", "autocomplete=\"new-password\" required minlength=\"8\" maxlength=\"128\"")
        )
    })
}

pub(crate) async fn reset_confirm(State(id): State<Arc<Identity>>, headers: HeaderMap, form: Form) -> Response {
    let form = match id.posted(&headers, form) {
        Ok(form) => form,
        Err(page) => return *page,
    };
    let password = form.get("password").map(String::as_str).unwrap_or("");
    if let Err(UserError::Invalid(text)) = crate::users::check_password(password) {
        return Page::new("Choose a new password", message("error", &text))
            .status(StatusCode::BAD_REQUEST)
            .render(&id.theme);
    }
    let Some(user_id) = id.take_one_time("reset", form.get("token").map(String::as_str).unwrap_or("")).await else {
        return id.error_page(StatusCode::BAD_REQUEST, "This reset link is not valid any more. Ask for a new one.");
    };
    match id.users.set_password(&user_id, password).await {
        Ok(_) => Page::new(
            "Password changed",
            format!(
                "{}<nav><a href=\"/account/signin\">Sign in</a></nav>",
                message("note", "Your new password is saved.")
            ),
        )
        .render(&id.theme),
        Err(e) => {
            tracing::error!(error = %e, "cannot save a new password");
            id.error_page(StatusCode::SERVICE_UNAVAILABLE, "The password could not be saved; try again.")
        }
    }
}

pub(crate) async fn verify(State(id): State<Arc<Identity>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let token = q.get("token").map(String::as_str).unwrap_or("");
    let Some(user_id) = id.take_one_time("verify", token).await else {
        return id.error_page(StatusCode::BAD_REQUEST, "This confirmation link is not valid any more.");
    };
    match id
        .users
        .update(&user_id, |u| {
            u.email_verified = true;
            Ok(())
        })
        .await
    {
        Ok(_) => Page::new("Address confirmed", message("note", "Thank you: your e-mail address is confirmed."))
            .render(&id.theme),
        Err(_) => id.error_page(StatusCode::BAD_REQUEST, "This confirmation link is not valid any more."),
    }
}

pub(crate) async fn theme_css(State(id): State<Arc<Identity>>) -> Response {
    match &id.css {
        Some(css) => (
            [(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=300")],
            css.clone(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// How long a browser session lasts.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_the_clients_query_and_encode_values() {
        let r = redirect_with("https://app.example/cb?x=1", &[("code", "a b"), ("state", "s&t")]);
        assert_eq!(r.headers()["location"], "https://app.example/cb?x=1&code=a%20b&state=s%26t");
        let r = redirect_with("https://app.example/cb", &[("code", "c")]);
        assert_eq!(r.headers()["location"], "https://app.example/cb?code=c");
    }

    #[test]
    fn reads_cookies() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; nimbus_sid=abc; b=2"));
        assert_eq!(cookie(&h, "nimbus_sid").as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "missing"), None);
    }
}
