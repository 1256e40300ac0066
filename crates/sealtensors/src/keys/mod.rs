//! The one place that knows key slots (SPEC §6).
//!
//! A random model key opens every tensor key of a model; it is wrapped once per
//! recipient into a key slot. [`Recipient`]s make slots, [`Identity`]s open
//! them; an identity answers `None` for a slot that is not its own, so a file
//! with many slots is opened by trying each identity on each slot. When none
//! opens the file, the loader asks its [`KeySource`]s (a key broker, in
//! `broker/`) for the model key.

mod broker;
mod cryptotensors;
mod discover;
pub(crate) mod jwk;
pub(crate) mod p256;
mod passphrase;
#[cfg(feature = "pkcs11")]
mod pkcs11;
mod signing;
mod symmetric;
mod tpm;
mod x25519;

pub use broker::{
    attestation_nonce, forget_released_keys, is_loopback, release_info, BrokerAccess, BrokerKek,
    BrokerPublicKey, BrokerRecipient, BrokerUrl, ErrorAnswer, PublicKeyAnswer, ReleaseAnswer,
    ReleaseRequest, ENV_BROKERS, ENV_BROKER_CA, ENV_BROKER_TOKEN,
};
#[cfg(feature = "broker-client")]
pub use broker::{TpmError, TpmQuoter, DEFAULT_TPM_PCRS, ENV_TPM_AK, ENV_TPM_PCRS, ENV_TPM_TCTI};
pub use cryptotensors::{
    is_cryptotensors_key, parse_cryptotensors_keys, CryptoTensorsKey, CryptoTensorsKeys,
};
pub use discover::{KeyConfig, ENV_IDENTITY, ENV_TRUST};
pub use jwk::{load_identity, load_recipient, load_signing_key, load_verifying_key, KeyFile};
pub(crate) use jwk::{read_key_text, write_key_file};
pub use p256::{open_slot as open_p256_slot, P256Agreement, P256Identity, P256Recipient};
pub use passphrase::{Argon2Params, Passphrase, MAX_PASSPHRASE_SLOTS};
#[cfg(feature = "pkcs11")]
pub use pkcs11::{
    pkcs11_generate_ecdsa_p256, pkcs11_generate_ed25519, pkcs11_generate_p256,
    pkcs11_generate_signer, pkcs11_recipient, Pkcs11Identity, Pkcs11Uri, ENV_PKCS11_MODULE,
    ENV_PKCS11_PIN,
};
pub use signing::{SigningKey, VerifyingKey};
pub use symmetric::SymmetricKey;
pub use tpm::{tpm_generate_p256, TpmIdentity};
pub use x25519::{X25519Identity, X25519Recipient};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::crypto::{self, Secret32};
use crate::error::{printable, Error, Result};
use crate::format::Header;
use crate::policy::PolicyContext;

/// The most key slots in one file (SPEC §9).
pub const MAX_SLOTS: usize = 64;

pub(crate) fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub(crate) fn unb64(what: &str, s: &str) -> Result<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| Error::InvalidKey(format!("{what} is not unpadded base64url")))
}

pub(crate) fn unb64_array<const N: usize>(what: &str, s: &str) -> Result<[u8; N]> {
    unb64(what, s)?
        .try_into()
        .map_err(|_| Error::InvalidKey(format!("{what} must be {N} bytes")))
}

/// The model key: 256 random bits that open every tensor of a model (SPEC §4).
#[derive(Clone, Debug)]
pub struct ModelKey(Secret32);

impl ModelKey {
    /// A fresh random model key.
    pub fn generate() -> Result<Self> {
        Ok(ModelKey(Secret32::random()?))
    }
    pub(crate) fn from_secret(s: Secret32) -> Self {
        ModelKey(s)
    }
    pub(crate) fn secret(&self) -> &Secret32 {
        &self.0
    }
    /// The raw key bytes. Only a key broker needs them, to seal the key to a
    /// client with HPKE (SPEC §6.6); never log or store them.
    pub fn expose_secret(&self) -> &[u8; 32] {
        self.0.expose()
    }
    /// The public key id (SPEC §4.1): 16 bytes of HKDF output, so a loader can
    /// recognise a model key it already holds without learning anything of it.
    pub fn id(&self) -> Result<[u8; 16]> {
        let k = crypto::hkdf32(self.0.expose(), b"", &[b"sealtensors/1 model key id"])?;
        let mut out = [0u8; 16];
        out.copy_from_slice(&k.expose()[..16]);
        Ok(out)
    }
}

