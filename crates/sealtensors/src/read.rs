//! Reading: open verifies before it trusts (SPEC §8), tensors decrypt lazily,
//! in parallel over chunks, straight into the caller's memory; a byte range
//! decrypts only the chunks that cover it.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use crate::atomic::AtomicFile;
use crate::crypto::{self, ChunkKey, ForeignKey};
use crate::cryptotensors::{self, CtMeta};
use crate::engine;
use crate::error::{Error, Result};
use crate::format::{read_header_source, Header, TensorInfo};
use crate::keys::{
    ask_sources, unwrap_any, BrokerAccess, Identity, KeyConfig, KeyRequest, KeySource, ModelKey,
    VerifyingKey,
};
use crate::policy::{CompileError, Decision, Policy, PolicyContext};
use crate::runtime::{now_unix, Progress};
use crate::seal::{self, ChunkAad, Mode, Protection, SealMeta};
use crate::source::Source;

/// How a loader opens files: which keys it holds, whom it trusts, what it requires.
#[derive(Default, Clone)]
pub struct OpenOptions<'a> {
    /// Identities tried on the key slots.
    pub identities: Vec<&'a dyn Identity>,
    /// Trusted signers. When non-empty, every file must be signed by one.
    pub trusted: Vec<VerifyingKey>,
    /// Refuse files that are not encrypted (downgrade protection).
    pub require_encrypted: bool,
    /// Refuse files that carry no valid signature.
    pub require_signed: bool,
    /// A model key already released (another shard of the same model);
    /// used when its id matches the file's.
    pub model_key: Option<ModelKey>,
    /// The clock for expiry checks, Unix seconds (default: now).
    pub now: Option<u64>,
    /// Open without unwrapping the model key (inspection): encrypted tensors
    /// cannot be read. The signature is still checked, but the header MAC
    /// needs the model key: in an unsigned file opened locked, nothing
    /// authenticates the header, so digests of plaintext tensors prove
    /// nothing there (the authenticity is reported as `Unsigned`).
    pub locked: bool,
    /// Called with byte counts by whole-file operations (verify, unseal).
    pub progress: Option<Progress>,
    /// What the file's access policy is told about this load (SPEC §3.6):
    /// licence claims, framework, the tensors requested.
    pub policy: PolicyContext,
    /// Key brokers this loader may ask when no identity opens a file (SPEC §6.6, §10).
    pub broker: Option<BrokerAccess>,
}

impl<'a> OpenOptions<'a> {
    /// Options from discovered keys.
    pub fn from_keys(keys: &'a KeyConfig) -> Self {
        OpenOptions {
            identities: keys.identities.iter().map(|b| b.as_ref()).collect(),
            trusted: keys.trusted.clone(),
            // Trust was given, but only OpenSSF model signing keys, which
            // sign no header: such a loader still refuses unsigned and
            // plain files rather than trusting any (fail closed).
            require_signed: keys.trusted.is_empty() && !keys.oms_trusted.is_empty(),
            broker: keys.broker.clone(),
            ..Default::default()
        }
    }
}

/// What the loader can say about who made the file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Authenticity {
    /// A plain safetensors file: nothing is authenticated.
    Plain,
    /// Sealed, unsigned: authentic against whoever holds a key to it.
    Unsigned,
    /// Validly signed by a key the loader was not told to trust: unverified.
    UntrustedSigner(VerifyingKey),
    /// Signed by a trusted signer.
    Trusted(VerifyingKey),
    /// A CryptoTensors file opened locked with no trusted signer: signed,
    /// but the file does not carry its signer's key, so nothing was checked.
    SignedUnchecked,
}

impl Authenticity {
    /// The stable name front ends print: "plain", "unsigned",
    /// "signed-untrusted" or "signed-trusted".
    pub fn name(&self) -> &'static str {
        match self {
            Authenticity::Plain => "plain",
            Authenticity::Unsigned => "unsigned",
            Authenticity::UntrustedSigner(_) => "signed-untrusted",
            Authenticity::Trusted(_) => "signed-trusted",
            Authenticity::SignedUnchecked => "signed-unchecked",
        }
    }

    /// The signer's public key, when the file is signed.
    pub fn signer(&self) -> Option<&VerifyingKey> {
        match self {
            Authenticity::UntrustedSigner(k) | Authenticity::Trusted(k) => Some(k),
            Authenticity::Plain | Authenticity::Unsigned | Authenticity::SignedUnchecked => None,
        }
    }
}

