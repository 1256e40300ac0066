//! `sealtensors._native`: the Python face of the core library. Python inputs
//! are turned into owned Rust values first, then the GIL is released for all
//! I/O and cryptography. Decrypted tensors land in a fresh `Vec` that the
//! returned NumPy array takes over without a copy.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1, PyReadwriteArray1};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use sealtensors::keys::{
    load_recipient, load_signing_key, Identity, KeyConfig, Passphrase, Recipient,
};
use sealtensors::model::{open_path, seal_path, unseal_path};
use sealtensors::{Error, ErrorClass, OpenOptions, SealOptions, SealWriter, SealedFile, Sealer};

mod scope;
mod stream;

create_exception!(
    _native,
    SealtensorsError,
    PyException,
    "Base class of every sealtensors error."
);
create_exception!(
    _native,
    InvalidFileError,
    SealtensorsError,
    "Not a valid (sealed) safetensors file."
);
create_exception!(
    _native,
    NotAuthenticError,
    SealtensorsError,
    "Tampered, untrusted or unsigned, expired or downgraded."
);
create_exception!(
    _native,
    NoKeyError,
    SealtensorsError,
    "No identity given opens the file."
);
create_exception!(
    _native,
    ConfigError,
    SealtensorsError,
    "Inconsistent or incomplete seal options."
);
create_exception!(
    _native,
    OutputError,
    SealtensorsError,
    "The output exists or cannot be written."
);
create_exception!(
    _native,
    PolicyDeniedError,
    SealtensorsError,
    "The file's access policy denied this load; no key was tried."
);

/// What to do next in Python's own words: the argument that fixes a library
/// error. The library's messages stay face-neutral; the hint is chosen from
/// the typed error, never from its text.
fn hint(e: &Error) -> Option<&'static str> {
    Some(match e.kind() {
        Error::NoSuchTensor(_) => "keys() lists the tensors",
        Error::Licence(_) => "pass the claims as licence= (a mapping, JSON text or a file path)",
        Error::UntrustedSigner { .. } => "add a signer to trusted=[...]",
        Error::ResignUnverified { .. } => "pass the current signer's public key in trusted=[...]",
        Error::NoMatchingKey { .. } => "pass an identity file in identities=[...]",
        _ => return None,
    })
}

/// The one bridge from library errors to Python exceptions.
pub(crate) fn to_py(e: Error) -> PyErr {
    let msg = match hint(&e) {
        Some(h) => format!("{e}; {h}"),
        None => e.to_string(),
    };
    match e.class() {
        ErrorClass::NotAuthentic => NotAuthenticError::new_err(msg),
        ErrorClass::NoKey => NoKeyError::new_err(msg),
        ErrorClass::InvalidInput => InvalidFileError::new_err(msg),
        ErrorClass::PolicyDenied => PolicyDeniedError::new_err(msg),
        ErrorClass::Usage => ConfigError::new_err(msg),
        ErrorClass::Output => OutputError::new_err(msg),
        _ => SealtensorsError::new_err(msg),
    }
}

/// Keys a loader holds, gathered by the library's discovery rules.
struct Keys {
    config: KeyConfig,
    passphrase: Option<Passphrase>,
}

impl Keys {
    fn gather(
        identities: Vec<PathBuf>,
        trusted: Vec<String>,
        passphrase: Option<String>,
    ) -> Result<Keys, Error> {
        Ok(Keys {
            config: KeyConfig::discover(&identities, &trusted)?,
            passphrase: passphrase.map(Passphrase::new),
        })
    }
    fn options(&self, require_encrypted: bool, require_signed: bool) -> OpenOptions<'_> {
        let mut o = OpenOptions::from_keys(&self.config);
        if let Some(p) = &self.passphrase {
            o.identities.push(p as &dyn Identity);
        }
        o.require_encrypted = require_encrypted;
        o.require_signed |= require_signed;
        o
    }
}

/// An opened safetensors file, plain or sealed, verified on open.
#[pyclass(module = "sealtensors._native", frozen)]
struct File {
    inner: Arc<SealedFile>,
}

