//! OpenSSF model signing (OMS, the `model-signing` package 1.x, its `key`
//! method) for model folders (docs/oms.md): a detached Sigstore bundle, a
//! DSSE envelope around an in-toto statement of (path, SHA-256) pairs, signed
//! with an ECDSA key. sealtensors writes one that `model_signing verify key`
//! accepts, and verifies one against keys the loader trusts.
//!
//! What is signed, per file of the folder (every regular file, recursively,
//! except the ignored paths): its path relative to the folder, `/`-separated,
//! and the SHA-256 of its bytes. The statement's subject digest is the
//! SHA-256 of every file digest, in the listed order. The DSSE signature is
//! over `PAE(payloadType, payload)` ("DSSEv1 LEN TYPE LEN PAYLOAD").

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::json;

use crate::atomic::AtomicFile;
use crate::crypto::{self, EcdsaCurve, EcdsaP256Key, Sha256Stream, DIGEST_LEN};
use crate::error::{printable, Error, Result};

/// Where a bundle is written by default: inside the folder, as
/// `model_signing sign` names it.
pub const SIGNATURE_FILE: &str = "model.sig";
const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Paths `model_signing` leaves out by default (its `ignore_git_paths`).
const GIT_PATHS: [&str; 4] = [".git", ".gitattributes", ".github", ".gitignore"];
/// The most files a folder manifest may list (a hostile bundle cannot make
/// a verifier hash or hold more).
pub const MAX_FILES: usize = 100_000;

fn invalid(reason: impl Into<String>) -> Error {
    Error::OmsInvalid(reason.into())
}

/// A public key an OMS bundle is verified with: ECDSA on P-256, P-384 or
/// P-521, read from a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
#[derive(Clone, PartialEq, Eq)]
pub struct OmsPublicKey {
    curve: EcdsaCurve,
    spki: Vec<u8>,
}

impl OmsPublicKey {
    /// Parse PEM text holding one `PUBLIC KEY`.
    pub fn from_pem(text: &str) -> Result<Self> {
        let p = pem::parse(text).map_err(|_| Error::InvalidKey("not a PEM file".into()))?;
        if p.tag() != "PUBLIC KEY" {
            return Err(Error::InvalidKey(format!(
                "a PEM {} is not a public key (want -----BEGIN PUBLIC KEY-----)",
                printable(p.tag(), 64)
            )));
        }
        Self::from_spki(p.contents())
    }

    fn from_spki(der: &[u8]) -> Result<Self> {
        let curve = crypto::ecdsa_curve_of(der).ok_or_else(|| {
            Error::InvalidKey(
                "not an ECDSA public key on P-256, P-384 or P-521 (what OpenSSF model signing's key method uses)".into(),
            )
        })?;
        Ok(OmsPublicKey {
            curve,
            spki: der.to_vec(),
        })
    }

    /// The PEM text, as `cryptography` writes it (64-character lines, LF).
    pub fn to_pem(&self) -> String {
        let p = pem::Pem::new("PUBLIC KEY", self.spki.clone());
        pem::encode_config(
            &p,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// The key hint of the bundle: the hex SHA-256 of [`to_pem`](Self::to_pem).
    pub fn hint(&self) -> String {
        hex(&crypto::sha256(self.to_pem().as_bytes()))
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        crypto::ecdsa_verify(self.curve, &self.spki, msg, sig)
    }
}

impl std::fmt::Display for OmsPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = match self.curve {
            EcdsaCurve::P256 => "p256",
            EcdsaCurve::P384 => "p384",
            EcdsaCurve::P521 => "p521",
        };
        write!(f, "ecdsa-{c}:sha256:{}", &self.hint()[..16])
    }
}

impl std::fmt::Debug for OmsPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OmsPublicKey({self})")
    }
}

/// An OMS signing key: ECDSA P-256, from a PEM private key (`PRIVATE KEY`,
/// PKCS#8, or `EC PRIVATE KEY`, SEC1), as `openssl ecparam -genkey -name
/// prime256v1` or `cryptography` write it. Not encrypted.
pub struct OmsSigningKey {
    key: EcdsaP256Key,
}

