//! Symmetric 256-bit key recipients (SPEC §6.2): JWK `oct` with a key id.
//! The wrapping key is HKDF-SHA256(key, fresh 32-byte salt), used once.

use std::fmt;

use super::{b64, slot_aad, unb64, unb64_array, Identity, ModelKey, Recipient, Slot};
use crate::crypto::{self, Secret32};
use crate::error::{Error, Result};

/// A shared 256-bit key with a key id. It is both a recipient and an identity.
#[derive(Clone)]
pub struct SymmetricKey {
    kid: String,
    key: Secret32,
}

impl SymmetricKey {
    /// A fresh random key with the given id (a random id when empty).
    pub fn generate(kid: Option<String>) -> Result<Self> {
        let kid = match kid {
            Some(k) if !k.is_empty() => k,
            _ => crypto::random_array::<8>()?
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        };
        Ok(SymmetricKey {
            kid,
            key: Secret32::random()?,
        })
    }
    /// From bytes.
    pub fn new(kid: impl Into<String>, key: [u8; 32]) -> Result<Self> {
        let kid = kid.into();
        if kid.is_empty() || kid.len() > 256 {
            return Err(Error::InvalidKey(
                "a symmetric key needs a kid of 1 to 256 bytes".into(),
            ));
        }
        Ok(SymmetricKey {
            kid,
            key: Secret32::from_bytes(key),
        })
    }
    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }
    pub(crate) fn secret(&self) -> &Secret32 {
        &self.key
    }
    fn kek(&self, salt: &[u8]) -> Result<Secret32> {
        crypto::hkdf32(
            self.key.expose(),
            salt,
            &[b"sealtensors/1 oct slot\0", self.kid.as_bytes()],
        )
    }
}

impl fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SymmetricKey(kid: {:?}, key: <redacted>)", self.kid)
    }
}

impl Recipient for SymmetricKey {
    fn wrap(&self, key: &ModelKey) -> Result<Slot> {
        let salt: [u8; 32] = crypto::random_array()?;
        let ct = crypto::wrap_key(
            &self.kek(&salt)?,
            &slot_aad("oct", &key.id()?),
            key.secret(),
        )?;
        Ok(Slot::Oct {
            kid: self.kid.clone(),
            salt: b64(&salt),
            ct: b64(&ct),
        })
    }
    fn matches(&self, slot: &Slot) -> bool {
        matches!(slot, Slot::Oct { kid, .. } if *kid == self.kid)
    }
    fn describe(&self) -> String {
        format!("symmetric key {:?}", self.kid)
    }
}

impl Identity for SymmetricKey {
    fn unwrap(&self, slot: &Slot, mk_id: &[u8; 16]) -> Option<Result<ModelKey>> {
        let Slot::Oct { kid, salt, ct } = slot else {
            return None;
        };
        if *kid != self.kid {
            return None;
        }
        Some((|| {
            let salt: [u8; 32] = unb64_array("slot salt", salt)?;
            let ct = unb64("slot ct", ct)?;
            crypto::unwrap_key(&self.kek(&salt)?, &slot_aad("oct", mk_id), &ct)
                .map(ModelKey::from_secret)
                .ok_or(Error::NoMatchingKey {
                    given: 1,
                    slots: format!("symmetric key {kid:?} (the key with this kid does not open it: wrong key material)"),
                })
        })())
    }
    fn describe(&self) -> String {
        format!("symmetric key {:?}", self.kid)
    }
}
