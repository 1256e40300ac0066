//! Writing: plain safetensors files, and sealing (SPEC §3-§7).
//!
//! Sealing streams. The header's length is fixed before any data is written
//! (every tag, digest, MAC and signature has a fixed encoded length), so data
//! goes to its final place as it arrives, chunk batches are encrypted in
//! parallel, and the header is written last into the space kept for it.
//! Memory is bounded by one batch (16 MiB or one chunk, the larger).
//!
//! The output is a local file (written beside its destination, renamed
//! into place) or, with the feature `remote`, an object in a bucket
//! (uploaded in parts as the data comes, the header last:
//! [`crate::remote::RemoteUpload`]); nothing plaintext goes to disk in
//! either case unless the file is sign-only.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use globset::{Glob, GlobSet, GlobSetBuilder};
use rayon::prelude::*;

use crate::atomic::AtomicFile;
use crate::crypto::{self, ChunkKey, Cipher, DIGEST_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::format::{self, Dtype, Header, TensorInfo};
use crate::keys::{b64, ModelKey, Recipient, SigningKey, Slot, MAX_SLOTS};
use crate::policy::{self, Decision, Policy, PolicyContext};
use crate::read::SealedFile;
use crate::runtime::{now_unix, Progress};
use crate::seal::{self, ChunkAad, Mode, ModelInfo, SealDoc, Shard, TensorSealDoc};

const BATCH: usize = 16 << 20;

/// What to seal and how. Build with `Default` and set what you need.
pub struct SealOptions {
    /// Who may open the file. Empty with a signing key: sign-only.
    pub recipients: Vec<Box<dyn Recipient>>,
    /// Signs the header when set.
    pub signing_key: Option<SigningKey>,
    /// Chunk AEAD.
    pub cipher: Cipher,
    /// Chunk size in bytes.
    pub chunk_size: usize,
    /// Glob patterns of tensor names to encrypt; `None` encrypts all.
    pub encrypt: Option<Vec<String>>,
    /// Model id written in the signed header.
    pub model_id: String,
    /// Model version written in the signed header.
    pub model_version: String,
    /// Expiry, Unix seconds.
    pub expires: Option<u64>,
    /// Access policy, Rego text (SPEC §3.4), stored verbatim in the header.
    /// It must compile and define `data.sealtensors.allow`; it is
    /// test-evaluated at construction (see [`Sealer::policy_decision`]).
    pub policy: Option<String>,
    /// Reuse a model key (shards of one model share it); random when `None`.
    pub model_key: Option<ModelKey>,
    /// Replace an existing output.
    pub overwrite: bool,
    /// Called with the number of tensor bytes processed, as they are.
    pub progress: Option<Progress>,
}

impl Default for SealOptions {
    fn default() -> Self {
        SealOptions {
            recipients: Vec::new(),
            signing_key: None,
            cipher: Cipher::Aes256Gcm,
            chunk_size: seal::DEFAULT_CHUNK_SIZE,
            encrypt: None,
            model_id: String::new(),
            model_version: String::new(),
            expires: None,
            policy: None,
            model_key: None,
            overwrite: false,
            progress: None,
        }
    }
}

/// A configured sealer: the model key is drawn and wrapped once, then any
/// number of files (the shards of one model) are sealed with it.
pub struct Sealer {
    mode: Mode,
    mk: Option<ModelKey>,
    mk_id: Option<[u8; 16]>,
    slots: Vec<Slot>,
    signing: Option<SigningKey>,
    cipher: Cipher,
    chunk_size: usize,
    globs: Option<(GlobSet, Vec<String>)>,
    model: ModelInfo,
    policy: Option<(String, Decision)>,
    overwrite: bool,
    progress: Option<Progress>,
}

impl Sealer {
    /// Check the options and wrap a model key for every recipient, after
    /// [`Recipient::resolve`] (which fetches the public key of a broker
    /// named without one: the one network step of sealing).
    pub fn new(opts: SealOptions) -> Result<Sealer> {
        if !(seal::MIN_CHUNK_SIZE..=seal::MAX_CHUNK_SIZE).contains(&opts.chunk_size) {
            return Err(Error::Config(format!(
                "chunk size {} is outside {}..={} bytes",
                opts.chunk_size,
                seal::MIN_CHUNK_SIZE,
                seal::MAX_CHUNK_SIZE
            )));
        }
        if opts.recipients.len() > MAX_SLOTS {
            return Err(Error::Config(format!(
                "at most {MAX_SLOTS} recipients per file"
            )));
        }
        let globs =
            match &opts.encrypt {
                None => None,
                Some(pats) if pats.is_empty() => return Err(Error::Config(
                    "an empty list of patterns to encrypt; omit the list to encrypt every tensor"
                        .into(),
                )),
                Some(pats) => {
                    let mut b = GlobSetBuilder::new();
                    for p in pats {
                        b.add(
                            Glob::new(p)
                                .map_err(|e| Error::Config(format!("bad pattern {p:?}: {e}")))?,
                        );
                    }
                    let set = b.build().map_err(|e| Error::Config(e.to_string()))?;
                    Some((set, pats.clone()))
                }
            };
        let (mode, mk, mk_id, slots) = if opts.recipients.is_empty() {
            if opts.signing_key.is_none() {
                return Err(Error::Config(
                    "no key material: give a recipient to encrypt, or a signing key to sign".into(),
                ));
            }
            if globs.is_some() || opts.model_key.is_some() {
                return Err(Error::Config(
                    "tensors to encrypt were selected but no recipient was given".into(),
                ));
            }
            (Mode::Signed, None, None, Vec::new())
        } else {
            let mk = match opts.model_key {
                Some(k) => k,
                None => ModelKey::generate()?,
            };
            let slots = opts
                .recipients
                .iter()
                .map(|r| {
                    // The explicit step that may fetch a broker's key.
                    r.resolve()?;
                    r.wrap(&mk)
                })
                .collect::<Result<Vec<_>>>()?;
            let passphrases = slots
                .iter()
                .filter(|s| matches!(s, Slot::Argon2id { .. }))
                .count();
            if passphrases > crate::keys::MAX_PASSPHRASE_SLOTS {
                return Err(Error::Config(format!(
                    "at most {} passphrases per file (readers refuse more)",
                    crate::keys::MAX_PASSPHRASE_SLOTS
                )));
            }
            let id = mk.id()?;
            (Mode::Encrypted, Some(mk), Some(id), slots)
        };
        let model = ModelInfo {
            id: opts.model_id,
            version: opts.model_version,
            created: now_unix(),
            expires: opts.expires,
        };
        let policy = match opts.policy {
            None => None,
            Some(text) => {
                let d = check_policy(&text, &model)?;
                Some((text, d))
            }
        };
        Ok(Sealer {
            mode,
            mk,
            mk_id,
            slots,
            signing: opts.signing_key,
            cipher: opts.cipher,
            chunk_size: opts.chunk_size,
            globs,
            model,
            policy,
            overwrite: opts.overwrite,
            progress: opts.progress,
        })
    }

    /// What the policy decided for a sample load: this machine, now, the
    /// model's id and version, every tensor, no framework, no licence claims.
    /// A denial is not an error (a licence may name other machines, or have
    /// lapsed on purpose in a test); callers should show it to the publisher.
    pub fn policy_decision(&self) -> Option<&Decision> {
        self.policy.as_ref().map(|(_, d)| d)
    }

    /// The model key, when encrypting (to seal more shards elsewhere).
    pub fn model_key(&self) -> Option<&ModelKey> {
        self.mk.as_ref()
    }

    /// Whether a tensor of this name is encrypted.
    pub fn encrypts(&self, name: &str) -> bool {
        self.mode == Mode::Encrypted && self.globs.as_ref().is_none_or(|(g, _)| g.is_match(name))
    }

    pub(crate) fn check_selection<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<()> {
        if let Some((_, pats)) = &self.globs {
            if !names.into_iter().any(|n| self.encrypts(n)) {
                return Err(Error::Config(format!(
                    "the patterns {pats:?} match no tensor name of the input"
                )));
            }
        }
        Ok(())
    }

    /// Start a streaming seal of `tensors` (in data order, offsets contiguous
    /// from 0) into `path`. Feed the data with [`SealWriter::write`].
    pub fn create(
        &self,
        path: &Path,
        tensors: Vec<TensorInfo>,
        metadata: Option<BTreeMap<String, String>>,
    ) -> Result<SealWriter<'_>> {
        self.check_selection(tensors.iter().map(|t| t.name.as_str()))?;
        self.create_unchecked(path, tensors, metadata)
    }

    pub(crate) fn create_unchecked(
        &self,
        path: &Path,
        tensors: Vec<TensorInfo>,
        metadata: Option<BTreeMap<String, String>>,
    ) -> Result<SealWriter<'_>> {
        SealWriter::new(SealerRef::Borrowed(self), path, tensors, metadata, None)
            .map_err(|e| e.in_file(path))
    }

    /// Like [`create`](Self::create), for a writer that must own its sealer
    /// (bindings that hand the writer to another language).
    pub fn create_shared(
        self: &std::sync::Arc<Self>,
        path: &Path,
        tensors: Vec<TensorInfo>,
        metadata: Option<BTreeMap<String, String>>,
    ) -> Result<SealWriter<'static>> {
        self.check_selection(tensors.iter().map(|t| t.name.as_str()))?;
        SealWriter::new(
            SealerRef::Shared(self.clone()),
            path,
            tensors,
            metadata,
            None,
        )
        .map_err(|e| e.in_file(path))
    }

    /// Seal the safetensors file `input` into `output`, keeping its layout.
    pub fn seal_file(&self, input: &Path, output: &Path) -> Result<()> {
        let (file, header) = crate::format::read_header(input)?;
        self.check_selection(header.tensors.iter().map(|t| t.name.as_str()))
            .map_err(|e| e.in_file(input))?;
        self.seal_from(&file, &header, input, output, None)
    }

    /// Seal a file that is already open and verified (a CryptoTensors file,
    /// for `convert`, SPEC A.5) into `output`: the same tensors, layout and
    /// publisher metadata, its plaintext streamed through the loading
    /// engine in blocks (bounded memory, each block authenticated before it
    /// is sealed again), written atomically. Every tensor of the output is
    /// encrypted: the input's data was, and a sign-only or partial seal would
    /// put it on disk in plain, so such a sealer is refused before anything
    /// is written.
    pub(crate) fn seal_opened(
        &self,
        input: &SealedFile,
        output: &Path,
        shard: Option<Shard>,
    ) -> Result<()> {
        self.check_convertible(input)?;
        let mut w = SealWriter::new(
            SealerRef::Borrowed(self),
            output,
            input.tensors().to_vec(),
            input.metadata(),
            shard,
        )
        .map_err(|e| e.in_file(output))?;
        input.for_each_block(|b| w.write(b))?;
        w.finish()
    }

    /// Whether `input` (an opened CryptoTensors file) may be converted by
    /// this sealer: every tensor encrypted (the input's data was; a
    /// sign-only or partial seal would write it in plain), the selection
    /// valid. A folder checks every file before writing any.
    pub(crate) fn check_convertible(&self, input: &SealedFile) -> Result<()> {
        if let Some(t) = input.tensors().iter().find(|t| !self.encrypts(&t.name)) {
            return Err(Error::Config(format!(
                "converting would leave tensor {:?} unencrypted on disk: convert encrypts every tensor, give at least one recipient and no --encrypt selection",
                crate::error::printable(&t.name, 256)
            ))
            .in_file(input.path()));
        }
        self.check_selection(input.tensors().iter().map(|t| t.name.as_str()))
            .map_err(|e| e.in_file(input.path()))
    }

    /// Seal one file; `shard` places it in a sharded model (SPEC §8.5).
    pub(crate) fn seal_from(
        &self,
        file: &File,
        header: &Header,
        input: &Path,
        output: &Path,
        shard: Option<Shard>,
    ) -> Result<()> {
        if seal::is_sealed(header) {
            return Err(
                Error::Config("the input is already sealed; unseal it first".into()).in_file(input),
            );
        }
        let mut w = SealWriter::new(
            SealerRef::Borrowed(self),
            output,
            header.tensors.clone(),
            header.metadata.clone(),
            shard,
        )
        .map_err(|e| e.in_file(output))?;
        let mut buf = vec![0u8; BATCH];
        let total = header.data_len() as u64;
        let mut at = 0u64;
        while at < total {
            let n = (total - at).min(BATCH as u64) as usize;
            file.read_exact_at(&mut buf[..n], header.data_start() + at)
                .map_err(|e| Error::io("reading tensor data", e).in_file(input))?;
            w.write(&buf[..n])?;
            at += n as u64;
        }
        w.finish()
    }
}

