//! The one error type of the library.
//!
//! Crypto failures are deliberately coarse (a tag mismatch says which chunk of
//! which tensor failed, never why); user mistakes are precise and each message
//! ends with what to do next, in words that fit every face. Hints that name a
//! face's own flags or arguments (`--trust`, `identities=`) are added by that
//! face from the typed error: the CLI's `hint.rs`, the Python binding's `to_py`.

use std::path::PathBuf;

/// Every error the library returns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Context: the error happened while handling this file.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file being read or written.
        path: PathBuf,
        /// What went wrong.
        source: Box<Error>,
    },

    /// An operating-system I/O error.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },

    /// Writing the output failed (missing folder, no permission, disk full).
    #[error("{what}: {source}; check that the output folder exists and is writable")]
    Output {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },

    // ---- safetensors container -------------------------------------------------
    /// The file does not follow the safetensors container layout.
    #[error("not a valid safetensors file: {0}; check that the path names a .safetensors file and that it was copied completely")]
    InvalidContainer(String),

    /// A resource limit of SPEC §9 was exceeded.
    #[error("limit exceeded: {what} is {got}, the most allowed is {max}; the file is malformed or hostile")]
    LimitExceeded {
        /// Which limit.
        what: &'static str,
        /// The value found.
        got: u64,
        /// The bound.
        max: u64,
    },

    /// A tensor name that is not in the file.
    #[error("tensor {0:?} is not in the file")]
    NoSuchTensor(String),

    /// A byte range outside of a tensor.
    #[error("tensor {name:?}: byte range {start}..{end} is outside its {len} bytes")]
    RangeOutOfBounds {
        /// Tensor name.
        name: String,
        /// Range start.
        start: usize,
        /// Range end.
        end: usize,
        /// Tensor length in bytes.
        len: usize,
    },

    /// A caller buffer of the wrong size.
    #[error("tensor {name:?}: the output buffer has {got} bytes but {expected} are needed")]
    BufferSize {
        /// Tensor name.
        name: String,
        /// Bytes needed.
        expected: usize,
        /// Bytes given.
        got: usize,
    },

    // ---- seal metadata -------------------------------------------------------------
    /// The seal metadata is present but malformed.
    #[error(
        "malformed seal metadata in {key:?}: {reason}; the file is corrupt or was tampered with"
    )]
    InvalidSealMetadata {
        /// The reserved `__metadata__` key.
        key: String,
        /// What is wrong.
        reason: String,
    },

    /// The file was sealed with a format version this library does not know.
    #[error("sealed with format version {0}, this sealtensors reads version 1 only; upgrade sealtensors")]
    UnsupportedVersion(u64),

    /// The file's access policy defines no `data.sealtensors.allow` rule, the
    /// only decision this version evaluates (SPEC §3.4).
    #[error("the file's access policy defines no data.sealtensors.allow rule, the only decision this version of sealtensors evaluates; refusing to open it (fail closed); upgrade sealtensors or ask the publisher for a file sealed with a valid policy")]
    PolicyUnsupported,

    // ---- access policy ------------------------------------------------------------------
    /// The access policy cannot be used: too large, does not parse, calls a
    /// builtin outside the profile, or its evaluation failed or ran too long.
    #[error("the access policy cannot be used: {reason}")]
    PolicyInvalid {
        /// What is wrong.
        reason: String,
    },

    /// The file's access policy denies access here (no key slot was tried).
    #[error("the file's access policy denies access: {}; no key was tried. Ask the publisher for a licence that covers this use", reasons_text(.reasons))]
    PolicyDenied {
        /// The policy's reasons (`data.sealtensors.deny_reasons`), never empty.
        reasons: Vec<String>,
    },

    /// Licence claims given to the policy could not be read.
    #[error("invalid licence claims: {0}; licence claims are one JSON object, given inline or in a file (SEALTENSORS_LICENCE takes either)")]
    Licence(String),

    // ---- downgrade and trust ---------------------------------------------------------
    /// The loader requires a sealed (encrypted) file and this one is not.
    #[error("the file is {found}, but the loader requires an encrypted file; it may have been replaced or stripped of its seal, get the sealed file from the publisher")]
    NotSealed {
        /// What was found instead ("plain", "signed but not encrypted").
        found: &'static str,
    },

    /// The loader requires a signature and the file has none.
    #[error("the file is {found} and carries no signature, but the loader requires one{}; get the signed file from the publisher", if *trusted > 0 { " from a trusted signer" } else { "" })]
    NotSigned {
        /// What was found ("plain", "sealed").
        found: &'static str,
        /// How many signers the loader trusts.
        trusted: usize,
    },

    /// The signature is by a key the loader does not trust.
    #[error("the file is signed by {signer}, which is not among the {trusted} trusted signer(s); trust it (SEALTENSORS_TRUST) only if you trust its owner")]
    UntrustedSigner {
        /// The signer's public key as found in the file.
        signer: String,
        /// How many signers the loader trusts.
        trusted: usize,
    },

    /// The header signature does not verify.
    #[error("the header signature does not verify: the header was modified after signing; do not use this file")]
    BadSignature,

    /// A CryptoTensors file's signature verifies against no trusted signer
    /// (SPEC A.3): their header names its signer by id only, so the loader
    /// must name the publisher's key.
    #[error("{}", cryptotensors_signature_text(.signer, *.trusted))]
    CryptoTensorsSignature {
        /// The signing key as the header describes it (kid, jku), escaped.
        signer: String,
        /// How many signers the loader trusts.
        trusted: usize,
    },

    /// The header MAC does not verify under the model key.
    #[error("the header authentication code does not verify: the header was modified; do not use this file")]
    BadHeaderMac,

    /// The model expired.
    #[error("the model expired at {expires} (unix seconds; now is {now}); ask the publisher for a current version")]
    Expired {
        /// Expiry, unix seconds.
        expires: u64,
        /// The loader's clock, unix seconds.
        now: u64,
    },

    // ---- keys ---------------------------------------------------------------------------
    /// None of the given identities opens any slot.
    #[error("no key slot matches the identities given ({given} tried): the file has slots for {slots}; give an identity that opens one of them, or set SEALTENSORS_IDENTITY")]
    NoMatchingKey {
        /// How many identities were tried.
        given: usize,
        /// A description of the slots.
        slots: String,
    },

    /// A key file or key string could not be parsed.
    #[error("invalid key: {0}")]
    InvalidKey(String),

    /// A key derivation would need more work or memory than allowed.
    #[error("a passphrase slot asks for {what} = {got}, above the limit {max}; the file is hostile or was made by a tool that does not follow SPEC §6.3")]
    ExcessiveWork {
        /// Which parameter.
        what: &'static str,
        /// Requested.
        got: u64,
        /// Allowed.
        max: u64,
    },

    /// A key broker (SPEC §6.6) refused to release the model key.
    #[error("the key broker at {broker} refused to release the model key: {reason}; ask the publisher for a licence that covers this use, or check SEALTENSORS_BROKER_TOKEN")]
    BrokerDenied {
        /// The broker's host.
        broker: String,
        /// The HTTP status of the refusal.
        status: u16,
        /// The broker's reason, verbatim.
        reason: String,
    },

    /// A key broker could not be used: unreachable, not allowed by the
    /// loader's configuration, or its answer was malformed.
    #[error("the key broker at {broker} could not be used: {reason}")]
    BrokerUnavailable {
        /// The broker's host.
        broker: String,
        /// What went wrong and what to do.
        reason: String,
    },

    // ---- data -----------------------------------------------------------------------------
    /// A chunk failed to authenticate.
    #[error("tensor {name:?}: chunk {chunk} failed authentication: the data was modified, moved or truncated; do not use this file")]
    ChunkAuthFailed {
        /// Tensor name.
        name: String,
        /// Chunk index.
        chunk: u64,
    },

    /// An OpenSSF model signing bundle is malformed or of a kind not read.
    #[error("the model signing bundle cannot be used: {0}")]
    OmsInvalid(String),

    /// An OpenSSF model signing bundle verifies against no trusted key.
    #[error("the model signing bundle's signature verifies against none of the {trusted} trusted ECDSA key(s): it was signed by another key, or modified; give the signer's PEM public key with --trust (or SEALTENSORS_TRUST), and only if you trust its owner")]
    OmsSignature {
        /// How many OMS keys the verifier trusts.
        trusted: usize,
    },

    /// A file does not match its digest in a verified OMS bundle.
    #[error("{file}: {reason}; the folder is not the one that was signed, do not use it")]
    OmsMismatch {
        /// The file, relative to the folder (escaped).
        file: String,
        /// What is wrong.
        reason: String,
    },

    /// A tensor that nothing authenticates: stored unencrypted in a
    /// CryptoTensors file, whose signature covers the header only.
    #[error("tensor {0:?} is stored unencrypted in this CryptoTensors file, and nothing authenticates its bytes (their signature covers the header only), so sealtensors does not return it; ask the publisher to encrypt every tensor, or to publish a sealtensors file")]
    Unauthenticated(String),

    // ---- model folders --------------------------------------------------------------------
    /// The shards of a model folder are not the complete set of one sealing
    /// (SPEC §8.5): one is missing, extra, duplicated or from another sealing.
    #[error("the folder is not one complete sealed model: {0}; get the publisher's folder again, complete and unmodified")]
    IncompleteModel(String),

    /// A symbolic link in a model folder that sealtensors will not follow
    /// while copying the folder (it leads out of the folder, or to a folder).
    #[error("{} is a symbolic link to {target}, which leads out of the model folder or to a folder; sealtensors does not follow such links when copying a model: replace the link with the file it should hold, or remove it", link.display())]
    UnsafeLink {
        /// The link.
        link: PathBuf,
        /// Where it points, as read.
        target: String,
    },

    /// Rekeying with a signing key would vouch for content that no trusted
    /// signer vouched for (SPEC §8.4).
    #[error("refusing to re-sign: the file is {found}, so its content is not verified against a trusted signer and signing it would vouch for whatever it holds; trust the current signer's public key, or re-seal the model from its plaintext")]
    ResignUnverified {
        /// What the file's authenticity was ("unsigned", "signed by an untrusted key").
        found: String,
    },

    /// Memory for a tensor could not be allocated.
    #[error("could not allocate {bytes} bytes for {what}: not enough memory (a hostile file can declare huge tensors; check the sizes its header declares)")]
    OutOfMemory {
        /// What the memory was for.
        what: String,
        /// How many bytes were asked for.
        bytes: usize,
    },

    // ---- writing --------------------------------------------------------------------------
    /// The seal options are inconsistent or incomplete.
    #[error("cannot seal: {0}")]
    Config(String),

    /// The output exists and overwriting was not asked for.
    #[error("{} already exists; choose another output, or ask for it to be replaced", .0.display())]
    OutputExists(PathBuf),

    /// The caller violated an API contract (wrong tensor order, too many bytes).
    #[error("API misuse: {0}")]
    ApiMisuse(String),

    /// The loading engine's reader thread stopped before the end of its
    /// pieces without saying why (it panicked): what was read is incomplete.
    #[error("the reader thread stopped before reading everything: {0}")]
    ReaderStopped(String),

    /// The system random generator or a primitive failed unexpectedly.
    #[error("cryptographic backend failure: {0}")]
    Crypto(&'static str),

    // ---- added later (kept at the end to ease merging) ---------------------------------
    /// A key broker is needed (to open a file only a broker can open, or to
    /// fetch the public key of a broker sealed to) and this build has no
    /// broker client: the core was built without its `broker-client` feature.
    #[error("{task} needs the key broker at {broker}, but this build of sealtensors has no broker client (it was built without the `broker-client` feature); use a build with it, or {fix}")]
    BrokerClientMissing {
        /// The broker's host.
        broker: String,
        /// What needed it.
        task: &'static str,
        /// The way around it in this build.
        fix: &'static str,
    },

    // ---- hardware keys -----------------------------------------------------------
    /// A key held in this machine's TPM could not be used.
    #[error("TPM {what}: {problem}")]
    Tpm {
        /// Which step or file.
        what: String,
        /// What is wrong, and what to do.
        problem: TpmProblem,
    },

    /// A key held in a PKCS#11 token could not be used (module, token, PIN,
    /// key, or the token's own failure).
    #[error("PKCS#11 {what}: {problem}")]
    Pkcs11 {
        /// Which step failed, and where (module, token, object).
        what: String,
        /// What is wrong, and what to do.
        problem: Pkcs11Problem,
    },

    // ---- object storage --------------------------------------------------------------
    /// A remote object (`s3://`, `gs://`, `az://`, `https://`) could not be
    /// read as one version of one object (docs/object-storage.md).
    #[error("{problem}")]
    Remote {
        /// The URL (escaped), or the setting at fault (the error is also
        /// wrapped in [`Error::InFile`] with it, which prints it).
        url: String,
        /// What is wrong, and what to do.
        problem: RemoteProblem,
    },
}

