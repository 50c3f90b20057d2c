//! jsonwebtoken's crypto provider for this process: its aws-lc-rs backend, except that RS256
//! keys are parsed once and kept. jsonwebtoken parses (and checks) the private key again for every
//! signature, which costs as much as signing; with parsed key pairs kept, a token costs one RSA
//! operation at OpenSSL's speed. (Measured on one core: aws-lc-rs 3,572 RS256 signatures/s,
//! `openssl speed rsa2048` 3,970, ring 1,700, RustCrypto's `rsa` about 500.)

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents};
use jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER as AWS_LC;
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};

static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(|| CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    key_utils: AWS_LC.key_utils.clone(),
});

/// Parsed key pairs by their DER bytes: keys rotate rarely, so this stays tiny.
static KEY_PAIRS: LazyLock<RwLock<HashMap<Vec<u8>, Arc<RsaKeyPair>>>> = LazyLock::new(RwLock::default);

/// Installs the provider for this process. Call once, early; later calls
/// (and a provider installed before) are left as they are.
pub fn install() {
    let _ = CryptoProvider::install_default(&PROVIDER);
}

struct Rs256Signer(Arc<RsaKeyPair>);

impl signature::Signer<Vec<u8>> for Rs256Signer {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        let mut out = vec![0; self.0.public_modulus_len()];
        self.0
            .sign(&RSA_PKCS1_SHA256, &aws_lc_rs::rand::SystemRandom::new(), msg, &mut out)
            .map_err(|_| signature::Error::new())?;
        Ok(out)
    }
}

impl JwtSigner for Rs256Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}

struct Rs256Verifier {
    n: Vec<u8>,
    e: Vec<u8>,
}

impl signature::Verifier<Vec<u8>> for Rs256Verifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        RsaPublicKeyComponents { n: &self.n, e: &self.e }
            .verify(&RSA_PKCS1_2048_8192_SHA256, msg, sig)
            .map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Rs256Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}

fn signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    if *alg != Algorithm::RS256 {
        return (AWS_LC.signer_factory)(alg, key);
    }
    let der = key.as_bytes();
    if let Some(pair) = KEY_PAIRS.read().unwrap_or_else(|p| p.into_inner()).get(der) {
        return Ok(Box::new(Rs256Signer(pair.clone())));
    }
    let pair = Arc::new(RsaKeyPair::from_der(der).map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?);
    let mut cache = KEY_PAIRS.write().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= 64 {
        cache.clear();
    }
    cache.insert(der.to_vec(), pair.clone());
    Ok(Box::new(Rs256Signer(pair)))
}

fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    match (alg, key.kind()) {
        (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, e }) => {
            Ok(Box::new(Rs256Verifier { n: n.clone(), e: e.clone() }))
        }
        _ => (AWS_LC.verifier_factory)(alg, key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_keys_sign_what_jsonwebtoken_verifies_and_the_other_way_round() {
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let der = private.to_pkcs1_der().unwrap();
        let encoding = EncodingKey::from_rsa_der(der.as_bytes());
        let (n, e) = (private.n().to_bytes_be(), private.e().to_bytes_be());
        let decoding = DecodingKey::from_rsa_raw_components(&n, &e);
        let msg = b"header.payload";
        let ours = signature::Signer::try_sign(&*signer(&Algorithm::RS256, &encoding).unwrap(), msg).unwrap();
        let theirs = (AWS_LC.verifier_factory)(&Algorithm::RS256, &decoding).unwrap();
        assert!(signature::Verifier::verify(&*theirs, msg, &ours).is_ok());
        let reference =
            signature::Signer::try_sign(&*(AWS_LC.signer_factory)(&Algorithm::RS256, &encoding).unwrap(), msg).unwrap();
        assert_eq!(ours, reference, "PKCS#1 v1.5 signatures are deterministic");
        let our_verifier = verifier(&Algorithm::RS256, &decoding).unwrap();
        assert!(signature::Verifier::verify(&*our_verifier, msg, &reference).is_ok());
        assert!(signature::Verifier::verify(&*our_verifier, b"tampered", &reference).is_err());
    }
}

#[cfg(test)]
mod speed {
    #[test]
    #[ignore = "a measurement, not a test: cargo test --release -p nimbus-identity speed -- --ignored --nocapture"]
    fn rsa2048_sign_rate() {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let der = private.to_pkcs1_der().unwrap();
        let pair = aws_lc_rs::signature::RsaKeyPair::from_der(der.as_bytes()).unwrap();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let mut out = vec![0; 256];
        let started = std::time::Instant::now();
        for _ in 0..2000 {
            pair.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &rng, b"message", &mut out).unwrap();
        }
        println!("aws-lc-rs: {:.0} signs/s", 2000.0 / started.elapsed().as_secs_f64());
    }
}
