//! Bearer token validation against trusted issuers: their signing keys are found by OpenID
//! Connect discovery (or a configured `jwks_uri`), cached, and refetched when a token names an
//! unknown `kid`, at most once per [`REFETCH_FLOOR`] so that forged `kid`s cannot make the gateway
//! hammer an issuer. Only asymmetric algorithms are accepted, pinned per issuer; `iss`, `aud`,
//! `exp` and `nbf` are checked with a configurable leeway. Verified tokens are cached until they
//! expire, so a client that sends the same token again costs a map lookup, not a signature check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::client::HttpClient;

/// Least time between two fetches of one issuer's keys caused by unknown `kid`s.
const REFETCH_FLOOR: Duration = Duration::from_secs(30);
/// Keys are refetched in the background of a request once they are this old.
const KEYS_TTL: Duration = Duration::from_secs(600);
/// Verified tokens remembered; the cache is emptied when full.
const CACHE_CAPACITY: usize = 10_000;

/// Why a token was refused; the message goes into `error_description`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError(pub String);

impl TokenError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

struct Key {
    decoding: DecodingKey,
    /// The key's own `alg`, when its JWK declares one: tokens must use exactly it.
    alg: Option<Algorithm>,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    /// Keys without a `kid`, usable by tokens without one.
    anonymous: Vec<Arc<Key>>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
}

/// Where an issuer's keys come from.
enum KeySource {
    /// Discovery, or the configured `jwks_uri`.
    Remote { jwks_uri: Option<String> },
    /// The node's own identity, in process.
    Local(Arc<dyn Fn() -> Value + Send + Sync>),
}

/// The node's own identity as a trusted issuer.
#[derive(Clone)]
pub struct LocalIssuer {
    pub issuer: String,
    pub audience: String,
    /// The identity's current JWK set.
    pub jwks: Arc<dyn Fn() -> Value + Send + Sync>,
}

pub(crate) struct Issuer {
    pub issuer: String,
    pub audience: String,
    algorithms: Vec<Algorithm>,
    source: KeySource,
    keys: RwLock<KeySet>,
    refresh: tokio::sync::Mutex<()>,
}

struct Cached {
    claims: Arc<Value>,
    exp: u64,
    nbf: Option<u64>,
}

pub(crate) struct Verifier {
    issuers: Vec<Arc<Issuer>>,
    leeway: u64,
    client: HttpClient,
    cache: Mutex<HashMap<String, Cached>>,
    /// The gateway's: background refreshes of issuers' keys.
    tasks: nimbus_api::Tasks,
}

/// jsonwebtoken's name for an algorithm the manifest allows.
fn algorithm(alg: nimbus_config::TokenAlgorithm) -> Algorithm {
    use nimbus_config::TokenAlgorithm as T;
    match alg {
        T::RS256 => Algorithm::RS256,
        T::RS384 => Algorithm::RS384,
        T::RS512 => Algorithm::RS512,
        T::PS256 => Algorithm::PS256,
        T::PS384 => Algorithm::PS384,
        T::PS512 => Algorithm::PS512,
        T::ES256 => Algorithm::ES256,
        T::ES384 => Algorithm::ES384,
        T::EdDSA => Algorithm::EdDSA,
    }
}

impl Verifier {
    pub fn new(
        manifest: &nimbus_config::Manifest,
        local: Option<LocalIssuer>,
        client: HttpClient,
        tasks: nimbus_api::Tasks,
    ) -> Self {
        let default_audience = manifest.identity.as_ref().and_then(|i| i.audience.clone());
        let issuers = manifest
            .gateway
            .issuers
            .iter()
            .map(|section| {
                let algorithms = match section.algorithms.is_empty() {
                    true => nimbus_config::TokenAlgorithm::ALL.to_vec(),
                    false => section.algorithms.clone(),
                };
                Arc::new(Issuer {
                    issuer: section.issuer.clone(),
                    audience: section.audience.clone().or_else(|| default_audience.clone()).unwrap_or_default(),
                    algorithms: algorithms.into_iter().map(algorithm).collect(),
                    source: KeySource::Remote { jwks_uri: section.jwks_uri.clone() },
                    keys: RwLock::default(),
                    refresh: tokio::sync::Mutex::new(()),
                })
            })
            .chain(local.map(|own| {
                Arc::new(Issuer {
                    issuer: own.issuer,
                    audience: own.audience,
                    algorithms: vec![Algorithm::RS256],
                    source: KeySource::Local(own.jwks),
                    keys: RwLock::default(),
                    refresh: tokio::sync::Mutex::new(()),
                })
            }))
            .collect();
        let leeway = manifest.gateway.leeway.get().as_secs();
        Self { issuers, leeway, client, cache: Mutex::new(HashMap::new()), tasks }
    }