/// An opened safetensors file, plain or sealed.
pub struct SealedFile {
    path: PathBuf,
    file: Source,
    header: Header,
    /// Tensor name to its index in `header.tensors`: lookups by name are
    /// constant-time, so a file of 100k tensors is not read in quadratic time.
    by_name: HashMap<String, usize>,
    meta: Option<SealMeta>,
    /// A CryptoTensors file (SPEC appendix A): its metadata and data keys.
    ct: Option<Arc<CtFile>>,
    mk: Option<ModelKey>,
    auth: Authenticity,
    decision: Option<Decision>,
    progress: Option<Progress>,
}

/// A CryptoTensors file's parsed header and, unless opened locked, the
/// data key of each encrypted tensor (in header order).
struct CtFile {
    meta: CtMeta,
    keys: Vec<Option<ForeignKey>>,
}

/// Open a CryptoTensors file (SPEC A.3): validate, check the signature
/// against the trusted signers, evaluate the local policy, unwrap the data
/// keys. Returns the state and the authenticity.
fn open_cryptotensors(
    path: &Path,
    header: &Header,
    opts: &OpenOptions<'_>,
) -> Result<(CtFile, Authenticity, Option<Decision>)> {
    if seal::is_sealed(header) {
        return Err(Error::seal_meta(
            cryptotensors::KEY_ENCRYPTION,
            "the file carries both sealtensors and CryptoTensors reserved keys",
        ));
    }
    let meta = cryptotensors::parse(header)?;
    if opts.require_encrypted && meta.entries.iter().all(Option::is_none) {
        return Err(Error::NotSealed {
            found: "a CryptoTensors file with no encrypted tensor",
        });
    }
    let auth = if opts.trusted.is_empty() && opts.locked && !opts.require_signed {
        Authenticity::SignedUnchecked
    } else {
        Authenticity::Trusted(cryptotensors::verify_signature(
            &meta,
            header,
            &opts.trusted,
        )?)
    };
    let now = opts.now.unwrap_or_else(now_unix);
    let mut policy = Policy::compile_cryptotensors(&meta.policy)?;
    let decision = policy.evaluate_for_file(
        &opts.policy,
        &seal::ModelInfo::default(),
        path.file_name().and_then(|n| n.to_str()),
        header.tensors.iter().map(|t| t.name.as_str()),
        now,
    )?;
    if let (Decision::Deny { reasons }, false) = (&decision, opts.locked) {
        return Err(Error::PolicyDenied {
            reasons: reasons.clone(),
        });
    }
    let keys = if opts.locked {
        Vec::new()
    } else {
        let held: Vec<_> = opts
            .identities
            .iter()
            .flat_map(|i| i.cryptotensors_keys())
            .collect();
        cryptotensors::unwrap_keys(&meta, &held)?
    };
    Ok((CtFile { meta, keys }, auth, Some(decision)))
}

/// Compile and evaluate a file's policy (SPEC §3.4, §8.1 step 9).
fn evaluate_policy(
    text: &str,
    meta: &SealMeta,
    path: &Path,
    header: &Header,
    opts: &OpenOptions<'_>,
    now: u64,
) -> Result<Decision> {
    let mut p = match Policy::compile(text) {
        Ok(p) => p,
        Err(CompileError::NoDecision) => return Err(Error::PolicyUnsupported),
        Err(CompileError::Other(e)) => return Err(e),
    };
    p.evaluate_for_file(
        &opts.policy,
        &meta.doc.model,
        path.file_name().and_then(|n| n.to_str()),
        header.tensors.iter().map(|t| t.name.as_str()),
        now,
    )
}

/// The header MAC under `key` (SPEC §7.2, §8.1 step 11), compared in
/// constant time: `BadHeaderMac` on a mismatch.
fn check_header_mac(key: &ModelKey, meta: &SealMeta, header: &Header) -> Result<()> {
    let mac = seal::header_mac(key, &meta.file_id, header)?;
    let expected = meta.mac.unwrap_or([0u8; 32]);
    if !crypto::ct_eq(&mac, &expected) {
        return Err(Error::BadHeaderMac);
    }
    Ok(())
}

/// A zeroed buffer of `len` bytes, or `OutOfMemory`: a header can declare
/// a tensor larger than memory (a sparse file passes the length check), and
/// failing to allocate must be an error, never an abort.
pub(crate) fn zeroed(len: usize, what: &str) -> Result<Vec<u8>> {
    // Probe with a fallible reservation of the same size, then allocate
    // zeroed: `vec![0; n]` gets pages the kernel zeroes lazily (calloc),
    // where filling a reserved Vec would write every byte once more. An
    // allocation the probe got is one the allocator can give again.
    let mut probe: Vec<u8> = Vec::new();
    probe
        .try_reserve_exact(len)
        .map_err(|_| Error::OutOfMemory {
            what: format!("tensor \"{}\"", crate::error::printable(what, 256)),
            bytes: len,
        })?;
    drop(probe);
    Ok(vec![0u8; len])
}