/// What went wrong reading a remote object, each with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteProblem {
    /// This build reads local files only.
    #[error("this build of sealtensors has no object storage support (it was built without the `remote` feature); download the file, or use a build with it")]
    Unsupported,
    /// The URL cannot be used.
    #[error("not a usable object URL: {0}")]
    BadUrl(String),
    /// A setting (environment variable, certificate file, store option) is wrong.
    #[error("{0}")]
    Config(String),
    /// No object at that URL.
    #[error("no such object; check the bucket and key (a model folder is the URL of the folder, without a trailing file name)")]
    NotFound,
    /// The store refused the credentials or the access.
    #[error("the store refused access ({0}); check the store's credentials (for S3: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE is not read; instance or container roles are used when set)")]
    Denied(String),
    /// The object was replaced while it was read.
    #[error("the object changed while it was being read ({0}); nothing of the new version was used. Load it again once the upload is finished")]
    Changed(String),
    /// The server gives neither ETag nor version id.
    #[error("the server gives no ETag or version id for the object, so sealtensors cannot make sure every range comes from one version of it; serve it from a store (or a web server) that sends ETags")]
    Unpinnable,
    /// The transfer failed after its retries (network, server errors, bodies cut short).
    #[error("the transfer failed after its retries: {0}; check the network and the store, or raise SEALTENSORS_REMOTE_RETRIES")]
    Transfer(String),
}