#[pymethods]
impl File {
    #[new]
    #[pyo3(signature = (path, identities=Vec::new(), trusted=Vec::new(), passphrase=None, require_encrypted=false, require_signed=false, licence=None, runtime=None, framework=None, requested=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        identities: Vec<PathBuf>,
        trusted: Vec<String>,
        passphrase: Option<String>,
        require_encrypted: bool,
        require_signed: bool,
        licence: Option<String>,
        runtime: Option<(String, String)>,
        framework: Option<(String, String)>,
        requested: Option<Vec<String>>,
    ) -> PyResult<Self> {
        // Inside a load scope (this thread's), the opens of one folder share
        // its key and folder check (SPEC §8.5).
        let scope = scope::current();
        let scoped_passphrase = passphrase.clone();
        py.detach(|| {
            let keys = Keys::gather(identities, trusted, passphrase)?;
            let mut opts = keys.options(require_encrypted, require_signed);
            opts.policy.licence = licence
                .as_deref()
                .map(sealtensors::policy::licence_from_str_or_path)
                .transpose()?;
            if let Some((name, version)) = runtime {
                opts.policy.runtime = Some(name);
                opts.policy.runtime_version = Some(version);
            }
            if let Some((name, version)) = framework {
                opts.policy.framework = Some(name);
                opts.policy.framework_version = Some(version);
            }
            opts.policy.requested = requested;
            // A shard (or a file the folder's index names) is used only as
            // part of its complete sealed model (SPEC §8.5): transformers and
            // vLLM open shards one at a time. Inside a load scope, the opens
            // of one folder share its key and its folder check.
            if let Some(scope) = scope {
                let licence = opts.policy.licence.as_ref().map(|v| v.to_string());
                let credentials = scope::credentials(
                    &keys.config,
                    scoped_passphrase.as_deref(),
                    licence.as_deref(),
                );
                return scope.open_member(&path, &opts, credentials);
            }
            let f = SealedFile::open(&path, &opts)?;
            sealtensors::model::check_member(&f, &opts)?;
            Ok(f)
        })
        .map(|inner| File {
            inner: Arc::new(inner),
        })
        .map_err(to_py)
    }

    /// Tensor names, sorted.
    fn keys(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .tensors()
            .iter()
            .map(|t| t.name.clone())
            .collect();
        v.sort();
        v
    }

    /// Tensor names in file order.
    fn offset_keys(&self) -> Vec<String> {
        self.inner
            .tensors()
            .iter()
            .map(|t| t.name.clone())
            .collect()
    }

    /// The publisher's metadata (seal entries removed), or None.
    fn metadata(&self) -> Option<BTreeMap<String, String>> {
        self.inner.metadata()
    }

    /// Whether the file carries seal metadata, sealtensors' or CryptoTensors'
    /// (SPEC appendix A): its tensors are read through sealtensors, never
    /// handed to a plain opener.
    fn is_sealed(&self) -> bool {
        self.inner.seal().is_some() || self.inner.cryptotensors().is_some()
    }

    /// (dtype, shape, nbytes, encrypted) of one tensor.
    fn info(&self, name: &str) -> PyResult<(String, Vec<u64>, usize, bool)> {
        let t = self.inner.tensor(name).map_err(to_py)?;
        let enc = self.inner.is_encrypted(name).map_err(to_py)?;
        Ok((t.dtype.as_str().to_string(), t.shape.clone(), t.len(), enc))
    }

    /// ("plain" | "unsigned" | "signed-untrusted" | "signed-trusted" |
    /// "signed-unchecked", signer or None).
    fn authenticity(&self) -> (&'static str, Option<String>) {
        let a = self.inner.authenticity();
        (a.name(), a.signer().map(|k| k.to_string()))
    }

    /// The whole tensor as a fresh uint8 array (verified, decrypted).
    fn read<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyArray1<u8>>> {
        let v = py.detach(|| self.inner.read_tensor(name)).map_err(to_py)?;
        Ok(v.into_pyarray(py))
    }

    /// Several whole tensors, read and decrypted in one parallel pass over
    /// all their chunks (what load_file uses: small tensors keep every core busy).
    fn read_many<'py>(
        &self,
        py: Python<'py>,
        names: Vec<String>,
    ) -> PyResult<Vec<Bound<'py, PyArray1<u8>>>> {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let bufs = py
            .detach(|| self.inner.read_tensors(&refs))
            .map_err(to_py)?;
        Ok(bufs.into_iter().map(|v| v.into_pyarray(py)).collect())
    }

    /// The named tensors (default: all, in file order) through the loading
    /// engine: read ahead and decrypted on all cores into arrays from a pool
    /// of `pool_bytes` (default: two of the largest tensor, or 64 MiB when
    /// that is more), each reused once Python drops it. `alloc(n)`, when
    /// given, makes the pool's arrays (a zeroed 1-D uint8 NumPy array of n
    /// bytes or more that owns its memory). Yields (name, uint8 array).
    #[pyo3(signature = (names=None, pool_bytes=None, alloc=None))]
    fn stream(
        &self,
        py: Python<'_>,
        names: Option<Vec<String>>,
        pool_bytes: Option<usize>,
        alloc: Option<Py<PyAny>>,
    ) -> PyResult<stream::TensorStream> {
        let names = names.unwrap_or_else(|| self.offset_keys());
        let wanted: Vec<(usize, &str)> = names.iter().map(|n| (0, n.as_str())).collect();
        let files = vec![Arc::clone(&self.inner)];
        let pieces = sealtensors::engine::whole_tensors(&files, &wanted).map_err(to_py)?;
        let s = py
            .detach(|| {
                sealtensors::engine::Stream::start(
                    files,
                    pieces,
                    stream::ArrayAlloc(alloc),
                    pool_bytes,
                )
            })
            .map_err(to_py)?;
        stream::TensorStream::new(py, s)
    }

    /// Decrypt a whole tensor straight into `out` (a writable, contiguous
    /// uint8 array of exactly its size: a framework's own parameter memory),
    /// with no buffer in between. On any failure `out` is zeroed.
    fn read_into(
        &self,
        py: Python<'_>,
        name: &str,
        mut out: PyReadwriteArray1<'_, u8>,
    ) -> PyResult<()> {
        let bytes = out
            .as_slice_mut()
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("out: {e}")))?;
        py.detach(|| self.inner.read_tensor_into(name, bytes))
            .map_err(to_py)
    }

    /// Bytes start..end of a tensor; only the chunks covering them are read.
    fn read_range<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        start: usize,
        end: usize,
    ) -> PyResult<Bound<'py, PyArray1<u8>>> {
        let v = py
            .detach(|| self.inner.read_range(name, start, end))
            .map_err(to_py)?;
        Ok(v.into_pyarray(py))
    }
}

