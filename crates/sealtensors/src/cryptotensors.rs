//! CryptoTensors files (SPEC appendix A): the one place that parses their
//! four reserved `__metadata__` entries, checks their signature against the
//! loader's trusted signers, and unwraps their per-tensor data keys.
//!
//! Their format, as their package 0.2.3 writes it, with our rules on top:
//! - a file is theirs when its metadata has any of [`RESERVED`]; a file that
//!   is theirs never opens as plain (their ciphertext is not weights);
//! - every member is checked strictly (unknown members, wrong lengths, a
//!   chunk count that does not match the tensor are refused), where their
//!   reader ignores extras;
//! - the signature is Ed25519 over the header they re-serialise
//!   ([`signed_message`]); it is checked only against keys the loader
//!   trusts: the header's `kid` and `jku` are shown, never used to find a key;
//! - the local Rego policy is evaluated with our bounded evaluator and our
//!   input document, its decision `data.model.allow`;
//! - data keys are unwrapped with the caller's CryptoTensors keys: an AEAD
//!   under the master key, so a wrong key is refused, never used.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;

use crate::crypto::{ForeignCipher, ForeignKey, TAG_LEN};
use crate::error::{printable, Error, Result};
use crate::format::Header;
use crate::keys::{CryptoTensorsKey, VerifyingKey};

/// `__crypto_keys__`: format version, key descriptions, chunk size.
pub const KEY_KEYS: &str = "__crypto_keys__";
/// `__encryption__`: per tensor, the wrapped data key and the data's nonces and tags.
pub const KEY_ENCRYPTION: &str = "__encryption__";
/// `__signature__`: base64 Ed25519 signature over the header.
pub const KEY_SIGNATURE: &str = "__signature__";
/// `__policy__`: Rego, a local and a remote part.
pub const KEY_POLICY: &str = "__policy__";
/// The reserved entries: any one of them makes a file a CryptoTensors file.
pub const RESERVED: [&str; 4] = [KEY_KEYS, KEY_ENCRYPTION, KEY_SIGNATURE, KEY_POLICY];
/// Their chunk size when a version 2 header names none.
pub const DEFAULT_CHUNK_SIZE: usize = 2 << 20;
/// The smallest chunk size read (a smaller one only multiplies tags and work).
pub const MIN_CHUNK_SIZE: usize = 4096;
/// The largest chunk size read (SPEC §9's bound on one chunk).
pub const MAX_CHUNK_SIZE: usize = 64 << 20;

/// Whether `h` is a CryptoTensors file (has any of their reserved entries).
pub fn is_cryptotensors(h: &Header) -> bool {
    h.metadata
        .as_ref()
        .is_some_and(|m| RESERVED.iter().any(|k| m.contains_key(*k)))
}

/// How one tensor's data is stored.
#[derive(Debug, Clone)]
pub enum Data {
    /// Not encrypted: nothing authenticates these bytes.
    Plain,
    /// Version 1: the whole tensor under one nonce and tag.
    Whole {
        /// The nonce.
        iv: [u8; 12],
        /// The tag.
        tag: [u8; TAG_LEN],
    },
    /// Version 1, empty tensor: written with no nonce and no tag.
    EmptyWhole,
    /// Version 2: chunks, nonce `base_iv` with its last 4 bytes (a
    /// big-endian counter) plus the chunk index, one tag per chunk.
    Chunks {
        /// The first chunk's nonce.
        base_iv: [u8; 12],
        /// One tag per chunk (one for an empty tensor).
        tags: Vec<[u8; TAG_LEN]>,
    },
}

/// One encrypted tensor's entry in `__encryption__`.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The data key, encrypted under the master key.
    wrapped: Vec<u8>,
    key_iv: [u8; 12],
    key_tag: [u8; TAG_LEN],
    /// How the data is stored.
    pub data: Data,
}

/// A key as `__crypto_keys__` describes it (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyInfo {
    /// `oct` or `okp`.
    pub kty: String,
    /// The algorithm.
    pub alg: String,
    /// Key id (a hint to show; never used to pick a verifying key).
    #[serde(default)]
    pub kid: Option<String>,
    /// Key set URL (shown; never fetched, never used to pick a key).
    #[serde(default)]
    pub jku: Option<String>,
}

