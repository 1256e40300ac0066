//! The seal metadata (SPEC §3) and everything derived from it: the canonical
//! form that the signature and MAC cover (§7), tensor keys (§4.2), chunk
//! associated data (§5.4) and chunk geometry (§5).
//!
//! All seal metadata lives under `__metadata__` keys with the reserved prefix
//! `sealtensors.`, each a string: a JSON document, or base64url for the MAC,
//! or text for the policy.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::{self, Cipher, Secret32, DIGEST_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::format::{Header, TensorInfo};
use crate::keys::{b64, unb64, ModelKey, SigningKey, Slot, MAX_SLOTS};

/// The reserved prefix of seal metadata keys.
pub const PREFIX: &str = "sealtensors.";
/// Seal parameters (SPEC §3.1).
pub const KEY_SEAL: &str = "sealtensors.seal";
/// Per-tensor tags or digests (SPEC §3.2).
pub const KEY_TENSORS: &str = "sealtensors.tensors";
/// Key slots (SPEC §3.3).
pub const KEY_SLOTS: &str = "sealtensors.slots";
/// Access policy, Rego text (SPEC §3.4; evaluated from a later version on).
pub const KEY_POLICY: &str = "sealtensors.policy";
/// Header MAC under the model key (SPEC §7.2).
pub const KEY_MAC: &str = "sealtensors.mac";
/// Header signature (SPEC §7.1).
pub const KEY_SIGNATURE: &str = "sealtensors.signature";

const KNOWN_KEYS: [&str; 6] = [
    KEY_SEAL,
    KEY_TENSORS,
    KEY_SLOTS,
    KEY_POLICY,
    KEY_MAC,
    KEY_SIGNATURE,
];

/// The format version this library writes and reads.
pub const FORMAT_VERSION: u64 = 1;
/// Default chunk size: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: usize = 1 << 20;
/// Smallest chunk size allowed.
pub const MIN_CHUNK_SIZE: usize = 4096;
/// Largest chunk size allowed.
pub const MAX_CHUNK_SIZE: usize = 64 << 20;

/// What was done to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Some or all tensors are encrypted; key slots are present.
    Encrypted,
    /// Nothing is encrypted; a signature and digests protect the data.
    Signed,
}

/// Model identity and freshness (SPEC §3.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// Model id chosen by the publisher.
    pub id: String,
    /// Model version chosen by the publisher.
    pub version: String,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// Optional expiry, Unix seconds; loaders refuse the file after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
}

/// `sealtensors.seal` (SPEC §3.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealDoc {
    /// Format version, 1.
    pub v: u64,
    /// Encrypted or sign-only.
    pub mode: Mode,
    /// 32 random bytes, base64url, unique per file.
    pub file_id: String,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// AEAD identifier (encrypted mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aead: Option<String>,
    /// Model key id, base64url of 16 bytes (encrypted mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mk_id: Option<String>,
    /// Whether the unsealed file has a `__metadata__` map.
    pub plain_metadata: bool,
    /// Model identity.
    pub model: ModelInfo,
    /// This file's place in a sharded model (SPEC §3.1, §8.5); absent for a
    /// model of one file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardDoc>,
}

/// `shard` of `sealtensors.seal` (SPEC §3.1): which sealing of a sharded
/// model this file belongs to, and where. Signed and MACed with the rest of
/// the header, so a shard cannot be dropped, duplicated or taken from
/// another sealing without a reader of the folder noticing (§8.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardDoc {
    /// 16 random bytes, base64url, shared by every shard of one sealing.
    pub set: String,
    /// This shard's position, 1 ..= `count`.
    pub index: u64,
    /// How many shards the sealing wrote, 2 ..= [`MAX_SHARDS`].
    pub count: u64,
}

/// The most shards one sealed model may have (SPEC §9).
pub const MAX_SHARDS: u64 = 65_536;

/// A validated [`ShardDoc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// The sealing's shard-set id.
    pub set: [u8; 16],
    /// 1 ..= `count`.
    pub index: u64,
    /// 2 ..= [`MAX_SHARDS`].
    pub count: u64,
}

impl Shard {
    /// A fresh shard-set id for a sealing of `count` shards.
    pub(crate) fn new_set() -> Result<[u8; 16]> {
        crypto::random_array()
    }

    /// The document written into `sealtensors.seal`.
    pub(crate) fn to_doc(self) -> ShardDoc {
        ShardDoc {
            set: b64(&self.set),
            index: self.index,
            count: self.count,
        }
    }