/// SPEC §6: associated data of every slot's key wrap.
pub(crate) fn slot_aad(kind: &str, mk_id: &[u8; 16]) -> Vec<u8> {
    let mut v = b"sealtensors/1 slot\0".to_vec();
    v.extend_from_slice(kind.as_bytes());
    v.push(0);
    v.extend_from_slice(mk_id);
    v
}

/// A key slot as stored in `sealtensors.slots` (SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
#[non_exhaustive]
pub enum Slot {
    /// X25519 recipient (SPEC §6.1).
    #[serde(rename = "x25519")]
    X25519 {
        /// Recipient fingerprint.
        rid: String,
        /// Ephemeral public key.
        epk: String,
        /// Wrapped model key and tag.
        ct: String,
    },
    /// P-256 recipient (SPEC §6.7), the slot that hardware keys open.
    #[serde(rename = "p256")]
    P256 {
        /// Recipient fingerprint.
        rid: String,
        /// Ephemeral public key (65-byte uncompressed point).
        epk: String,
        /// Wrapped model key and tag.
        ct: String,
    },
    /// Symmetric key (SPEC §6.2).
    #[serde(rename = "oct")]
    Oct {
        /// Key id.
        kid: String,
        /// Random salt of the wrapping key.
        salt: String,
        /// Wrapped model key and tag.
        ct: String,
    },
    /// Passphrase (SPEC §6.3).
    #[serde(rename = "argon2id")]
    Argon2id {
        /// Argon2 salt.
        salt: String,
        /// Memory in KiB.
        m: u32,
        /// Iterations.
        t: u32,
        /// Lanes.
        p: u32,
        /// Wrapped model key and tag.
        ct: String,
    },
    /// Key broker (SPEC §6.6).
    #[serde(rename = "broker")]
    Broker {
        /// Where the broker serves this key (a hint: contacted only when
        /// the loader's configuration allows its host).
        url: String,
        /// The broker's key id.
        kid: String,
        /// Ephemeral public key.
        epk: String,
        /// Wrapped model key and tag.
        ct: String,
    },
    /// Key broker with a P-256 key-encryption key (SPEC §6.8), the broker
    /// slot that a KEK held in hardware opens.
    #[serde(rename = "broker-p256")]
    BrokerP256 {
        /// Where the broker serves this key (a hint, as for `broker`).
        url: String,
        /// The broker's key id.
        kid: String,
        /// Ephemeral public key (65-byte uncompressed point).
        epk: String,
        /// Wrapped model key and tag.
        ct: String,
    },
    /// A slot kind this version does not know; never opened, kept on rekey.
    #[serde(skip)]
    Unknown {
        /// Its `type`.
        kind: String,
        /// The slot as found.
        raw: serde_json::Value,
    },
}

impl Slot {
    /// A short description for error messages: kind and id.
    pub fn describe(&self) -> String {
        match self {
            // The strings come from the file: escaped, as every message that
            // quotes a file is (they reach terminals and logs).
            Slot::X25519 { rid, .. } => format!("x25519 {}", printable(rid, 256)),
            Slot::P256 { rid, .. } => format!("p256 {}", printable(rid, 256)),
            Slot::Oct { kid, .. } => format!("symmetric key \"{}\"", printable(kid, 256)),
            Slot::Argon2id { .. } => "passphrase".to_string(),
            Slot::Broker { url, .. } | Slot::BrokerP256 { url, .. } => {
                format!("broker {}", printable(url, 256))
            }
            Slot::Unknown { kind, .. } => {
                format!("{} (unsupported by this version)", printable(kind, 256))
            }
        }
    }

    /// Parse one slot, keeping unknown kinds.
    pub(crate) fn from_value(v: serde_json::Value) -> Result<Slot> {
        let kind = v
            .get("type")
            .and_then(|t| t.as_str())
            .ok_or_else(|| Error::seal_meta("sealtensors.slots", "a slot has no \"type\""))?
            .to_string();
        match kind.as_str() {
            "x25519" | "p256" | "oct" | "argon2id" | "broker" | "broker-p256" => {
                serde_json::from_value(v)
                    .map_err(|e| Error::seal_meta("sealtensors.slots", e.to_string()))
            }
            _ => Ok(Slot::Unknown { kind, raw: v }),
        }
    }

    /// The broker URL and key id of a broker slot (either kind).
    pub fn broker(&self) -> Option<(&str, &str)> {
        match self {
            Slot::Broker { url, kid, .. } | Slot::BrokerP256 { url, kid, .. } => Some((url, kid)),
            _ => None,
        }
    }

    pub(crate) fn to_value(&self) -> Result<serde_json::Value> {
        match self {
            Slot::Unknown { raw, .. } => Ok(raw.clone()),
            s => serde_json::to_value(s)
                .map_err(|e| Error::seal_meta("sealtensors.slots", e.to_string())),
        }
    }
}