/// Tensors of several opened files through one loading engine (one pool
/// for a whole model: slabs are reused across shards): `pieces` are (index
/// into `files`, tensor name) in the order wanted. See `File.stream`.
#[pyfunction]
#[pyo3(signature = (files, pieces, pool_bytes=None, alloc=None))]
fn stream_files(
    py: Python<'_>,
    files: Vec<PyRef<'_, File>>,
    pieces: Vec<(usize, String)>,
    pool_bytes: Option<usize>,
    alloc: Option<Py<PyAny>>,
) -> PyResult<stream::TensorStream> {
    let files: Vec<Arc<SealedFile>> = files.iter().map(|f| Arc::clone(&f.inner)).collect();
    let wanted: Vec<(usize, &str)> = pieces.iter().map(|(i, n)| (*i, n.as_str())).collect();
    let pieces = sealtensors::engine::whole_tensors(&files, &wanted).map_err(to_py)?;
    let s = py
        .detach(|| {
            sealtensors::engine::Stream::start(files, pieces, stream::ArrayAlloc(alloc), pool_bytes)
        })
        .map_err(to_py)?;
    stream::TensorStream::new(py, s)
}

/// Everything the seal functions accept, as owned values.
struct SealArgs {
    recipients: Vec<String>,
    sign_key: Option<PathBuf>,
    passphrase: Option<String>,
    encrypt: Option<Vec<String>>,
    cipher: String,
    chunk_size: usize,
    model_id: String,
    model_version: String,
    expires: Option<u64>,
    overwrite: bool,
    policy: Option<String>,
}