    pub fn issuers(&self) -> &[Arc<Issuer>] {
        &self.issuers
    }

    /// Fetches every issuer's keys once, so that the first request does not wait for them.
    pub async fn warm(&self) {
        for issuer in &self.issuers {
            if let Err(e) = self.refresh(issuer, None).await {
                tracing::warn!(issuer = %issuer.issuer, error = %e, "cannot fetch the issuer's signing keys yet");
            }
        }
    }

    /// Verifies `token` and answers its claims.
    pub async fn verify(&self, token: &str) -> Result<Arc<Value>, TokenError> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(claims) = self.cached(token, now) {
            return Ok(claims);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::Json(_) if token.starts_with("eyJ") => {
                TokenError::new("the token's header is not a JWS header (or its algorithm is unknown, e.g. `none`)")
            }
            _ => TokenError::new("the token is not a well-formed JWT"),
        })?;
        let iss = unverified_issuer(token)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or_else(|| TokenError::new(format!("tokens from issuer \"{iss}\" are not trusted")))?;
        if !issuer.algorithms.contains(&header.alg) {
            return Err(TokenError::new(format!("algorithm {:?} is not accepted from this issuer", header.alg)));
        }
        let key = self.key(issuer, header.kid.as_deref()).await?;
        if key.alg.is_some_and(|alg| alg != header.alg) {
            return Err(TokenError::new("the token's algorithm does not match its key"));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_issuer(&[&issuer.issuer]);
        validation.set_audience(&[&issuer.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Value>(token, &key.decoding, &validation).map_err(describe)?;
        let claims = Arc::new(data.claims);
        self.remember(token, &claims);
        Ok(claims)
    }

    fn cached(&self, token: &str, now: u64) -> Option<Arc<Value>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let hit = cache.get(token)?;
        let live = hit.exp + self.leeway > now && hit.nbf.is_none_or(|nbf| nbf <= now + self.leeway);
        live.then(|| hit.claims.clone())
    }

    fn remember(&self, token: &str, claims: &Arc<Value>) {
        let Some(exp) = claims.get("exp").and_then(Value::as_u64) else { return };
        let nbf = claims.get("nbf").and_then(Value::as_u64);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(token.to_owned(), Cached { claims: claims.clone(), exp, nbf });
    }

    async fn key(&self, issuer: &Arc<Issuer>, kid: Option<&str>) -> Result<Arc<Key>, TokenError> {
        let (found, stale) = issuer.lookup(kid);
        if let Some(key) = found {
            if stale {
                self.refresh_in_background(issuer);
            }
            return Ok(key);
        }
        // Waits for a fetch in flight (the one at start, say); fetches anew only past the floor.
        if let Err(e) = self.refresh(issuer, Some(REFETCH_FLOOR)).await {
            tracing::warn!(issuer = %issuer.issuer, error = %e, "cannot fetch the issuer's signing keys");
        }
        if let (Some(key), _) = issuer.lookup(kid) {
            return Ok(key);
        }
        Err(TokenError::new(match kid {
            Some(kid) => format!("signing key \"{kid}\" is unknown to the issuer"),
            None => "the token names no signing key (`kid`) and the issuer has several".to_owned(),
        }))
    }

    fn refresh_in_background(&self, issuer: &Arc<Issuer>) {
        let issuer = issuer.clone();
        let client = self.client.clone();
        self.tasks.spawn(async move {
            if let Err(e) = fetch_into(&client, &issuer, Some(REFETCH_FLOOR)).await {
                tracing::warn!(issuer = %issuer.issuer, error = %e, "cannot refresh the issuer's signing keys; keeping the old ones");
            }
        });
    }

    async fn refresh(&self, issuer: &Arc<Issuer>, floor: Option<Duration>) -> Result<(), String> {
        let changed = fetch_into(&self.client, issuer, floor).await?;
        if changed {
            // Tokens signed by a key that is gone must be checked again.
            self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        Ok(())
    }
}

impl Issuer {
    /// The key for `kid`, and whether the set is old enough to refresh.
    fn lookup(&self, kid: Option<&str>) -> (Option<Arc<Key>>, bool) {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let stale = keys.fetched.is_some_and(|at| at.elapsed() >= KEYS_TTL);
        let key = match kid {
            Some(kid) => keys.by_kid.get(kid).cloned(),
            None if keys.anonymous.len() + keys.by_kid.len() == 1 => {
                keys.anonymous.first().or_else(|| keys.by_kid.values().next()).cloned()
            }
            None => None,
        };
        (key, stale)
    }
}

/// Fetches the issuer's keys (one fetch at a time per issuer; a caller that waited for another's
/// fetch does not fetch again within `floor`). Answers whether the key set changed.
async fn fetch_into(client: &HttpClient, issuer: &Issuer, floor: Option<Duration>) -> Result<bool, String> {
    let _one_at_a_time = issuer.refresh.lock().await;
    {
        let keys = issuer.keys.read().unwrap_or_else(|p| p.into_inner());
        if let (Some(floor), Some(at)) = (floor, keys.attempted)
            && at.elapsed() < floor
        {
            return Ok(false);
        }
    }
    issuer.keys.write().unwrap_or_else(|p| p.into_inner()).attempted = Some(Instant::now());
    let (document, jwks_uri) = match &issuer.source {
        KeySource::Local(jwks) => (jwks(), "the node's identity".to_owned()),
        KeySource::Remote { jwks_uri } => {
            let jwks_uri = match jwks_uri {
                Some(uri) => uri.clone(),
                None => discover(client, &issuer.issuer).await?,
            };
            (crate::client::get_json(client, &jwks_uri).await?, jwks_uri)
        }
    };
    let set: JwkSet = serde_json::from_value(document).map_err(|e| format!("{jwks_uri} is not a JWK set: {e}"))?;
    let mut fresh = KeySet { fetched: Some(Instant::now()), attempted: Some(Instant::now()), ..KeySet::default() };
    for jwk in &set.keys {
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            continue; // a shared secret is never a signing key we trust
        }
        if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature) {
            continue;
        }
        let Ok(decoding) = DecodingKey::from_jwk(jwk) else {
            tracing::debug!(issuer = %issuer.issuer, kid = ?jwk.common.key_id, "skipping a key of an unsupported kind");
            continue;
        };
        let alg = jwk.common.key_algorithm.and_then(|a| Algorithm::try_from(a).ok());
        let key = Arc::new(Key { decoding, alg });
        match &jwk.common.key_id {
            Some(kid) => {
                fresh.by_kid.insert(kid.clone(), key);
            }
            None => fresh.anonymous.push(key),
        }
    }
    let mut keys = issuer.keys.write().unwrap_or_else(|p| p.into_inner());
    let changed = keys.fetched.is_none()
        || keys.by_kid.len() != fresh.by_kid.len()
        || fresh.by_kid.keys().any(|k| !keys.by_kid.contains_key(k))
        || keys.anonymous.len() != fresh.anonymous.len();
    tracing::debug!(issuer = %issuer.issuer, keys = fresh.by_kid.len() + fresh.anonymous.len(), "fetched signing keys");
    *keys = fresh;
    Ok(changed)
}

