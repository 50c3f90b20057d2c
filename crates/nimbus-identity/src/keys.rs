//! Signing keys: RSA-2048 for RS256, kept in the store (namespace `identity`) so that every node
//! signs with the same key and a restart changes nothing. The newest key that is not retired signs;
//! a rotation retires the others, which stay in the JWKS until every token they signed has expired.

use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{DecodingKey, EncodingKey};
use nimbus_store::{Expect, Store, StoreError, Write};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::traits::PublicKeyParts;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const NS: &str = "identity";
const PREFIX: &str = "signing-key/";

#[derive(Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    /// PKCS#1 DER of the private key, base64.
    der: String,
    created: u64,
    retired: Option<u64>,
}

pub(crate) struct SigningKey {
    pub kid: String,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    pub jwk: Value,
    created: u64,
    retired: Option<u64>,
}

#[derive(Default)]
struct Ring {
    current: Option<Arc<SigningKey>>,
    /// Every key whose tokens may still be alive, newest first.
    published: Vec<Arc<SigningKey>>,
}

pub(crate) struct KeyRing {
    store: Arc<dyn Store>,
    /// How long a retired key stays published: the longest token lifetime.
    retention: u64,
    ring: RwLock<Ring>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing key \"{0}\" in the store is unreadable: {1}")]
    Corrupt(String, String),
    #[error("cannot generate a signing key: {0}")]
    Generate(String),
}

impl KeyRing {
    /// Loads the keys, making the first one when the store has none.
    pub async fn open(store: Arc<dyn Store>, retention: u64) -> Result<Self, KeyError> {
        let ring = Self { store, retention, ring: RwLock::default() };
        ring.reload().await?;
        if ring.current().is_none() {
            ring.add_new().await?;
            ring.reload().await?;
        }
        Ok(ring)
    }

    pub fn current(&self) -> Option<Arc<SigningKey>> {
        self.ring.read().unwrap_or_else(|p| p.into_inner()).current.clone()
    }

    pub fn find(&self, kid: &str) -> Option<Arc<SigningKey>> {
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        ring.published.iter().find(|k| k.kid == kid).cloned()
    }

    /// The public keys, as `/oauth2/jwks` serves them.
    pub fn jwks(&self) -> Value {
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        json!({"keys": ring.published.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
    }

    /// Reads the keys again (another node, or `nimbus identity rotate-key`, may have rotated), and
    /// deletes keys retired longer ago than the longest token lifetime.
    pub async fn reload(&self) -> Result<(), KeyError> {
        let now = now();
        let records = self.store.list(NS, PREFIX, None, 1000).await?;
        let mut keys = Vec::new();
        for record in records {
            let stored: StoredKey = serde_json::from_slice(&record.value)
                .map_err(|e| KeyError::Corrupt(record.key.clone(), e.to_string()))?;
            if stored.retired.is_some_and(|at| at + self.retention < now) {
                let gone = Write::delete(NS, &record.key).expect(Expect::Version(record.version));
                if let Err(e) = self.store.commit(vec![gone]).await
                    && !matches!(e, StoreError::Conflict { .. })
                {
                    return Err(e.into());
                }
                continue;
            }
            keys.push(Arc::new(decode(&stored)?));
        }
        keys.sort_by(|a, b| (b.created, &b.kid).cmp(&(a.created, &a.kid)));
        let current = keys.iter().find(|k| k.retired.is_none()).cloned();
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Ring { current, published: keys };
        Ok(())
    }

    /// Makes a new signing key and retires the others. Answers the new key's id.
    pub async fn rotate(&self) -> Result<String, KeyError> {
        let kid = self.add_new().await?;
        let now = now();
        for record in self.store.list(NS, PREFIX, None, 1000).await? {
            let mut stored: StoredKey = serde_json::from_slice(&record.value)
                .map_err(|e| KeyError::Corrupt(record.key.clone(), e.to_string()))?;
            if stored.kid == kid || stored.retired.is_some() {
                continue;
            }
            stored.retired = Some(now);
            let value = serde_json::to_vec(&stored).expect("a key record serializes");
            let write = Write::put(NS, &record.key, value).expect(Expect::Version(record.version));
            match self.store.commit(vec![write]).await {
                Ok(_) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.reload().await?;
        Ok(kid)
    }

    async fn add_new(&self) -> Result<String, KeyError> {
        let private = tokio::task::spawn_blocking(|| rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048))
            .await
            .map_err(|e| KeyError::Generate(e.to_string()))?
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        let der = private.to_pkcs1_der().map_err(|e| KeyError::Generate(e.to_string()))?;
        let kid = nimbus_api::hex(&rand::random::<[u8; 8]>());
        let stored =
            StoredKey { kid: kid.clone(), der: STANDARD.encode(der.as_bytes()), created: now(), retired: None };
        let value = serde_json::to_vec(&stored).expect("a key record serializes");
        self.store.commit(vec![Write::put(NS, &format!("{PREFIX}{kid}"), value).expect(Expect::Absent)]).await?;
        tracing::info!(kid = %kid, "made a new signing key");
        Ok(kid)
    }
}

fn decode(stored: &StoredKey) -> Result<SigningKey, KeyError> {
    let corrupt = |e: String| KeyError::Corrupt(stored.kid.clone(), e);
    let der = STANDARD.decode(&stored.der).map_err(|e| corrupt(e.to_string()))?;
    let private = rsa::RsaPrivateKey::from_pkcs1_der(&der).map_err(|e| corrupt(e.to_string()))?;
    let n = URL_SAFE_NO_PAD.encode(private.n().to_bytes_be());
    let e = URL_SAFE_NO_PAD.encode(private.e().to_bytes_be());
    Ok(SigningKey {
        kid: stored.kid.clone(),
        encoding: EncodingKey::from_rsa_der(&der),
        decoding: DecodingKey::from_rsa_components(&n, &e).map_err(|e| corrupt(e.to_string()))?,
        jwk: json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": stored.kid, "n": n, "e": e}),
        created: stored.created,
        retired: stored.retired,
    })
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
