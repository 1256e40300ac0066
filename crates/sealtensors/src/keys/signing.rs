//! Ed25519 header signatures (SPEC §7).

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};

use super::{b64, unb64_array};
use crate::crypto::{self, Secret32};
use crate::error::{Error, Result};

const PREFIX: &str = "ed25519:";

/// A signer's secret key. Never printed.
pub struct SigningKey {
    seed: Secret32,
    pair: Ed25519KeyPair,
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
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| Error::InvalidKey("Ed25519 seed rejected".into()))?;
        Ok(SigningKey {
            seed: Secret32::from_bytes(seed),
            pair,
        })
    }
    /// A second handle on the same key.
    pub fn try_clone(&self) -> Result<Self> {
        Self::from_seed(*self.seed.expose())
    }
    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        let mut pk = [0u8; 32];
        pk.copy_from_slice(self.pair.public_key().as_ref());
        VerifyingKey(pk)
    }
    /// Sign a message.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(msg).as_ref());
        out
    }
    pub(crate) fn seed(&self) -> &[u8; 32] {
        self.seed.expose()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SigningKey({}, secret: <redacted>)",
            self.verifying_key()
        )
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
