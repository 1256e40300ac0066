//! Header signatures (SPEC §7.1): Ed25519, and ECDSA P-256 for PKCS#11
//! tokens that have no Ed25519. A signing key is an Ed25519 seed in memory
//! (a JWK file's) or, with the `pkcs11` feature, a key held in a PKCS#11
//! token that signs with `CKM_EDDSA` or `CKM_ECDSA` (src/keys/pkcs11.rs).
//! A verifying key names its algorithm (`ed25519:...`, `ecdsa-p256:...`),
//! so a trust entry pins the algorithm as well as the key.

use std::fmt;
use std::str::FromStr;
#[cfg(feature = "pkcs11")]
use std::sync::Arc;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};

use super::{b64, unb64_array};
use crate::crypto::{self, Secret32};
use crate::error::{Error, Result};

const PREFIX: &str = "ed25519:";
const ECDSA_PREFIX: &str = "ecdsa-p256:";

/// A signer's secret key. Never printed.
pub struct SigningKey {
    inner: Inner,
    public: VerifyingKey,
}

enum Inner {
    Seed {
        seed: Secret32,
        pair: Ed25519KeyPair,
    },
    #[cfg(feature = "pkcs11")]
    Token(Arc<super::pkcs11::Pkcs11Signer>),
}

/// A signer's public key, written `ed25519:<base64url of 32 bytes>` or
/// `ecdsa-p256:<base64url of the 65-byte uncompressed point>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifyingKey(pub(crate) Vk);

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Vk {
    Ed25519([u8; 32]),
    EcdsaP256([u8; 65]),
}

impl SigningKey {
    /// A fresh key.
    pub fn generate() -> Result<Self> {
        Self::from_seed(crypto::random_array()?)
    }
    /// From the 32-byte seed (RFC 8032 private key).
    pub fn from_seed(seed: [u8; 32]) -> Result<Self> {
        let seed = Secret32::from_bytes(seed);
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.expose())
            .map_err(|_| Error::InvalidKey("Ed25519 seed rejected".into()))?;
        let mut pk = [0u8; 32];
        pk.copy_from_slice(pair.public_key().as_ref());
        Ok(SigningKey {
            inner: Inner::Seed { seed, pair },
            public: VerifyingKey::from_bytes(pk),
        })
    }
    /// A key held in a PKCS#11 token.
    #[cfg(feature = "pkcs11")]
    pub(crate) fn from_token(t: super::pkcs11::Pkcs11Signer) -> Self {
        let public = t.verifying_key();
        SigningKey {
            inner: Inner::Token(Arc::new(t)),
            public,
        }
    }
    /// A second handle on the same key.
    pub fn try_clone(&self) -> Result<Self> {
        match &self.inner {
            Inner::Seed { seed, .. } => Self::from_seed(*seed.expose()),
            #[cfg(feature = "pkcs11")]
            Inner::Token(t) => Ok(SigningKey {
                inner: Inner::Token(Arc::clone(t)),
                public: self.public,
            }),
        }
    }
    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.public
    }
    /// Sign a message. A token's signature is checked against the public key
    /// before it is returned, so a faulty token cannot publish a bad one.
    pub fn sign(&self, msg: &[u8]) -> Result<[u8; 64]> {
        let mut out = [0u8; 64];
        match &self.inner {
            Inner::Seed { pair, .. } => out.copy_from_slice(pair.sign(msg).as_ref()),
            #[cfg(feature = "pkcs11")]
            Inner::Token(t) => {
                out = t.sign(msg)?;
                if !self.public.verify(msg, &out) {
                    return Err(Error::Crypto(
                        "the token's signature does not verify with its public key",
                    ));
                }
            }
        }
        Ok(out)
    }
    /// The seed, for a key file; `None` for a key held in hardware.
    pub(crate) fn seed(&self) -> Option<&[u8; 32]> {
        match &self.inner {
            Inner::Seed { seed, .. } => Some(seed.expose()),
            #[cfg(feature = "pkcs11")]
            Inner::Token(_) => None,
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({}, secret: <redacted>)", self.public)
    }
}