/// What went wrong with a TPM-held key, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TpmProblem {
    /// A tpm2-tools program is not installed.
    #[error("{0} is not installed; install tpm2-tools (Debian: apt-get install tpm2-tools)")]
    ToolMissing(String),
    /// The TPM did not answer.
    #[error("the TPM could not be reached ({0}); check SEALTENSORS_TPM_TCTI (or TPM2TOOLS_TCTI) and that the TPM or its resource manager is there")]
    Unreachable(String),
    /// The key was wrapped by another TPM, or the owner hierarchy was cleared.
    #[error("this TPM cannot load the key: the identity file was made on another TPM, or this TPM's owner hierarchy was cleared since; it opens nothing here")]
    OtherTpm,
    /// The PCR policy of the key does not hold now.
    #[error("the key is bound to PCR values ({0}) that differ now (another boot chain, firmware or configuration); it opens nothing in this state")]
    PcrMismatch(String),
    /// The identity file is not one.
    #[error("{0}")]
    BadFile(String),
    /// Anything else a program reported.
    #[error("{0}")]
    Failed(String),
}

/// What went wrong with a PKCS#11 key, each with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Pkcs11Problem {
    /// The URI is malformed or names something unsupported.
    #[error("{0}")]
    BadUri(String),
    /// The module (shared library) could not be loaded or initialised.
    #[error("the PKCS#11 module could not be loaded ({0}); check module-path in the URI (or SEALTENSORS_PKCS11_MODULE) names the vendor's .so")]
    Module(String),
    /// No PIN was given.
    #[error("no PIN: put it in a file named by pin-source=file:PATH in the URI, or in SEALTENSORS_PKCS11_PIN (never on the command line)")]
    NoPin,
    /// The token refused the PIN.
    #[error("the token refused the PIN (CKR_PIN_INCORRECT); check the PIN, and mind that tokens lock after a few wrong tries")]
    PinIncorrect,
    /// The token is locked.
    #[error("the PIN is locked (CKR_PIN_LOCKED); unlock it with the security officer's PIN")]
    PinLocked,
    /// No token matches the URI.
    #[error("no token matches {0}; check that it is plugged in and that token= (or serial=, slot-id=) names it")]
    TokenNotFound(String),
    /// No key (or more than one) matches the URI on the token.
    #[error("{0}")]
    KeyNotFound(String),
    /// The key is there but not usable for this (wrong type or curve, no derive).
    #[error("{0}")]
    WrongKey(String),
    /// Anything else the token or module returned.
    #[error("the token failed: {0}")]
    Token(String),
}