/// Something a model key can be wrapped to.
pub trait Recipient: Send + Sync {
    /// Fetch, once, what wrapping needs from elsewhere (a key broker's public
    /// key, SPEC §6.6); a no-op for recipients that hold everything already
    /// (the default). Parsing a recipient never touches the network: this is
    /// the explicit step that may, and sealing and rekeying call it before
    /// [`wrap`](Self::wrap).
    fn resolve(&self) -> Result<()> {
        Ok(())
    }
    /// Wrap the model key into a new slot.
    fn wrap(&self, key: &ModelKey) -> Result<Slot>;
    /// Whether `slot` was made for this recipient (for removal on rekey).
    fn matches(&self, slot: &Slot) -> bool;
    /// Kind and id, for messages.
    fn describe(&self) -> String;
}

/// Something that can open slots.
pub trait Identity: Send + Sync {
    /// `None`: the slot is not for this identity. `Some(Ok)`: opened.
    /// `Some(Err)`: it is ours but could not be opened (corrupt, too costly).
    fn unwrap(&self, slot: &Slot, mk_id: &[u8; 16]) -> Option<Result<ModelKey>>;
    /// Kind and id, for messages.
    fn describe(&self) -> String;
    /// CryptoTensors master keys this identity holds (SPEC A.4): none for
    /// every sealtensors identity.
    fn cryptotensors_keys(&self) -> &[CryptoTensorsKey] {
        &[]
    }
}

/// Try every identity on every slot; the first that opens wins.
pub(crate) fn unwrap_any(
    slots: &[Slot],
    identities: &[&dyn Identity],
    mk_id: &[u8; 16],
) -> Result<ModelKey> {
    let mut first_err = None;
    for id in identities {
        for s in slots {
            match id.unwrap(s, mk_id) {
                None => {}
                Some(Ok(k)) if k.id()? == *mk_id => return Ok(k),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    first_err.get_or_insert(e);
                }
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let slots = if slots.is_empty() {
        "no recipient at all".to_string()
    } else {
        slots
            .iter()
            .map(Slot::describe)
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(Error::NoMatchingKey {
        given: identities.len(),
        slots,
    })
}

/// What a [`KeySource`] is told about the file whose model key it is asked
/// for: the header as read and the parts of it a release needs, and what the
/// loader tells the file's policy.
#[non_exhaustive]
pub struct KeyRequest<'a> {
    /// The file's header.
    pub header: &'a Header,
    /// The file's random id (SPEC §3.2).
    pub file_id: &'a [u8; 32],
    /// The id the model key must have (SPEC §4.1).
    pub mk_id: &'a [u8; 16],
    /// The file's key slots, in file order.
    pub slots: &'a [Slot],
    /// The file's name, for the policy input (SPEC §3.6 `file.name`).
    pub file_name: Option<&'a str>,
    /// This machine's id (`/etc/machine-id`), when it has one.
    pub machine_id: Option<&'a str>,
    /// What the loader tells the file's policy: runtime, framework, the
    /// tensors requested.
    pub policy: &'a PolicyContext,
}

/// Where a loader asks for a model key once none of its identities opens a
/// file: a key broker (SPEC §6.6) today; hardware and cloud KMS later.
pub trait KeySource: Send + Sync {
    /// `None`: nothing here for this file (no slot of this source's kind that
    /// its configuration allows). `Some(Ok)`: the model key. `Some(Err)`:
    /// the file is this source's, and it failed or refused.
    fn model_key(&self, req: &KeyRequest<'_>) -> Option<Result<ModelKey>>;
}

/// After `miss` (no identity opened the file): ask each source in order; the
/// first key wins, else the first source's error, else the miss, explained
/// when a broker could have opened the file.
pub(crate) fn ask_sources(
    miss: Error,
    sources: &[&dyn KeySource],
    req: &KeyRequest<'_>,
) -> Result<ModelKey> {
    let mut first_err = None;
    for s in sources {
        match s.model_key(req) {
            None => {}
            // A source's key is used only if it is this file's model key
            // (SPEC §6: a reader checks mk_id and discards any other), so a
            // wrong key is a key error, not a "modified header" at the MAC,
            // and the next source is still asked.
            Some(Ok(k)) => match k.id() {
                Ok(id) if id == *req.mk_id => return Ok(k),
                Ok(_) => {
                    first_err.get_or_insert(Error::InvalidKey(
                        "a key source gave a key that is not this file's model key".into(),
                    ));
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            },
            Some(Err(e)) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| broker::explain_miss(miss, req.slots)))
}
