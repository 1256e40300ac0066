//! CryptoTensors keys in their JWK form (SPEC A.4), to read their files:
//! `{"kty":"oct","alg":"aes256gcm","kid":..,"k":<base64>}` for the master key
//! that wraps every data key, `{"kty":"okp","alg":"ed25519","kid":..,"x":..,
//! "d":..}` for the signer; either alone or in a key set `{"keys":[..]}`, the
//! file their direct key provider reads. Their base64 is standard, padded.
//!
//! A master key is an [`Identity`] that opens no sealtensors slot: it opens
//! CryptoTensors files only. Their Ed25519 keys are trusted signers when the
//! user names the file as one (`--trust`), never because a file names them.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use super::{Identity, ModelKey, SigningKey, Slot, VerifyingKey};
use crate::crypto::{ForeignCipher, ForeignKey};
use crate::error::{printable, Error, Result};

#[derive(Deserialize)]
struct CtJwk {
    kty: String,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    k: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    d: Option<String>,
}

impl Drop for CtJwk {
    fn drop(&mut self) {
        self.k.zeroize();
        self.d.zeroize();
    }
}

#[derive(Deserialize)]
struct CtJwks {
    keys: Vec<CtJwk>,
}

/// A CryptoTensors master key: it unwraps the data keys of their files.
pub struct CryptoTensorsKey {
    kid: Option<String>,
    key: ForeignKey,
}

impl CryptoTensorsKey {
    /// From raw bytes (their `k`, decoded).
    pub fn new(cipher: ForeignCipher, kid: Option<String>, key: &[u8]) -> Result<Self> {
        Ok(CryptoTensorsKey {
            kid,
            key: ForeignKey::new(cipher, key)?,
        })
    }
    /// The cipher it is a key of.
    pub fn cipher(&self) -> ForeignCipher {
        self.key.cipher()
    }
    /// The key id, if the key file named one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }
    pub(crate) fn master(&self) -> &ForeignKey {
        &self.key
    }
}

impl std::fmt::Debug for CryptoTensorsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoTensorsKey")
            .field("kid", &self.kid)
            .field("cipher", &self.cipher())
            .finish_non_exhaustive()
    }
}

/// The keys of one CryptoTensors key file: master keys (an identity) and
/// the public halves of its signing keys.
#[derive(Debug)]
pub struct CryptoTensorsKeys {
    /// Master keys.
    pub master: Vec<CryptoTensorsKey>,
    /// Ed25519 public keys (from `x`, or derived from `d`).
    pub signers: Vec<VerifyingKey>,
}

impl Identity for CryptoTensorsKeys {
    fn unwrap(&self, _slot: &Slot, _mk_id: &[u8; 16]) -> Option<Result<ModelKey>> {
        None
    }
    fn describe(&self) -> String {
        let kids: Vec<String> = self
            .master
            .iter()
            .map(|k| match k.kid() {
                Some(kid) => format!("\"{}\"", printable(kid, 128)),
                None => "(no kid)".into(),
            })
            .collect();
        format!("CryptoTensors key(s) {}", kids.join(", "))
    }
    fn cryptotensors_keys(&self) -> &[CryptoTensorsKey] {
        &self.master
    }
}

/// Whether `text` is a CryptoTensors key file rather than a sealtensors JWK:
/// a key set (`keys`), or a key with their `alg` and lower-case `kty`.
pub fn is_cryptotensors_key(text: &str) -> bool {
    // Only the members that tell the forms apart are kept: the secret
    // members are skipped by the parser, never copied into a value.
    let Ok(s) = serde_json::from_str::<Shape>(text) else {
        return false;
    };
    if s.keys.is_some() {
        return true;
    }
    let (Some(kty), Some(alg)) = (s.kty.as_deref(), s.alg.as_deref()) else {
        return false;
    };
    matches!(kty, "oct" | "okp")
        && (ForeignCipher::from_alg(alg).is_some() || alg.eq_ignore_ascii_case("ed25519"))
}

/// The members [`is_cryptotensors_key`] looks at.
#[derive(Deserialize)]
struct Shape {
    #[serde(default)]
    keys: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    kty: Option<String>,
    #[serde(default)]
    alg: Option<String>,
}

fn unb64(what: &str, s: &str) -> Result<Zeroizing<Vec<u8>>> {
    STANDARD
        .decode(s)
        .map(Zeroizing::new)
        .map_err(|_| Error::InvalidKey(format!("{what} is not padded standard base64")))
}

/// Parse a CryptoTensors key file (one key or a key set).
pub fn parse_cryptotensors_keys(text: &str) -> Result<CryptoTensorsKeys> {
    // serde's message may quote a value, which may be a secret: say where.
    let shape = |e: serde_json::Error| {
        Error::InvalidKey(format!(
            "not a CryptoTensors key file: {} (a JWK or {{\"keys\": [..]}}; kty, alg, kid, k, x and d are strings)",
            crate::error::json_error_text(&e)
        ))
    };
    // Parsed straight into the zeroizing key structs, never through a JSON
    // value (which would copy `k` and `d` into memory nothing wipes).
    let set = serde_json::from_str::<Shape>(text)
        .map_err(shape)?
        .keys
        .is_some();
    let jwks: Vec<CtJwk> = if set {
        serde_json::from_str::<CtJwks>(text).map_err(shape)?.keys
    } else {
        vec![serde_json::from_str::<CtJwk>(text).map_err(shape)?]
    };
    let mut out = CryptoTensorsKeys {
        master: Vec::new(),
        signers: Vec::new(),
    };
    for j in &jwks {
        let alg = j.alg.as_deref().unwrap_or("");
        if j.kty.eq_ignore_ascii_case("oct") {
            let cipher = ForeignCipher::from_alg(alg).ok_or_else(|| {
                Error::InvalidKey(format!(
                    "an oct key's alg \"{}\" is not aes128gcm, aes256gcm or chacha20poly1305",
                    printable(alg, 64)
                ))
            })?;
            let k = unb64("k", j.k.as_deref().unwrap_or(""))?;
            out.master
                .push(CryptoTensorsKey::new(cipher, j.kid.clone(), &k)?);
        } else if j.kty.eq_ignore_ascii_case("okp") && alg.eq_ignore_ascii_case("ed25519") {
            let from_d = match &j.d {
                Some(d) => {
                    let seed: [u8; 32] = unb64("d", d)?
                        .as_slice()
                        .try_into()
                        .map_err(|_| Error::InvalidKey("d must be 32 bytes".into()))?;
                    Some(SigningKey::from_seed(seed)?.verifying_key())
                }
                None => None,
            };
            let from_x = match &j.x {
                Some(x) => Some(VerifyingKey::from_bytes(
                    unb64("x", x)?
                        .as_slice()
                        .try_into()
                        .map_err(|_| Error::InvalidKey("x must be 32 bytes".into()))?,
                )),
                None => None,
            };
            let key = match (from_x, from_d) {
                (Some(x), Some(d)) if x != d => {
                    return Err(Error::InvalidKey("x does not match d".into()))
                }
                (Some(k), _) | (None, Some(k)) => k,
                (None, None) => return Err(Error::InvalidKey("an okp key needs x (or d)".into())),
            };
            out.signers.push(key);
        } else {
            return Err(Error::InvalidKey(format!(
                "unsupported CryptoTensors key kty \"{}\" alg \"{}\"",
                printable(&j.kty, 32),
                printable(alg, 64)
            )));
        }
    }
    Ok(out)
}
