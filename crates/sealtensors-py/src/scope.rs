//! Load scopes for Python (`sealtensors.load_scope()`): while one is open on
//! a thread, every `File` that thread opens shares model keys and folder
//! checks per folder through one `sealtensors::model::LoadScope`, so a model
//! that transformers or vLLM opens shard by shard, each several times, costs
//! one key unwrap or broker release (SPEC §8.5). Scopes belong to the thread
//! that opened them (a load in another thread, a server's other requests,
//! never join them), nest, and drop their keys when the outermost one exits;
//! `forget_released_keys` ends every open scope's sharing at once.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;

use sealtensors::keys::KeyConfig;
use sealtensors::model::LoadScope;

thread_local! {
    /// This thread's open scope, its nesting depth and its generation.
    static SCOPE: RefCell<Option<(Arc<LoadScope>, usize, u64)>> = const { RefCell::new(None) };
}

/// Bumped by `forget_released_keys`: scopes from before share nothing more.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The scope this thread's opens share, if one is open (and not forgotten).
pub(crate) fn current() -> Option<Arc<LoadScope>> {
    let now = GENERATION.load(Ordering::SeqCst);
    SCOPE.with(|s| match &*s.borrow() {
        Some((scope, _, g)) if *g == now => Some(Arc::clone(scope)),
        _ => None,
    })
}

/// End the sharing of every open scope (their keys go when they exit).
pub(crate) fn forget_all() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// A digest of the keys an open was given, as loaded (not where they were
/// found): identities, trusted signers, the broker configuration (hosts,
/// tokens, machine id, CA), the passphrase and the licence claims. Opens
/// with anything different never share a key.
pub(crate) fn credentials(
    keys: &KeyConfig,
    passphrase: Option<&str>,
    licence: Option<&str>,
) -> [u8; 32] {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for id in &keys.identities {
        parts.push(format!("identity {}", id.describe()).into_bytes());
    }
    for t in &keys.trusted {
        parts.push(format!("trusted {t}").into_bytes());
    }
    if let Some(b) = &keys.broker {
        parts.push(b"broker".to_vec());
        parts.push(b.fingerprint().to_vec());
    }
    if let Some(p) = passphrase {
        parts.push(b"passphrase".to_vec());
        parts.push(sealtensors::crypto::sha256(p.as_bytes()).to_vec());
    }
    if let Some(l) = licence {
        parts.push(b"licence".to_vec());
        parts.push(l.as_bytes().to_vec());
    }
    let mut framed = Vec::new();
    for p in &parts {
        framed.extend_from_slice(&(p.len() as u64).to_le_bytes());
        framed.extend_from_slice(p);
    }
    sealtensors::crypto::sha256(&framed)
}

/// Open (or nest into) this thread's load scope.
#[pyfunction]
pub(crate) fn enter_load_scope() {
    let now = GENERATION.load(Ordering::SeqCst);
    SCOPE.with(|s| {
        let mut s = s.borrow_mut();
        match s.as_mut() {
            Some((_, depth, _)) => *depth += 1,
            None => *s = Some((Arc::new(LoadScope::new()), 1, now)),
        }
    });
}

/// Leave it; the outermost exit drops the shared keys.
#[pyfunction]
pub(crate) fn exit_load_scope() {
    SCOPE.with(|s| {
        let mut s = s.borrow_mut();
        if let Some((_, depth, _)) = s.as_mut() {
            *depth -= 1;
            if *depth == 0 {
                *s = None;
            }
        }
    });
}