struct Current {
    key: Option<ChunkKey>,
    aad: ChunkAad,
    done: usize,
    next_chunk: u64,
}

/// A seal in progress. Data is given in file order with [`write`](Self::write);
/// [`finish`](Self::finish) writes the header and renames the file into place.
/// Dropping it unfinished removes the temporary file.
pub struct SealWriter<'s> {
    sealer: SealerRef<'s>,
    out: Output,
    path: std::path::PathBuf,
    tensors: Vec<TensorInfo>,
    encrypted: Vec<bool>,
    metadata: BTreeMap<String, String>,
    plain_metadata: bool,
    file_id: [u8; 32],
    shard: Option<Shard>,
    header_len: usize,
    values: Vec<Vec<u8>>,
    cur: usize,
    state: Option<Current>,
    buf: Vec<u8>,
    batch_cap: usize,
    pos: u64,
}

/// A writer's sealer, borrowed or shared.
enum SealerRef<'s> {
    Borrowed(&'s Sealer),
    Shared(std::sync::Arc<Sealer>),
}

impl std::ops::Deref for SealerRef<'_> {
    type Target = Sealer;
    fn deref(&self) -> &Sealer {
        match self {
            SealerRef::Borrowed(s) => s,
            SealerRef::Shared(s) => s,
        }
    }
}