    fn from_doc(d: &ShardDoc) -> Result<Shard> {
        let set: [u8; 16] = unb64("shard set", &d.set)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::seal_meta(KEY_SEAL, "shard.set must be 16 bytes of base64url"))?;
        if d.count < 2 || d.count > MAX_SHARDS {
            return Err(Error::seal_meta(
                KEY_SEAL,
                format!("shard.count {} is outside 2..={MAX_SHARDS}", d.count),
            ));
        }
        if d.index < 1 || d.index > d.count {
            return Err(Error::seal_meta(
                KEY_SEAL,
                format!("shard.index {} is outside 1..={}", d.index, d.count),
            ));
        }
        Ok(Shard {
            set,
            index: d.index,
            count: d.count,
        })
    }
}

/// One entry of `sealtensors.tensors` (SPEC §3.2): exactly one field is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSealDoc {
    /// Concatenated 16-byte AEAD tags, base64url (encrypted tensor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<String>,
    /// Concatenated 32-byte SHA-256 digests of plaintext chunks, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// `sealtensors.signature` (SPEC §7.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureDoc {
    /// `"ed25519"` or `"ecdsa-p256"`.
    pub alg: String,
    /// The signer's public key, `ed25519:<base64url>` or
    /// `ecdsa-p256:<base64url>`: a hint, never trusted.
    pub key: String,
    /// The signature, base64url of 64 bytes.
    pub sig: String,
}

/// How one tensor is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protection {
    /// A plain file: nothing.
    None,
    /// Plaintext with per-chunk SHA-256 digests.
    Digests(Vec<[u8; DIGEST_LEN]>),
    /// Ciphertext with per-chunk AEAD tags.
    Encrypted(Vec<[u8; TAG_LEN]>),
}

/// Everything parsed from the reserved keys, validated against the header.
#[derive(Debug, Clone)]
pub struct SealMeta {
    /// Seal parameters.
    pub doc: SealDoc,
    /// Decoded file id.
    pub file_id: [u8; 32],
    /// Cipher (encrypted mode).
    pub cipher: Option<Cipher>,
    /// Decoded model key id (encrypted mode).
    pub mk_id: Option<[u8; 16]>,
    /// Per tensor, in header (data) order.
    pub protection: Vec<Protection>,
    /// Key slots.
    pub slots: Vec<Slot>,
    /// Policy text, if any.
    pub policy: Option<String>,
    /// Header MAC (encrypted mode).
    pub mac: Option<[u8; 32]>,
    /// Signature.
    pub signature: Option<SignatureDoc>,
    /// Metadata the publisher set (reserved keys removed).
    pub user_metadata: BTreeMap<String, String>,
    /// The file's place in a sharded model, validated.
    pub shard: Option<Shard>,
}

impl SealMeta {
    /// The chunk size as `usize`.
    pub fn chunk_size(&self) -> usize {
        // Bounded to MAX_CHUNK_SIZE at parse time.
        self.doc.chunk_size as usize
    }
}

/// Whether a header carries any seal metadata.
pub fn is_sealed(h: &Header) -> bool {
    h.metadata
        .as_ref()
        .is_some_and(|m| m.keys().any(|k| k.starts_with(PREFIX)))
}

/// Number of chunks of a tensor of `len` bytes: at least one, so that even an
/// empty tensor is authenticated.
pub fn chunk_count(len: usize, chunk_size: usize) -> u64 {
    (len.div_ceil(chunk_size)).max(1) as u64
}

fn decode_fixed<const N: usize>(key: &str, what: &str, s: &str) -> Result<Vec<[u8; N]>> {
    let raw =
        unb64(what, s).map_err(|_| Error::seal_meta(key, format!("{what} is not base64url")))?;
    if raw.len() % N != 0 {
        return Err(Error::seal_meta(
            key,
            format!("{what} is not a whole number of {N}-byte values"),
        ));
    }
    Ok(raw
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            a
        })
        .collect())
}