impl KeyInfo {
    /// "kid \"e1\" jku \"...\"", escaped for messages.
    pub fn describe(&self) -> String {
        let mut s = match &self.kid {
            Some(k) => format!("kid \"{}\"", printable(k, 128)),
            None => "no kid".to_string(),
        };
        if let Some(j) = &self.jku {
            s.push_str(&format!(" jku \"{}\"", printable(j, 256)));
        }
        s
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysDoc {
    version: String,
    enc: KeyInfo,
    sign: KeyInfo,
    #[serde(default)]
    chunk_size: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryDoc {
    wrapped_key: String,
    key_iv: String,
    key_tag: String,
    #[serde(default)]
    iv: Option<String>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    base_iv: Option<String>,
    #[serde(default)]
    tags: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDoc {
    local: String,
    remote: String,
}

/// Everything parsed from a CryptoTensors header, validated against its
/// tensor table; nothing verified yet.
#[derive(Debug, Clone)]
pub struct CtMeta {
    /// Format version: 1 (whole tensors) or 2 (chunks).
    pub version: u8,
    /// Version 2's chunk size.
    pub chunk_size: Option<usize>,
    /// The data cipher.
    pub cipher: ForeignCipher,
    /// The encryption key's description.
    pub enc: KeyInfo,
    /// The signing key's description.
    pub sign: KeyInfo,
    signature: [u8; 64],
    /// The local policy (Rego), evaluated on open.
    pub policy: String,
    /// The remote policy (for their key service): shown, never evaluated.
    pub remote_policy: String,
    /// Per tensor, in header (data) order: its entry, `None` when the
    /// tensor is not encrypted.
    pub entries: Vec<Option<Entry>>,
    /// The publisher's metadata, the four reserved entries removed.
    pub user_metadata: BTreeMap<String, String>,
}

impl CtMeta {
    /// Whether tensor `i` (header order) is encrypted.
    pub fn is_encrypted(&self, i: usize) -> bool {
        self.entries.get(i).is_some_and(Option::is_some)
    }

    /// The publisher's metadata, `None` when there is none beside the
    /// reserved entries.
    pub fn metadata(&self) -> Option<BTreeMap<String, String>> {
        (!self.user_metadata.is_empty()).then(|| self.user_metadata.clone())
    }
}

fn bad(key: &str, reason: impl Into<String>) -> Error {
    Error::seal_meta(key, reason)
}

fn b64(key: &str, what: &str, s: &str) -> Result<Vec<u8>> {
    STANDARD
        .decode(s)
        .map_err(|_| bad(key, format!("{what} is not padded standard base64")))
}

fn b64_array<const N: usize>(key: &str, what: &str, s: &str) -> Result<[u8; N]> {
    b64(key, what, s)?
        .try_into()
        .map_err(|_| bad(key, format!("{what} must be {N} bytes")))
}

fn tag_list(key: &str, what: &str, s: &str) -> Result<Vec<[u8; TAG_LEN]>> {
    let raw = b64(key, what, s)?;
    if raw.is_empty() || raw.len() % TAG_LEN != 0 {
        return Err(bad(
            key,
            format!("{what} must be a non-empty list of {TAG_LEN}-byte tags"),
        ));
    }
    Ok(raw
        .chunks_exact(TAG_LEN)
        .map(|c| {
            let mut t = [0u8; TAG_LEN];
            t.copy_from_slice(c);
            t
        })
        .collect())
}

fn get<'a>(m: &'a BTreeMap<String, String>, key: &str) -> Result<&'a str> {
    m.get(key).map(String::as_str).ok_or_else(|| {
        bad(
            key,
            "missing: a CryptoTensors file carries all four of __crypto_keys__, __encryption__, __policy__ and a __signature__ (their writer always signs)",
        )
    })
}

/// Parse and validate the reserved entries of a CryptoTensors header.
pub fn parse(h: &Header) -> Result<CtMeta> {
    let empty = BTreeMap::new();
    let m = h.metadata.as_ref().unwrap_or(&empty);
    let keys: KeysDoc = serde_json::from_str(get(m, KEY_KEYS)?)
        .map_err(|e| bad(KEY_KEYS, crate::error::json_error_text(&e)))?;
    let version = match keys.version.as_str() {
        "1" => 1,
        "2" => 2,
        v => {
            return Err(bad(
                KEY_KEYS,
                format!(
                    "CryptoTensors format version \"{}\" is not 1 or 2, the versions this sealtensors reads",
                    printable(v, 32)
                ),
            ))
        }
    };
    if !keys.enc.kty.eq_ignore_ascii_case("oct") {
        return Err(bad(KEY_KEYS, "enc.kty must be \"oct\""));
    }
    let cipher = ForeignCipher::from_alg(&keys.enc.alg).ok_or_else(|| {
        bad(
            KEY_KEYS,
            format!(
                "enc.alg \"{}\" is not aes128gcm, aes256gcm or chacha20poly1305",
                printable(&keys.enc.alg, 64)
            ),
        )
    })?;
    if !keys.sign.kty.eq_ignore_ascii_case("okp") || !keys.sign.alg.eq_ignore_ascii_case("ed25519")
    {
        return Err(bad(KEY_KEYS, "sign must be an okp key with alg ed25519"));
    }
    let chunk_size = match (version, keys.chunk_size) {
        (1, None) => None,
        (1, Some(_)) => {
            return Err(bad(
                KEY_KEYS,
                "a version 1 file stores whole tensors and has no chunk_size",
            ))
        }
        (_, None) => Some(DEFAULT_CHUNK_SIZE),
        (_, Some(cs)) => {
            let cs = usize::try_from(cs).unwrap_or(usize::MAX);
            if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) {
                return Err(bad(
                    KEY_KEYS,
                    format!("chunk_size {cs} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"),
                ));
            }
            Some(cs)
        }
    };

    let signature = b64_array::<64>(KEY_SIGNATURE, "the signature", get(m, KEY_SIGNATURE)?)?;

    let policy: PolicyDoc = serde_json::from_str(get(m, KEY_POLICY)?)
        .map_err(|e| bad(KEY_POLICY, crate::error::json_error_text(&e)))?;

    let docs: BTreeMap<String, EntryDoc> = serde_json::from_str(get(m, KEY_ENCRYPTION)?)
        .map_err(|e| bad(KEY_ENCRYPTION, crate::error::json_error_text(&e)))?;
    let mut entries: Vec<Option<Entry>> = vec![None; h.tensors.len()];
    // One map, not a search per entry: a hostile header of 100k tensors
    // would otherwise cost minutes before its signature is even checked.
    let index: std::collections::HashMap<&str, usize> = h
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    for (name, d) in docs {
        let Some(&i) = index.get(name.as_str()) else {
            return Err(bad(
                KEY_ENCRYPTION,
                format!(
                    "an entry names tensor \"{}\", which the header does not have",
                    printable(&name, 256)
                ),
            ));
        };
        let t = &h.tensors[i];
        let what = |w: &str| format!("{w} of tensor \"{}\"", printable(&name, 256));
        let wrapped = b64(KEY_ENCRYPTION, &what("wrapped_key"), &d.wrapped_key)?;
        if wrapped.len() != cipher.key_len() {
            return Err(bad(
                KEY_ENCRYPTION,
                format!("{} must be {} bytes", what("wrapped_key"), cipher.key_len()),
            ));
        }
        let key_iv = b64_array(KEY_ENCRYPTION, &what("key_iv"), &d.key_iv)?;
        let key_tag = b64_array(KEY_ENCRYPTION, &what("key_tag"), &d.key_tag)?;
        let data = match (version, d.iv, d.tag, d.base_iv, d.tags) {
            (1, Some(iv), Some(tag), None, None) => {
                if t.is_empty() && iv.is_empty() && tag.is_empty() {
                    Data::EmptyWhole
                } else {
                    Data::Whole {
                        iv: b64_array(KEY_ENCRYPTION, &what("iv"), &iv)?,
                        tag: b64_array(KEY_ENCRYPTION, &what("tag"), &tag)?,
                    }
                }
            }
            (2, None, None, Some(base_iv), Some(tags)) => {
                let tags = tag_list(KEY_ENCRYPTION, &what("tags"), &tags)?;
                let cs = chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE);
                let want = t.len().div_ceil(cs).max(1);
                if tags.len() != want {
                    return Err(bad(
                        KEY_ENCRYPTION,
                        format!(
                            "{} holds {} tags, but {} bytes in chunks of {cs} need {want}",
                            what("tags"),
                            tags.len(),
                            t.len()
                        ),
                    ));
                }
                Data::Chunks {
                    base_iv: b64_array(KEY_ENCRYPTION, &what("base_iv"), &base_iv)?,
                    tags,
                }
            }
            _ => {
                return Err(bad(
                    KEY_ENCRYPTION,
                    format!(
                        "{} has the wrong members for version {version} (version 1: iv and tag; version 2: base_iv and tags)",
                        what("the entry")
                    ),
                ))
            }
        };
        entries[i] = Some(Entry {
            wrapped,
            key_iv,
            key_tag,
            data,
        });
    }
    let user_metadata = m
        .iter()
        .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(CtMeta {
        version,
        chunk_size,
        cipher,
        enc: keys.enc,
        sign: keys.sign,
        signature,
        policy: policy.local,
        remote_policy: policy.remote,
        entries,
        user_metadata,
    })
}