/// The `jwks_uri` of an issuer's discovery document, which must name the issuer itself.
async fn discover(client: &HttpClient, issuer: &str) -> Result<String, String> {
    let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let discovery = crate::client::get_json(client, &url).await?;
    if discovery.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err(format!("{url} names another issuer; refusing its keys"));
    }
    discovery
        .get("jwks_uri")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("{url} has no `jwks_uri`"))
}

/// The `iss` of a token before verification, to pick the issuer whose keys verify it.
fn unverified_issuer(token: &str) -> Result<String, TokenError> {
    let payload = token.split('.').nth(1).ok_or_else(|| TokenError::new("the token is not a well-formed JWT"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| TokenError::new("the token's payload is not base64url"))?;
    let claims: Value =
        serde_json::from_slice(&bytes).map_err(|_| TokenError::new("the token's payload is not JSON"))?;
    claims
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| TokenError::new("the token has no `iss` claim"))
}

fn describe(e: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind::*;
    TokenError::new(match e.kind() {
        ExpiredSignature => "the token has expired".to_owned(),
        ImmatureSignature => "the token is not valid yet (`nbf`)".to_owned(),
        InvalidAudience => "the token is for another audience".to_owned(),
        InvalidIssuer => "the token's issuer is not trusted".to_owned(),
        InvalidSignature => "the token's signature does not verify".to_owned(),
        InvalidAlgorithm => "the token's algorithm does not fit its key".to_owned(),
        MissingRequiredClaim(claim) => format!("the token has no `{claim}` claim"),
        InvalidClaimFormat(claim) => format!("the token's `{claim}` claim is malformed"),
        _ => "the token is not a well-formed JWT".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_issuer_before_verifying() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"iss":"https://a.example"}"#);
        assert_eq!(unverified_issuer(&format!("x.{payload}.y")).unwrap(), "https://a.example");
        assert!(unverified_issuer("garbage").is_err());
        assert!(unverified_issuer("a.!!!.c").is_err());
        let no_iss = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"x"}"#);
        assert!(unverified_issuer(&format!("x.{no_iss}.y")).unwrap_err().0.contains("iss"));
    }

    /// Forged and malformed tokens against an issuer with a real RSA key: none verifies, none panics.
    mod forged {
        use base64::Engine as _;
        use proptest::prelude::*;

        use super::*;

        const ISSUER: &str = "http://127.0.0.1:1";
        const JWK: &str = include_str!("../../nimbus/tests/fixtures/jwt/rsa1.jwk.json");

        /// One verifier and runtime for every case (building the HTTP client per case is slow).
        static SHARED: std::sync::LazyLock<(tokio::runtime::Runtime, Verifier)> = std::sync::LazyLock::new(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            (runtime, verifier())
        });

        fn rejects(token: &str) -> bool {
            let (runtime, verifier) = &*SHARED;
            runtime.block_on(verifier.verify(token)).is_err()
        }

        fn verifier() -> Verifier {
            let manifest = nimbus_config::parse(std::path::Path::new("nimbus.toml"), "").unwrap();
            let jwk: Value = serde_json::from_str(JWK).unwrap();
            let jwks = Arc::new(move || serde_json::json!({ "keys": [jwk.clone()] }));
            let local = LocalIssuer { issuer: ISSUER.into(), audience: "api://t".into(), jwks };
            Verifier::new(&manifest, Some(local), crate::client::build(), nimbus_api::Tasks::new("test"))
        }

        fn b64(bytes: &[u8]) -> String {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        }

        fn token(header: &Value, claims: &Value, signature: &[u8]) -> String {
            format!("{}.{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()), b64(signature))
        }

        #[test]
        fn the_setup_verifies_a_genuine_token() {
            let key = jsonwebtoken::EncodingKey::from_rsa_der(include_bytes!(
                "../../nimbus/tests/fixtures/jwt/rsa1.pkcs1.der"
            ));
            let header =
                jsonwebtoken::Header { kid: Some("rsa-key-1".into()), ..jsonwebtoken::Header::new(Algorithm::RS256) };
            let exp = jsonwebtoken::get_current_timestamp() + 600;
            let claims = serde_json::json!({"iss": ISSUER, "aud": "api://t", "sub": "x", "exp": exp});
            let genuine = jsonwebtoken::encode(&header, &claims, &key).unwrap();
            let (runtime, verifier) = &*SHARED;
            assert_eq!(runtime.block_on(verifier.verify(&genuine)).unwrap()["sub"], "x");
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn garbage_never_verifies(raw in ".{0,300}") {
                prop_assert!(rejects(&raw));
            }

            #[test]
            fn forged_tokens_never_verify(
                alg in prop_oneof![
                    Just("none".to_owned()),
                    Just("HS256".to_owned()),
                    Just("RS256".to_owned()),
                    Just("ES256".to_owned()),
                    Just("PS256".to_owned()),
                    "[A-Za-z0-9]{0,8}",
                ],
                kid in prop_oneof![Just("rsa-key-1".to_owned()), "[a-z0-9-]{0,12}"],
                exp_offset in -100_000i64..100_000,
                aud in prop_oneof![Just("api://t".to_owned()), Just("api://other".to_owned())],
                signature in proptest::collection::vec(any::<u8>(), 0..300),
            ) {
                let now = jsonwebtoken::get_current_timestamp() as i64;
                let header = serde_json::json!({"alg": alg, "typ": "JWT", "kid": kid});
                let claims = serde_json::json!({"iss": ISSUER, "aud": aud, "sub": "x", "exp": now + exp_offset});
                let forged = token(&header, &claims, &signature);
                prop_assert!(rejects(&forged), "{forged}");
                // A public key used as an HMAC secret (key confusion) is refused too.
                let confused = jsonwebtoken::encode(
                    &jsonwebtoken::Header { alg: Algorithm::HS256, kid: Some(kid.clone()), ..Default::default() },
                    &claims,
                    &jsonwebtoken::EncodingKey::from_secret(JWK.as_bytes()),
                );
                if let Ok(confused) = confused {
                    prop_assert!(rejects(&confused));
                }
            }
        }
    }
}