impl SealedFile {
    /// Open and verify a file (SPEC §8): parse, check the signature against
    /// the trusted signers, check expiry, unwrap the model key, check the MAC.
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions<'_>) -> Result<SealedFile> {
        let path = path.as_ref();
        let (file, header) = read_header_source(path)?;
        Self::verify(path, file, header, opts).map_err(|e| e.in_file(path))
    }

    fn verify(
        path: &Path,
        file: Source,
        header: Header,
        opts: &OpenOptions<'_>,
    ) -> Result<SealedFile> {
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let base = |meta, mk, auth, decision| SealedFile {
            path: path.to_path_buf(),
            file,
            by_name,
            header: header.clone(),
            meta,
            ct: None,
            mk,
            auth,
            decision,
            progress: opts.progress.clone(),
        };
        if cryptotensors::is_cryptotensors(&header) {
            // Never plain: their ciphertext is not weights (SPEC A.1).
            let (ct, auth, decision) = open_cryptotensors(path, &header, opts)?;
            let mut f = base(None, None, auth, decision);
            f.ct = Some(Arc::new(ct));
            return Ok(f);
        }
        if !seal::is_sealed(&header) {
            if opts.require_encrypted {
                return Err(Error::NotSealed { found: "plain" });
            }
            if opts.require_signed || !opts.trusted.is_empty() {
                return Err(Error::NotSigned {
                    found: "plain",
                    trusted: opts.trusted.len(),
                });
            }
            return Ok(base(None, None, Authenticity::Plain, None));
        }
        let meta = seal::parse(&header)?;
        if opts.require_encrypted && meta.doc.mode != Mode::Encrypted {
            return Err(Error::NotSealed {
                found: "signed but not encrypted",
            });
        }
        let auth = match &meta.signature {
            Some(sig) => {
                if sig.alg != "ed25519" && sig.alg != "ecdsa-p256" {
                    return Err(Error::seal_meta(
                        seal::KEY_SIGNATURE,
                        format!("unknown alg {:?}", sig.alg),
                    ));
                }
                let hint: VerifyingKey = sig.key.parse().map_err(|_| {
                    Error::seal_meta(
                        seal::KEY_SIGNATURE,
                        "key is not an ed25519: or ecdsa-p256: public key",
                    )
                })?;
                // The algorithm named and the key's must agree (a trusted
                // key is trusted with its algorithm only).
                if hint.alg() != sig.alg {
                    return Err(Error::seal_meta(
                        seal::KEY_SIGNATURE,
                        format!("alg {:?} does not match the key's", sig.alg),
                    ));
                }
                let bytes = crate::keys::unb64("signature", &sig.sig)
                    .map_err(|_| Error::seal_meta(seal::KEY_SIGNATURE, "sig is not base64url"))?;
                let msg = seal::signed_message(&header);
                if opts.trusted.is_empty() {
                    if !hint.verify(&msg, &bytes) {
                        return Err(Error::BadSignature);
                    }
                    if opts.require_signed {
                        return Err(Error::UntrustedSigner {
                            signer: hint.to_string(),
                            trusted: 0,
                        });
                    }
                    Authenticity::UntrustedSigner(hint)
                } else {
                    let Some(k) = opts.trusted.iter().find(|k| **k == hint) else {
                        return Err(Error::UntrustedSigner {
                            signer: hint.to_string(),
                            trusted: opts.trusted.len(),
                        });
                    };
                    if !k.verify(&msg, &bytes) {
                        return Err(Error::BadSignature);
                    }
                    Authenticity::Trusted(*k)
                }
            }
            None => {
                if opts.require_signed || !opts.trusted.is_empty() {
                    return Err(Error::NotSigned {
                        found: "sealed",
                        trusted: opts.trusted.len(),
                    });
                }
                Authenticity::Unsigned
            }
        };
        let now = opts.now.unwrap_or_else(now_unix);
        if let Some(expires) = meta.doc.model.expires {
            if now >= expires {
                return Err(Error::Expired { expires, now });
            }
        }
        // SPEC §8.1 step 9: the policy decides before any key is touched.
        let decision = match &meta.policy {
            None => None,
            Some(text) => {
                let d = evaluate_policy(text, &meta, path, &header, opts, now)?;
                if let (Decision::Deny { reasons }, false) = (&d, opts.locked) {
                    return Err(Error::PolicyDenied {
                        reasons: reasons.clone(),
                    });
                }
                Some(d)
            }
        };
        let mut mk = None;
        if let (Some(mk_id), false) = (meta.mk_id, opts.locked) {
            let key = match &opts.model_key {
                Some(k) if k.id()? == mk_id => k.clone(),
                _ => match unwrap_any(&meta.slots, &opts.identities, &mk_id) {
                    Ok(k) => k,
                    // No local identity opens it: the configured key sources.
                    Err(miss @ Error::NoMatchingKey { .. }) => {
                        let sources: Vec<&dyn KeySource> =
                            opts.broker.iter().map(|b| b as &dyn KeySource).collect();
                        let req = KeyRequest {
                            header: &header,
                            file_id: &meta.file_id,
                            mk_id: &mk_id,
                            slots: &meta.slots,
                            file_name: path.file_name().and_then(|n| n.to_str()),
                            machine_id: crate::policy::host_info().machine_id.as_deref(),
                            policy: &opts.policy,
                        };
                        ask_sources(miss, &sources, &req)?
                    }
                    Err(e) => return Err(e),
                },
            };
            check_header_mac(&key, &meta, &header)?;
            mk = Some(key);
        }
        Ok(base(Some(meta), mk, auth, decision))
    }

    pub(crate) fn source(&self) -> &Source {
        &self.file
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The parsed header (tensor table and the raw `__metadata__`).
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// Tensors in data order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }
    /// One tensor's entry.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        let i = self.index(name)?;
        self.header
            .tensors
            .get(i)
            .ok_or_else(|| Error::NoSuchTensor(name.to_string()))
    }
    /// The publisher's metadata, without the seal's reserved keys.
    pub fn metadata(&self) -> Option<BTreeMap<String, String>> {
        if let Some(ct) = &self.ct {
            return ct.meta.metadata();
        }
        match &self.meta {
            None => self.header.metadata.clone(),
            Some(m) => m.doc.plain_metadata.then(|| m.user_metadata.clone()),
        }
    }
    /// The seal metadata, `None` for a plain file.
    pub fn seal(&self) -> Option<&SealMeta> {
        self.meta.as_ref()
    }
    /// The CryptoTensors metadata, for a CryptoTensors file (SPEC appendix A).
    pub fn cryptotensors(&self) -> Option<&CtMeta> {
        self.ct.as_ref().map(|c| &c.meta)
    }
    /// The unit reads are checked in, in bytes: the chunk size, or `None`
    /// when every tensor is one unit (a version 1 CryptoTensors file), so
    /// that a reader streaming a file cuts it where nothing is read twice.
    pub fn read_unit(&self) -> Option<usize> {
        match (&self.meta, &self.ct) {
            (Some(m), _) => Some(m.chunk_size()),
            (None, Some(ct)) => ct.meta.chunk_size,
            (None, None) => Some(1 << 20),
        }
    }
    /// Who made it, as far as the loader can tell.
    pub fn authenticity(&self) -> &Authenticity {
        &self.auth
    }
    /// What the file's access policy decided, when it has one. A locked open
    /// (inspection) records a denial here instead of failing.
    pub fn policy_decision(&self) -> Option<&Decision> {
        self.decision.as_ref()
    }
    /// Whether encrypted tensors can be read: the model key is unwrapped,
    /// or a CryptoTensors file's data keys are (false when opened locked).
    pub fn can_decrypt(&self) -> bool {
        self.mk.is_some() || self.ct.as_ref().is_some_and(|c| !c.keys.is_empty())
    }
    /// The model key, once unwrapped: pass it to the other shards.
    pub fn model_key(&self) -> Option<&ModelKey> {
        self.mk.as_ref()
    }
    /// Check the header MAC with a model key already held (another shard's),
    /// unwrapping nothing: what a locked open skips (SPEC §8.1 step 11).
    pub(crate) fn check_mac_with(&self, key: &ModelKey) -> Result<()> {
        let Some(meta) = &self.meta else {
            return Ok(());
        };
        let Some(mk_id) = meta.mk_id else {
            return Ok(()); // sign-only: its signature was checked on open
        };
        if key.id()? != mk_id {
            return Err(Error::BadHeaderMac.in_file(&self.path));
        }
        check_header_mac(key, meta, &self.header).map_err(|e| e.in_file(&self.path))
    }

    /// Whether the tensor is stored encrypted.
    pub fn is_encrypted(&self, name: &str) -> Result<bool> {
        let i = self.index(name)?;
        if let Some(ct) = &self.ct {
            return Ok(ct.meta.is_encrypted(i));
        }
        Ok(matches!(self.protection(i), Protection::Encrypted(_)))
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| Error::NoSuchTensor(name.to_string()))
    }

    fn protection(&self, i: usize) -> &Protection {
        self.meta
            .as_ref()
            .and_then(|m| m.protection.get(i))
            .unwrap_or(&Protection::None)
    }

    /// Read a whole tensor into fresh memory.
    pub fn read_tensor(&self, name: &str) -> Result<Vec<u8>> {
        let t = self.tensor(name)?;
        let mut out = zeroed(t.len(), name).map_err(|e| e.in_file(&self.path))?;
        self.read_range_into(name, 0, t.len(), &mut out)?;
        Ok(out)
    }

    /// Read bytes `start..end` of a tensor into fresh memory; the range is
    /// checked against the tensor before anything is allocated.
    pub fn read_range(&self, name: &str, start: usize, end: usize) -> Result<Vec<u8>> {
        let len = self.tensor(name)?.len();
        if start > end || end > len {
            return Err(Error::RangeOutOfBounds {
                name: name.to_string(),
                start,
                end,
                len,
            }
            .in_file(&self.path));
        }
        let mut out = zeroed(end - start, name).map_err(|e| e.in_file(&self.path))?;
        self.read_range_into(name, start, end, &mut out)?;
        Ok(out)
    }

    /// Read a whole tensor into `out`, which must have its exact length.
    pub fn read_tensor_into(&self, name: &str, out: &mut [u8]) -> Result<()> {
        let len = self.tensor(name)?.len();
        self.read_range_into(name, 0, len, out)
    }

    /// Read bytes `start..end` of a tensor; only the chunks that cover the
    /// range are read and decrypted. On error `out` is zeroed.
    pub fn read_range_into(
        &self,
        name: &str,
        start: usize,
        end: usize,
        out: &mut [u8],
    ) -> Result<()> {
        let i = self.index(name)?;
        let r = self.read_range_inner(i, start, end, out);
        if r.is_err() {
            out.fill(0);
        }
        r.map_err(|e| e.in_file(&self.path))
    }

    /// Read several whole tensors into fresh memory in one parallel pass
    /// over all of their chunks (SPEC §8.3), in the order given. Loading a
    /// model of many small tensors this way keeps every core busy, where a
    /// tensor at a time would decrypt one-chunk tensors one after another.
    pub fn read_tensors(&self, names: &[&str]) -> Result<Vec<Vec<u8>>> {
        if self.file.is_remote() {
            // Whole tensors in parallel in the fetch pool, each one fetched
            // in ranged requests then authenticated (`load_span`).
            return crate::source::in_io_pool(true, || {
                names
                    .par_iter()
                    .map(|n| self.read_tensor(n))
                    .collect::<Result<Vec<_>>>()
            });
        }
        let r = (|| {
            let sources = names
                .iter()
                .map(|n| self.chunk_source(self.index(n)?))
                .collect::<Result<Vec<_>>>()?;
            let mut outs: Vec<Vec<u8>> = sources
                .iter()
                .map(|s| zeroed(s.t.len(), &s.t.name))
                .collect::<Result<_>>()?;
            let mut jobs = Vec::new();
            for (k, (src, out)) in sources.iter().zip(outs.iter_mut()).enumerate() {
                if src.t.is_empty() {
                    jobs.push((k, 0u64, &mut out[..]));
                    continue;
                }
                for (c, piece) in out.chunks_mut(src.piece).enumerate() {
                    jobs.push((k, c as u64, piece));
                }
            }
            jobs.into_par_iter()
                .try_for_each(|(k, c, dst)| sources[k].load(c, dst))?;
            Ok(outs)
        })();
        r.map_err(|e: Error| e.in_file(&self.path))
    }

    /// How to read and check the chunks of tensor `i`.
    fn chunk_source(&self, i: usize) -> Result<ChunkSource<'_>> {
        let t = &self.header.tensors[i];
        let base = self.header.data_start() + t.begin as u64;
        if let Some(ct) = &self.ct {
            return ct.chunk_source(&self.file, t, i, base);
        }
        let Some(meta) = &self.meta else {
            // Plain: no chunks; parallel preads of 8 MiB pieces.
            return Ok(ChunkSource {
                file: &self.file,
                t,
                base,
                piece: 8 << 20,
                check: Check::Plain,
            });
        };
        let cs = meta.chunk_size();
        let check = match self.protection(i) {
            Protection::Encrypted(tags) => {
                let (Some(mk), Some(cipher)) = (&self.mk, meta.cipher) else {
                    return Err(Error::NoMatchingKey {
                        given: 0,
                        slots: meta
                            .slots
                            .iter()
                            .map(|s| s.describe())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                };
                let key = ChunkKey::new(cipher, &seal::tensor_key(mk, &meta.file_id, &t.name)?)?;
                let aad = ChunkAad::new(&meta.file_id, t, seal::chunk_count(t.len(), cs));
                Check::Open { key, aad, tags }
            }
            Protection::Digests(d) => Check::Digests(d),
            // Every tensor of a sealed file is encrypted or digested (SPEC
            // §3.2); nothing here would authenticate it.
            Protection::None => Check::Refuse,
        };
        Ok(ChunkSource {
            file: &self.file,
            t,
            base,
            piece: cs,
            check,
        })
    }

    fn read_range_inner(&self, i: usize, start: usize, end: usize, out: &mut [u8]) -> Result<()> {
        let t = &self.header.tensors[i];
        if start > end || end > t.len() {
            return Err(Error::RangeOutOfBounds {
                name: t.name.clone(),
                start,
                end,
                len: t.len(),
            });
        }
        if out.len() != end - start {
            return Err(Error::BufferSize {
                name: t.name.clone(),
                expected: end - start,
                got: out.len(),
            });
        }
        let src = self.chunk_source(i)?;
        if t.is_empty() {
            return src.load(0, &mut []);
        }
        if start == end {
            return Ok(());
        }
        let cs = src.piece;
        let first = start / cs;
        let last = (end - 1) / cs;
        if self.file.is_remote() {
            return src.load_span(start, end, first, last, out);
        }
        let mut pieces = Vec::with_capacity(last - first + 1);
        let mut rest: &mut [u8] = out;
        for c in first..=last {
            let c0 = c * cs;
            let c1 = (c0 + cs).min(t.len());
            let s = start.max(c0);
            let e = end.min(c1);
            let (piece, tail) = rest.split_at_mut(e - s);
            rest = tail;
            pieces.push((c as u64, c0, c1, s, piece));
        }
        pieces.into_par_iter().try_for_each(|(c, c0, c1, s, dst)| {
            if dst.len() == c1 - c0 || matches!(src.check, Check::Plain) {
                // A whole chunk, or a plain file's bytes (no chunk to check).
                src.load_at(c, s - c0, dst)
            } else {
                // A whole chunk: at most 64 MiB in a sealtensors file, but a
                // whole tensor in a version 1 CryptoTensors file, so
                // allocated fallibly.
                let mut tmp = zeroed(c1 - c0, &t.name)?;
                src.load(c, &mut tmp)?;
                let off = s - c0;
                dst.copy_from_slice(&tmp[off..off + dst.len()]);
                Ok(())
            }
        })
    }

    /// A second handle on the same open file (the engine's reader thread
    /// needs one it can own): the descriptor is duplicated, the verified
    /// state copied; nothing is read or checked again.
    pub fn try_clone(&self) -> Result<SealedFile> {
        Ok(SealedFile {
            path: self.path.clone(),
            file: self.file.try_clone().map_err(|e| e.in_file(&self.path))?,
            header: self.header.clone(),
            by_name: self.by_name.clone(),
            meta: self.meta.clone(),
            ct: self.ct.clone(),
            mk: self.mk.clone(),
            auth: self.auth.clone(),
            decision: self.decision.clone(),
            progress: self.progress.clone(),
        })
    }

    /// Every piece of the file in data order, in blocks of [`STREAM_BLOCK`],
    /// through the engine with a pool of [`STREAM_POOL`] bytes: `f` sees each
    /// block once it is authenticated, while the next ones are read and
    /// decrypted on the other cores.
    pub(crate) fn for_each_block(&self, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let files = vec![Arc::new(self.try_clone()?)];
        let pieces = engine::blocks(&files, 0, STREAM_BLOCK)?;
        let stream = engine::Stream::start(files, pieces, engine::VecAlloc, Some(STREAM_POOL))?;
        for item in stream {
            let item = item?;
            f(item.bytes())?;
            if let Some(p) = &self.progress {
                p(item.piece().len() as u64);
            }
        }
        Ok(())
    }

    /// Check every chunk's tag or digest, with bounded memory.
    pub fn verify_data(&self) -> Result<()> {
        self.for_each_block(|_| Ok(()))
    }

    /// Write the plain safetensors file this was sealed from (SPEC §2.3),
    /// streaming, atomically.
    pub fn unseal_to(&self, output: &Path, overwrite: bool) -> Result<()> {
        let header = Header {
            tensors: self.header.tensors.clone(),
            metadata: self.metadata(),
            header_len: 0,
        };
        let out = AtomicFile::create(output, overwrite).map_err(|e| e.in_file(output))?;
        let head = header.to_bytes();
        let io = |e| Error::output("writing", e).in_file(output);
        out.file().write_all_at(&head, 0).map_err(io)?;
        let mut pos = head.len() as u64;
        self.for_each_block(|b| {
            out.file().write_all_at(b, pos).map_err(io)?;
            pos += b.len() as u64;
            Ok(())
        })?;
        out.commit(overwrite).map_err(|e| e.in_file(output))
    }
}

