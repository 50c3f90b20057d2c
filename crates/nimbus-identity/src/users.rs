//! Users: records in the store (namespace `identity`, `user/<id>`) with an index by e-mail
//! (`email/<sha256 of the lower-cased address>`, written in the same commit, so two sign-ups with
//! one address cannot both succeed). Passwords are argon2id PHC strings with OWASP's minimum
//! parameters (19 MiB, 2 iterations, 1 lane); hashing runs on the blocking pool.

use std::collections::BTreeMap;
use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use nimbus_store::{Expect, Store, StoreError, Write};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::keys::now;

const NS: &str = "identity";
pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 128;
pub const MAX_FIELD: usize = 256;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub id: String,
    pub email: String,
    #[serde(default)]
    pub email_verified: bool,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Custom attributes, passed into tokens as claims.
    #[serde(default)]
    pub attributes: BTreeMap<String, Value>,
    #[serde(default)]
    pub disabled: bool,
    pub created: u64,
    /// The argon2id PHC string; absent for users who only sign in through a federated provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl User {
    /// The record without the password hash, as the admin API and the CLI show it.
    pub fn public(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("a user serializes");
        if let Some(map) = v.as_object_mut() {
            map.remove("password");
        }
        v
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Invalid(String),
    #[error("an account with this e-mail address exists")]
    Taken,
    #[error("no such user")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct Users {
    store: Arc<dyn Store>,
}

/// A PHC string of a password nobody has, verified when an account does not exist so that a
/// sign-in takes as long for unknown addresses as for known ones.
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_now("not a password anyone has").unwrap_or_default());