impl VerifyingKey {
    /// Verify a signature: Ed25519 (RFC 8032), or ECDSA P-256 with SHA-256
    /// as 64 bytes `r || s` with `s` at most n/2 (SPEC §7.1).
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match &self.0 {
            Vk::Ed25519(k) => crypto::ed25519_verify(k, msg, sig),
            Vk::EcdsaP256(k) => crypto::ecdsa_p256_verify_fixed(k, msg, sig),
        }
    }
    /// The raw key: 32 bytes (Ed25519) or the 65-byte point (ECDSA P-256).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Vk::Ed25519(k) => k,
            Vk::EcdsaP256(k) => k,
        }
    }
    /// An Ed25519 key from its 32 bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        VerifyingKey(Vk::Ed25519(b))
    }
    /// An ECDSA P-256 key from its uncompressed point, checked to be on the
    /// curve.
    pub fn ecdsa_p256(point: &[u8]) -> Result<Self> {
        let p = super::P256Recipient::from_point(point)?;
        Ok(VerifyingKey(Vk::EcdsaP256(*p.as_bytes())))
    }
    /// The signature algorithm, as `sealtensors.signature` names it.
    pub fn alg(&self) -> &'static str {
        match self.0 {
            Vk::Ed25519(_) => "ed25519",
            Vk::EcdsaP256(_) => "ecdsa-p256",
        }
    }
    /// The Ed25519 key bytes, for a JWK file; `None` for ECDSA.
    pub(crate) fn ed25519_bytes(&self) -> Option<&[u8; 32]> {
        match &self.0 {
            Vk::Ed25519(k) => Some(k),
            Vk::EcdsaP256(_) => None,
        }
    }
}

impl fmt::Display for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Vk::Ed25519(k) => write!(f, "{PREFIX}{}", b64(k)),
            Vk::EcdsaP256(k) => write!(f, "{ECDSA_PREFIX}{}", b64(k)),
        }
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for VerifyingKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if let Some(body) = s.strip_prefix(ECDSA_PREFIX) {
            return Self::ecdsa_p256(&super::unb64("ecdsa-p256 public key", body)?);
        }
        let body = s.strip_prefix(PREFIX).ok_or_else(|| {
            Error::InvalidKey(format!(
                "a signer's public key must start with {PREFIX:?} or {ECDSA_PREFIX:?}"
            ))
        })?;
        Ok(VerifyingKey::from_bytes(unb64_array(
            "ed25519 public key",
            body,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_signer_strings_are_checked() {
        let p = crate::keys::P256Identity::generate().unwrap().recipient();
        let s = format!("ecdsa-p256:{}", b64(p.as_bytes()));
        let k: VerifyingKey = s.parse().unwrap();
        assert_eq!((k.alg(), k.to_string()), ("ecdsa-p256", s));
        // Off the curve, compressed, short, the other algorithm's length.
        let mut off = *p.as_bytes();
        off[64] ^= 1;
        let mut compressed = vec![2 + (p.as_bytes()[64] & 1)];
        compressed.extend_from_slice(&p.x());
        for bad in [
            off.to_vec(),
            compressed,
            p.as_bytes()[..64].to_vec(),
            vec![1u8; 32],
        ] {
            assert!(format!("ecdsa-p256:{}", b64(&bad))
                .parse::<VerifyingKey>()
                .is_err());
        }
        // An Ed25519 key and an ECDSA key are never equal, whatever bytes.
        let ed = VerifyingKey::from_bytes([9u8; 32]);
        assert_eq!(ed.alg(), "ed25519");
        assert_ne!(ed, k);
        assert!("ecdsa:AAAA".parse::<VerifyingKey>().is_err());
    }
}