/// The block `verify` and `unseal` stream (a whole number of chunks).
const STREAM_BLOCK: usize = 16 << 20;
/// Their pool: four blocks, so that two are decrypted while one is written.
const STREAM_POOL: usize = 4 * STREAM_BLOCK;

/// How one tensor's chunks are checked (SPEC §5, §3.2).
enum Check<'a> {
    /// A plain file: nothing to check.
    Plain,
    /// AEAD chunks: the tensor's key, its associated data, the tags.
    Open {
        key: ChunkKey,
        aad: ChunkAad,
        tags: &'a [[u8; crypto::TAG_LEN]],
    },
    /// Plaintext chunks with SHA-256 digests.
    Digests(&'a [[u8; crypto::DIGEST_LEN]]),
    /// A sealed file's tensor with neither: never returned.
    Refuse,
    /// A CryptoTensors chunk: their data key, nonces and tags (SPEC A.2).
    Foreign {
        key: &'a ForeignKey,
        nonces: ForeignNonces,
        tags: &'a [[u8; crypto::TAG_LEN]],
    },
    /// A CryptoTensors tensor stored unencrypted: never returned.
    Unauthenticated,
}

/// How the nonce of each chunk of a CryptoTensors tensor is found.
#[derive(Clone, Copy)]
enum ForeignNonces {
    /// Version 1: one nonce for the one chunk (the whole tensor).
    Fixed([u8; 12]),
    /// Version 2: a base nonce and a counter (SPEC A.2).
    Counter([u8; 12]),
}