impl<'s> SealWriter<'s> {
    fn new(
        sealer: SealerRef<'s>,
        path: &Path,
        tensors: Vec<TensorInfo>,
        metadata: Option<BTreeMap<String, String>>,
        shard: Option<Shard>,
    ) -> Result<Self> {
        let mut at = 0;
        for t in &tensors {
            let len = t.dtype.byte_len(&t.shape);
            if t.begin != at || len != Some(t.len()) {
                return Err(Error::ApiMisuse(format!(
                    "tensor {:?}: offsets must be contiguous in data order and match dtype and shape",
                    t.name
                )));
            }
            at = t.end;
        }
        let plain_metadata = metadata.is_some();
        let metadata = metadata.unwrap_or_default();
        if let Some(k) = metadata.keys().find(|k| k.starts_with(seal::PREFIX)) {
            return Err(Error::Config(format!(
                "the metadata key {k:?} uses the reserved prefix {:?}; rename it",
                seal::PREFIX
            )));
        }
        if let Some(k) = metadata
            .keys()
            .find(|k| crate::cryptotensors::RESERVED.contains(&k.as_str()))
        {
            return Err(Error::Config(format!(
                "the metadata key {k:?} is one of CryptoTensors' reserved keys: the input is a CryptoTensors file, whose data is their ciphertext; convert it with `sealtensors convert --from cryptotensors` (or sealtensors.convert_cryptotensors)"
            )));
        }
        let encrypted: Vec<bool> = tensors.iter().map(|t| sealer.encrypts(&t.name)).collect();
        let values = tensors
            .iter()
            .zip(&encrypted)
            .map(|(t, &e)| {
                let n = seal::chunk_count(t.len(), sealer.chunk_size) as usize;
                vec![0u8; n * if e { TAG_LEN } else { DIGEST_LEN }]
            })
            .collect();
        let file_id: [u8; 32] = crypto::random_array()?;
        let cs = sealer.chunk_size;
        let batch_cap = if cs >= BATCH { cs } else { BATCH - BATCH % cs };
        let out = Output::create(path, sealer.overwrite, at as u64)?;
        let mut w = SealWriter {
            sealer,
            out,
            path: path.to_path_buf(),
            tensors,
            encrypted,
            metadata,
            plain_metadata,
            file_id,
            shard,
            header_len: 0,
            values,
            cur: 0,
            state: None,
            buf: Vec::new(),
            batch_cap,
            pos: 0,
        };
        // Same length as the final header: every value has a fixed encoding.
        let placeholder = w.build_header(true)?;
        w.header_len = placeholder.len();
        w.pos = w.header_len as u64;
        w.advance()?;
        Ok(w)
    }