impl SealArgs {
    fn sealer(self) -> Result<Sealer, Error> {
        let mut recipients: Vec<Box<dyn Recipient>> = self
            .recipients
            .iter()
            .map(|r| load_recipient(r))
            .collect::<Result<_, _>>()?;
        if let Some(p) = self.passphrase {
            recipients.push(Box::new(Passphrase::new(p)));
        }
        Sealer::new(SealOptions {
            recipients,
            signing_key: self.sign_key.as_deref().map(load_signing_key).transpose()?,
            cipher: self.cipher.parse()?,
            chunk_size: self.chunk_size,
            encrypt: self.encrypt,
            model_id: self.model_id,
            model_version: self.model_version,
            expires: self.expires,
            overwrite: self.overwrite,
            policy: self.policy,
            ..Default::default()
        })
    }
}

/// Seal a safetensors file or a model folder.
#[pyfunction]
#[pyo3(signature = (input, output, recipients=Vec::new(), sign_key=None, passphrase=None, encrypt=None, cipher="aes-256-gcm".to_string(), chunk_size=1<<20, model_id=String::new(), model_version=String::new(), expires=None, overwrite=false, policy=None))]
#[allow(clippy::too_many_arguments)]
fn seal(
    py: Python<'_>,
    input: PathBuf,
    output: PathBuf,
    recipients: Vec<String>,
    sign_key: Option<PathBuf>,
    passphrase: Option<String>,
    encrypt: Option<Vec<String>>,
    cipher: String,
    chunk_size: usize,
    model_id: String,
    model_version: String,
    expires: Option<u64>,
    overwrite: bool,
    policy: Option<String>,
) -> PyResult<()> {
    let args = SealArgs {
        recipients,
        sign_key,
        passphrase,
        encrypt,
        cipher,
        chunk_size,
        model_id,
        model_version,
        expires,
        overwrite,
        policy,
    };
    py.detach(|| {
        let sealer = args.sealer()?;
        seal_path(&sealer, &input, &output, overwrite)
    })
    .map_err(to_py)
}

/// Convert a CryptoTensors file or folder into a sealtensors file or model
/// (SPEC A.5): opened with `identities` (their key file) and `trusted`
/// (their signer), re-sealed for `recipients`.
#[pyfunction]
#[pyo3(signature = (input, output, identities=Vec::new(), trusted=Vec::new(), recipients=Vec::new(), sign_key=None, cipher="aes-256-gcm".to_string(), chunk_size=1<<20, model_id=String::new(), model_version=String::new(), expires=None, overwrite=false, policy=None))]
#[allow(clippy::too_many_arguments)]
fn convert_cryptotensors(
    py: Python<'_>,
    input: PathBuf,
    output: PathBuf,
    identities: Vec<PathBuf>,
    trusted: Vec<String>,
    recipients: Vec<String>,
    sign_key: Option<PathBuf>,
    cipher: String,
    chunk_size: usize,
    model_id: String,
    model_version: String,
    expires: Option<u64>,
    overwrite: bool,
    policy: Option<String>,
) -> PyResult<()> {
    let args = SealArgs {
        recipients,
        sign_key,
        passphrase: None,
        encrypt: None,
        cipher,
        chunk_size,
        model_id,
        model_version,
        expires,
        overwrite,
        policy,
    };
    py.detach(|| {
        let keys = Keys::gather(identities, trusted, None)?;
        let opts = keys.options(false, false);
        let sealer = args.sealer()?;
        sealtensors::model::convert_path(&sealer, &input, &output, &opts, overwrite)
    })
    .map_err(to_py)
}

/// Write an OpenSSF model signing bundle (model_signing's key method) over a
/// model folder, signed with an ECDSA P-256 PEM private key; returns its path.
#[pyfunction]
#[pyo3(signature = (folder, key, signature=None, overwrite=false))]
fn oms_sign(
    py: Python<'_>,
    folder: PathBuf,
    key: PathBuf,
    signature: Option<PathBuf>,
    overwrite: bool,
) -> PyResult<String> {
    py.detach(|| {
        let k = sealtensors::oms::OmsSigningKey::load(&key)?;
        let at = signature.unwrap_or_else(|| folder.join(sealtensors::oms::SIGNATURE_FILE));
        sealtensors::oms::sign_folder(&folder, &k, &at, overwrite)?;
        Ok(at.display().to_string())
    })
    .map_err(to_py)
}

