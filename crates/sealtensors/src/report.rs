//! What a file or model says about itself, and what verifying it found: the
//! reports of `sealtensors inspect` and `sealtensors verify`, as typed,
//! serialisable structs. A front end prints text from them and serialises
//! the same structs for machine-readable output (`--json`), so the two can
//! never say different things; the Python layer can return the same
//! documents.
//!
//! Strings in a report come from the file's header and are untrusted: they
//! are kept exact here (JSON escapes them); a front end that prints them to
//! a terminal escapes them first ([`crate::printable`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::model::{files_of, open_path};
use crate::policy::Decision;
use crate::read::{Authenticity, OpenOptions, SealedFile};
use crate::seal::{self, Mode, ModelInfo, Protection};

/// The `signature` of an inspection whose file is signed: inspection checks
/// no signature.
pub const SIGNATURE_NOT_VERIFIED: &str = "present, not verified";

/// What one file says about itself (`sealtensors inspect`); needs no key
/// and checks nothing beyond the header's syntax.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Inspection {
    /// The file's path, as given.
    pub file: String,
    /// The file's size in bytes.
    pub size: u64,
    /// Where the data buffer starts: the 8-byte length plus the JSON header.
    pub header_size: u64,
    /// Whether the file carries seal metadata.
    pub sealed: bool,
    /// The seal metadata, for a sealed file.
    #[serde(flatten)]
    pub seal: Option<SealInspection>,
    /// What a CryptoTensors file's reserved entries say (SPEC appendix A).
    pub cryptotensors: Option<CryptoTensorsInspection>,
    /// The publisher's metadata (seal entries removed).
    pub metadata: Option<BTreeMap<String, String>>,
    /// Every tensor, in file order.
    pub tensors: Vec<TensorInspection>,
}

/// The seal metadata of an inspected file, as found (nothing verified).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SealInspection {
    /// The format version (SPEC §3.1).
    pub format_version: u64,
    /// Encrypted or sign-only.
    pub mode: Mode,
    /// Model id, version, creation time, expiry.
    pub model: ModelInfo,
    /// The AEAD's name; `None` in a sign-only file.
    pub cipher: Option<String>,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// The signer the header names (not verified: see `signature`).
    pub signer: Option<String>,
    /// "none", or [`SIGNATURE_NOT_VERIFIED`].
    pub signature: String,
    /// One description per key slot.
    pub recipients: Vec<String>,
    /// The embedded access policy (Rego), if any.
    pub policy: Option<String>,
}

/// The reserved entries of an inspected CryptoTensors file, as found
/// (nothing verified: the file does not carry its signer's key).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct CryptoTensorsInspection {
    /// Their format version: 1 (whole tensors) or 2 (chunks).
    pub version: u8,
    /// The data cipher.
    pub cipher: String,
    /// Version 2's chunk size.
    pub chunk_size: Option<usize>,
    /// The encryption key the header names (kid, jku): a hint only.
    pub enc_key: String,
    /// The signing key the header names (kid, jku): never used to verify.
    pub sign_key: String,
    /// [`SIGNATURE_NOT_VERIFIED`]: their writer always signs.
    pub signature: String,
    /// The local policy (Rego), evaluated on every open.
    pub policy: String,
    /// The remote policy (for their key service), never evaluated here.
    pub remote_policy: String,
}

/// One tensor of an inspected file.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct TensorInspection {
    /// The tensor's name.
    pub name: String,
    /// Its dtype, as safetensors spells it.
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its size in bytes.
    pub bytes: usize,
    /// Whether its data is encrypted.
    pub encrypted: bool,
}

impl Inspection {
    /// Inspect one file's header.
    pub fn of_file(path: &Path) -> Result<Inspection> {
        let (src, h) = crate::format::read_header_source(path)?;
        let size = src.len().unwrap_or(0);
        let ct = if crate::cryptotensors::is_cryptotensors(&h) && !seal::is_sealed(&h) {
            Some(crate::cryptotensors::parse(&h).map_err(|e| e.in_file(path))?)
        } else {
            None
        };
        let meta = if seal::is_sealed(&h) {
            Some(seal::parse(&h).map_err(|e| e.in_file(path))?)
        } else {
            None
        };
        let tensors =
            h.tensors
                .iter()
                .enumerate()
                .map(|(i, t)| TensorInspection {
                    name: t.name.clone(),
                    dtype: t.dtype.as_str().to_string(),
                    shape: t.shape.clone(),
                    bytes: t.len(),
                    encrypted: meta.as_ref().is_some_and(|m| {
                        matches!(m.protection.get(i), Some(Protection::Encrypted(_)))
                    }) || ct.as_ref().is_some_and(|c| c.is_encrypted(i)),
                })
                .collect();
        let (seal, metadata) = match meta {
            Some(m) => (
                Some(SealInspection {
                    format_version: m.doc.v,
                    mode: m.doc.mode,
                    model: m.doc.model.clone(),
                    cipher: m.doc.aead.clone(),
                    chunk_size: m.doc.chunk_size,
                    signer: m.signature.as_ref().map(|s| s.key.clone()),
                    signature: if m.signature.is_some() {
                        SIGNATURE_NOT_VERIFIED
                    } else {
                        "none"
                    }
                    .to_string(),
                    recipients: m.slots.iter().map(|s| s.describe()).collect(),
                    policy: m.policy.clone(),
                }),
                Some(m.user_metadata),
            ),
            None => match &ct {
                Some(c) => (None, c.metadata()),
                None => (None, h.metadata.clone()),
            },
        };
        let cryptotensors = ct.map(|c| CryptoTensorsInspection {
            version: c.version,
            cipher: c.cipher.name().to_string(),
            chunk_size: c.chunk_size,
            enc_key: c.enc.describe(),
            sign_key: c.sign.describe(),
            signature: SIGNATURE_NOT_VERIFIED.to_string(),
            policy: c.policy,
            remote_policy: c.remote_policy,
        });
        Ok(Inspection {
            file: path.display().to_string(),
            size,
            header_size: h.data_start(),
            sealed: seal.is_some(),
            seal,
            cryptotensors,
            metadata,
            tensors,
        })
    }
}