impl CtFile {
    /// How to read and check the chunks of tensor `i`.
    fn chunk_source<'a>(
        &'a self,
        file: &'a Source,
        t: &'a TensorInfo,
        i: usize,
        base: u64,
    ) -> Result<ChunkSource<'a>> {
        use cryptotensors::Data;
        let whole = t.len().max(1);
        let src = |piece, check| ChunkSource {
            file,
            t,
            base,
            piece,
            check,
        };
        let Some(entry) = self.meta.entries.get(i).and_then(Option::as_ref) else {
            // Unencrypted: only an empty one has nothing to authenticate.
            let check = if t.is_empty() {
                Check::Plain
            } else {
                Check::Unauthenticated
            };
            return Ok(src(whole, check));
        };
        let Some(Some(key)) = self.keys.get(i) else {
            return Err(Error::NoMatchingKey {
                given: 0,
                slots: format!(
                    "a CryptoTensors {} key, {}",
                    self.meta.cipher.name(),
                    self.meta.enc.describe()
                ),
            });
        };
        Ok(match &entry.data {
            Data::Plain | Data::EmptyWhole => src(whole, Check::Plain),
            Data::Whole { iv, tag } => src(
                whole,
                Check::Foreign {
                    key,
                    nonces: ForeignNonces::Fixed(*iv),
                    tags: std::slice::from_ref(tag),
                },
            ),
            Data::Chunks { base_iv, tags } => src(
                self.meta
                    .chunk_size
                    .unwrap_or(cryptotensors::DEFAULT_CHUNK_SIZE),
                Check::Foreign {
                    key,
                    nonces: ForeignNonces::Counter(*base_iv),
                    tags,
                },
            ),
        })
    }
}

