//! `/_nimbus/admin/users` and `/_nimbus/admin/outbox`: the admin API of the identity provider
//! (the binary puts it behind the admin token). Users are listed and shown without their password
//! hashes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use nimbus_api::ApiError;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Identity;
use crate::users::UserError;

fn error(e: UserError) -> ApiError {
    match e {
        UserError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", m),
        UserError::Taken => ApiError::new(StatusCode::CONFLICT, "conflict", "a user with this e-mail address exists"),
        UserError::NotFound => ApiError::not_found("no such user"),
        UserError::Store(e) => {
            tracing::error!(error = %e, "user store failed");
            ApiError::internal()
        }
    }
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.body_text()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    email: String,
    password: Option<String>,
    name: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    email_verified: bool,
}

/// Every field optional: what is present changes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    name: Option<String>,
    password: Option<String>,
    roles: Option<Vec<String>>,
    groups: Option<Vec<String>>,
    attributes: Option<BTreeMap<String, Value>>,
    disabled: Option<bool>,
    email_verified: Option<bool>,
}

/// Roles, groups and attribute names become token claims: short printable names only.
pub fn check_names(what: &str, names: &[String]) -> Result<(), UserError> {
    for n in names {
        if n.is_empty() || n.len() > 64 || n.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(UserError::Invalid(format!("{what} \"{n}\": 1-64 characters, no spaces")));
        }
    }
    Ok(())
}

/// Claims a custom attribute may not replace.
const RESERVED: [&str; 14] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "scope",
    "client_id",
    "roles",
    "groups",
    "auth_time",
    "nonce",
    "email",
];

async fn list(State(id): State<Arc<Identity>>) -> Result<Json<Value>, ApiError> {
    let users = id.users.list().await.map_err(error)?;
    Ok(Json(json!({"users": users.iter().map(|u| u.public()).collect::<Vec<_>>()})))
}

async fn create(
    State(id): State<Arc<Identity>>,
    new: Result<Json<NewUser>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new = body(new)?;
    check_names("role", &new.roles).map_err(error)?;
    let user = id.users.create(&new.email, new.password.as_deref(), new.name.as_deref()).await.map_err(error)?;
    let user = id
        .users
        .update(&user.id, |u| {
            u.roles = new.roles.clone();
            u.email_verified = new.email_verified;
            Ok(())
        })
        .await
        .map_err(error)?;
    Ok((StatusCode::CREATED, Json(user.public())))
}

async fn show(State(id): State<Arc<Identity>>, Path(user): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(id.users.get(&user).await.map_err(error)?.public()))
}

async fn change(
    State(id): State<Arc<Identity>>,
    Path(user): Path<String>,
    change: Result<Json<Change>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let change = body(change)?;
    if let Some(password) = &change.password {
        id.users.set_password(&user, password).await.map_err(error)?;
    }
    let updated = id
        .users
        .update(&user, |u| {
            if let Some(name) = &change.name {
                let name = name.trim();
                if name.chars().count() > crate::users::MAX_FIELD || name.chars().any(char::is_control) {
                    return Err(UserError::Invalid("a name is at most 256 printable characters".into()));
                }
                u.name = Some(name.to_owned()).filter(|n| !n.is_empty());
            }
            if let Some(roles) = &change.roles {
                check_names("role", roles)?;
                u.roles = roles.clone();
            }
            if let Some(groups) = &change.groups {
                check_names("group", groups)?;
                u.groups = groups.clone();
            }
            if let Some(attributes) = &change.attributes {
                let names: Vec<String> = attributes.keys().cloned().collect();
                check_names("attribute", &names)?;
                if let Some(bad) = names.iter().find(|n| RESERVED.contains(&n.as_str())) {
                    return Err(UserError::Invalid(format!("attribute \"{bad}\" would replace a standard claim")));
                }
                u.attributes = attributes.clone();
            }
            if let Some(disabled) = change.disabled {
                u.disabled = disabled;
            }
            if let Some(verified) = change.email_verified {
                u.email_verified = verified;
            }
            Ok(())
        })
        .await
        .map_err(error)?;
    Ok(Json(updated.public()))
}

async fn remove(State(id): State<Arc<Identity>>, Path(user): Path<String>) -> Result<StatusCode, ApiError> {
    id.users.delete(&user).await.map_err(error)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn outbox(State(id): State<Arc<Identity>>) -> Result<Json<Value>, ApiError> {
    let mail = crate::mail::outbox(id.store.as_ref()).await.map_err(|e| error(e.into()))?;
    Ok(Json(json!({"messages": mail})))
}

pub(crate) fn router(identity: Arc<Identity>) -> axum::Router {
    axum::Router::new()
        .route("/_nimbus/admin/users", get(list).post(create))
        .route("/_nimbus/admin/users/{id}", get(show).patch(change).delete(remove))
        .route("/_nimbus/admin/outbox", get(outbox))
        .with_state(identity)
}