/// Verify a model folder against an OpenSSF model signing bundle with the
/// trusted PEM public keys: (signer, files covered, files not covered).
/// Files the bundle does not cover fail it (NotAuthenticError, as
/// model_signing does) unless `allow_uncovered`.
#[pyfunction]
#[pyo3(signature = (folder, signature, trusted, allow_uncovered=false))]
fn oms_verify(
    py: Python<'_>,
    folder: PathBuf,
    signature: PathBuf,
    trusted: Vec<PathBuf>,
    allow_uncovered: bool,
) -> PyResult<(String, usize, Vec<String>)> {
    py.detach(|| {
        let keys = trusted
            .iter()
            .map(|p| sealtensors::oms::load_public_key(p))
            .collect::<sealtensors::Result<Vec<_>>>()?;
        let v = sealtensors::oms::verify_folder(&folder, &signature, &keys)?;
        if !allow_uncovered && !v.uncovered.is_empty() {
            return Err(sealtensors::Error::OmsMismatch {
                file: v
                    .uncovered
                    .iter()
                    .map(|f| sealtensors::printable(f, 256))
                    .collect::<Vec<_>>()
                    .join(", "),
                reason: "in the folder but not covered by the signature (pass allow_uncovered=True to list them instead)".into(),
            });
        }
        Ok((v.signer, v.covered, v.uncovered))
    })
    .map_err(to_py)
}

/// Unseal a file or a model folder to plain safetensors.
#[pyfunction]
#[pyo3(signature = (input, output, identities=Vec::new(), trusted=Vec::new(), passphrase=None, require_signed=false, overwrite=false))]
#[allow(clippy::too_many_arguments)]
fn unseal(
    py: Python<'_>,
    input: PathBuf,
    output: PathBuf,
    identities: Vec<PathBuf>,
    trusted: Vec<String>,
    passphrase: Option<String>,
    require_signed: bool,
    overwrite: bool,
) -> PyResult<()> {
    py.detach(|| {
        let keys = Keys::gather(identities, trusted, passphrase)?;
        let opts = keys.options(false, require_signed);
        unseal_path(&input, &output, &opts, overwrite)
    })
    .map_err(to_py)
}

/// Verify every shard of a folder (or one file, with its folder's membership
/// check): signature, MAC, every chunk.
/// Returns the authenticity of each file.
#[pyfunction]
#[pyo3(signature = (path, identities=Vec::new(), trusted=Vec::new(), passphrase=None, require_signed=false))]
fn verify(
    py: Python<'_>,
    path: PathBuf,
    identities: Vec<PathBuf>,
    trusted: Vec<String>,
    passphrase: Option<String>,
    require_signed: bool,
) -> PyResult<Vec<(String, String)>> {
    py.detach(|| {
        let keys = Keys::gather(identities, trusted, passphrase)?;
        let opts = keys.options(false, require_signed);
        // Each shard is opened (and its key slot tried) once; a folder as
        // one complete model, a single file with its folder's membership
        // check, as the CLI's verify opens (SPEC §8.5).
        let files = open_path(&path, &opts)?;
        let mut out = Vec::new();
        for f in &files {
            f.verify_data()?;
            out.push((
                f.path().display().to_string(),
                f.authenticity().name().to_string(),
            ));
        }
        Ok(out)
    })
    .map_err(to_py)
}

/// A streaming seal of tensors held in memory: the layout is fixed first
/// (`order()` gives the order to feed), then each tensor's bytes are
/// written in that order, then `finish()` writes the header and renames the
/// file into place. Memory stays bounded by one batch of chunks.
#[pyclass(module = "sealtensors._native")]
struct Writer {
    writer: Option<SealWriter<'static>>,
    order: Vec<String>,
}

