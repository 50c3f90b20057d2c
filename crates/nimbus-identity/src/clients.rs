//! Clients registered with `nimbus identity clients create` (beside those `[[identity.clients]]`
//! declares): records `client/<id>` in the store, read when a request names them, so every node
//! sees them at once. A manifest client of the same id wins. Secrets are generated, shown once and
//! stored as SHA-256.

use std::sync::Arc;

use nimbus_store::{Expect, Store, StoreError, Write};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::now;
use crate::token::{Client, Grants};

const NS: &str = "identity";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientInfo {
    pub id: String,
    pub public: bool,
    pub redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    /// `authorization_code`, `refresh_token`, `client_credentials`; empty: the defaults.
    pub grant_types: Vec<String>,
    pub created: u64,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    info: ClientInfo,
    /// SHA-256 of the secret, hex; none for public clients.
    secret: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Invalid(String),
    #[error("a client with id \"{0}\" exists")]
    Taken(String),
    #[error("no client has id \"{0}\"")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Registers a client; answers it and, for a confidential client, its secret (shown only now).
pub async fn create(store: &dyn Store, info: ClientInfo) -> Result<(ClientInfo, Option<String>), ClientError> {
    if info.id.is_empty()
        || info.id.len() > 128
        || !info.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ClientError::Invalid("a client id is 1-128 letters, digits, `-`, `_` or `.`".into()));
    }
    for uri in &info.redirect_uris {
        let ok = reqwest::Url::parse(uri)
            .is_ok_and(|u| u.fragment().is_none() && !matches!(u.scheme(), "javascript" | "data" | "file"));
        if !ok {
            return Err(ClientError::Invalid(format!("\"{uri}\" is not an absolute redirect URI without a fragment")));
        }
    }
    for grant in &info.grant_types {
        match grant.as_str() {
            "authorization_code" | "refresh_token" => {}
            "client_credentials" if !info.public => {}
            "client_credentials" => {
                return Err(ClientError::Invalid("client_credentials needs a confidential client".into()));
            }
            other => return Err(ClientError::Invalid(format!("\"{other}\" is not a grant type"))),
        }
    }
    let secret = (!info.public).then(|| nimbus_api::hex(&rand::random::<[u8; 24]>()));
    let info = ClientInfo { created: now(), ..info };
    let stored =
        Stored { info: info.clone(), secret: secret.as_ref().map(|s| nimbus_api::hex(&Sha256::digest(s.as_bytes()))) };
    let write = Write::put(NS, &format!("client/{}", info.id), serde_json::to_vec(&stored).expect("serializes"))
        .expect(Expect::Absent);
    match store.commit(vec![write]).await {
        Ok(_) => Ok((info, secret)),
        Err(StoreError::Conflict { .. }) => Err(ClientError::Taken(info.id)),
        Err(e) => Err(e.into()),
    }
}

pub async fn list(store: &dyn Store) -> Result<Vec<ClientInfo>, ClientError> {
    Ok(store
        .list(NS, "client/", None, 10_000)
        .await?
        .iter()
        .filter_map(|r| serde_json::from_slice::<Stored>(&r.value).ok().map(|s| s.info))
        .collect())
}

pub async fn delete(store: &dyn Store, id: &str) -> Result<(), ClientError> {
    let key = format!("client/{id}");
    let record = store.get(NS, &key).await?.ok_or_else(|| ClientError::NotFound(id.to_owned()))?;
    store.commit(vec![Write::delete(NS, &key).expect(Expect::Version(record.version))]).await?;
    Ok(())
}

/// A registered client, as the token and authorization endpoints use it.
pub(crate) async fn load(store: &dyn Store, id: &str) -> Option<Arc<Client>> {
    if id.is_empty() || id.len() > 128 {
        return None;
    }
    let record = store.get(NS, &format!("client/{id}")).await.ok()??;
    let stored: Stored = serde_json::from_slice(&record.value).ok()?;
    let has = |g: &str| stored.info.grant_types.is_empty() || stored.info.grant_types.iter().any(|x| x == g);
    let secret = stored.secret.as_deref().and_then(|hex| {
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).filter_map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
        <[u8; 32]>::try_from(bytes).ok()
    });
    Some(Arc::new(Client::new(
        stored.info.id.clone(),
        stored.info.public,
        secret,
        stored.info.redirect_uris.clone(),
        stored.info.scopes.clone(),
        Grants {
            authorization_code: has("authorization_code"),
            refresh_token: has("refresh_token"),
            client_credentials: !stored.info.public && has("client_credentials"),
        },
    )))
}
