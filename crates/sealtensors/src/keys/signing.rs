//! Ed25519 header signatures (SPEC §7). A signing key is a seed in memory
//! (a JWK file's) or, with the `pkcs11` feature, a key held in a PKCS#11
//! token that signs with `CKM_EDDSA` (src/keys/pkcs11.rs): the signatures are
//! the same Ed25519 either way, so readers cannot tell and need not.

use std::fmt;
use std::str::FromStr;
#[cfg(feature = "pkcs11")]
use std::sync::Arc;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};

use super::{b64, unb64_array};
use crate::crypto::{self, Secret32};
use crate::error::{Error, Result};

const PREFIX: &str = "ed25519:";

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

/// A signer's public key, written `ed25519:<base64url>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifyingKey(pub(crate) [u8; 32]);

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
            public: VerifyingKey(pk),
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
                        "the token's Ed25519 signature does not verify with its public key",
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
    /// Verify a signature.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        crypto::ed25519_verify(&self.0, msg, sig)
    }
    /// The raw key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// From raw bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        VerifyingKey(b)
    }
}

impl fmt::Display for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", b64(&self.0))
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
        let body = s.strip_prefix(PREFIX).ok_or_else(|| {
            Error::InvalidKey(format!("a signer's public key must start with {PREFIX:?}"))
        })?;
        Ok(VerifyingKey(unb64_array("ed25519 public key", body)?))
    }
}