/// The bytes their signature covers: the header as their writer serialises
/// it, `__signature__` removed: `__metadata__` first with its keys sorted,
/// then the tensors in data order, compact JSON, no padding.
pub fn signed_message(h: &Header) -> Vec<u8> {
    let mut metadata = h.metadata.clone().unwrap_or_default();
    metadata.remove(KEY_SIGNATURE);
    let unsigned = Header {
        tensors: h.tensors.clone(),
        metadata: Some(metadata),
        header_len: 0,
    };
    unsigned.to_json_unpadded()
}

/// Check the signature against the trusted signers (SPEC A.3): the first
/// that verifies is the signer. The file names no key that could verify it,
/// so with no trusted signer nothing can be checked. Their signatures are
/// Ed25519: trusted ECDSA keys are never tried (a key is trusted with its
/// algorithm only, and their message has no domain label).
pub fn verify_signature(
    meta: &CtMeta,
    h: &Header,
    trusted: &[VerifyingKey],
) -> Result<VerifyingKey> {
    let msg = signed_message(h);
    let ed25519 = || trusted.iter().filter(|k| k.alg() == "ed25519");
    ed25519()
        .find(|k| k.verify(&msg, &meta.signature))
        .copied()
        .ok_or_else(|| Error::CryptoTensorsSignature {
            signer: meta.sign.describe(),
            trusted: ed25519().count(),
        })
}

