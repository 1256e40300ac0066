//! Rotation (SPEC §8.4): add or remove recipients and
//! change the signing key by rewriting the header only. The data region is
//! copied byte for byte, never re-encrypted; the result is written aside,
//! fsynced and renamed over the target.

use std::io::{Seek, SeekFrom};
use std::path::Path;

use crate::atomic::AtomicFile;
use crate::error::{Error, Result};
use crate::format::Header;
use crate::keys::{Recipient, SigningKey, Slot, MAX_SLOTS};
use crate::read::{Authenticity, OpenOptions, SealedFile};
use crate::seal::{self, Mode};

/// What to change.
#[derive(Default)]
pub struct RekeyOptions<'a> {
    /// How to open the file (an identity is needed to add recipients or
    /// keep the header MAC valid).
    pub open: OpenOptions<'a>,
    /// Recipients to add.
    pub add: Vec<Box<dyn Recipient>>,
    /// Recipients whose slots are removed.
    pub remove: Vec<Box<dyn Recipient>>,
    /// Sign the new header with this key (keeps or rotates the signer).
    pub signing_key: Option<SigningKey>,
    /// Drop the signature of a signed file (only with no `signing_key`).
    pub drop_signature: bool,
    /// Replace an existing `output` (atomically, only once the new file is complete).
    pub overwrite: bool,
}

/// Rewrite the header of `input` into `output` (in place when `None`).
///
/// With a signing key, the file must already be vouched for: signed by a
/// signer the loader trusts, or by the new signing key itself. Otherwise
/// the new signature would vouch for content nobody verified
/// (`ResignUnverified`, SPEC §8.4).
pub fn rekey_file(input: &Path, output: Option<&Path>, opts: &RekeyOptions<'_>) -> Result<()> {
    let f = SealedFile::open(input, &opts.open)?;
    rekey_opened(&f, output, opts)
}

/// Whether signing `f` with `key` only re-states what is already verified.
fn check_resign(f: &SealedFile, key: &SigningKey) -> Result<()> {
    let new = key.verifying_key();
    match f.authenticity() {
        Authenticity::Trusted(_) => Ok(()),
        Authenticity::UntrustedSigner(k) if *k == new => Ok(()),
        Authenticity::UntrustedSigner(k) => Err(Error::ResignUnverified {
            found: format!("signed by {k}, a signer this rekey was not told to trust"),
        }),
        Authenticity::Unsigned => Err(Error::ResignUnverified {
            found: "unsigned".into(),
        }),
        Authenticity::Plain => Err(Error::ResignUnverified {
            found: "plain".into(),
        }),
        Authenticity::SignedUnchecked => Err(Error::ResignUnverified {
            found: "signed, its signature not checked".into(),
        }),
    }
}

/// [`rekey_file`] on a file already opened (and verified) with `opts.open`.
pub(crate) fn rekey_opened(
    f: &SealedFile,
    output: Option<&Path>,
    opts: &RekeyOptions<'_>,
) -> Result<()> {
    let input = f.path();
    let inner = || -> Result<()> {
        let meta = f
            .seal()
            .ok_or_else(|| Error::Config("the file is not sealed; seal it instead".into()))?;
        let mut slots: Vec<Slot> = meta.slots.clone();
        for r in &opts.remove {
            let before = slots.len();
            slots.retain(|s| !r.matches(s));
            if slots.len() == before {
                return Err(Error::Config(format!(
                    "{} has no slot in this file",
                    r.describe()
                )));
            }
        }
        if !opts.add.is_empty() {
            let mk = f.model_key().ok_or_else(|| {
                Error::Config(
                    "recipients can only be added to an encrypted file, opened with an identity"
                        .into(),
                )
            })?;
            for r in &opts.add {
                // The explicit step that may fetch a broker's key (once:
                // a model folder's shards share the recipient).
                r.resolve()?;
                slots.push(r.wrap(mk)?);
            }
        }
        if slots.len() > MAX_SLOTS {
            return Err(Error::Config(format!(
                "at most {MAX_SLOTS} recipients per file"
            )));
        }
        if meta.doc.mode == Mode::Encrypted {
            if slots.is_empty() {
                return Err(Error::Config(
                    "that would remove every recipient; nobody could open the file".into(),
                ));
            }
            if f.model_key().is_none() {
                return Err(Error::Config(
                    "rekeying an encrypted file needs an identity that opens it".into(),
                ));
            }
        }
        let signing = opts.signing_key.as_ref();
        if let Some(key) = signing {
            check_resign(f, key)?;
        }
        if signing.is_none() && meta.signature.is_some() && !opts.drop_signature {
            return Err(Error::Config(
                "the file is signed: pass the signing key to re-sign it, or ask explicitly to drop the signature".into(),
            ));
        }
        if signing.is_none() && meta.doc.mode == Mode::Signed {
            return Err(Error::Config("a sign-only file needs a signing key".into()));
        }
        let mut map = f.header().metadata.clone().unwrap_or_default();
        if meta.doc.mode == Mode::Encrypted {
            let vals: Vec<serde_json::Value> =
                slots.iter().map(Slot::to_value).collect::<Result<_>>()?;
            map.insert(
                seal::KEY_SLOTS.into(),
                serde_json::to_string(&vals)
                    .map_err(|e| Error::seal_meta(seal::KEY_SLOTS, e.to_string()))?,
            );
        }
        seal::authenticate(
            &mut map,
            f.tensors(),
            f.model_key(),
            &meta.file_id,
            signing,
            false,
        )?;
        let header = Header {
            tensors: f.tensors().to_vec(),
            metadata: Some(map),
            header_len: 0,
        };
        let head = header.to_bytes();
        let dest = output.unwrap_or(input);
        let overwrite = output.is_none() || opts.overwrite;
        if let Some(o) = output {
            if let (Ok(a), Ok(b)) = (std::fs::canonicalize(o), std::fs::canonicalize(input)) {
                if a == b {
                    return Err(Error::Config(
                        "the output is the input; omit the output to rewrite in place".into(),
                    ));
                }
            }
        }
        let out = AtomicFile::create(dest, overwrite)?;
        let mut w = out.file();
        use std::io::Write;
        w.write_all(&head)
            .map_err(|e| Error::output("writing the header", e))?;
        let mut src = f
            .source()
            .local()
            .ok_or_else(|| {
                Error::Config("rekey rewrites local files only; download the model first".into())
            })?
            .try_clone()
            .map_err(|e| Error::io("reopening input", e))?;
        src.seek(SeekFrom::Start(f.header().data_start()))
            .map_err(|e| Error::io("seeking input", e))?;
        let len = f.header().data_len() as u64;
        let copied = std::io::copy(&mut std::io::Read::take(src, len), &mut w)
            .map_err(|e| Error::output("copying tensor data", e))?;
        if copied != len {
            return Err(Error::container("the input was truncated while copying"));
        }
        out.commit(overwrite).map_err(|e| e.in_file(dest))
    };
    inner().map_err(|e| e.in_file(input))
}
