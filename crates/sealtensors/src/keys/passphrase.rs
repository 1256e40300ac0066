//! Passphrase recipients (SPEC §6.3): Argon2id (RFC 9106) with the parameters
//! stored in the slot, bounded on read so a hostile file cannot demand
//! unbounded memory or time.

use std::fmt;

use zeroize::Zeroizing;

use super::{b64, slot_aad, unb64, unb64_array, Identity, ModelKey, Recipient, Slot};
use crate::crypto::{self, Secret32};
use crate::error::{Error, Result};

/// Most memory a slot may ask for, KiB (2 GiB).
pub const MAX_MEMORY_KIB: u32 = 2 * 1024 * 1024;
/// Most passes a slot may ask for.
pub const MAX_ITERATIONS: u32 = 16;
/// Most lanes a slot may ask for.
pub const MAX_LANES: u32 = 16;
/// Most passphrase slots in one file: each may cost up to the bounds above,
/// so a loader given a passphrase does at most this many derivations.
pub const MAX_PASSPHRASE_SLOTS: usize = 4;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub lanes: u32,
}

impl Default for Argon2Params {
    /// RFC 9106's second recommended option: 64 MiB, 3 passes, 4 lanes.
    fn default() -> Self {
        Argon2Params {
            memory_kib: 64 * 1024,
            iterations: 3,
            lanes: 4,
        }
    }
}

impl Argon2Params {
    fn check(&self) -> Result<()> {
        for (what, got, max) in [
            ("argon2 memory (KiB)", self.memory_kib, MAX_MEMORY_KIB),
            ("argon2 iterations", self.iterations, MAX_ITERATIONS),
            ("argon2 lanes", self.lanes, MAX_LANES),
        ] {
            if got > max {
                return Err(Error::ExcessiveWork {
                    what,
                    got: got.into(),
                    max: max.into(),
                });
            }
        }
        Ok(())
    }
}

/// A passphrase; both recipient and identity. Wiped on drop, never printed.
pub struct Passphrase {
    pass: Zeroizing<String>,
    params: Argon2Params,
}

impl Passphrase {
    /// A passphrase with the default cost.
    pub fn new(pass: impl Into<String>) -> Self {
        Self::with_params(pass, Argon2Params::default())
    }
    /// With explicit cost parameters (used when sealing).
    pub fn with_params(pass: impl Into<String>, params: Argon2Params) -> Self {
        Passphrase {
            pass: Zeroizing::new(pass.into()),
            params,
        }
    }

    fn derive(&self, salt: &[u8], p: Argon2Params) -> Result<Secret32> {
        p.check()?;
        let params = argon2::Params::new(p.memory_kib, p.iterations, p.lanes, Some(32))
            .map_err(|e| Error::InvalidKey(format!("argon2 parameters rejected: {e}")))?;
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        a.hash_password_into(self.pass.as_bytes(), salt, &mut out[..])
            .map_err(|e| Error::InvalidKey(format!("argon2 failed: {e}")))?;
        Ok(Secret32::from_bytes(*out))
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Passphrase(<redacted>, {:?})", self.params)
    }
}

impl Recipient for Passphrase {
    fn wrap(&self, key: &ModelKey) -> Result<Slot> {
        if self.pass.is_empty() {
            return Err(Error::Config("the passphrase is empty".into()));
        }
        let salt: [u8; 16] = crypto::random_array()?;
        let kek = self.derive(&salt, self.params)?;
        let ct = crypto::wrap_key(&kek, &slot_aad("argon2id", &key.id()?), key.secret())?;
        Ok(Slot::Argon2id {
            salt: b64(&salt),
            m: self.params.memory_kib,
            t: self.params.iterations,
            p: self.params.lanes,
            ct: b64(&ct),
        })
    }
    /// Removing a passphrase recipient removes every passphrase slot: slots
    /// do not say which passphrase made them.
    fn matches(&self, slot: &Slot) -> bool {
        matches!(slot, Slot::Argon2id { .. })
    }
    fn describe(&self) -> String {
        "passphrase".into()
    }
}

impl Identity for Passphrase {
    fn unwrap(&self, slot: &Slot, mk_id: &[u8; 16]) -> Option<Result<ModelKey>> {
        let Slot::Argon2id { salt, m, t, p, ct } = slot else {
            return None;
        };
        let params = Argon2Params {
            memory_kib: *m,
            iterations: *t,
            lanes: *p,
        };
        let r = (|| {
            let salt: [u8; 16] = unb64_array("slot salt", salt)?;
            let ct = unb64("slot ct", ct)?;
            let kek = self.derive(&salt, params)?;
            Ok::<_, Error>(crypto::unwrap_key(&kek, &slot_aad("argon2id", mk_id), &ct))
        })();
        match r {
            Ok(Some(k)) => Some(Ok(ModelKey::from_secret(k))),
            // A wrong passphrase looks like a slot for someone else.
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
    fn describe(&self) -> String {
        "passphrase".into()
    }
}