    fn build_header(&self, placeholder: bool) -> Result<Vec<u8>> {
        let s = &*self.sealer;
        let mut meta = self.metadata.clone();
        let doc = SealDoc {
            v: seal::FORMAT_VERSION,
            mode: s.mode,
            file_id: b64(&self.file_id),
            chunk_size: s.chunk_size as u64,
            aead: (s.mode == Mode::Encrypted).then(|| s.cipher.id().to_string()),
            mk_id: s.mk_id.map(|i| b64(&i)),
            plain_metadata: self.plain_metadata,
            model: s.model.clone(),
            shard: self.shard.map(Shard::to_doc),
        };
        meta.insert(seal::KEY_SEAL.into(), json(&doc)?);
        if let Some((text, _)) = &s.policy {
            meta.insert(seal::KEY_POLICY.into(), text.clone());
        }
        let docs: BTreeMap<&str, TensorSealDoc> = self
            .tensors
            .iter()
            .zip(&self.encrypted)
            .zip(&self.values)
            .map(|((t, &e), v)| {
                let d = if e {
                    TensorSealDoc {
                        tags: Some(b64(v)),
                        sha256: None,
                    }
                } else {
                    TensorSealDoc {
                        tags: None,
                        sha256: Some(b64(v)),
                    }
                };
                (t.name.as_str(), d)
            })
            .collect();
        meta.insert(seal::KEY_TENSORS.into(), json(&docs)?);
        if s.mk.is_some() {
            let slots: Vec<serde_json::Value> =
                s.slots.iter().map(Slot::to_value).collect::<Result<_>>()?;
            meta.insert(seal::KEY_SLOTS.into(), json(&slots)?);
        }
        seal::authenticate(
            &mut meta,
            &self.tensors,
            s.mk.as_ref(),
            &self.file_id,
            s.signing.as_ref(),
            placeholder,
        )?;
        let header = Header {
            tensors: self.tensors.clone(),
            metadata: Some(meta),
            header_len: 0,
        };
        Ok(header.to_bytes())
    }

