//! Deleting what has expired: pending authorization requests, codes, browser sessions, reset and
//! verification links, refresh-token families, federation states and old outbox mail. Every read
//! already refuses an expired record (by the store's clock); this only frees the space. One node at
//! a time purges, under the store lease `identity-purge`, every [`PURGE_EVERY`]; each delete is
//! fenced by the lease and conditional on the version read, so a record rewritten meanwhile (a code
//! being used, a family rotated) stays. A round examines at most [`BUDGET`] records of each kind and
//! goes on from there in the next round, so a large table costs several rounds, not one long one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use nimbus_store::{Expect, Lease, Record, StoreError, Write};
use serde::Deserialize;

use crate::Identity;

const NS: &str = "identity";
pub(crate) const PURGE_EVERY: Duration = Duration::from_secs(60);
const LEASE: &str = "identity-purge";
const PAGE: usize = 500;
/// Records examined per kind and round.
const BUDGET: usize = 20_000;
/// How long mail stays in the outbox: as long as the longest-lived link a mail carries works.
const OUTBOX_RETENTION: u64 = crate::web::VERIFY_TTL;

/// The key prefixes of the records that expire.
const KINDS: [&str; 8] = ["authreq/", "fed/", "code/", "session/", "reset/", "verify/", "refresh/", "outbox/"];

/// This node's side of the purge: its lease holder name, and where each kind's walk goes on.
pub(crate) struct Purger {
    holder: String,
    cursors: Mutex<HashMap<&'static str, String>>,
}

impl Purger {
    pub fn new() -> Self {
        Self { holder: nimbus_api::hex(&rand::random::<[u8; 8]>()), cursors: Mutex::default() }
    }

    fn cursor(&self, kind: &'static str) -> Option<String> {
        self.cursors.lock().unwrap_or_else(|p| p.into_inner()).get(kind).cloned()
    }

    fn set_cursor(&self, kind: &'static str, after: Option<String>) {
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        match after {
            Some(key) => cursors.insert(kind, key),
            None => cursors.remove(kind),
        };
    }
}

/// The times every expiring record carries (one or the other).
#[derive(Deserialize)]
struct Times {
    #[serde(default)]
    expires: Option<u64>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(default)]
    used: Option<serde_json::Value>,
}

impl Identity {
    /// When a record of `kind` may go (Unix seconds); `None` for one this version cannot read,
    /// which stays.
    fn deadline(&self, kind: &str, value: &[u8]) -> Option<u64> {
        let t: Times = serde_json::from_slice(value).ok()?;
        match kind {
            "authreq/" => Some(t.created? + crate::web::REQUEST_TTL),
            "fed/" => Some(t.created? + crate::federation::STATE_TTL),
            "outbox/" => Some(t.created? + OUTBOX_RETENTION),
            // A used code stays as long as the refresh tokens it gave, so that its reuse still
            // revokes them.
            "code/" => {
                let used = t.used.is_some_and(|u| !u.is_null());
                Some(t.expires? + if used { self.refresh_ttl } else { 0 })
            }
            _ => t.expires,
        }
    }

