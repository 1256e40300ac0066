//! sealtensors: confidential, signed, policy-guarded model weights that stay
//! safetensors files. The byte-level contract is `spec/SPEC.md`; module docs
//! cite its sections.
//!
//! ```no_run
//! use sealtensors::{keys::X25519Identity, OpenOptions, SealOptions, SealedFile, Sealer};
//! # fn main() -> sealtensors::Result<()> {
//! let id = X25519Identity::generate()?;
//! let sealer = Sealer::new(SealOptions {
//!     recipients: vec![Box::new(id.recipient())],
//!     ..Default::default()
//! })?;
//! sealer.seal_file("model.safetensors".as_ref(), "sealed.safetensors".as_ref())?;
//! let f = SealedFile::open("sealed.safetensors", &OpenOptions { identities: vec![&id], ..Default::default() })?;
//! let bytes = f.read_tensor("embeddings.weight")?;
//! # let _ = bytes; Ok(()) }
//! ```
// No unsafe code: the crypto is aws-lc-rs's safe API (and rustls's HPKE on
// it, see `hpke`); `forbid` so that no module can allow it back.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// Modules are private unless a face needs them. Three low-level ones stay
// public, each for a named face, and applications need none of them:
// - `crypto`: the broker server hashes tokens, compares them in constant time
//   and draws ids with it; the attack tests, test vectors, fuzz targets and
//   micro-benchmarks forge or time headers with the real key schedule.
// - `seal`: the seal metadata types; the broker server reads a released
//   file's slots and policy, the CLI prints a file's protection, tests and
//   fuzz targets build hostile metadata.
// - `hpke`: the broker server seals a released model key to the client with
//   it (SPEC §6.6), and its tests open the answer.
mod atomic;
pub mod crypto;
pub mod cryptotensors;
pub mod engine;
mod error;
pub mod format;
pub mod hpke;
pub mod keys;
pub mod model;
pub mod oms;
pub mod policy;
mod read;
pub mod rekey;
#[cfg(feature = "remote")]
pub mod remote;
pub mod report;
mod runtime;
pub mod seal;
mod source;
mod write;

pub use crypto::Cipher;
pub use error::{
    is_invisible, json_error_text, printable, without_values, Error, ErrorClass, Pkcs11Problem,
    RemoteProblem, Result, TpmProblem,
};
pub use format::{read_header, Dtype, Header, TensorInfo};
pub use read::{Authenticity, OpenOptions, SealedFile};
pub use runtime::Progress;
pub use source::{is_remote, read_small};
pub use write::{serialize_plain, write_plain, SealOptions, SealWriter, Sealer, TensorRef};