/// Coarse classes of errors, so that every front end (CLI exit codes, Python
/// exception types) maps them the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Tampered, untrusted or missing signature, expired, downgraded.
    NotAuthentic,
    /// No key given opens the file, or a key is unusable.
    NoKey,
    /// The input is not a valid (sealed) safetensors file, or cannot be read.
    InvalidInput,
    /// The file's access policy denied the load.
    PolicyDenied,
    /// The output exists or cannot be written.
    Output,
    /// Inconsistent options or API misuse.
    Usage,
    /// Anything else (backend failure).
    Other,
}

impl Error {
    /// The class of the innermost error.
    pub fn class(&self) -> ErrorClass {
        match self.kind() {
            Error::BadSignature
            | Error::BadHeaderMac
            | Error::ChunkAuthFailed { .. }
            | Error::UntrustedSigner { .. }
            | Error::CryptoTensorsSignature { .. }
            | Error::OmsSignature { .. }
            | Error::OmsMismatch { .. }
            | Error::Unauthenticated(_)
            | Error::NotSigned { .. }
            | Error::NotSealed { .. }
            | Error::IncompleteModel(_)
            | Error::ResignUnverified { .. }
            | Error::Expired { .. } => ErrorClass::NotAuthentic,
            Error::NoMatchingKey { .. } | Error::InvalidKey(_) | Error::ExcessiveWork { .. } => {
                ErrorClass::NoKey
            }
            Error::InvalidContainer(_)
            | Error::LimitExceeded { .. }
            | Error::InvalidSealMetadata { .. }
            | Error::OmsInvalid(_)
            | Error::UnsupportedVersion(_)
            | Error::PolicyUnsupported
            | Error::PolicyInvalid { .. }
            | Error::NoSuchTensor(_)
            | Error::RangeOutOfBounds { .. }
            | Error::UnsafeLink { .. }
            | Error::OutOfMemory { .. }
            | Error::Io { .. } => ErrorClass::InvalidInput,
            Error::PolicyDenied { .. } | Error::BrokerDenied { .. } => ErrorClass::PolicyDenied,
            Error::BrokerUnavailable { .. } | Error::BrokerClientMissing { .. } => {
                ErrorClass::NoKey
            }
            Error::Tpm { problem, .. } => match problem {
                TpmProblem::BadFile(_) => ErrorClass::InvalidInput,
                _ => ErrorClass::NoKey,
            },
            Error::Pkcs11 { problem, .. } => match problem {
                Pkcs11Problem::BadUri(_) => ErrorClass::Usage,
                _ => ErrorClass::NoKey,
            },
            Error::Remote { problem, .. } => match problem {
                RemoteProblem::BadUrl(_) | RemoteProblem::Config(_) => ErrorClass::Usage,
                RemoteProblem::Changed(_) => ErrorClass::NotAuthentic,
                RemoteProblem::Denied(_) => ErrorClass::NoKey,
                _ => ErrorClass::InvalidInput,
            },
            Error::OutputExists(_) | Error::Output { .. } => ErrorClass::Output,
            Error::Config(_)
            | Error::Licence(_)
            | Error::ApiMisuse(_)
            | Error::BufferSize { .. } => ErrorClass::Usage,
            _ => ErrorClass::Other,
        }
    }

