//! API keys (APIM's subscriptions): `nk_<id>_<secret>`, shown once at creation and stored as a
//! SHA-256 hash (a 256-bit random secret needs no slow hash), optionally limited to some routes and
//! to a lifetime, revocable. Records live in the store, so every node and the CLI see the same keys.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use nimbus_store::{Expect, Store, StoreError, Write};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const NS: &str = "gateway";
const PREFIX: &str = "key/";

/// A key as stored and listed; never holds the secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiKeyInfo {
    pub id: String,
    pub name: String,
    /// `[[routes]]` paths the key opens; empty means every `api_key` route.
    pub routes: Vec<String>,
    /// Unix seconds.
    pub created: u64,
    pub expires: Option<u64>,
    pub revoked: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    info: ApiKeyInfo,
    hash: String,
}

/// Why a presented key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRejection {
    Unknown,
    Expired,
    Revoked,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Invalid(String),
    #[error("no API key has id \"{0}\"")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct ApiKeys {
    store: Arc<dyn Store>,
}

impl ApiKeys {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Creates a key; the answer holds the only copy of its secret.
    pub async fn create(
        &self,
        name: &str,
        routes: Vec<String>,
        lifetime: Option<std::time::Duration>,
    ) -> Result<(ApiKeyInfo, String), KeyError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
            return Err(KeyError::Invalid("a key needs a name of 1-200 printable characters".into()));
        }
        for route in &routes {
            nimbus_config::PathPattern::parse(route).map_err(|e| KeyError::Invalid(format!("routes: {e}")))?;
        }
        if lifetime.is_some_and(|l| l.is_zero()) {
            return Err(KeyError::Invalid("a key's lifetime must be longer than 0s".into()));
        }
        let id = nimbus_api::hex(&rand::rng().random::<[u8; 8]>());
        let secret = nimbus_api::hex(&rand::rng().random::<[u8; 32]>());
        let key = format!("nk_{id}_{secret}");
        let exact = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let info = ApiKeyInfo {
            id: id.clone(),
            name: name.to_owned(),
            routes,
            created: exact.as_secs(),
            // Rounded up, so a key never loses part of its lifetime to rounding.
            expires: lifetime.map(|l| (exact + l).as_secs_f64().ceil() as u64),
            revoked: None,
        };
        let stored = Stored { info: info.clone(), hash: digest(&key) };
        let value = serde_json::to_vec(&stored).expect("a key record serializes");
        self.store.commit(vec![Write::put(NS, &format!("{PREFIX}{id}"), value).expect(Expect::Absent)]).await?;
        Ok((info, key))
    }

    pub async fn list(&self) -> Result<Vec<ApiKeyInfo>, KeyError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list(NS, PREFIX, after.as_deref(), 500).await?;
            let done = page.len() < 500;
            after = page.last().map(|r| r.key.clone());
            out.extend(page.iter().filter_map(|r| serde_json::from_slice::<Stored>(&r.value).ok().map(|s| s.info)));
            if done {
                return Ok(out);
            }
        }
    }

    pub async fn get(&self, id: &str) -> Result<ApiKeyInfo, KeyError> {
        Ok(self.load(id).await?.0.info)
    }

    /// Revokes a key for good (its record stays, for the audit trail).
    pub async fn revoke(&self, id: &str) -> Result<ApiKeyInfo, KeyError> {
        loop {
            let (mut stored, version) = self.load(id).await?;
            if stored.info.revoked.is_some() {
                return Ok(stored.info);
            }
            stored.info.revoked = Some(now());
            let value = serde_json::to_vec(&stored).expect("a key record serializes");
            let write = Write::put(NS, &format!("{PREFIX}{id}"), value).expect(Expect::Version(version));
            match self.store.commit(vec![write]).await {
                Ok(_) => return Ok(stored.info),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Checks a presented key; the answer is the key's record when it is valid.
    pub async fn verify(&self, presented: &str) -> Result<Result<ApiKeyInfo, KeyRejection>, StoreError> {
        let Some(id) = parse_id(presented) else { return Ok(Err(KeyRejection::Unknown)) };
        let Some(record) = self.store.get(NS, &format!("{PREFIX}{id}")).await? else {
            return Ok(Err(KeyRejection::Unknown));
        };
        let Ok(stored) = serde_json::from_slice::<Stored>(&record.value) else { return Ok(Err(KeyRejection::Unknown)) };
        if !bool::from(digest(presented).as_bytes().ct_eq(stored.hash.as_bytes())) {
            return Ok(Err(KeyRejection::Unknown));
        }
        if stored.info.revoked.is_some() {
            return Ok(Err(KeyRejection::Revoked));
        }
        if stored.info.expires.is_some_and(|at| at <= now()) {
            return Ok(Err(KeyRejection::Expired));
        }
        Ok(Ok(stored.info))
    }

    async fn load(&self, id: &str) -> Result<(Stored, u64), KeyError> {
        if !is_id(id) {
            return Err(KeyError::NotFound(id.to_owned()));
        }
        let record =
            self.store.get(NS, &format!("{PREFIX}{id}")).await?.ok_or_else(|| KeyError::NotFound(id.into()))?;
        let stored = serde_json::from_slice::<Stored>(&record.value)
            .map_err(|e| KeyError::Invalid(format!("key record \"{id}\" is unreadable: {e}")))?;
        Ok((stored, record.version))
    }
}

fn parse_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("nk_")?;
    let (id, secret) = rest.split_once('_')?;
    (is_id(id) && secret.len() == 64).then_some(id)
}

fn is_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn digest(key: &str) -> String {
    nimbus_api::hex(&Sha256::digest(key.as_bytes()))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `/_nimbus/admin/keys` (list, create) and `/_nimbus/admin/keys/{id}` (show, revoke with
/// DELETE); the binary puts them behind the admin token.
pub fn admin_router(keys: ApiKeys) -> axum::Router {
    use axum::extract::State;
    use axum::routing::get;
    use nimbus_api::extract::Path;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct CreateKey {
        name: String,
        #[serde(default)]
        routes: Vec<String>,
        /// A duration like "30d".
        expires_in: Option<String>,
    }

    fn error(e: KeyError) -> nimbus_api::ApiError {
        use axum::http::StatusCode;
        match e {
            KeyError::Invalid(m) => nimbus_api::ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", m),
            KeyError::NotFound(_) => nimbus_api::ApiError::not_found(e.to_string()),
            KeyError::Store(e) => {
                tracing::error!(error = %e, "API key store failed");
                nimbus_api::ApiError::internal()
            }
        }
    }

    async fn create(
        State(keys): State<ApiKeys>,
        body: Result<axum::Json<CreateKey>, axum::extract::rejection::JsonRejection>,
    ) -> Result<(axum::http::StatusCode, axum::Json<serde_json::Value>), nimbus_api::ApiError> {
        let axum::Json(body) = body.map_err(|e| {
            nimbus_api::ApiError::new(axum::http::StatusCode::BAD_REQUEST, "invalid_request", e.body_text())
        })?;
        let lifetime = match &body.expires_in {
            Some(text) => Some(
                text.parse::<nimbus_config::Duration>()
                    .map_err(|e| error(KeyError::Invalid(format!("expires_in: {e}"))))?
                    .get(),
            ),
            None => None,
        };
        let (info, key) = keys.create(&body.name, body.routes, lifetime).await.map_err(error)?;
        let mut out = serde_json::to_value(&info).expect("key info serializes");
        out["key"] = serde_json::Value::String(key);
        Ok((axum::http::StatusCode::CREATED, axum::Json(out)))
    }

    async fn list(State(keys): State<ApiKeys>) -> Result<axum::Json<serde_json::Value>, nimbus_api::ApiError> {
        Ok(axum::Json(serde_json::json!({"keys": keys.list().await.map_err(error)?})))
    }

    async fn show(
        State(keys): State<ApiKeys>,
        Path(id): Path<String>,
    ) -> Result<axum::Json<ApiKeyInfo>, nimbus_api::ApiError> {
        Ok(axum::Json(keys.get(&id).await.map_err(error)?))
    }

    async fn revoke(
        State(keys): State<ApiKeys>,
        Path(id): Path<String>,
    ) -> Result<axum::Json<ApiKeyInfo>, nimbus_api::ApiError> {
        Ok(axum::Json(keys.revoke(&id).await.map_err(error)?))
    }

    axum::Router::new()
        .route("/_nimbus/admin/keys", get(list).post(create))
        .route("/_nimbus/admin/keys/{id}", get(show).delete(revoke))
        .with_state(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_ids() {
        let key = format!("nk_0123456789abcdef_{}", "a".repeat(64));
        assert_eq!(parse_id(&key), Some("0123456789abcdef"));
        assert_eq!(parse_id("nk_0123456789abcdef_short"), None);
        assert_eq!(parse_id(&format!("nk_0123456789ABCDEF_{}", "a".repeat(64))), None);
        assert_eq!(parse_id("Bearer xyz"), None);
        assert_eq!(parse_id(""), None);
    }
}