impl Users {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    pub async fn create(&self, email: &str, password: Option<&str>, name: Option<&str>) -> Result<User, UserError> {
        let email = normalize_email(email)?;
        let name = name.map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned);
        if name.as_ref().is_some_and(|n| n.chars().count() > MAX_FIELD || n.chars().any(char::is_control)) {
            return Err(UserError::Invalid(format!("a name is at most {MAX_FIELD} printable characters")));
        }
        let password = match password {
            Some(p) => Some(hash(check_password(p)?.to_owned()).await?),
            None => None,
        };
        let user = User {
            id: nimbus_api::hex(&rand::random::<[u8; 12]>()),
            email: email.clone(),
            email_verified: false,
            name,
            roles: Vec::new(),
            groups: Vec::new(),
            attributes: BTreeMap::new(),
            disabled: false,
            created: now(),
            password,
        };
        let writes = vec![
            Write::put(NS, &email_key(&email), user.id.clone()).expect(Expect::Absent),
            Write::put(NS, &format!("user/{}", user.id), serde_json::to_vec(&user).expect("a user serializes"))
                .expect(Expect::Absent),
        ];
        match self.store.commit(writes).await {
            Ok(_) => Ok(user),
            Err(StoreError::Conflict { index: 0, .. }) => Err(UserError::Taken),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get(&self, id: &str) -> Result<User, UserError> {
        Ok(self.load(id).await?.0)
    }

    pub async fn by_email(&self, email: &str) -> Result<Option<User>, UserError> {
        let Ok(email) = normalize_email(email) else { return Ok(None) };
        let Some(record) = self.store.get(NS, &email_key(&email)).await? else { return Ok(None) };
        let id = String::from_utf8_lossy(&record.value).into_owned();
        match self.load(&id).await {
            Ok((user, _)) => Ok(Some(user)),
            Err(UserError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The user whose e-mail and password these are, if the account is enabled. Takes the same
    /// time whether or not the address has an account.
    pub async fn authenticate(&self, email: &str, password: &str) -> Result<Option<User>, UserError> {
        let user = self.by_email(email).await?;
        let stored = user.as_ref().and_then(|u| u.password.clone()).unwrap_or_else(|| DUMMY_HASH.clone());
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || {
            Argon2::default().verify_password(password.as_bytes(), stored.as_str()).is_ok()
        })
        .await
        .unwrap_or(false);
        Ok(user.filter(|u| matches && u.password.is_some() && !u.disabled))
    }

    pub async fn list(&self) -> Result<Vec<User>, UserError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list(NS, "user/", after.as_deref(), 500).await?;
            let done = page.len() < 500;
            after = page.last().map(|r| r.key.clone());
            out.extend(page.iter().filter_map(|r| serde_json::from_slice::<User>(&r.value).ok()));
            if done {
                return Ok(out);
            }
        }
    }

    /// Applies `change` to a user and stores it (compare-and-set, retried on a concurrent write).
    pub async fn update(
        &self,
        id: &str,
        change: impl Fn(&mut User) -> Result<(), UserError>,
    ) -> Result<User, UserError> {
        loop {
            let (mut user, version) = self.load(id).await?;
            change(&mut user)?;
            let write = Write::put(NS, &format!("user/{id}"), serde_json::to_vec(&user).expect("a user serializes"))
                .expect(Expect::Version(version));
            match self.store.commit(vec![write]).await {
                Ok(_) => return Ok(user),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub async fn set_password(&self, id: &str, password: &str) -> Result<User, UserError> {
        let hashed = hash(check_password(password)?.to_owned()).await?;
        self.update(id, |u| {
            u.password = Some(hashed.clone());
            Ok(())
        })
        .await
    }

    pub async fn delete(&self, id: &str) -> Result<(), UserError> {
        let (user, version) = self.load(id).await?;
        let writes = vec![
            Write::delete(NS, &format!("user/{id}")).expect(Expect::Version(version)),
            Write::delete(NS, &email_key(&user.email)),
        ];
        self.store.commit(writes).await?;
        Ok(())
    }

    async fn load(&self, id: &str) -> Result<(User, u64), UserError> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(UserError::NotFound);
        }
        let record = self.store.get(NS, &format!("user/{id}")).await?.ok_or(UserError::NotFound)?;
        let user = serde_json::from_slice(&record.value)
            .map_err(|e| UserError::Invalid(format!("user {id} is unreadable: {e}")))?;
        Ok((user, record.version))
    }
}

/// Trims and lower-cases an address and checks its shape (one `@`, something on both sides, no
/// spaces or control characters, at most 254 bytes as SMTP allows).
pub fn normalize_email(email: &str) -> Result<String, UserError> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if valid { Ok(email) } else { Err(UserError::Invalid("enter a valid e-mail address".into())) }
}

/// The password policy: 8 to 128 characters, not only one repeated character.
pub fn check_password(password: &str) -> Result<&str, UserError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        return Err(UserError::Invalid(format!("a password needs at least {MIN_PASSWORD} characters")));
    }
    if n > MAX_PASSWORD {
        return Err(UserError::Invalid(format!("a password has at most {MAX_PASSWORD} characters")));
    }
    let mut chars = password.chars();
    let first = chars.next();
    if chars.all(|c| Some(c) == first) {
        return Err(UserError::Invalid("a password cannot be one character repeated".into()));
    }
    Ok(password)
}

fn email_key(email: &str) -> String {
    format!("email/{}", nimbus_api::hex(&Sha256::digest(email.as_bytes())))
}

async fn hash(password: String) -> Result<String, UserError> {
    tokio::task::spawn_blocking(move || hash_now(&password))
        .await
        .map_err(|e| UserError::Invalid(format!("cannot hash the password: {e}")))?
}

fn hash_now(password: &str) -> Result<String, UserError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| UserError::Invalid(format!("cannot hash the password: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_addresses_and_passwords() {
        assert_eq!(normalize_email("  Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in ["", "ada", "@example.com", "ada@", "ada@example", "a b@example.com", "a@b@c.com", "a@.com"] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
        assert!(check_password("short").is_err());
        assert!(check_password("aaaaaaaaaa").is_err());
        assert!(check_password(&"ab".repeat(65)).is_err());
        assert!(check_password("correct horse").is_ok());
    }

    #[test]
    fn hashes_are_argon2id_with_owasp_parameters() {
        let h = hash_now("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(Argon2::default().verify_password(b"correct horse", h.as_str()).is_ok());
        assert!(Argon2::default().verify_password(b"wrong horse", h.as_str()).is_err());
    }
}