#[pymethods]
impl Writer {
    #[new]
    #[pyo3(signature = (path, tensors, metadata=None, recipients=Vec::new(), sign_key=None, passphrase=None, encrypt=None, cipher="aes-256-gcm".to_string(), chunk_size=1<<20, model_id=String::new(), model_version=String::new(), expires=None, overwrite=false, policy=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        tensors: Vec<(String, String, Vec<u64>)>,
        metadata: Option<BTreeMap<String, String>>,
        recipients: Vec<String>,
        sign_key: Option<PathBuf>,
        passphrase: Option<String>,
        encrypt: Option<Vec<String>>,
        cipher: String,
        chunk_size: usize,
        model_id: String,
        model_version: String,
        expires: Option<u64>,
        overwrite: bool,
        policy: Option<String>,
    ) -> PyResult<Self> {
        let args = SealArgs {
            recipients,
            sign_key,
            passphrase,
            encrypt,
            cipher,
            chunk_size,
            model_id,
            model_version,
            expires,
            overwrite,
            policy,
        };
        let specs = tensors
            .into_iter()
            .map(|(n, d, s)| Ok((n, d.parse()?, s)))
            .collect::<Result<Vec<_>, Error>>()
            .map_err(to_py)?;
        let layout = sealtensors::format::official_layout(specs).map_err(to_py)?;
        let order = layout.iter().map(|t| t.name.clone()).collect();
        let sealer = std::sync::Arc::new(args.sealer().map_err(to_py)?);
        // A URL costs a request here (whether the object exists).
        let writer = py
            .detach(|| sealer.create_shared(Path::new(&path), layout, metadata))
            .map_err(to_py)?;
        Ok(Writer {
            writer: Some(writer),
            order,
        })
    }

    /// Tensor names in the order their bytes must be written.
    fn order(&self) -> Vec<String> {
        self.order.clone()
    }

    /// Append bytes of tensor data (a contiguous uint8 array), in order.
    fn write(&mut self, py: Python<'_>, data: PyReadonlyArray1<'_, u8>) -> PyResult<()> {
        let bytes = data
            .as_slice()
            .map_err(|_| ConfigError::new_err("write() needs a contiguous uint8 array"))?;
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| ConfigError::new_err("the writer is finished"))?;
        py.detach(|| w.write(bytes)).map_err(to_py)
    }

    /// Write the header, fsync and rename into place.
    fn finish(&mut self, py: Python<'_>) -> PyResult<()> {
        let w = self
            .writer
            .take()
            .ok_or_else(|| ConfigError::new_err("the writer is finished"))?;
        py.detach(|| w.finish()).map_err(to_py)
    }
}

impl Drop for Writer {
    /// An unfinished writer removes its temporary file, or aborts its
    /// upload (a request to the store): without holding the GIL.
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            Python::attach(|py| py.detach(move || drop(w)));
        }
    }
}

/// Make a key file (mode 0600): "x25519" or "p256" (an identity), "ed25519" (a signing
/// key) or "symmetric". Returns the public half to share (the recipient or
/// signer string; for a symmetric key, its kid).
#[pyfunction]
#[pyo3(signature = (path, kind="x25519", kid=None, overwrite=false))]
fn keygen(path: PathBuf, kind: &str, kid: Option<String>, overwrite: bool) -> PyResult<String> {
    use sealtensors::keys::{KeyFile, P256Identity, SigningKey, SymmetricKey, X25519Identity};
    let (key, public) = match kind {
        "x25519" => {
            let k = X25519Identity::generate().map_err(to_py)?;
            let p = k.recipient().to_string();
            (KeyFile::X25519Identity(k), p)
        }
        "p256" => {
            let k = P256Identity::generate().map_err(to_py)?;
            let p = k.recipient().to_string();
            (KeyFile::P256Identity(k), p)
        }
        "ed25519" => {
            let k = SigningKey::generate().map_err(to_py)?;
            let p = k.verifying_key().to_string();
            (KeyFile::Signing(k), p)
        }
        "symmetric" => {
            let k = SymmetricKey::generate(kid).map_err(to_py)?;
            let p = k.kid().to_string();
            (KeyFile::Symmetric(k), p)
        }
        other => {
            return Err(ConfigError::new_err(format!(
                "unknown key kind {other:?}; use x25519, p256, ed25519 or symmetric"
            )))
        }
    };
    key.save(&path, overwrite).map_err(to_py)?;
    Ok(public)
}

/// Drop, and wipe, every model key a key broker released to this process.
/// Released keys are kept for the lifetime the broker gave, so that the shards
/// of one model cost one release; after this, the next open asks again, even
/// inside a load scope that is still open.
#[pyfunction]
fn forget_released_keys() {
    sealtensors::keys::forget_released_keys();
    scope::forget_all();
}