    /// The innermost error, without file context.
    pub fn kind(&self) -> &Error {
        match self {
            Error::InFile { source, .. } => source.kind(),
            e => e,
        }
    }

    /// Attach the path of the file being handled.
    pub fn in_file(self, path: impl Into<PathBuf>) -> Error {
        match self {
            e @ Error::InFile { .. } => e,
            e => Error::InFile {
                path: path.into(),
                source: Box::new(e),
            },
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn output(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Output {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn container(msg: impl Into<String>) -> Error {
        Error::InvalidContainer(msg.into())
    }

    pub(crate) fn seal_meta(key: &str, reason: impl Into<String>) -> Error {
        Error::InvalidSealMetadata {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

fn cryptotensors_signature_text(signer: &str, trusted: usize) -> String {
    let head = format!("the CryptoTensors header signature (signing key {signer})");
    let fix = "give the publisher's Ed25519 public key with --trust or SEALTENSORS_TRUST (their key file, a JWK or a JWKS, works), and only if you trust its owner";
    if trusted == 0 {
        format!("{head} cannot be checked: the loader trusts no signer, and a CryptoTensors file does not carry its signer's key (sealtensors never fetches one from the file's kid or jku); {fix}")
    } else {
        format!("{head} verifies against none of the {trusted} trusted signer(s): the header was modified, or it was signed by a key you do not trust; do not use this file, or {fix}")
    }
}

fn reasons_text(reasons: &[String]) -> String {
    const SHOWN: usize = 5;
    // The reasons come from the file's policy: never raw to a terminal.
    let mut s = reasons
        .iter()
        .take(SHOWN)
        .map(|r| printable(r, 512))
        .collect::<Vec<_>>()
        .join("; ");
    if reasons.len() > SHOWN {
        s.push_str(&format!("; and {} more", reasons.len() - SHOWN));
    }
    s
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether `c` changes how text around it is shown rather than showing
/// itself: control characters (Cc: escape sequences, new lines, NUL), line
/// and paragraph separators, and the format characters that reorder or hide
/// text (bidirectional overrides and isolates, zero-width characters, the
/// byte-order mark, the soft hyphen).
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// A deserialiser's message without the value it quotes. serde's
/// `invalid type: string "<value>", expected ...`, `invalid value: ...` and
/// `unknown variant `<value>`, expected ...` repeat what was in the input,
/// which in a key file, token file or configuration may be a secret; what
/// was expected, and where (added by the caller), is kept. Other messages
/// (syntax errors, missing or duplicate fields) carry no value and are kept.
pub fn without_values(message: &str) -> String {
    for (prefix, what) in [
        ("invalid type: ", "wrong type"),
        ("invalid value: ", "invalid value"),
        ("unknown variant ", "unknown variant"),
    ] {
        if let Some(rest) = message.strip_prefix(prefix) {
            // The expectation comes last; the value may hold ", expected ".
            return match rest.rfind(", expected ") {
                Some(i) => format!("{what}, expected {}", &rest[i + 11..]),
                None => what.to_string(),
            };
        }
    }
    message.to_string()
}

/// A `serde_json` error as text that never quotes the input: the message
/// without values ([`without_values`]) and the line and column.
pub fn json_error_text(e: &serde_json::Error) -> String {
    // `Display` appends " at line L column C" to the message; rebuild it.
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full);
    match e.classify() {
        serde_json::error::Category::Data => {
            format!("{}{suffix}", without_values(message))
        }
        _ => full,
    }
}

/// Untrusted text made fit to show in a terminal or a log: control and
/// invisible formatting characters ([`is_invisible`]: escape sequences, new
/// lines, NUL, bidirectional overrides) escaped as `\u{..}`, `\n`, and at
/// most `max_chars` characters, then `...`.
pub fn printable(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == max_chars {
            out.push_str("...");
            break;
        }
        if is_invisible(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
