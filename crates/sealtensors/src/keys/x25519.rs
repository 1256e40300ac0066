//! X25519 recipients (SPEC §6.1): ECDH with a fresh ephemeral key per slot,
//! HKDF-SHA256 to a wrapping key, AES-256-GCM key wrap.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};

use super::{b64, slot_aad, unb64_array, Identity, ModelKey, Recipient, Slot};
use crate::crypto::{self, Secret32};
use crate::error::{Error, Result};

const PREFIX: &str = "x25519:";

/// A recipient's public key, written `x25519:<base64url>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct X25519Recipient(pub(crate) [u8; 32]);

/// A recipient's secret key. Not `Debug`-printable beyond its public half.
pub struct X25519Identity {
    secret: Secret32,
    public: X25519Recipient,
}

fn rid(pk: &[u8; 32]) -> String {
    let mut m = b"sealtensors/1 x25519 rid\0".to_vec();
    m.extend_from_slice(pk);
    let d = crypto::sha256(&m);
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The key-encryption key of an ECDH slot (SPEC §6.1, §6.6): X25519 of `sk`
/// and `peer` (an all-zero shared secret refused), then
/// `HKDF(Z, salt = epk || pk, info)`. The x25519 and broker slots differ only
/// in `info`.
pub(crate) fn ecdh_kek(
    sk: &PrivateKey,
    peer: &[u8; 32],
    epk: &[u8; 32],
    pk: &[u8; 32],
    info: &[&[u8]],
) -> Result<Secret32> {
    agreement::agree(
        sk,
        UnparsedPublicKey::new(&X25519, peer),
        Error::Crypto("X25519 agreement failed (low-order public key?)"),
        |shared| {
            if crypto::ct_eq(shared, &[0u8; 32]) {
                return Err(Error::Crypto("X25519 shared secret is zero"));
            }
            let mut salt = [0u8; 64];
            salt[..32].copy_from_slice(epk);
            salt[32..].copy_from_slice(pk);
            crypto::hkdf32(shared, &salt, info)
        },
    )
}

/// `KEK = HKDF(Z, epk || pk, "sealtensors/1 x25519 slot")`.
fn agree(sk: &PrivateKey, peer: &[u8; 32], epk: &[u8; 32], pk: &[u8; 32]) -> Result<Secret32> {
    ecdh_kek(sk, peer, epk, pk, &[b"sealtensors/1 x25519 slot"])
}

impl X25519Identity {
    /// A fresh identity.
    pub fn generate() -> Result<Self> {
        Self::from_secret_bytes(crypto::random_array()?)
    }
    /// From the 32-byte secret scalar.
    pub fn from_secret_bytes(b: [u8; 32]) -> Result<Self> {
        let sk = PrivateKey::from_private_key(&X25519, &b)
            .map_err(|_| Error::InvalidKey("X25519 secret key rejected".into()))?;
        let pk = sk
            .compute_public_key()
            .map_err(|_| Error::Crypto("X25519 public key"))?;
        let public: [u8; 32] = pk
            .as_ref()
            .try_into()
            .map_err(|_| Error::Crypto("X25519 public key length"))?;
        Ok(X25519Identity {
            secret: Secret32::from_bytes(b),
            public: X25519Recipient(public),
        })
    }
    /// The public half.
    pub fn recipient(&self) -> X25519Recipient {
        self.public
    }
    pub(crate) fn secret_bytes(&self) -> &[u8; 32] {
        self.secret.expose()
    }
}

impl fmt::Debug for X25519Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "X25519Identity({}, secret: <redacted>)", self.public)
    }
}

impl Identity for X25519Identity {
    fn unwrap(&self, slot: &Slot, mk_id: &[u8; 16]) -> Option<Result<ModelKey>> {
        let Slot::X25519 { rid: r, epk, ct } = slot else {
            return None;
        };
        if *r != rid(&self.public.0) {
            return None;
        }
        Some((|| {
            let epk: [u8; 32] = unb64_array("slot epk", epk)?;
            let ct = super::unb64("slot ct", ct)?;
            let sk = PrivateKey::from_private_key(&X25519, self.secret.expose())
                .map_err(|_| Error::InvalidKey("X25519 secret key rejected".into()))?;
            let kek = agree(&sk, &epk, &epk, &self.public.0)?;
            crypto::unwrap_key(&kek, &slot_aad("x25519", mk_id), &ct)
                .map(ModelKey::from_secret)
                .ok_or(Error::NoMatchingKey {
                    given: 1,
                    slots: format!("x25519 {r} (present but it does not open: corrupt or forged)"),
                })
        })())
    }
    fn describe(&self) -> String {
        format!("x25519 {}", rid(&self.public.0))
    }
}

impl Recipient for X25519Recipient {
    fn wrap(&self, key: &ModelKey) -> Result<Slot> {
        let (esk, epk) = ephemeral()?;
        let kek = agree(&esk, &self.0, &epk, &self.0)?;
        let ct = crypto::wrap_key(&kek, &slot_aad("x25519", &key.id()?), key.secret())?;
        Ok(Slot::X25519 {
            rid: rid(&self.0),
            epk: b64(&epk),
            ct: b64(&ct),
        })
    }
    fn matches(&self, slot: &Slot) -> bool {
        matches!(slot, Slot::X25519 { rid: r, .. } if *r == rid(&self.0))
    }
    fn describe(&self) -> String {
        format!("x25519 {}", rid(&self.0))
    }
}

impl X25519Recipient {
    /// The raw public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for X25519Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", b64(&self.0))
    }
}

impl fmt::Debug for X25519Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for X25519Recipient {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let body = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| Error::InvalidKey(format!("a recipient must start with {PREFIX:?}")))?;
        Ok(X25519Recipient(unb64_array("x25519 public key", body)?))
    }
}

/// A fresh ephemeral X25519 key and its public half (SPEC §6.1, §6.6).
pub(super) fn ephemeral() -> Result<(PrivateKey, [u8; 32])> {
    let esk = PrivateKey::generate(&X25519).map_err(|_| Error::Crypto("X25519 keygen"))?;
    let epk: [u8; 32] = esk
        .compute_public_key()
        .map_err(|_| Error::Crypto("X25519 public key"))?
        .as_ref()
        .try_into()
        .map_err(|_| Error::Crypto("X25519 public key length"))?;
    Ok((esk, epk))
}