/// Rego text of a licence template: "expiry" (not_after), "machines",
/// "frameworks" or "tensors"; parameters are written as JSON literals.
#[pyfunction]
#[pyo3(signature = (template, not_after=None, machines=Vec::new(), frameworks=Vec::new(), tensors=Vec::new()))]
fn policy_template(
    template: &str,
    not_after: Option<String>,
    machines: Vec<String>,
    frameworks: Vec<String>,
    tensors: Vec<String>,
) -> PyResult<String> {
    use sealtensors::policy::{Template, TemplateParams};
    let t = Template::from_name(template).ok_or_else(|| {
        ConfigError::new_err(format!(
            "unknown template {template:?}; use expiry, machines, frameworks or tensors"
        ))
    })?;
    t.render(&TemplateParams {
        not_after,
        machines,
        frameworks,
        tensors,
    })
    .map_err(to_py)
}

/// Whether `path` names a remote object (s3://, gs://, az://, https://...),
/// read in place by sealtensors (docs/object-storage.md).
#[pyfunction]
fn is_remote(path: PathBuf) -> bool {
    sealtensors::is_remote(&path)
}

/// The weight files of a model folder, sorted: the `.safetensors` files in a
/// local folder, or the objects under a folder URL (from a store without
/// listing, `https://`, the shards its index names).
#[pyfunction]
fn weight_files(py: Python<'_>, folder: PathBuf) -> PyResult<Vec<String>> {
    let files = py
        .detach(|| sealtensors::model::weight_files(&folder))
        .map_err(to_py)?;
    Ok(files
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect())
}

/// A small file (a model's config) read whole, local or at a URL; `None`
/// when there is none; more than `max_bytes` is an error.
#[pyfunction]
fn read_small<'py>(
    py: Python<'py>,
    path: PathBuf,
    max_bytes: usize,
) -> PyResult<Option<Bound<'py, pyo3::types::PyBytes>>> {
    let got = py
        .detach(|| sealtensors::read_small(&path, max_bytes))
        .map_err(to_py)?;
    Ok(got.map(|b| pyo3::types::PyBytes::new(py, &b)))
}

/// Check, inside a load scope, that `loaded` are every weight file of the
/// sealed model the scope's folder check found in `folder` (see
/// `LoadScope::check_loaded`); nothing to check outside a scope.
#[pyfunction]
fn check_loaded(py: Python<'_>, folder: PathBuf, loaded: Vec<PathBuf>) -> PyResult<()> {
    let Some(scope) = scope::current() else {
        return Ok(());
    };
    py.detach(|| scope.check_loaded(&folder, &loaded))
        .map_err(to_py)
}

/// The native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<File>()?;
    m.add_class::<Writer>()?;
    m.add_class::<stream::TensorStream>()?;
    m.add_function(wrap_pyfunction!(seal, m)?)?;
    m.add_function(wrap_pyfunction!(stream_files, m)?)?;
    m.add_function(wrap_pyfunction!(scope::enter_load_scope, m)?)?;
    m.add_function(wrap_pyfunction!(scope::exit_load_scope, m)?)?;
    m.add_function(wrap_pyfunction!(unseal, m)?)?;
    m.add_function(wrap_pyfunction!(convert_cryptotensors, m)?)?;
    m.add_function(wrap_pyfunction!(oms_sign, m)?)?;
    m.add_function(wrap_pyfunction!(oms_verify, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(keygen, m)?)?;
    m.add_function(wrap_pyfunction!(policy_template, m)?)?;
    m.add_function(wrap_pyfunction!(forget_released_keys, m)?)?;
    m.add_function(wrap_pyfunction!(is_remote, m)?)?;
    m.add_function(wrap_pyfunction!(weight_files, m)?)?;
    m.add_function(wrap_pyfunction!(read_small, m)?)?;
    m.add_function(wrap_pyfunction!(check_loaded, m)?)?;
    m.add("SealtensorsError", py.get_type::<SealtensorsError>())?;
    m.add("InvalidFileError", py.get_type::<InvalidFileError>())?;
    m.add("NotAuthenticError", py.get_type::<NotAuthenticError>())?;
    m.add("NoKeyError", py.get_type::<NoKeyError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("OutputError", py.get_type::<OutputError>())?;
    m.add("PolicyDeniedError", py.get_type::<PolicyDeniedError>())?;
    Ok(())
}