impl OmsSigningKey {
    /// Parse PEM text.
    pub fn from_pem(text: &str) -> Result<Self> {
        // The PEM may also hold `EC PARAMETERS` (openssl ecparam): take the key.
        // Every block's bytes are wiped when dropped (a private key's are secret).
        let all: Vec<(String, zeroize::Zeroizing<Vec<u8>>)> = pem::parse_many(text)
            .map_err(|_| Error::InvalidKey("not a PEM file".into()))?
            .into_iter()
            .map(|p| {
                (
                    p.tag().to_string(),
                    zeroize::Zeroizing::new(p.into_contents()),
                )
            })
            .collect();
        let (_, der) = all
            .iter()
            .find(|p| p.0 == "PRIVATE KEY" || p.0 == "EC PRIVATE KEY")
            .ok_or_else(|| {
                Error::InvalidKey(
                    "no unencrypted PRIVATE KEY or EC PRIVATE KEY in this PEM file".into(),
                )
            })?;
        Ok(OmsSigningKey {
            key: EcdsaP256Key::from_der(der)?,
        })
    }

    /// A fresh P-256 key and its PEM text (`PRIVATE KEY`, PKCS#8).
    pub fn generate() -> Result<(Self, zeroize::Zeroizing<String>)> {
        let der = EcdsaP256Key::generate_pkcs8()?;
        let text = zeroize::Zeroizing::new(pem::encode_config(
            &pem::Pem::new("PRIVATE KEY", der.to_vec()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        ));
        Ok((
            OmsSigningKey {
                key: EcdsaP256Key::from_der(&der)?,
            },
            text,
        ))
    }

    /// Write the PEM text of a key made by [`generate`](Self::generate) to
    /// `path`, mode 0600 from its creation, never overwriting unless `force`.
    pub fn save_pem(text: &str, path: &Path, force: bool) -> Result<()> {
        crate::keys::write_key_file(path, text.as_bytes(), force)
    }

    /// Read a PEM file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_pem(&crate::keys::read_key_text(path)?).map_err(|e| e.in_file(path))
    }

    /// The public half.
    pub fn public_key(&self) -> Result<OmsPublicKey> {
        OmsPublicKey::from_spki(&self.key.public_spki_der()?)
    }
}

impl std::fmt::Debug for OmsSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OmsSigningKey(<redacted>)")
    }
}

/// Read a trusted OMS key: a PEM public key file.
pub fn load_public_key(path: &Path) -> Result<OmsPublicKey> {
    OmsPublicKey::from_pem(&crate::keys::read_key_text(path)?).map_err(|e| e.in_file(path))
}

/// Whether `text` is a PEM public key (how a trust entry is told apart).
pub fn is_pem_public_key(text: &str) -> bool {
    text.trim_start().starts_with("-----BEGIN PUBLIC KEY-----")
}

/// A path for a message: escaped (a file name may hold newlines or
/// terminal controls).
fn shown(p: &Path) -> String {
    printable(&p.display().to_string(), 1024)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; DIGEST_LEN]> {
    if s.len() != 2 * DIGEST_LEN {
        return None;
    }
    if !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; DIGEST_LEN];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// DSSE's pre-authentication encoding.
fn pae(payload: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "DSSEv1 {} {} {} ",
        PAYLOAD_TYPE.len(),
        PAYLOAD_TYPE,
        payload.len()
    )
    .into_bytes();
    v.extend_from_slice(payload);
    v
}

/// Whether `rel` (a `/`-separated relative path) is `ignored` or under it.
fn is_ignored(rel: &str, ignored: &[String]) -> bool {
    ignored.iter().any(|i| {
        let i = i.trim_end_matches('/');
        rel == i || rel.strip_prefix(i).is_some_and(|r| r.starts_with('/'))
    })
}