/// Inspect a file, or every weight file of a model folder ([`files_of`]).
pub fn inspect(path: &Path) -> Result<Vec<Inspection>> {
    files_of(path)?
        .iter()
        .map(|f| Inspection::of_file(f))
        .collect()
}

/// What verifying a file or a model folder found (`sealtensors verify`).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Verification {
    /// Whether every file is sealed and every byte of it was checked.
    pub ok: bool,
    /// One report per weight file.
    pub files: Vec<FileVerification>,
}

/// What verifying one file found.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct FileVerification {
    /// The file's path.
    pub file: String,
    /// "plain", "unsigned", "signed-untrusted" or "signed-trusted"
    /// ([`Authenticity::name`]).
    pub authenticity: String,
    /// The signer, when the file is signed (its signature verified).
    pub signer: Option<String>,
    /// How many tensors the file holds.
    pub tensors: usize,
    /// How many of them are encrypted.
    pub encrypted_tensors: usize,
    /// Encrypted tensors left unchecked: the file was opened without a key.
    pub unchecked_encrypted_tensors: usize,
    /// The access policy's decision for this load; `None` without a policy.
    pub policy: Option<PolicyVerdict>,
    /// Whether the file is sealed and every byte of it was checked.
    pub ok: bool,
}

/// An access policy's decision, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "lowercase")]
pub enum PolicyVerdict {
    /// The policy allows the load.
    Allow,
    /// The policy denies it.
    Deny {
        /// Why, in the policy's words (untrusted text).
        reasons: Vec<String>,
    },
}

impl From<&Decision> for PolicyVerdict {
    fn from(d: &Decision) -> Self {
        match d {
            Decision::Allow => PolicyVerdict::Allow,
            Decision::Deny { reasons } => PolicyVerdict::Deny {
                reasons: reasons.clone(),
            },
        }
    }
}

impl Verification {
    /// Whether any file's signature could not be checked (a CryptoTensors
    /// file verified with no trusted signer).
    pub fn any_unchecked_signature(&self) -> bool {
        self.files
            .iter()
            .any(|f| f.authenticity == Authenticity::SignedUnchecked.name())
    }

    /// Whether any file verified is plain (not sealed: nothing to verify).
    pub fn any_plain(&self) -> bool {
        self.files
            .iter()
            .any(|f| f.authenticity == Authenticity::Plain.name())
    }
}

impl FileVerification {
    /// Check every byte of an opened file that can be checked: with the
    /// model key, every chunk's tag or digest; without it (opened locked),
    /// the digests of the plaintext tensors, the encrypted ones counted as
    /// unchecked.
    pub fn of_file(f: &SealedFile) -> Result<FileVerification> {
        let mut encrypted = 0;
        for t in f.tensors() {
            if f.is_encrypted(&t.name)? {
                encrypted += 1;
            }
        }
        let unchecked = if !f.can_decrypt() { encrypted } else { 0 };
        if unchecked == 0 {
            f.verify_data()?;
        } else {
            for t in f.tensors() {
                if !f.is_encrypted(&t.name)? {
                    f.read_tensor(&t.name)?;
                }
            }
        }
        // Plain, or a CryptoTensors signature no trusted key could check:
        // nothing vouches for the file.
        let plain = matches!(
            f.authenticity(),
            Authenticity::Plain | Authenticity::SignedUnchecked
        );
        Ok(FileVerification {
            file: f.path().display().to_string(),
            authenticity: f.authenticity().name().to_string(),
            signer: f.authenticity().signer().map(|k| k.to_string()),
            tensors: f.tensors().len(),
            encrypted_tensors: encrypted,
            unchecked_encrypted_tensors: unchecked,
            policy: f.policy_decision().map(PolicyVerdict::from),
            ok: unchecked == 0 && !plain,
        })
    }
}

/// Verify a file or a model folder: open it as every loader does
/// ([`open_path`]: a folder as one complete model, a single file with its
/// folder's membership check), then check every chunk of every file
/// ([`FileVerification::of_file`]). A failed check is an error; a file that
/// could not be fully checked (plain, or encrypted tensors without a key)
/// is reported with `ok: false`.
pub fn verify(path: &Path, opts: &OpenOptions<'_>) -> Result<Verification> {
    let files = open_path(path, opts)?
        .iter()
        .map(FileVerification::of_file)
        .collect::<Result<Vec<_>>>()?;
    Ok(Verification {
        ok: files.iter().all(|f| f.ok),
        files,
    })
}