    /// Start the next tensor; zero-length tensors are completed at once.
    fn advance(&mut self) -> Result<()> {
        while self.cur < self.tensors.len() {
            if self.state.is_none() {
                let t = &self.tensors[self.cur];
                let n = seal::chunk_count(t.len(), self.sealer.chunk_size);
                let key = match (&self.sealer.mk, self.encrypted[self.cur]) {
                    (Some(mk), true) => {
                        let k = seal::tensor_key(mk, &self.file_id, &t.name)?;
                        Some(ChunkKey::new(self.sealer.cipher, &k)?)
                    }
                    _ => None,
                };
                self.state = Some(Current {
                    key,
                    aad: ChunkAad::new(&self.file_id, t, n),
                    done: 0,
                    next_chunk: 0,
                });
            }
            if !self.tensors[self.cur].is_empty() {
                return Ok(());
            }
            // One empty chunk, so an empty tensor still has a tag or digest.
            self.flush()?;
            self.state = None;
            self.cur += 1;
        }
        Ok(())
    }

    /// Process the batch buffer of the current tensor and write it out.
    fn flush(&mut self) -> Result<()> {
        let Some(st) = self.state.as_mut() else {
            return Ok(());
        };
        let cs = self.sealer.chunk_size;
        let first = st.next_chunk;
        let width = if st.key.is_some() {
            TAG_LEN
        } else {
            DIGEST_LEN
        };
        let start = first as usize * width;
        let vals = &mut self.values[self.cur];
        let key = st.key.as_ref();
        let aad = &st.aad;
        if self.buf.is_empty() {
            // Only for an empty tensor: one empty chunk.
            let v = seal_chunk(key, aad, 0, &mut [])?;
            vals[..width].copy_from_slice(&v[..width]);
            st.next_chunk = 1;
            return Ok(());
        }
        let n = self.buf.len().div_ceil(cs);
        let out = &mut vals[start..start + n * width];
        self.buf
            .par_chunks_mut(cs)
            .zip(out.par_chunks_mut(width))
            .enumerate()
            .try_for_each(|(i, (chunk, slot))| {
                let v = seal_chunk(key, aad, first + i as u64, chunk)?;
                slot.copy_from_slice(&v[..width]);
                Ok::<_, Error>(())
            })?;
        st.next_chunk += n as u64;
        self.out
            .write(&self.buf, self.pos)
            .map_err(|e| e.in_file(&self.path))?;
        self.pos += self.buf.len() as u64;
        if let Some(p) = &self.sealer.progress {
            p(self.buf.len() as u64);
        }
        self.buf.clear();
        Ok(())
    }