/// One tensor's bytes in the file and how to check them, chunk by chunk.
struct ChunkSource<'a> {
    file: &'a Source,
    t: &'a TensorInfo,
    /// File offset of the tensor's first byte.
    base: u64,
    /// The chunk size (plain files: the size of one parallel read).
    piece: usize,
    check: Check<'a>,
}

impl ChunkSource<'_> {
    /// Read chunk `c` whole into `dst` and authenticate it (decrypting in
    /// place). On failure `dst` holds unspecified bytes.
    fn load(&self, c: u64, dst: &mut [u8]) -> Result<()> {
        self.load_at(c, 0, dst)
    }

    /// Read `dst.len()` bytes from offset `off` of chunk `c`. Only a plain
    /// file may start inside a chunk (a sealed chunk is checked whole).
    fn load_at(&self, c: u64, off: usize, dst: &mut [u8]) -> Result<()> {
        let at = self.base + c * self.piece as u64 + off as u64;
        self.file
            .read_exact_at(dst, at, &format!("reading tensor {:?}", self.t.name))?;
        self.check(c, off, dst)
    }

    /// Bytes `start..end` of the tensor into `out` from a remote object:
    /// the chunks `first..=last` that cover them fetched in one read (its
    /// ranged requests run in parallel), then authenticated in parallel. The
    /// span goes straight into `out` when it is exactly the span, else
    /// through a buffer that is wiped after.
    fn load_span(
        &self,
        start: usize,
        end: usize,
        first: usize,
        last: usize,
        out: &mut [u8],
    ) -> Result<()> {
        let what = format!("reading tensor {:?}", self.t.name);
        // What would be refused after the download is refused before it.
        match self.check {
            Check::Refuse => {
                return Err(Error::ChunkAuthFailed {
                    name: self.t.name.clone(),
                    chunk: first as u64,
                })
            }
            Check::Unauthenticated => return Err(Error::Unauthenticated(self.t.name.clone())),
            // Nothing to check: the bytes asked for, no more.
            Check::Plain => {
                return self
                    .file
                    .read_exact_at(out, self.base + start as u64, &what)
            }
            _ => {}
        }
        let cs = self.piece;
        let s0 = first * cs;
        let s1 = ((last + 1) * cs).min(self.t.len());
        // A remote span is fetched in requests of whole chunks, each
        // authenticated as soon as it arrived (while later requests are
        // still on the wire, and while its bytes are in cache), in the fetch
        // pool: as many requests in flight as the store allows.
        let step = match self.file.request_size() {
            Some(r) => (r / cs).max(1) * cs,
            None => usize::MAX,
        };
        let fill_part = |j: usize, part: &mut [u8]| -> Result<()> {
            let rel = j.saturating_mul(step);
            let at = self.base + (s0 + rel) as u64;
            self.file.read_exact_at(part, at, &what)?;
            let c0 = first + rel / cs;
            part.par_chunks_mut(cs)
                .enumerate()
                .try_for_each(|(k, dst)| self.check((c0 + k) as u64, 0, dst))
        };
        let fill = |buf: &mut [u8]| -> Result<()> {
            if buf.len() <= step {
                return fill_part(0, buf);
            }
            crate::source::in_io_pool(true, || {
                buf.par_chunks_mut(step)
                    .enumerate()
                    .try_for_each(|(j, part)| fill_part(j, part))
            })
        };
        if start == s0 && end == s1 {
            return fill(out);
        }
        let mut tmp = zeroize::Zeroizing::new(zeroed(s1 - s0, &self.t.name)?);
        fill(&mut tmp)?;
        out.copy_from_slice(&tmp[start - s0..end - s0]);
        Ok(())
    }

    /// Authenticate (and decrypt in place) chunk `c`, already read into
    /// `dst` from offset `off` of the chunk.
    fn check(&self, c: u64, off: usize, dst: &mut [u8]) -> Result<()> {
        let i = c as usize;
        let ok = match &self.check {
            Check::Plain => return Ok(()),
            _ if off != 0 => false,
            Check::Open { key, aad, tags } => tags
                .get(i)
                .is_some_and(|tag| key.open(c, &aad.for_chunk(c), tag, dst)),
            Check::Digests(d) => d
                .get(i)
                .is_some_and(|want| crypto::ct_eq(&crypto::sha256(dst), want)),
            Check::Refuse => false,
            Check::Foreign { key, nonces, tags } => {
                let nonce = match nonces {
                    ForeignNonces::Fixed(n) if i == 0 => Some(*n),
                    ForeignNonces::Fixed(_) => None,
                    ForeignNonces::Counter(b) => cryptotensors::chunk_nonce(b, c),
                };
                match (nonce, tags.get(i)) {
                    (Some(n), Some(tag)) => key.open(&n, tag, dst),
                    _ => false,
                }
            }
            Check::Unauthenticated => {
                return Err(Error::Unauthenticated(self.t.name.clone()));
            }
        };
        if ok {
            Ok(())
        } else {
            Err(Error::ChunkAuthFailed {
                name: self.t.name.clone(),
                chunk: c,
            })
        }
    }
}