    /// One round, if this node holds the purge lease (else another node purges): how many
    /// records went.
    pub(crate) async fn purge_round(&self) -> usize {
        let lease = match self.store.claim(LEASE, &self.purger.holder, PURGE_EVERY * 2).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return 0,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim the identity purge lease");
                return 0;
            }
        };
        let mut purged = 0;
        for kind in KINDS {
            match self.purge_kind(kind, &lease).await {
                Ok(n) => purged += n,
                Err(StoreError::LeaseLost { .. }) => break,
                Err(e) => tracing::warn!(error = %e, kind, "cannot purge expired identity records"),
            }
        }
        if purged > 0 {
            metrics::counter!("nimbus_identity_records_purged_total").increment(purged as u64);
            tracing::debug!(purged, "expired identity records purged");
        }
        purged
    }

    async fn purge_kind(&self, kind: &'static str, lease: &Lease) -> Result<usize, StoreError> {
        let now = self.now();
        let mut after = self.purger.cursor(kind);
        let (mut examined, mut purged) = (0, 0);
        loop {
            let page = self.store.list(NS, kind, after.as_deref(), PAGE).await?;
            examined += page.len();
            let end = page.len() < PAGE;
            after = page.last().map(|r| r.key.clone());
            let due: Vec<&Record> =
                page.iter().filter(|r| self.deadline(kind, &r.value).is_some_and(|d| d <= now)).collect();
            purged += self.delete(&due, lease).await?;
            if end {
                after = None;
                break;
            }
            if examined >= BUDGET {
                break;
            }
        }
        self.purger.set_cursor(kind, after);
        Ok(purged)
    }

    /// Deletes `due` in one fenced commit; when one of them changed since it was read, the
    /// others one by one.
    async fn delete(&self, due: &[&Record], lease: &Lease) -> Result<usize, StoreError> {
        if due.is_empty() {
            return Ok(0);
        }
        let gone = |r: &Record| Write::delete(NS, &r.key).expect(Expect::Version(r.version));
        let writes = std::iter::once(Write::holding(lease)).chain(due.iter().map(|r| gone(r))).collect();
        match self.store.commit(writes).await {
            Ok(_) => Ok(due.len()),
            Err(StoreError::Conflict { .. }) => {
                let mut n = 0;
                for r in due {
                    match self.store.commit(vec![Write::holding(lease), gone(r)]).await {
                        Ok(_) => n += 1,
                        Err(StoreError::Conflict { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(n)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use axum::extract::{ConnectInfo, Query, State};
    use axum::http::HeaderMap;

    use super::LEASE;
    use crate::Identity;

    const MANIFEST: &str = r#"
[identity]

[[identity.clients]]
id = "web"
secret = "web-secret"
redirect_uris = ["http://localhost:9/cb"]
"#;

    /// An identity provider on a fresh SQLite store, its background loops stopped: the test runs
    /// the purge rounds itself.
    async fn identity(dir: &Path) -> Arc<Identity> {
        let store = nimbus_store::open("sqlite", dir, nimbus_store::CORE_MIGRATIONS).await.unwrap();
        let manifest = nimbus_config::parse(Path::new("nimbus.toml"), MANIFEST).unwrap();
        let app = nimbus_config::AppConfig { dir: dir.to_owned(), manifest_path: None, manifest };
        let id = Identity::start(&app, "http://issuer.test".into(), store).await.unwrap();
        id.shutdown(Duration::from_secs(10)).await;
        id
    }

    /// Starts an authorization request as a browser does: the pending request's id.
    async fn authorize(id: &Arc<Identity>) -> String {
        let query: HashMap<String, String> =
            [("response_type", "code"), ("client_id", "web"), ("redirect_uri", "http://localhost:9/cb")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        let peer = ConnectInfo(std::net::SocketAddr::from(([192, 0, 2, 1], 4711)));
        let response = crate::web::authorize(State(id.clone()), peer, HeaderMap::new(), Query(query)).await;
        let location = response.headers()["location"].to_str().unwrap();
        location.strip_prefix("/account/signin?request=").unwrap().to_owned()
    }

    /// Signs `user` in for a pending request: the code in the redirect back to the client.
    async fn code(id: &Identity, user: &crate::User, request: &str) -> String {
        let response = crate::web::signed_in(id, user, request).await;
        let location = response.headers()["location"].to_str().unwrap();
        location.split("code=").nth(1).unwrap().split('&').next().unwrap().to_owned()
    }

    async fn redeem(id: &Identity, code: &str) -> Result<(), String> {
        let client = id.client("web").await.unwrap();
        let form: HashMap<String, String> = [("code", code), ("redirect_uri", "http://localhost:9/cb")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        crate::grants::authorization_code(id, &client, &form).await.map(|_| ()).map_err(|e| e.description)
    }

    async fn count(id: &Identity, prefix: &str) -> usize {
        id.store.list(super::NS, prefix, None, 1000).await.unwrap().len()
    }

    async fn counts(id: &Identity) -> Vec<(&'static str, usize)> {
        let mut out = Vec::new();
        for kind in super::KINDS {
            out.push((kind, count(id, kind).await));
        }
        out
    }

    #[tokio::test]
    async fn expired_records_are_refused_at_once_and_purged_under_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path()).await;
        let clock = id.store.clock();
        let user = id.users.create("ada@example.com", Some("correct horse"), None).await.unwrap();

        // A request left pending; a code redeemed (its refresh family stored); a code not
        // redeemed; the sessions of those sign-ins; a reset and a verification link; a federation
        // state; a mail in the outbox.
        authorize(&id).await;
        let used = code(&id, &user, &authorize(&id).await).await;
        redeem(&id, &used).await.unwrap();
        let unused = code(&id, &user, &authorize(&id).await).await;
        id.one_time("reset", &user.id, crate::web::RESET_TTL).await.unwrap();
        id.one_time("verify", &user.id, crate::web::VERIFY_TTL).await.unwrap();
        let state =
            serde_json::json!({"provider": "a", "request": "", "nonce": "n", "verifier": "v", "created": id.now()});
        id.store.put(super::NS, "fed/x", &serde_json::to_vec(&state).unwrap()).await.unwrap();
        crate::mail::send(&id, "ada@example.com", "Hello", "body").await;
        let all = [
            ("authreq/", 1),
            ("fed/", 1),
            ("code/", 2),
            ("session/", 2),
            ("reset/", 1),
            ("verify/", 1),
            ("refresh/", 1),
            ("outbox/", 1),
        ];
        assert_eq!(counts(&id).await, all);
        assert_eq!(id.purge_round().await, 0, "nothing has expired");

        // Expiry is read from the store's clock: moved two minutes on, the unused code is refused
        // before any purge.
        clock.advance(Duration::from_secs(120));
        assert!(redeem(&id, &unused).await.unwrap_err().contains("expired"));

        // Another node holds the lease: this one purges nothing.
        clock.advance(super::PURGE_EVERY * 2);
        let other = id.store.claim(LEASE, "another-node", Duration::from_secs(700)).await.unwrap().unwrap();
        clock.advance(Duration::from_secs(600));
        assert_eq!(id.purge_round().await, 0);
        assert_eq!(counts(&id).await, all);

        // Once its lease lapses, the next round is this node's: the pending request, the
        // federation state and the unused code (10 minutes, 10 minutes, 60 s) go; the used code
        // stays (its reuse must still revoke its family).
        clock.advance(Duration::from_secs(120));
        assert!(other.expires_at < clock.now());
        assert_eq!(id.purge_round().await, 3);
        let left = |changes: &[(&'static str, usize)]| {
            all.iter()
                .map(|(k, n)| (*k, changes.iter().find(|(c, _)| c == k).map_or(*n, |(_, m)| *m)))
                .collect::<Vec<_>>()
        };
        assert_eq!(counts(&id).await, left(&[("authreq/", 0), ("fed/", 0), ("code/", 1)]));
        assert!(id.users.get(&user.id).await.is_ok());

        // Two hours: the reset link. A day: the sessions. A week: the verification link and the
        // mail. Past the refresh tokens' 14 days: the family and the used code.
        clock.advance(Duration::from_secs(2 * 3600));
        assert_eq!(id.purge_round().await, 1);
        clock.advance(Duration::from_secs(24 * 3600));
        assert_eq!(id.purge_round().await, 2);
        clock.advance(Duration::from_secs(7 * 86_400));
        assert_eq!(id.purge_round().await, 2);
        assert_eq!(
            counts(&id).await,
            left(&[
                ("authreq/", 0),
                ("fed/", 0),
                ("code/", 1),
                ("reset/", 0),
                ("session/", 0),
                ("verify/", 0),
                ("outbox/", 0)
            ])
        );
        clock.advance(Duration::from_secs(7 * 86_400));
        assert_eq!(id.purge_round().await, 2);
        assert!(counts(&id).await.iter().all(|(_, n)| *n == 0), "{:?}", counts(&id).await);
        // What does not expire stays: the user, the signing key.
        assert!(id.users.get(&user.id).await.is_ok());
        assert_eq!(count(&id, "signing-key/").await, 1);
    }
}
