//! Scoped tokens for worker instances. Each instance of a function gets a fresh random token
//! (`NIMBUS_PLATFORM_TOKEN`) and the path of the host's private platform socket
//! (`NIMBUS_PLATFORM_SOCKET`). The token lives as long as the instance and reaches only what the
//! function's grants allow (`[functions.<name>] grants`); workers never need the admin token.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use nimbus_api::{Grant, Principal};

/// The tokens of live instances, shared by every generation (a reload keeps old instances' tokens
/// valid while they drain).
#[derive(Clone, Default)]
pub(crate) struct Tokens {
    // Keyed by the token itself: 256 random bits under a randomly keyed SipHash leave no timing
    // to exploit.
    live: Arc<RwLock<HashMap<String, Principal>>>,
}

impl Tokens {
    /// A new token for an instance of `function`; valid until the guard is dropped.
    pub fn mint(&self, function: &str, grants: &Arc<[Grant]>) -> TokenGuard {
        let token = nimbus_api::hex(&rand::random::<[u8; 32]>());
        let principal = Principal::Function { function: function.into(), grants: grants.clone() };
        self.live.write().unwrap_or_else(|p| p.into_inner()).insert(token.clone(), principal);
        TokenGuard { tokens: self.clone(), token }
    }

    pub fn check(&self, token: &str) -> Option<Principal> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).get(token).cloned()
    }
}

pub(crate) struct TokenGuard {
    tokens: Tokens,
    pub token: String,
}

impl Drop for TokenGuard {
    fn drop(&mut self) {
        self.tokens.live.write().unwrap_or_else(|p| p.into_inner()).remove(&self.token);
    }
}

/// What an instance of one function is given to reach the platform API.
#[derive(Clone)]
pub(crate) struct Access {
    pub tokens: Tokens,
    pub socket: PathBuf,
    pub grants: Arc<[Grant]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_die_with_their_guard() {
        let tokens = Tokens::default();
        let grants: Arc<[Grant]> = vec![Grant::parse("blob:a-b:r").unwrap()].into();
        let guard = tokens.mint("f", &grants);
        let principal = tokens.check(&guard.token).expect("live");
        assert!(principal.may("blob", "a-b", false) && !principal.may("blob", "a-b", true));
        assert!(tokens.check("nope").is_none());
        let token = guard.token.clone();
        drop(guard);
        assert!(tokens.check(&token).is_none());
    }
}