/// Parse and validate the seal metadata of a sealed header (SPEC §3, §8).
pub fn parse(h: &Header) -> Result<SealMeta> {
    let empty = BTreeMap::new();
    let meta = h.metadata.as_ref().unwrap_or(&empty);
    let seal_text = meta
        .get(KEY_SEAL)
        .ok_or_else(|| Error::seal_meta(KEY_SEAL, "missing"))?;
    // Read the version before the strict schema, so a newer file gets the
    // right error.
    let v: serde_json::Value =
        serde_json::from_str(seal_text).map_err(|e| Error::seal_meta(KEY_SEAL, e.to_string()))?;
    match v.get("v").and_then(|v| v.as_u64()) {
        Some(FORMAT_VERSION) => {}
        Some(other) => return Err(Error::UnsupportedVersion(other)),
        None => return Err(Error::seal_meta(KEY_SEAL, "no version \"v\"")),
    }
    // The version is read first, so a newer file is told to upgrade; then a
    // version-1 reader fails closed on reserved keys it does not know.
    for k in meta.keys().filter(|k| k.starts_with(PREFIX)) {
        if !KNOWN_KEYS.contains(&k.as_str()) {
            return Err(Error::seal_meta(
                k,
                "unknown reserved key for format version 1",
            ));
        }
    }
    let doc: SealDoc =
        serde_json::from_str(seal_text).map_err(|e| Error::seal_meta(KEY_SEAL, e.to_string()))?;
    let cs = doc.chunk_size;
    if cs < MIN_CHUNK_SIZE as u64 || cs > MAX_CHUNK_SIZE as u64 {
        return Err(Error::seal_meta(
            KEY_SEAL,
            format!("chunk_size {cs} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"),
        ));
    }
    let shard = doc.shard.as_ref().map(Shard::from_doc).transpose()?;
    let file_id: [u8; 32] = unb64(KEY_SEAL, &doc.file_id)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::seal_meta(KEY_SEAL, "file_id must be 32 bytes of base64url"))?;

    let slots: Vec<Slot> = match meta.get(KEY_SLOTS) {
        None => Vec::new(),
        Some(text) => {
            // Each slot object is read with duplicate keys rejected, like every
            // other part of the header, before its typed parse.
            let arr: Vec<crate::format::UniqueMapOf<serde_json::Value>> =
                serde_json::from_str(text)
                    .map_err(|e| Error::seal_meta(KEY_SLOTS, e.to_string()))?;
            if arr.len() > MAX_SLOTS {
                return Err(Error::LimitExceeded {
                    what: "key slots",
                    got: arr.len() as u64,
                    max: MAX_SLOTS as u64,
                });
            }
            arr.into_iter()
                .map(|m| Slot::from_value(serde_json::Value::Object(m.0.into_iter().collect())))
                .collect::<Result<_>>()?
        }
    };
    let passphrase_slots = slots
        .iter()
        .filter(|s| matches!(s, Slot::Argon2id { .. }))
        .count();
    if passphrase_slots > crate::keys::MAX_PASSPHRASE_SLOTS {
        return Err(Error::LimitExceeded {
            what: "passphrase slots",
            got: passphrase_slots as u64,
            max: crate::keys::MAX_PASSPHRASE_SLOTS as u64,
        });
    }
    let signature: Option<SignatureDoc> = meta
        .get(KEY_SIGNATURE)
        .map(|t| {
            serde_json::from_str(t).map_err(|e| Error::seal_meta(KEY_SIGNATURE, e.to_string()))
        })
        .transpose()?;
    let mac: Option<[u8; 32]> = meta
        .get(KEY_MAC)
        .map(|t| {
            unb64("mac", t)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| Error::seal_meta(KEY_MAC, "must be 32 bytes of base64url"))
        })
        .transpose()?;

    let (cipher, mk_id) = match doc.mode {
        Mode::Encrypted => {
            let aead = doc
                .aead
                .as_deref()
                .ok_or_else(|| Error::seal_meta(KEY_SEAL, "encrypted mode needs \"aead\""))?;
            let cipher = Cipher::from_id(aead)
                .ok_or_else(|| Error::seal_meta(KEY_SEAL, format!("unknown aead {aead:?}")))?;
            let mk_id: [u8; 16] = doc
                .mk_id
                .as_deref()
                .and_then(|s| unb64("mk_id", s).ok())
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    Error::seal_meta(KEY_SEAL, "encrypted mode needs a 16-byte \"mk_id\"")
                })?;
            if slots.is_empty() {
                return Err(Error::seal_meta(
                    KEY_SLOTS,
                    "encrypted mode needs at least one key slot",
                ));
            }
            if mac.is_none() {
                return Err(Error::seal_meta(
                    KEY_MAC,
                    "encrypted mode needs a header MAC",
                ));
            }
            (Some(cipher), Some(mk_id))
        }
        Mode::Signed => {
            if doc.aead.is_some() || doc.mk_id.is_some() || !slots.is_empty() || mac.is_some() {
                return Err(Error::seal_meta(
                    KEY_SEAL,
                    "sign-only mode has no aead, model key, slots or MAC",
                ));
            }
            if signature.is_none() {
                return Err(Error::seal_meta(
                    KEY_SIGNATURE,
                    "sign-only mode needs a signature",
                ));
            }
            (None, None)
        }
    };

    let tensors_text = meta
        .get(KEY_TENSORS)
        .ok_or_else(|| Error::seal_meta(KEY_TENSORS, "missing"))?;
    let docs: crate::format::UniqueMapOf<TensorSealDoc> = serde_json::from_str(tensors_text)
        .map_err(|e| Error::seal_meta(KEY_TENSORS, e.to_string()))?;
    let mut docs = docs.0;
    if docs.len() != h.tensors.len() {
        return Err(Error::seal_meta(
            KEY_TENSORS,
            format!("{} entries for {} tensors", docs.len(), h.tensors.len()),
        ));
    }
    let mut protection = Vec::with_capacity(h.tensors.len());
    let mut any_encrypted = false;
    for t in &h.tensors {
        let d = docs.remove(&t.name).ok_or_else(|| {
            Error::seal_meta(KEY_TENSORS, format!("no entry for tensor {:?}", t.name))
        })?;
        let n = chunk_count(t.len(), cs as usize);
        let p = match (&d.tags, &d.sha256) {
            (Some(tags), None) => {
                if doc.mode != Mode::Encrypted {
                    return Err(Error::seal_meta(KEY_TENSORS, "tags in a sign-only file"));
                }
                any_encrypted = true;
                Protection::Encrypted(decode_fixed::<TAG_LEN>(KEY_TENSORS, "tags", tags)?)
            }
            (None, Some(d)) => {
                Protection::Digests(decode_fixed::<DIGEST_LEN>(KEY_TENSORS, "sha256", d)?)
            }
            _ => {
                return Err(Error::seal_meta(
                    KEY_TENSORS,
                    format!(
                        "tensor {:?} needs exactly one of \"tags\" and \"sha256\"",
                        t.name
                    ),
                ))
            }
        };
        let got = match &p {
            Protection::Encrypted(v) => v.len(),
            Protection::Digests(v) => v.len(),
            Protection::None => 0,
        } as u64;
        if got != n {
            return Err(Error::seal_meta(
                KEY_TENSORS,
                format!("tensor {:?} has {got} chunk values for {n} chunks", t.name),
            ));
        }
        protection.push(p);
    }
    if doc.mode == Mode::Encrypted && !any_encrypted && !h.tensors.is_empty() {
        return Err(Error::seal_meta(
            KEY_TENSORS,
            "encrypted mode but no tensor is encrypted",
        ));
    }
    let user_metadata = meta
        .iter()
        .filter(|(k, _)| !k.starts_with(PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(SealMeta {
        file_id,
        cipher,
        mk_id,
        protection,
        slots,
        policy: meta.get(KEY_POLICY).cloned(),
        mac,
        signature,
        user_metadata,
        shard,
        doc,
    })
}

fn lp(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_be_bytes());
    out.extend_from_slice(b);
}