/// Every regular file under `dir` not ignored, by relative `/` path, with
/// the SHA-256 of its bytes (hashed in parallel). A symbolic link, or
/// anything that is neither a file nor a folder, is an error (as
/// `model_signing` does by default).
pub fn hash_folder(dir: &Path, ignored: &[String]) -> Result<BTreeMap<String, [u8; DIGEST_LEN]>> {
    let mut files: Vec<(String, PathBuf, (u64, u64))> = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((prefix, d)) = stack.pop() {
        let rd = fs::read_dir(&d).map_err(|e| Error::io("listing the folder", e).in_file(&d))?;
        for entry in rd {
            let entry = entry.map_err(|e| Error::io("listing the folder", e).in_file(&d))?;
            let name = entry.file_name();
            let name = name.to_str().ok_or_else(|| {
                invalid(format!(
                    "{} has a name that is not UTF-8",
                    shown(&entry.path())
                ))
            })?;
            let rel = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            };
            if is_ignored(&rel, ignored) {
                continue;
            }
            let ft = entry
                .file_type()
                .map_err(|e| Error::io("reading a file's type", e).in_file(entry.path()))?;
            if ft.is_symlink() {
                return Err(invalid(format!(
                    "{} is a symbolic link; model signing covers regular files only: replace it with the file",
                    shown(&entry.path())
                )));
            } else if ft.is_dir() {
                stack.push((rel, entry.path()));
            } else if ft.is_file() {
                let m = fs::symlink_metadata(entry.path())
                    .map_err(|e| Error::io("reading a file's type", e).in_file(entry.path()))?;
                files.push((rel, entry.path(), (m.dev(), m.ino())));
                if files.len() > MAX_FILES {
                    return Err(Error::LimitExceeded {
                        what: "files in a signed folder",
                        got: files.len() as u64,
                        max: MAX_FILES as u64,
                    });
                }
            } else {
                return Err(invalid(format!(
                    "{} is neither a file nor a folder",
                    shown(&entry.path())
                )));
            }
        }
    }
    files
        .into_par_iter()
        .map(|(rel, path, id)| {
            let mut f =
                fs::File::open(&path).map_err(|e| Error::io("opening", e).in_file(&path))?;
            // The file opened must be the regular file listed: not a link or
            // another file put in its place since.
            let m = f
                .metadata()
                .map_err(|e| Error::io("reading a file's type", e).in_file(&path))?;
            if !m.is_file() || (m.dev(), m.ino()) != id {
                return Err(invalid(format!(
                    "{} changed while the folder was being hashed",
                    shown(&path)
                )));
            }
            let mut h = Sha256Stream::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f
                    .read(&mut buf)
                    .map_err(|e| Error::io("reading", e).in_file(&path))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Ok((rel, h.finish()))
        })
        .collect()
}

/// The ignored paths of a bundle written at `signature` for `dir`: the
/// bundle itself when it lies inside, and git's paths.
fn default_ignored(dir: &Path, signature: &Path) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    if let (Ok(d), Some(parent), Some(name)) = (
        fs::canonicalize(dir),
        signature.parent(),
        signature.file_name().and_then(|n| n.to_str()),
    ) {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(p) = fs::canonicalize(parent) {
            if let Ok(rel) = p.join(name).strip_prefix(&d) {
                if let Some(r) = rel.to_str() {
                    v.push(r.replace('\\', "/"));
                }
            }
        }
    }
    v.extend(GIT_PATHS.iter().map(|s| s.to_string()));
    v
}

/// Sign `dir` into an OMS bundle written (atomically) at `signature`.
pub fn sign_folder(
    dir: &Path,
    key: &OmsSigningKey,
    signature: &Path,
    overwrite: bool,
) -> Result<()> {
    if !dir.is_dir() {
        return Err(Error::Config(format!(
            "{} is not a folder; OpenSSF model signing here signs model folders",
            dir.display()
        )));
    }
    let ignored = default_ignored(dir, signature);
    let files = hash_folder(dir, &ignored)?;
    // Listed in model_signing's order (paths compared component by
    // component), so that the subject digest, which some tools use as the
    // model's id, is the one it computes for the same folder.
    let mut files: Vec<(String, [u8; DIGEST_LEN])> = files.into_iter().collect();
    files.sort_by(|a, b| a.0.split('/').cmp(b.0.split('/')));
    let mut root = Sha256Stream::new();
    let resources: Vec<serde_json::Value> = files
        .iter()
        .map(|(name, d)| {
            root.update(d);
            json!({"name": name, "algorithm": "sha256", "digest": hex(d)})
        })
        .collect();
    let model_name = fs::canonicalize(dir)
        .ok()
        .and_then(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .unwrap_or_default();
    let statement = json!({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": hex(&root.finish())}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": false,
                "ignore_paths": ignored,
            },
            "resources": resources,
        },
    });
    let payload = serde_json::to_vec(&statement).map_err(|e| invalid(e.to_string()))?;
    let sig = key.key.sign(&pae(&payload))?;
    let bundle = json!({
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key.public_key()?.hint()}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": STANDARD.encode(&payload),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": STANDARD.encode(&sig), "keyid": ""}],
        },
    });
    let text = serde_json::to_string_pretty(&bundle).map_err(|e| invalid(e.to_string()))?;
    let out = AtomicFile::create(signature, overwrite).map_err(|e| e.in_file(signature))?;
    out.file()
        .write_all(text.as_bytes())
        .map_err(|e| Error::output("writing the signature", e).in_file(signature))?;
    out.commit(overwrite).map_err(|e| e.in_file(signature))
}

