//! The process's load scope (`sealtensors.load_scope()`): while one is open,
//! every `File` opened in this process shares model keys and folder checks
//! per folder through one `sealtensors::model::LoadScope`, so a model that
//! transformers or vLLM opens shard by shard, each several times, costs one
//! key unwrap or broker release (SPEC §8.5). Scopes nest; the keys go when
//! the outermost one exits.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;

use sealtensors::model::LoadScope;

/// The open scope and how deeply it is nested.
static SCOPE: Mutex<Option<(Arc<LoadScope>, usize)>> = Mutex::new(None);

fn lock() -> std::sync::MutexGuard<'static, Option<(Arc<LoadScope>, usize)>> {
    SCOPE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The scope opens share, if one is open.
pub(crate) fn current() -> Option<Arc<LoadScope>> {
    lock().as_ref().map(|(s, _)| Arc::clone(s))
}

/// A digest of what chooses the keys of an open: opens with other
/// identities, signers, passphrase or licence never share a key.
pub(crate) fn credentials(
    identities: &[PathBuf],
    trusted: &[String],
    passphrase: Option<&str>,
    licence: Option<&str>,
) -> [u8; 32] {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for p in identities {
        parts.push(p.as_os_str().as_encoded_bytes().to_vec());
    }
    parts.push(b"\x00trusted".to_vec());
    for t in trusted {
        parts.push(t.as_bytes().to_vec());
    }
    parts.push(b"\x00passphrase".to_vec());
    parts.push(passphrase.unwrap_or("").as_bytes().to_vec());
    parts.push(b"\x00licence".to_vec());
    parts.push(licence.unwrap_or("").as_bytes().to_vec());
    // The environment's key settings count too: identities, signers, the
    // config folder and brokers are discovered from them (a token that the
    // broker would refuse must not get a key another token was given).
    for var in [
        "SEALTENSORS_IDENTITY",
        "SEALTENSORS_TRUST",
        "SEALTENSORS_LICENCE",
        "SEALTENSORS_CONFIG_DIR",
        "SEALTENSORS_BROKERS",
        "SEALTENSORS_BROKER_TOKEN",
        "SEALTENSORS_BROKER_CA",
        "SEALTENSORS_TPM_AK",
        "SEALTENSORS_TPM_PCRS",
        "SEALTENSORS_TPM_TCTI",
    ] {
        parts.push(format!("\x00{var}").into_bytes());
        parts.push(std::env::var(var).unwrap_or_default().into_bytes());
    }
    let mut framed = Vec::new();
    for p in &parts {
        framed.extend_from_slice(&(p.len() as u64).to_le_bytes());
        framed.extend_from_slice(p);
    }
    sealtensors::crypto::sha256(&framed)
}

/// Open (or nest into) the process's load scope.
#[pyfunction]
pub(crate) fn enter_load_scope() {
    let mut g = lock();
    match g.as_mut() {
        Some((_, depth)) => *depth += 1,
        None => *g = Some((Arc::new(LoadScope::new()), 1)),
    }
}

/// Leave it; the outermost exit drops the shared keys.
#[pyfunction]
pub(crate) fn exit_load_scope() {
    let mut g = lock();
    if let Some((_, depth)) = g.as_mut() {
        *depth -= 1;
        if *depth == 0 {
            *g = None;
        }
    }
}