/// SPEC §7: the canonical form of a header. Every tensor entry in data order
/// (ties broken by name bytes),
/// then every `__metadata__` entry sorted by key bytes, except the keys in
/// `exclude`; each string length-prefixed, each integer 8 bytes big-endian.
pub fn canonical(h: &Header, exclude: &[&str]) -> Vec<u8> {
    let mut out = b"sealtensors/1 canonical header\0".to_vec();
    out.extend_from_slice(&(h.tensors.len() as u64).to_be_bytes());
    // Data order, ties (empty tensors at one offset) broken by name bytes, so
    // the form does not depend on how the JSON happened to list them.
    let mut order: Vec<&TensorInfo> = h.tensors.iter().collect();
    order.sort_by(|a, b| {
        (a.begin, a.end, a.name.as_bytes()).cmp(&(b.begin, b.end, b.name.as_bytes()))
    });
    for t in order {
        lp(&mut out, t.name.as_bytes());
        lp(&mut out, t.dtype.as_str().as_bytes());
        out.extend_from_slice(&(t.shape.len() as u64).to_be_bytes());
        for d in &t.shape {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(&(t.begin as u64).to_be_bytes());
        out.extend_from_slice(&(t.end as u64).to_be_bytes());
    }
    let empty = BTreeMap::new();
    let meta = h.metadata.as_ref().unwrap_or(&empty);
    let kept: Vec<_> = meta
        .iter()
        .filter(|(k, _)| !exclude.contains(&k.as_str()))
        .collect();
    out.extend_from_slice(&(kept.len() as u64).to_be_bytes());
    for (k, v) in kept {
        lp(&mut out, k.as_bytes());
        lp(&mut out, v.as_bytes());
    }
    out
}

/// The message an Ed25519 signature covers.
pub fn signed_message(h: &Header) -> Vec<u8> {
    let mut m = b"sealtensors/1 signature\0".to_vec();
    m.extend_from_slice(&canonical(h, &[KEY_SIGNATURE]));
    m
}

/// The header MAC key (SPEC §4.3).
pub fn mac_key(mk: &ModelKey, file_id: &[u8; 32]) -> Result<Secret32> {
    crypto::hkdf32(
        mk.secret().expose(),
        file_id,
        &[b"sealtensors/1 header mac"],
    )
}

/// The header MAC (SPEC §7.2): HMAC-SHA256 over the canonical form without
/// the signature and the MAC.
pub fn header_mac(mk: &ModelKey, file_id: &[u8; 32], h: &Header) -> Result<[u8; 32]> {
    let k = mac_key(mk, file_id)?;
    Ok(crypto::hmac_sha256(
        k.expose(),
        &[&canonical(h, &[KEY_SIGNATURE, KEY_MAC])],
    ))
}

/// A tensor's data key (SPEC §4.2).
pub fn tensor_key(mk: &ModelKey, file_id: &[u8; 32], name: &str) -> Result<Secret32> {
    crypto::hkdf32(
        mk.secret().expose(),
        file_id,
        &[b"sealtensors/1 tensor key\0", name.as_bytes()],
    )
}

/// Associated data of chunk `index` of `count` of tensor `t` (SPEC §5.4).
pub struct ChunkAad {
    prefix: Vec<u8>,
    count: u64,
}

impl ChunkAad {
    /// Build the per-tensor prefix.
    pub fn new(file_id: &[u8; 32], t: &TensorInfo, count: u64) -> Self {
        let mut p = b"sealtensors/1 chunk\0".to_vec();
        p.extend_from_slice(file_id);
        lp(&mut p, t.name.as_bytes());
        lp(&mut p, t.dtype.as_str().as_bytes());
        p.extend_from_slice(&(t.shape.len() as u64).to_be_bytes());
        for d in &t.shape {
            p.extend_from_slice(&d.to_be_bytes());
        }
        ChunkAad { prefix: p, count }
    }
    /// The associated data of one chunk.
    pub fn for_chunk(&self, index: u64) -> Vec<u8> {
        let mut a = Vec::with_capacity(self.prefix.len() + 16);
        a.extend_from_slice(&self.prefix);
        a.extend_from_slice(&index.to_be_bytes());
        a.extend_from_slice(&self.count.to_be_bytes());
        a
    }
}

/// Insert the header MAC (when a model key is given) and the signature (when
/// a signing key is given) into `meta`, which holds every other entry.
/// With `placeholder`, insert all-zero values of the same encoded length.
pub(crate) fn authenticate(
    meta: &mut BTreeMap<String, String>,
    tensors: &[TensorInfo],
    mk: Option<&ModelKey>,
    file_id: &[u8; 32],
    signing: Option<&SigningKey>,
    placeholder: bool,
) -> Result<()> {
    meta.remove(KEY_MAC);
    meta.remove(KEY_SIGNATURE);
    let mut h = Header {
        tensors: tensors.to_vec(),
        metadata: None,
        header_len: 0,
    };
    if let Some(mk) = mk {
        let mac = if placeholder {
            [0u8; 32]
        } else {
            h.metadata = Some(meta.clone());
            header_mac(mk, file_id, &h)?
        };
        meta.insert(KEY_MAC.into(), b64(&mac));
    }
    if let Some(sk) = signing {
        let mut sig = SignatureDoc {
            alg: sk.verifying_key().alg().into(),
            key: sk.verifying_key().to_string(),
            sig: b64(&[0u8; 64]),
        };
        let to_json = |s: &SignatureDoc| {
            serde_json::to_string(s).map_err(|e| Error::seal_meta(KEY_SIGNATURE, e.to_string()))
        };
        meta.insert(KEY_SIGNATURE.into(), to_json(&sig)?);
        if !placeholder {
            h.metadata = Some(meta.clone());
            sig.sig = b64(&sk.sign(&signed_message(&h))?);
            meta.insert(KEY_SIGNATURE.into(), to_json(&sig)?);
        }
    }
    Ok(())
}