    /// Length of the header this writer will write (prefix, JSON, padding).
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// Feed the next bytes of tensor data, in file order. A call may span
    /// tensors or cover part of one.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            if self.cur >= self.tensors.len() {
                return Err(Error::ApiMisuse(
                    "more data than the tensors described".into(),
                ));
            }
            let len = self.tensors[self.cur].len();
            let done = self.state.as_ref().map_or(0, |s| s.done);
            let room = self.batch_cap - self.buf.len();
            let take = (len - done).min(data.len()).min(room);
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            let done = done + take;
            if let Some(s) = self.state.as_mut() {
                s.done = done;
            }
            if done == len || self.buf.len() == self.batch_cap {
                self.flush()?;
            }
            if done == len {
                self.state = None;
                self.cur += 1;
                self.advance()?;
            }
        }
        Ok(())
    }

    /// Write the header, fsync and rename into place.
    pub fn finish(self) -> Result<()> {
        if self.cur != self.tensors.len() {
            return Err(Error::ApiMisuse(format!(
                "data for tensor {:?} and after is missing",
                self.tensors[self.cur].name
            ))
            .in_file(&self.path));
        }
        let header = self.build_header(false)?;
        if header.len() != self.header_len {
            return Err(Error::Crypto(
                "internal: the header length changed while sealing",
            ));
        }
        self.out
            .finish(&header, self.sealer.overwrite)
            .map_err(|e| e.in_file(&self.path))
    }
}

/// Where a seal's bytes go.
enum Output {
    /// A local file, renamed into place when finished.
    Local(AtomicFile),
    /// An object uploaded in parts, appearing when finished.
    #[cfg(feature = "remote")]
    Remote(crate::remote::RemoteUpload),
}

impl Output {
    /// The output at `path` (a local path or a URL), for a file with
    /// `data_len` bytes after its header.
    fn create(path: &Path, overwrite: bool, data_len: u64) -> Result<Output> {
        if crate::source::is_remote(path) {
            #[cfg(feature = "remote")]
            {
                let url = path.to_str().unwrap_or_default();
                let up = crate::remote::RemoteUpload::create(url, overwrite, data_len)?;
                return Ok(Output::Remote(up));
            }
            #[cfg(not(feature = "remote"))]
            return Err(crate::source::unsupported(path));
        }
        let _ = data_len;
        Ok(Output::Local(AtomicFile::create(path, overwrite)?))
    }

    /// The data bytes at `pos`, which follow those written before.
    fn write(&mut self, data: &[u8], pos: u64) -> Result<()> {
        match self {
            Output::Local(f) => f
                .file()
                .write_all_at(data, pos)
                .map_err(|e| Error::output("writing sealed data", e)),
            #[cfg(feature = "remote")]
            Output::Remote(up) => up.write(data),
        }
    }