/// Unwrap every encrypted tensor's data key with the first of `keys` that
/// opens the first one (and every other one): per tensor, `None` for a
/// plain tensor. `NoMatchingKey` when none opens it.
pub fn unwrap_keys(meta: &CtMeta, keys: &[&CryptoTensorsKey]) -> Result<Vec<Option<ForeignKey>>> {
    let Some(first) = meta.entries.iter().flatten().next() else {
        return Ok(meta.entries.iter().map(|_| None).collect());
    };
    let master = keys
        .iter()
        .filter(|k| k.cipher() == meta.cipher)
        .find(|k| {
            k.master()
                .unwrap(&first.key_iv, &first.key_tag, &first.wrapped)
                .is_some()
        })
        .ok_or_else(|| Error::NoMatchingKey {
            given: keys.len(),
            slots: format!(
                "a CryptoTensors {} key, {}",
                meta.cipher.name(),
                meta.enc.describe()
            ),
        })?;
    meta.entries
        .iter()
        .map(|e| {
            let Some(e) = e else { return Ok(None) };
            let dek = master
                .master()
                .unwrap(&e.key_iv, &e.key_tag, &e.wrapped)
                .ok_or_else(|| {
                    Error::InvalidKey(
                        "a tensor's data key does not open with the key that opens the others: the file is corrupt"
                            .into(),
                    )
                })?;
            ForeignKey::new(meta.cipher, &dek).map(Some)
        })
        .collect()
}

/// The nonce of version 2 chunk `i`: the base nonce with its last four bytes,
/// a big-endian counter, plus `i`; `None` past the counter's end (their
/// writer fails there too).
pub fn chunk_nonce(base_iv: &[u8; 12], i: u64) -> Option<[u8; 12]> {
    let mut n = *base_iv;
    let counter = u32::from_be_bytes([n[8], n[9], n[10], n[11]]);
    let c = counter.checked_add(u32::try_from(i).ok()?)?;
    n[8..].copy_from_slice(&c.to_be_bytes());
    Some(n)
}
