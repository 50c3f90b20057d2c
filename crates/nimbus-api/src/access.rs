//! Who calls a platform API (`/_nimbus/blob/…`, `/_nimbus/docs/…`): the holder of the admin token,
//! or a function's worker instance with the short-lived token the host gave it, limited to the
//! grants the manifest gives that function. The binary decides who a request is ([`Authenticate`]);
//! each component asks [`Principal::may`] for what it is about to do.

use std::sync::Arc;

use axum::http::HeaderMap;
pub use nimbus_config::Grant;

#[derive(Debug, Clone)]
pub enum Principal {
    /// The admin token: everything.
    Admin,
    /// A worker instance serving `function`: only what its grants allow.
    Function { function: Arc<str>, grants: Arc<[Grant]> },
}

impl Principal {
    /// Whether this caller may read (or, with `write`, change) `name` of `component`.
    pub fn may(&self, component: &str, name: &str, write: bool) -> bool {
        match self {
            Self::Admin => true,
            Self::Function { grants, .. } => grants.iter().any(|g| g.allows(component, name, write)),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Self::Admin)
    }

    /// For refusals: "the admin token" or "function `chat`".
    pub fn describe(&self) -> String {
        match self {
            Self::Admin => "the admin token".into(),
            Self::Function { function, .. } => format!("function `{function}`"),
        }
    }
}

/// Tells who a request's credentials belong to; `None` when it carries none that count here.
pub type Authenticate = Arc<dyn Fn(&HeaderMap) -> Option<Principal> + Send + Sync>;

/// Lets a request through to `name` of `component` (for writing, with `write`), or answers why
/// not: 401 without credentials that count here, 403 naming the grant the caller lacks.
pub fn authorize(
    authenticate: &Authenticate,
    headers: &HeaderMap,
    component: &str,
    name: &str,
    write: bool,
) -> Result<Principal, crate::ApiError> {
    let Some(principal) = authenticate(headers) else {
        return Err(crate::ApiError::unauthorized(
            "this endpoint needs the admin token or a worker's token (`Authorization: Bearer <token>`)",
        ));
    };
    if principal.may(component, name, write) {
        return Ok(principal);
    }
    let (doing, access) = if write { ("write to", "rw") } else { ("read", "r") };
    Err(crate::ApiError::forbidden(format!(
        "{} may not {doing} {component} container \"{name}\" (grant it with \"{component}:{name}:{access}\")",
        principal.describe()
    )))
}

/// The token of an `Authorization: Bearer …` header (none when empty).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_get_what_their_grants_allow() {
        let grants: Arc<[Grant]> = vec![Grant::parse("blob:uploads:rw").unwrap()].into();
        let f = Principal::Function { function: "chat".into(), grants };
        assert!(f.may("blob", "uploads", true));
        assert!(!f.may("blob", "private", false));
        assert!(Principal::Admin.may("blob", "private", true));
        let mut h = HeaderMap::new();
        h.insert("authorization", "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "Bearer  ".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