    /// Write the header at the start, and put the whole in place.
    fn finish(self, header: &[u8], overwrite: bool) -> Result<()> {
        match self {
            Output::Local(f) => {
                f.file()
                    .write_all_at(header, 0)
                    .map_err(|e| Error::output("writing the header", e))?;
                f.commit(overwrite)
            }
            #[cfg(feature = "remote")]
            Output::Remote(up) => up.finish(header),
        }
    }
}

/// Seal-time policy check (SPEC §3.4, §9): too large, not compiling or
/// without a decision rule is an error; the sample decision is returned.
fn check_policy(text: &str, model: &ModelInfo) -> Result<Decision> {
    if text.len() > policy::MAX_POLICY_BYTES {
        return Err(Error::PolicyInvalid {
            reason: format!(
                "it is {} bytes, above the limit of {} (SPEC §9)",
                text.len(),
                policy::MAX_POLICY_BYTES
            ),
        });
    }
    let mut p = Policy::compile(text)?;
    let ctx = PolicyContext {
        licence: Some(serde_json::json!({})),
        ..Default::default()
    };
    let input = policy::input_document(&ctx, model, None, std::iter::empty(), now_unix())?;
    p.evaluate(&input)
}

fn seal_chunk(
    key: Option<&ChunkKey>,
    aad: &ChunkAad,
    index: u64,
    chunk: &mut [u8],
) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    match key {
        Some(k) => out[..TAG_LEN].copy_from_slice(&k.seal(index, &aad.for_chunk(index), chunk)?),
        None => out = crypto::sha256(chunk),
    }
    Ok(out)
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::ApiMisuse(e.to_string()))
}

/// One tensor for [`serialize_plain`] and [`write_plain`].
pub struct TensorRef<'a> {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<u64>,
    /// Little-endian row-major bytes.
    pub data: &'a [u8],
}

fn plain_header(
    tensors: &[TensorRef<'_>],
    metadata: Option<BTreeMap<String, String>>,
) -> Result<(Header, Vec<usize>)> {
    let infos = format::official_layout(
        tensors
            .iter()
            .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
            .collect(),
    )?;
    let by_name: std::collections::HashMap<&str, usize> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut order = Vec::with_capacity(infos.len());
    for info in &infos {
        let i = *by_name
            .get(info.name.as_str())
            .ok_or_else(|| Error::ApiMisuse("tensor lost in layout".into()))?;
        if tensors[i].data.len() != info.len() {
            return Err(Error::ApiMisuse(format!(
                "tensor {:?}: {} bytes given, dtype and shape need {}",
                info.name,
                tensors[i].data.len(),
                info.len()
            )));
        }
        order.push(i);
    }
    Ok((
        Header {
            tensors: infos,
            metadata,
            header_len: 0,
        },
        order,
    ))
}

/// A plain safetensors file in memory, byte-identical to the official
/// writer's output for the same tensors and metadata (SPEC §2.3).
pub fn serialize_plain(
    tensors: &[TensorRef<'_>],
    metadata: Option<BTreeMap<String, String>>,
) -> Result<Vec<u8>> {
    let (h, order) = plain_header(tensors, metadata)?;
    let mut out = h.to_bytes();
    out.reserve(h.data_len());
    for i in order {
        out.extend_from_slice(tensors[i].data);
    }
    Ok(out)
}

/// Write a plain safetensors file atomically.
pub fn write_plain(
    path: &Path,
    tensors: &[TensorRef<'_>],
    metadata: Option<BTreeMap<String, String>>,
    overwrite: bool,
) -> Result<()> {
    let (h, order) = plain_header(tensors, metadata)?;
    let out = AtomicFile::create(path, overwrite)?;
    let mut pos = 0u64;
    let head = h.to_bytes();
    let f = out.file();
    let io = |e| Error::output("writing", e).in_file(path);
    f.write_all_at(&head, pos).map_err(io)?;
    pos += head.len() as u64;
    for i in order {
        f.write_all_at(tensors[i].data, pos).map_err(io)?;
        pos += tensors[i].data.len() as u64;
    }
    out.commit(overwrite)
}