/// What verifying a folder against an OMS bundle found.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct OmsVerification {
    /// The trusted key that verified the bundle.
    pub signer: String,
    /// The files the bundle covers, all present with their signed digests.
    pub covered: usize,
    /// Files in the folder the bundle does not cover (not ignored by it).
    pub uncovered: Vec<String>,
    /// Whether every file is covered.
    pub ok: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    media_type: String,
    #[serde(default)]
    verification_material: Option<Material>,
    dsse_envelope: Envelope,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Material {
    #[serde(default)]
    public_key: Option<Hint>,
}

#[derive(Deserialize)]
struct Hint {
    #[serde(default)]
    hint: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    signatures: Vec<DsseSig>,
}

#[derive(Deserialize)]
struct DsseSig {
    sig: String,
}

#[derive(Deserialize)]
struct StatementKind {
    #[serde(rename = "_type")]
    kind: String,
    #[serde(rename = "predicateType")]
    predicate_type: String,
}

#[derive(Deserialize)]
struct Statement {
    subject: Vec<Subject>,
    predicate: Predicate,
}

#[derive(Deserialize)]
struct Subject {
    digest: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Predicate {
    serialization: Serialization,
    resources: Vec<Resource>,
}

#[derive(Deserialize)]
struct Serialization {
    method: String,
    hash_type: String,
    #[serde(default)]
    allow_symlinks: bool,
    #[serde(default)]
    ignore_paths: Vec<String>,
}

#[derive(Deserialize)]
struct Resource {
    name: String,
    algorithm: String,
    digest: String,
}

/// Verify `dir` against the bundle at `signature`: the bundle's signature by
/// one of `trusted` (`OmsSignature` otherwise), every file it lists present
/// with its signed digest (`OmsMismatch`), and the folder's other files
/// reported as uncovered.
pub fn verify_folder(
    dir: &Path,
    signature: &Path,
    trusted: &[OmsPublicKey],
) -> Result<OmsVerification> {
    const MAX_BUNDLE: u64 = 64 << 20;
    let io = |e| Error::io("reading the signature", e).in_file(signature);
    // A regular file of bounded size, checked before anything is read (a
    // FIFO would block, a huge file fill memory).
    let m = fs::metadata(signature).map_err(io)?;
    if !m.is_file() {
        return Err(invalid(format!(
            "{} is not a regular file",
            shown(signature)
        )));
    }
    if m.len() > MAX_BUNDLE {
        return Err(Error::LimitExceeded {
            what: "signature bundle bytes",
            got: m.len(),
            max: MAX_BUNDLE,
        });
    }
    let mut text = Vec::new();
    fs::File::open(signature)
        .map_err(io)?
        .take(MAX_BUNDLE + 1)
        .read_to_end(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_BUNDLE {
        return Err(Error::LimitExceeded {
            what: "signature bundle bytes",
            got: text.len() as u64,
            max: MAX_BUNDLE,
        });
    }
    let b: Bundle = serde_json::from_slice(&text).map_err(|e| {
        invalid(format!(
            "not a Sigstore bundle: {}",
            crate::error::json_error_text(&e)
        ))
    })?;
    if b.media_type != BUNDLE_MEDIA_TYPE {
        return Err(invalid(format!(
            "bundle media type {:?}, expected {BUNDLE_MEDIA_TYPE}",
            printable(&b.media_type, 128)
        )));
    }
    let env = b.dsse_envelope;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(invalid("the DSSE payload is not an in-toto statement"));
    }
    let [sig] = env.signatures.as_slice() else {
        return Err(invalid("the envelope must carry exactly one signature"));
    };
    let sig = STANDARD
        .decode(&sig.sig)
        .map_err(|_| invalid("the signature is not base64"))?;
    let payload = STANDARD
        .decode(&env.payload)
        .map_err(|_| invalid("the payload is not base64"))?;
    // The signature first: nothing of the payload is used before it verifies.
    let hint = b
        .verification_material
        .and_then(|m| m.public_key)
        .and_then(|k| k.hint)
        .filter(|h| !h.is_empty());
    let msg = pae(&payload);
    let signer = trusted
        .iter()
        .filter(|k| hint.as_deref().is_none_or(|h| h == k.hint()))
        .find(|k| k.verify(&msg, &sig))
        .ok_or(Error::OmsSignature {
            trusted: trusted.len(),
        })?;
    let statement_error = |e: serde_json::Error| {
        invalid(format!(
            "the statement: {}",
            crate::error::json_error_text(&e)
        ))
    };
    // Its type first, so that another kind of statement (model_signing's
    // v0.2 `Digests/v0.1`) is named as such, not as a missing member.
    let kind: StatementKind = serde_json::from_slice(&payload).map_err(statement_error)?;
    if kind.kind != STATEMENT_TYPE || kind.predicate_type != PREDICATE_TYPE {
        return Err(invalid(format!(
            "statement type {:?} / predicate {:?}: this verifier reads {PREDICATE_TYPE} (model_signing 1.x); re-sign with it",
            printable(&kind.kind, 128),
            printable(&kind.predicate_type, 128)
        )));
    }
    let st: Statement = serde_json::from_slice(&payload).map_err(statement_error)?;
    let ser = &st.predicate.serialization;
    if ser.method != "files" || ser.hash_type != "sha256" || ser.allow_symlinks {
        return Err(invalid(format!(
            "serialization {:?} with {:?}{}: this verifier reads \"files\" with \"sha256\", no symbolic links",
            printable(&ser.method, 64),
            printable(&ser.hash_type, 64),
            if ser.allow_symlinks { ", symbolic links allowed" } else { "" }
        )));
    }
    let [subject] = st.subject.as_slice() else {
        return Err(invalid("the statement must have exactly one subject"));
    };
    if st.predicate.resources.len() > MAX_FILES {
        return Err(Error::LimitExceeded {
            what: "files in a signed folder",
            got: st.predicate.resources.len() as u64,
            max: MAX_FILES as u64,
        });
    }
    let mut root = Sha256Stream::new();
    let mut signed: BTreeMap<String, [u8; DIGEST_LEN]> = BTreeMap::new();
    for r in &st.predicate.resources {
        if r.algorithm != "sha256" {
            return Err(invalid(format!(
                "{:?} is not sha256",
                printable(&r.algorithm, 64)
            )));
        }
        let d = unhex32(&r.digest).ok_or_else(|| {
            invalid(format!(
                "the digest of {:?} is not 64 hex digits",
                printable(&r.name, 256)
            ))
        })?;
        root.update(&d);
        if signed.insert(r.name.clone(), d).is_some() {
            return Err(invalid(format!(
                "{:?} is listed twice",
                printable(&r.name, 256)
            )));
        }
    }
    if subject.digest.get("sha256").map(String::as_str) != Some(hex(&root.finish()).as_str()) {
        return Err(invalid(
            "the subject digest does not match the listed files",
        ));
    }
    let mut ignored = ser.ignore_paths.clone();
    ignored.extend(default_ignored(dir, signature));
    let local = hash_folder(dir, &ignored)?;
    for (name, want) in &signed {
        match local.get(name) {
            Some(got) if crypto::ct_eq(got, want) => {}
            Some(_) => {
                return Err(Error::OmsMismatch {
                    file: printable(name, 256),
                    reason: "its content differs from the signed digest".into(),
                })
            }
            None => {
                return Err(Error::OmsMismatch {
                    file: printable(name, 256),
                    reason: "it is signed but missing from the folder".into(),
                })
            }
        }
    }
    let uncovered: Vec<String> = local
        .keys()
        .filter(|n| !signed.contains_key(*n))
        .cloned()
        .collect();
    Ok(OmsVerification {
        signer: signer.to_string(),
        covered: signed.len(),
        ok: uncovered.is_empty(),
        uncovered,
    })
}
