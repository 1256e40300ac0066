//! Attacks on every security property of docs/threat-model.md ("Attacker
//! capabilities and what stops them"): each test tampers with a
//! sealed file and checks the exact typed error, and that no data comes back.
//!
//! Many attacks re-authenticate the tampered header with the real keys (the
//! model key and the publisher's signer): that models the strongest insider,
//! and shows the chunk binding (property 3) holds on its own, not only
//! because the header signature or MAC breaks first.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use sealtensors::keys::{
    Argon2Params, Identity, ModelKey, Passphrase, Recipient, SigningKey, Slot, SymmetricKey,
    X25519Identity,
};
use sealtensors::rekey::{rekey_file, RekeyOptions};
use sealtensors::seal::{self, SignatureDoc};
use sealtensors::{
    Authenticity, Dtype, Error, Header, OpenOptions, SealOptions, SealedFile, Sealer,
};
use serde_json::{json, Value};

// ---- helpers ----------------------------------------------------------------------------

/// Assert that a result is an error whose innermost kind matches the pattern.
macro_rules! assert_kind {
    ($r:expr, $pat:pat $(if $guard:expr)?) => {{
        match $r {
            Ok(_) => panic!(
                "expected {} but the operation succeeded",
                stringify!($pat)
            ),
            Err(e) => {
                let k = e.kind();
                assert!(
                    matches!(k, $pat $(if $guard)?),
                    "expected {}, got {:?} ({})",
                    stringify!($pat),
                    k,
                    e
                );
                e
            }
        }
    }};
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}
fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

/// Header and data buffer of a file.
fn split(p: &Path) -> (Header, Vec<u8>) {
    let raw = std::fs::read(p).unwrap();
    let h = Header::parse_buffer(&raw).unwrap();
    let data = raw[h.data_start() as usize..].to_vec();
    (h, data)
}

/// Write a header (re-serialised the way the sealer does) and data.
fn join(p: &Path, h: &Header, data: &[u8]) {
    let mut out = h.to_bytes();
    out.extend_from_slice(data);
    std::fs::write(p, out).unwrap();
}

fn meta(h: &mut Header) -> &mut BTreeMap<String, String> {
    h.metadata.as_mut().unwrap()
}

/// Edit the JSON document of one reserved key.
fn edit_doc(h: &mut Header, key: &str, f: impl FnOnce(&mut Value)) {
    let m = meta(h);
    let mut v: Value = serde_json::from_str(&m[key]).unwrap();
    f(&mut v);
    m.insert(key.to_string(), serde_json::to_string(&v).unwrap());
}

fn file_id(h: &Header) -> [u8; 32] {
    let v: Value = serde_json::from_str(&h.metadata.as_ref().unwrap()[seal::KEY_SEAL]).unwrap();
    unb64(v["file_id"].as_str().unwrap()).try_into().unwrap()
}

/// Recompute the header MAC with a model key the attacker holds.
fn remac(h: &mut Header, mk: &ModelKey) {
    let mac = seal::header_mac(mk, &file_id(h), h).unwrap();
    meta(h).insert(seal::KEY_MAC.into(), b64(&mac));
}

/// Sign the header with `sk` (replacing any signature).
fn resign(h: &mut Header, sk: &SigningKey) {
    meta(h).remove(seal::KEY_SIGNATURE);
    let sig = sk.sign(&seal::signed_message(h)).unwrap();
    let doc = SignatureDoc {
        alg: "ed25519".into(),
        key: sk.verifying_key().to_string(),
        sig: b64(&sig),
    };
    meta(h).insert(
        seal::KEY_SIGNATURE.into(),
        serde_json::to_string(&doc).unwrap(),
    );
}

/// Re-authenticate like an insider holding the model key and the signer.
fn reauth(h: &mut Header, mk: &ModelKey, sk: Option<&SigningKey>) {
    remac(h, mk);
    match sk {
        Some(sk) => resign(h, sk),
        None => {
            meta(h).remove(seal::KEY_SIGNATURE);
        }
    }
}

fn tags(h: &Header, name: &str) -> Vec<u8> {
    let v: Value = serde_json::from_str(&h.metadata.as_ref().unwrap()[seal::KEY_TENSORS]).unwrap();
    unb64(v[name]["tags"].as_str().unwrap())
}
fn set_tags(h: &mut Header, name: &str, t: &[u8]) {
    edit_doc(h, seal::KEY_TENSORS, |v| v[name]["tags"] = json!(b64(t)));
}

fn span(h: &Header, name: &str) -> (usize, usize) {
    let t = h.tensors.iter().find(|t| t.name == name).unwrap();
    (t.begin, t.end)
}

/// A loader that trusts nobody and requires nothing.
fn lax<'a>(id: &'a dyn Identity) -> OpenOptions<'a> {
    OpenOptions {
        identities: vec![id],
        ..Default::default()
    }
}

/// Read a tensor into a buffer pre-filled with garbage; on error the buffer
/// must be wiped (no partial plaintext is left behind).
fn read_wiped(f: &SealedFile, name: &str) -> sealtensors::Result<Vec<u8>> {
    let len = f.tensor(name)?.len();
    let mut out = vec![0xA5u8; len];
    let r = f.read_tensor_into(name, &mut out);
    if r.is_err() {
        assert!(
            out.iter().all(|&b| b == 0),
            "a failed read left bytes in the buffer"
        );
    }
    r.map(|_| out)
}

/// A fixture whose plain model is replaced.
fn fixture_with(model: Model) -> Fixture {
    let mut fx = Fixture::new();
    std::fs::remove_file(&fx.plain).unwrap();
    model.write(&fx.plain);
    fx.model = model;
    fx
}

/// Two same-shaped encrypted tensors of three 4 KiB chunks each.
fn twin_model() -> Model {
    let mk = |n: &str, seed| (n.to_string(), Dtype::F32, vec![3072], bytes(seed, 12288));
    Model {
        tensors: vec![mk("a", 11), mk("b", 12)],
        metadata: None,
    }
}

fn flip(p: &Path, at: usize, mask: u8) -> PathBuf {
    let mut raw = std::fs::read(p).unwrap();
    raw[at] ^= mask;
    let out = p.with_extension(format!("flip{at}"));
    std::fs::write(&out, raw).unwrap();
    out
}

/// Flip every byte of `range` (with `mask`) and check that the loader either
/// errors or returns exactly the original tensors. Returns how many flips erred.
fn flip_all(
    fx: &Fixture,
    p: &Path,
    range: std::ops::Range<usize>,
    mask: u8,
    o: &OpenOptions<'_>,
) -> usize {
    let orig = std::fs::read(p).unwrap();
    let tmp = p.with_extension("flipped");
    let mut errors = 0;
    for i in range {
        let mut raw = orig.clone();
        raw[i] ^= mask;
        std::fs::write(&tmp, &raw).unwrap();
        // open_and_read_all asserts that any successful read is the original.
        if fx.open_and_read_all(&tmp, o).is_err() {
            errors += 1;
        }
    }
    errors
}

/// Byte range of a reserved value (as JSON-escaped in the header) in the file.
fn value_range(p: &Path, key: &str) -> std::ops::Range<usize> {
    let raw = std::fs::read(p).unwrap();
    let (h, _) = split(p);
    let v = &h.metadata.as_ref().unwrap()[key];
    let needle = format!(
        "{}:{}",
        serde_json::to_string(key).unwrap(),
        serde_json::to_string(v).unwrap()
    );
    let at = find(&raw, needle.as_bytes()).expect("value not found in header");
    let start = at + serde_json::to_string(key).unwrap().len() + 1;
    start..at + needle.len()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---- property 6, 9: every region of the file, byte by byte ---------------------------------

#[test]
fn flipped_length_prefix_is_rejected() {
    let fx = Fixture::new();
    let p = fx.seal("s.safetensors", |_| {});
    for i in 0..8 {
        for bit in 0..8 {
            let q = flip(&p, i, 1 << bit);
            assert_kind!(
                fx.open_and_read_all(&q, &fx.opts()),
                Error::InvalidContainer(_) | Error::LimitExceeded { .. }
            );
        }
    }
}

#[test]
fn flipped_header_bytes_fail_or_return_the_original() {
    let fx = Fixture::new();
    let signed = fx.seal("signed.safetensors", |_| {});
    let unsigned = fx.seal("unsigned.safetensors", |o| o.signing_key = None);
    let part = fx.seal("part.safetensors", |o| {
        o.encrypt = Some(vec!["layer.*".into()]);
        o.signing_key = None;
    });
    let sign_only = fx.seal("signonly.safetensors", |o| o.recipients.clear());
    let trusting = OpenOptions {
        trusted: vec![fx.signer.verifying_key()],
        ..Default::default()
    };
    let cases: [(&Path, OpenOptions<'_>); 5] = [
        (&signed, fx.opts()),
        (&signed, lax(&fx.id)),
        (&unsigned, lax(&fx.id)),
        (&part, lax(&fx.id)),
        (&sign_only, trusting),
    ];
    for (p, o) in &cases {
        let (h, _) = split(p);
        let end = h.data_start() as usize;
        let errors = flip_all(&fx, p, 0..end, 0x01, o);
        // Only a flip that keeps the JSON's meaning can pass (none exists
        // with this mask outside the padding, which a flip makes invalid).
        assert_eq!(
            errors,
            end,
            "{}: some header flip was accepted",
            p.display()
        );
    }
}

#[test]
fn flipped_bytes_in_each_reserved_value_are_rejected() {
    let fx = Fixture::new();
    let signed = fx.seal("signed.safetensors", |_| {});
    let unsigned = fx.seal("unsigned.safetensors", |o| o.signing_key = None);
    let sign_only = fx.seal("signonly.safetensors", |o| o.recipients.clear());
    let trusting = OpenOptions {
        trusted: vec![fx.signer.verifying_key()],
        ..Default::default()
    };
    let (signed, unsigned, sign_only) = (signed.as_path(), unsigned.as_path(), sign_only.as_path());
    let regions: Vec<(&Path, &str, OpenOptions<'_>)> = vec![
        (signed, seal::KEY_SEAL, fx.opts()),
        (signed, seal::KEY_TENSORS, fx.opts()),
        (signed, seal::KEY_SLOTS, fx.opts()),
        (signed, seal::KEY_MAC, fx.opts()),
        (signed, seal::KEY_SIGNATURE, fx.opts()),
        (signed, "format", fx.opts()),
        (unsigned, seal::KEY_SEAL, lax(&fx.id)),
        (unsigned, seal::KEY_TENSORS, lax(&fx.id)),
        (unsigned, seal::KEY_SLOTS, lax(&fx.id)),
        (unsigned, seal::KEY_MAC, lax(&fx.id)),
        (unsigned, "format", lax(&fx.id)),
        (sign_only, seal::KEY_SEAL, trusting.clone()),
        (sign_only, seal::KEY_TENSORS, trusting.clone()),
        (sign_only, seal::KEY_SIGNATURE, trusting.clone()),
    ];
    for (p, key, o) in &regions {
        let r = value_range(p, key);
        for mask in [0x01, 0x02, 0x20] {
            let n = r.len();
            let errors = flip_all(&fx, p, r.clone(), mask, o);
            assert_eq!(errors, n, "{key} in {}: a flip was accepted", p.display());
        }
    }
}

#[test]
fn flipped_tensor_table_bytes_are_rejected() {
    let fx = Fixture::new();
    let p = fx.seal("s.safetensors", |_| {});
    let raw = std::fs::read(&p).unwrap();
    let (h, _) = split(&p);
    // The tensor table follows the metadata map: from the first tensor entry
    // to the end of the JSON.
    let first = format!(
        "{}:{{\"dtype\"",
        serde_json::to_string(&h.tensors[0].name).unwrap()
    );
    let start = find(&raw, first.as_bytes()).unwrap();
    let end = h.data_start() as usize;
    for mask in [0x01, 0x04] {
        let errors = flip_all(&fx, &p, start..end, mask, &fx.opts());
        assert_eq!(errors, end - start);
    }
}

#[test]
fn flipped_ciphertext_fails_authentication_and_returns_nothing() {
    let fx = Fixture::new();
    let p = fx.seal("s.safetensors", |_| {});
    let (h, _) = split(&p);
    let (b, e) = span(&h, "embed.weight");
    let base = h.data_start() as usize;
    for off in (0..e - b).step_by(997).chain([0, e - b - 1]) {
        let q = flip(&p, base + b + off, 0x80);
        let f = fx.open(&q).expect("the header is intact");
        let chunk = (off / 4096) as u64;
        assert_kind!(
            read_wiped(&f, "embed.weight"),
            Error::ChunkAuthFailed { name, chunk: c } if name == "embed.weight" && *c == chunk
        );
        // Other tensors are unaffected; the tampered chunk is refused in any slice.
        assert_eq!(f.read_tensor("ids").unwrap(), fx.model.data("ids"));
        let mut one = vec![0u8; 1];
        assert_kind!(
            f.read_range_into("embed.weight", off, off + 1, &mut one),
            Error::ChunkAuthFailed { .. }
        );
    }
}

#[test]
fn flipped_plaintext_in_partly_encrypted_and_sign_only_files_is_detected() {
    let fx = Fixture::new();
    let part = fx.seal("part.safetensors", |o| {
        o.encrypt = Some(vec!["layer.*".into()])
    });
    let sign_only = fx.seal("signonly.safetensors", |o| o.recipients.clear());
    let trusting = OpenOptions {
        trusted: vec![fx.signer.verifying_key()],
        ..Default::default()
    };
    for (p, o) in [(&part, fx.opts()), (&sign_only, trusting)] {
        let (h, _) = split(p);
        let base = h.data_start() as usize;
        for name in ["embed.weight", "mask", "ids"] {
            let (b, e) = span(&h, name);
            for off in (0..e - b).step_by(1499).chain([e - b - 1]) {
                let q = flip(p, base + b + off, 0x01);
                let f = SealedFile::open(&q, &o).expect("the header is intact");
                assert!(!f.is_encrypted(name).unwrap());
                assert_kind!(
                    read_wiped(&f, name),
                    Error::ChunkAuthFailed { name: n, chunk } if n == name && *chunk == (off / 4096) as u64
                );
            }
        }
    }
}

// ---- property 3: binding ----------------------------------------------------------------

#[test]
fn swapped_tensor_names_are_rejected() {
    let fx = fixture_with(twin_model());
    let mk = ModelKey::generate().unwrap();
    let p = fx.seal("s.safetensors", |o| o.model_key = Some(mk.clone()));
    let (h, data) = split(&p);
    let mut sw = h.clone();
    sw.tensors[0].name = "b".into();
    sw.tensors[1].name = "a".into();
    let q = fx.path("swapped.safetensors");
    join(&q, &sw, &data);
    assert_kind!(fx.open_and_read_all(&q, &fx.opts()), Error::BadSignature);
    assert_kind!(fx.open_and_read_all(&q, &lax(&fx.id)), Error::BadSignature);
    // An insider who re-authenticates the header still cannot move data
    // between names: the name is in the key derivation and the chunk AAD.
    let mut sw2 = sw.clone();
    reauth(&mut sw2, &mk, Some(&fx.signer));
    join(&q, &sw2, &data);
    let f = fx.open(&q).unwrap();
    assert_kind!(read_wiped(&f, "a"), Error::ChunkAuthFailed { .. });
    assert_kind!(read_wiped(&f, "b"), Error::ChunkAuthFailed { .. });
    // Same with the tags moved along with the data.
    let mut sw3 = sw.clone();
    let (ta, tb) = (tags(&h, "a"), tags(&h, "b"));
    set_tags(&mut sw3, "a", &tb);
    set_tags(&mut sw3, "b", &ta);
    reauth(&mut sw3, &mk, Some(&fx.signer));
    join(&q, &sw3, &data);
    let f = fx.open(&q).unwrap();
    assert_kind!(read_wiped(&f, "a"), Error::ChunkAuthFailed { .. });
    assert_kind!(read_wiped(&f, "b"), Error::ChunkAuthFailed { .. });
}

#[test]
fn swapped_data_offsets_are_rejected() {
    let fx = fixture_with(twin_model());
    let mk = ModelKey::generate().unwrap();
    let p = fx.seal("s.safetensors", |o| {
        o.model_key = Some(mk.clone());
        o.signing_key = None;
    });
    let (h, data) = split(&p);
    let mut sw = h.clone();
    let (a, b) = (
        (sw.tensors[0].begin, sw.tensors[0].end),
        (sw.tensors[1].begin, sw.tensors[1].end),
    );
    (sw.tensors[0].begin, sw.tensors[0].end) = b;
    (sw.tensors[1].begin, sw.tensors[1].end) = a;
    // Data order, as a parser will see it (the canonical form follows it).
    sw.tensors.sort_by_key(|t| t.begin);
    let q = fx.path("offsets.safetensors");
    join(&q, &sw, &data);
    assert_kind!(fx.open_and_read_all(&q, &lax(&fx.id)), Error::BadHeaderMac);
    reauth(&mut sw, &mk, None);
    join(&q, &sw, &data);
    let f = SealedFile::open(&q, &lax(&fx.id)).unwrap();
    assert_kind!(read_wiped(&f, "a"), Error::ChunkAuthFailed { .. });
}

/// Chunks swapped inside a tensor, with their tags swapped too and the header
/// re-authenticated: the chunk index in the nonce and AAD still refuses them.
#[test]
fn chunks_swapped_within_a_tensor_are_rejected() {
    let fx = fixture_with(twin_model());
    let mk = ModelKey::generate().unwrap();
    let p = fx.seal("s.safetensors", |o| o.model_key = Some(mk.clone()));
    let (h, mut data) = split(&p);
    let (b, _) = span(&h, "a");
    let (c0, c1) = (b..b + 4096, b + 4096..b + 8192);
    let tmp = data[c0.clone()].to_vec();
    data.copy_within(c1.clone(), c0.start);
    data[c1].copy_from_slice(&tmp);
    let q = fx.path("q.safetensors");
    join(&q, &h, &data);
    let f = fx.open(&q).unwrap();
    assert_kind!(
        read_wiped(&f, "a"),
        Error::ChunkAuthFailed { chunk: 0 | 1, .. }
    );
    let mut t = tags(&h, "a");
    let tag0 = t[..16].to_vec();
    t.copy_within(16..32, 0);
    t[16..32].copy_from_slice(&tag0);
    let mut h2 = h.clone();
    set_tags(&mut h2, "a", &t);
    join(&q, &h2, &data);
    assert_kind!(fx.open_and_read_all(&q, &fx.opts()), Error::BadSignature);
    reauth(&mut h2, &mk, Some(&fx.signer));
    join(&q, &h2, &data);
    let f = fx.open(&q).unwrap();
    assert_kind!(read_wiped(&f, "a"), Error::ChunkAuthFailed { .. });
    assert_eq!(f.read_tensor("b").unwrap(), fx.model.data("b"));
}

#[test]
fn chunks_swapped_between_tensors_are_rejected() {
    let fx = fixture_with(twin_model());
    let mk = ModelKey::generate().unwrap();
    let p = fx.seal("s.safetensors", |o| o.model_key = Some(mk.clone()));
    let (h, mut data) = split(&p);
    let ((a, _), (b, _)) = (span(&h, "a"), span(&h, "b"));
    let tmp = data[a..a + 4096].to_vec();
    data.copy_within(b..b + 4096, a);
    data[b..b + 4096].copy_from_slice(&tmp);
    let mut ta = tags(&h, "a");
    let mut tb = tags(&h, "b");
    let t = ta[..16].to_vec();
    ta[..16].copy_from_slice(&tb[..16]);
    tb[..16].copy_from_slice(&t);
    let mut h2 = h.clone();
    set_tags(&mut h2, "a", &ta);
    set_tags(&mut h2, "b", &tb);
    reauth(&mut h2, &mk, Some(&fx.signer));
    let q = fx.path("q.safetensors");
    join(&q, &h2, &data);
    let f = fx.open(&q).unwrap();
    assert_kind!(read_wiped(&f, "a"), Error::ChunkAuthFailed { chunk: 0, .. });
    assert_kind!(read_wiped(&f, "b"), Error::ChunkAuthFailed { chunk: 0, .. });
}

#[test]
fn chunks_swapped_between_files_with_one_model_key_are_rejected() {
    let fx = fixture_with(twin_model());
    let mk = ModelKey::generate().unwrap();
    let p1 = fx.seal("one.safetensors", |o| o.model_key = Some(mk.clone()));
    let p2 = fx.seal("two.safetensors", |o| o.model_key = Some(mk.clone()));
    let (h1, d1) = split(&p1);
    let (h2, mut d2) = split(&p2);
    assert_ne!(file_id(&h1), file_id(&h2));
    // Same plaintext, same model key: the ciphertexts still differ.
    assert_ne!(d1, d2);
    let (a, _) = span(&h1, "a");
    d2[a..a + 4096].copy_from_slice(&d1[a..a + 4096]);
    let mut t2 = tags(&h2, "a");
    t2[..16].copy_from_slice(&tags(&h1, "a")[..16]);
    let mut h2b = h2.clone();
    set_tags(&mut h2b, "a", &t2);
    reauth(&mut h2b, &mk, Some(&fx.signer));
    let q = fx.path("q.safetensors");
    join(&q, &h2b, &d2);
    let f = fx.open(&q).unwrap();
    assert_kind!(read_wiped(&f, "a"), Error::ChunkAuthFailed { chunk: 0, .. });
    // A whole data buffer moved under another file's header fails too.
    join(&q, &h2, &d1);
    let f = fx.open(&q).unwrap();
    assert_kind!(read_wiped(&f, "a"), Error::ChunkAuthFailed { .. });
    assert_kind!(read_wiped(&f, "b"), Error::ChunkAuthFailed { .. });
}

#[test]
fn truncated_and_extended_files_are_rejected() {
    let fx = Fixture::new();
    let p = fx.seal("s.safetensors", |_| {});
    let raw = std::fs::read(&p).unwrap();
    let q = fx.path("q.safetensors");
    for cut in [1, 7, 4096, raw.len() - 8, raw.len() - 1] {
        std::fs::write(&q, &raw[..raw.len() - cut]).unwrap();
        assert_kind!(
            fx.open_and_read_all(&q, &fx.opts()),
            Error::InvalidContainer(_)
        );
    }
    for extra in [1usize, 8, 4096] {
        let mut r = raw.clone();
        r.extend(std::iter::repeat_n(0u8, extra));
        std::fs::write(&q, &r).unwrap();
        assert_kind!(
            fx.open_and_read_all(&q, &fx.opts()),
            Error::InvalidContainer(_)
        );
    }
}

/// A tensor cut short with a consistent, re-authenticated header (shape,
/// offsets and tags all shortened): the chunk count in the AAD refuses it.
#[test]
fn truncated_tensor_with_rewritten_header_is_rejected() {
    let fx = fixture_with(twin_model());
    let mk = ModelKey::generate().unwrap();
    let p = fx.seal("s.safetensors", |o| o.model_key = Some(mk.clone()));
    let (h, data) = split(&p);
    // Drop the last chunk of "b" (the last tensor).
    let mut h2 = h.clone();
    let tb = h2.tensors.iter().position(|t| t.name == "b").unwrap();
    assert_eq!(tb, 1);
    h2.tensors[tb].shape = vec![2048];
    h2.tensors[tb].end -= 4096;
    let t = tags(&h, "b");
    set_tags(&mut h2, "b", &t[..32]);
    reauth(&mut h2, &mk, Some(&fx.signer));
    let q = fx.path("q.safetensors");
    join(&q, &h2, &data[..data.len() - 4096]);
    let f = fx.open(&q).unwrap();
    assert_kind!(read_wiped(&f, "b"), Error::ChunkAuthFailed { .. });
    assert_eq!(f.read_tensor("a").unwrap(), fx.model.data("a"));
}

#[test]
fn edited_shape_dtype_and_offsets_are_rejected() {
    let fx = Fixture::new();
    let mk = ModelKey::generate().unwrap();
    let signed = fx.seal("signed.safetensors", |o| o.model_key = Some(mk.clone()));
    let unsigned = fx.seal("unsigned.safetensors", |o| {
        o.model_key = Some(mk.clone());
        o.signing_key = None;
    });
    type Edit = fn(&mut Header);
    let edits: [(&str, Edit); 4] = [
        ("shape", |h| {
            let t = h
                .tensors
                .iter_mut()
                .find(|t| t.name == "embed.weight")
                .unwrap();
            t.shape = vec![300, 64];
        }),
        ("rank", |h| {
            let t = h
                .tensors
                .iter_mut()
                .find(|t| t.name == "embed.weight")
                .unwrap();
            t.shape = vec![64, 300, 1];
        }),
        ("dtype", |h| {
            let t = h
                .tensors
                .iter_mut()
                .find(|t| t.name == "embed.weight")
                .unwrap();
            t.dtype = Dtype::I32;
        }),
        ("dtype-and-shape", |h| {
            let t = h
                .tensors
                .iter_mut()
                .find(|t| t.name == "embed.weight")
                .unwrap();
            t.dtype = Dtype::F16;
            t.shape = vec![64, 600];
        }),
    ];
    let q = fx.path("q.safetensors");
    for (what, edit) in edits {
        for (p, o, signed) in [(&signed, fx.opts(), true), (&unsigned, lax(&fx.id), false)] {
            let (mut h, data) = split(p);
            edit(&mut h);
            join(&q, &h, &data);
            if signed {
                assert_kind!(fx.open_and_read_all(&q, &o), Error::BadSignature);
            } else {
                assert_kind!(fx.open_and_read_all(&q, &o), Error::BadHeaderMac);
            }
            reauth(&mut h, &mk, signed.then_some(&fx.signer));
            join(&q, &h, &data);
            let f = SealedFile::open(&q, &o).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_kind!(
                read_wiped(&f, "embed.weight"),
                Error::ChunkAuthFailed { .. }
            );
        }
    }
    // Offsets inconsistent with dtype and shape are a container error (for
    // offsets exchanged between same-size tensors, see
    // swapped_data_offsets_are_rejected).
    let (mut h, data) = split(&signed);
    h.tensors[0].end += 1;
    h.tensors[1].begin += 1;
    join(&q, &h, &data);
    assert_kind!(
        fx.open_and_read_all(&q, &fx.opts()),
        Error::InvalidContainer(_)
    );
}

#[test]
fn edited_user_metadata_is_rejected() {
    let fx = Fixture::new();
    let signed = fx.seal("signed.safetensors", |_| {});
    let unsigned = fx.seal("unsigned.safetensors", |o| o.signing_key = None);
    type Edit = fn(&mut BTreeMap<String, String>);
    let edits: [Edit; 3] = [
        |m| {
            m.insert("format".into(), "np".into());
        },
        |m| {
            m.insert("extra".into(), "1".into());
        },
        |m| {
            m.remove("format");
        },
    ];
    let q = fx.path("q.safetensors");
    for edit in edits {
        let (mut h, data) = split(&signed);
        edit(meta(&mut h));
        join(&q, &h, &data);
        assert_kind!(fx.open_and_read_all(&q, &fx.opts()), Error::BadSignature);
        assert_kind!(fx.open_and_read_all(&q, &lax(&fx.id)), Error::BadSignature);
        // The header MAC for unsigned files.
        let (mut h, data) = split(&unsigned);
        edit(meta(&mut h));
        join(&q, &h, &data);
        assert_kind!(fx.open_and_read_all(&q, &lax(&fx.id)), Error::BadHeaderMac);
    }
}

/// Each reserved value edited so that it still parses: the exact error.
#[test]
fn edited_reserved_values_are_rejected_with_the_right_error() {
    let fx = Fixture::new();
    let signed = fx.seal("signed.safetensors", |_| {});
    let unsigned = fx.seal("unsigned.safetensors", |o| o.signing_key = None);
    let q = fx.path("q.safetensors");
    let flip_b64 = |s: &str| {
        let mut b = unb64(s);
        b[0] ^= 1;
        b64(&b)
    };
    type Doc = Box<dyn Fn(&mut Header)>;
    let edits: Vec<(&str, Doc)> = vec![
        (
            "seal.model.version",
            Box::new(|h| edit_doc(h, seal::KEY_SEAL, |v| v["model"]["version"] = json!("2"))),
        ),
        (
            "seal.file_id",
            Box::new(move |h| {
                edit_doc(h, seal::KEY_SEAL, |v| {
                    v["file_id"] = json!(flip_b64(v["file_id"].as_str().unwrap()))
                })
            }),
        ),
        (
            "seal.plain_metadata",
            Box::new(|h| edit_doc(h, seal::KEY_SEAL, |v| v["plain_metadata"] = json!(false))),
        ),
        (
            "tensors.tags",
            Box::new(move |h| {
                edit_doc(h, seal::KEY_TENSORS, |v| {
                    let t = v["ids"]["tags"].as_str().unwrap().to_string();
                    v["ids"]["tags"] = json!(flip_b64(&t));
                })
            }),
        ),
        (
            "mac",
            Box::new(move |h| {
                let m = meta(h);
                let f = flip_b64(&m[seal::KEY_MAC]);
                m.insert(seal::KEY_MAC.into(), f);
            }),
        ),
    ];
    for (what, edit) in &edits {
        let (mut h, data) = split(&signed);
        edit(&mut h);
        join(&q, &h, &data);
        let e = fx.open_and_read_all(&q, &fx.opts());
        assert_kind!(e, Error::BadSignature);
        let (mut h, data) = split(&unsigned);
        edit(&mut h);
        join(&q, &h, &data);
        // (A changed file id also changes the MAC key: the MAC fails too.)
        let e = fx.open_and_read_all(&q, &lax(&fx.id));
        let e = assert_kind!(e, Error::BadHeaderMac);
        let _ = (what, e);
    }
    // The signature value itself.
    let (mut h, data) = split(&signed);
    edit_doc(&mut h, seal::KEY_SIGNATURE, |v| {
        v["sig"] = json!(flip_b64(v["sig"].as_str().unwrap()))
    });
    join(&q, &h, &data);
    assert_kind!(fx.open_and_read_all(&q, &fx.opts()), Error::BadSignature);
    assert_kind!(fx.open_and_read_all(&q, &lax(&fx.id)), Error::BadSignature);
    // A slot's wrapped key: the signature catches it first; unsigned, the
    // slot no longer opens.
    let flip_ct = |h: &mut Header| {
        edit_doc(h, seal::KEY_SLOTS, |v| {
            let ct = v[0]["ct"].as_str().unwrap().to_string();
            v[0]["ct"] = json!(flip_b64(&ct));
        })
    };
    let (mut h, data) = split(&signed);
    flip_ct(&mut h);
    join(&q, &h, &data);
    assert_kind!(fx.open_and_read_all(&q, &fx.opts()), Error::BadSignature);
    let (mut h, data) = split(&unsigned);
    flip_ct(&mut h);
    join(&q, &h, &data);
    assert_kind!(
        fx.open_and_read_all(&q, &lax(&fx.id)),
        Error::NoMatchingKey { .. }
    );
}

// ---- properties 4, 5, 6: signatures, trust and downgrade --------------------------------

#[test]
fn removed_signature_is_refused_by_a_loader_that_trusts_a_signer() {
    let fx = Fixture::new();
    let p = fx.seal("s.safetensors", |_| {});
    let (mut h, data) = split(&p);
    meta(&mut h).remove(seal::KEY_SIGNATURE);
    let q = fx.path("q.safetensors");
    join(&q, &h, &data);
    assert_kind!(
        fx.open_and_read_all(&q, &fx.opts()),
        Error::NotSigned {
            found: "sealed",
            trusted: 1
        }
    );
    let req = OpenOptions {
        require_signed: true,
        ..lax(&fx.id)
    };
    assert_kind!(
        fx.open_and_read_all(&q, &req),
        Error::NotSigned {
            found: "sealed",
            trusted: 0
        }
    );
    // A loader that trusts nobody accepts it as what it now is: unsigned
    // (the MAC still holds: the signature is not part of it).
    let f = SealedFile::open(&q, &lax(&fx.id)).unwrap();
    assert_eq!(f.authenticity(), &Authenticity::Unsigned);
    fx.open_and_read_all(&q, &lax(&fx.id)).unwrap();

    // Sign-only: the signature is all there is; without it, the metadata is malformed.
    let s = fx.seal("signonly.safetensors", |o| o.recipients.clear());
    let (mut h, data) = split(&s);
    meta(&mut h).remove(seal::KEY_SIGNATURE);
    join(&q, &h, &data);
    assert_kind!(
        fx.open_and_read_all(&q, &OpenOptions::default()),
        Error::InvalidSealMetadata { key, .. } if key == seal::KEY_SIGNATURE
    );
}

#[test]
fn signature_by_another_key_is_untrusted() {
    let fx = Fixture::new();
    let attacker = SigningKey::generate().unwrap();
    for (name, tweak) in [
        ("enc", (|_: &mut SealOptions| {}) as fn(&mut SealOptions)),
        ("signonly", |o: &mut SealOptions| o.recipients.clear()),
    ] {
        let p = fx.seal(&format!("{name}.safetensors"), tweak);
        let (mut h, data) = split(&p);
        resign(&mut h, &attacker);
        let q = fx.path(&format!("{name}-attacker.safetensors"));
        join(&q, &h, &data);
        let trusting = OpenOptions {
            identities: vec![&fx.id],
            trusted: vec![fx.signer.verifying_key()],
            ..Default::default()
        };
        assert_kind!(
            fx.open_and_read_all(&q, &trusting),
            Error::UntrustedSigner { signer, trusted: 1 } if *signer == attacker.verifying_key().to_string()
        );
        // A loader that trusts nobody opens it, and says who signed: unverified.
        let f = SealedFile::open(&q, &lax(&fx.id)).unwrap();
        assert_eq!(
            f.authenticity(),
            &Authenticity::UntrustedSigner(attacker.verifying_key())
        );
        // ... unless told to require a signature.
        let req = OpenOptions {
            require_signed: true,
            ..lax(&fx.id)
        };
        assert_kind!(
            fx.open_and_read_all(&q, &req),
            Error::UntrustedSigner { trusted: 0, .. }
        );
        // The attacker's signature under the real signer's name: bad signature.
        edit_doc(&mut h, seal::KEY_SIGNATURE, |v| {
            v["key"] = json!(fx.signer.verifying_key().to_string())
        });
        join(&q, &h, &data);
        assert_kind!(fx.open_and_read_all(&q, &trusting), Error::BadSignature);
        assert_kind!(fx.open_and_read_all(&q, &lax(&fx.id)), Error::BadSignature);
        // An unknown algorithm is refused.
        edit_doc(&mut h, seal::KEY_SIGNATURE, |v| v["alg"] = json!("none"));
        join(&q, &h, &data);
        assert_kind!(
            fx.open_and_read_all(&q, &lax(&fx.id)),
            Error::InvalidSealMetadata { .. }
        );
    }
}

#[test]
fn stripped_seal_metadata_is_a_downgrade() {
    let fx = Fixture::new();
    let p = fx.seal("s.safetensors", |_| {});
    let (mut h, data) = split(&p);
    meta(&mut h).retain(|k, _| !k.starts_with(seal::PREFIX));
    let q = fx.path("q.safetensors");
    join(&q, &h, &data);
    let enc = OpenOptions {
        require_encrypted: true,
        ..lax(&fx.id)
    };
    assert_kind!(
        fx.open_and_read_all(&q, &enc),
        Error::NotSealed { found: "plain" }
    );
    let trusting = OpenOptions {
        trusted: vec![fx.signer.verifying_key()],
        ..lax(&fx.id)
    };
    assert_kind!(
        fx.open_and_read_all(&q, &trusting),
        Error::NotSigned {
            found: "plain",
            trusted: 1
        }
    );
    let req = OpenOptions {
        require_signed: true,
        ..lax(&fx.id)
    };
    assert_kind!(
        fx.open_and_read_all(&q, &req),
        Error::NotSigned { found: "plain", .. }
    );
    // The lax loader sees a plain file and says so.
    let f = SealedFile::open(&q, &lax(&fx.id)).unwrap();
    assert_eq!(f.authenticity(), &Authenticity::Plain);
    // Also with the metadata map removed entirely, and with a plain file.
    h.metadata = None;
    join(&q, &h, &data);
    assert_kind!(
        fx.open_and_read_all(&q, &fx.opts()),
        Error::NotSealed { .. }
    );
    assert_kind!(
        fx.open_and_read_all(&fx.plain, &trusting),
        Error::NotSigned { found: "plain", .. }
    );
}

#[test]
fn unsigned_sealed_file_is_refused_by_a_loader_that_trusts_a_signer() {
    let fx = Fixture::new();
    let p = fx.seal("s.safetensors", |o| o.signing_key = None);
    assert_kind!(
        fx.open_and_read_all(&p, &fx.opts()),
        Error::NotSigned {
            found: "sealed",
            trusted: 1
        }
    );
    fx.open_and_read_all(&p, &lax(&fx.id)).unwrap();
}

#[test]
fn sign_only_file_is_refused_when_encryption_is_required() {
    let fx = Fixture::new();
    let p = fx.seal("s.safetensors", |o| o.recipients.clear());
    assert_kind!(
        fx.open_and_read_all(&p, &fx.opts()),
        Error::NotSealed {
            found: "signed but not encrypted"
        }
    );
}

// ---- keys ---------------------------------------------------------------------------------

fn weak() -> Argon2Params {
    Argon2Params {
        memory_kib: 64,
        iterations: 1,
        lanes: 1,
    }
}

#[test]
fn wrong_keys_do_not_open() {
    let fx = Fixture::new();
    let sym = SymmetricKey::generate(Some("team".into())).unwrap();
    let p = fx.seal("s.safetensors", |o| {
        o.recipients = vec![
            Box::new(fx.id.recipient()),
            Box::new(sym.clone()),
            Box::new(Passphrase::with_params("right horse", weak())),
        ]
    });
    let other = X25519Identity::generate().unwrap();
    let same_kid = SymmetricKey::new("team", [9u8; 32]).unwrap();
    let other_kid = SymmetricKey::new("other", [9u8; 32]).unwrap();
    let wrong_pass = Passphrase::with_params("wrong horse", weak());
    let ids: [&dyn Identity; 4] = [&other, &same_kid, &other_kid, &wrong_pass];
    for id in ids {
        let o = OpenOptions {
            identities: vec![id],
            trusted: vec![fx.signer.verifying_key()],
            ..Default::default()
        };
        assert_kind!(fx.open_and_read_all(&p, &o), Error::NoMatchingKey { .. });
    }
    // No identity at all.
    let o = OpenOptions {
        trusted: vec![fx.signer.verifying_key()],
        ..Default::default()
    };
    let e = assert_kind!(
        fx.open_and_read_all(&p, &o),
        Error::NoMatchingKey { given: 0, .. }
    );
    let msg = e.to_string();
    assert!(msg.contains("passphrase") && msg.contains("team"), "{msg}");
    // All together: none opens.
    let o = OpenOptions {
        identities: ids.to_vec(),
        ..Default::default()
    };
    assert_kind!(fx.open_and_read_all(&p, &o), Error::NoMatchingKey { .. });
    // The right ones do.
    for id in [
        &fx.id as &dyn Identity,
        &sym,
        &Passphrase::with_params("right horse", weak()),
    ] {
        fx.open_and_read_all(&p, &lax(id)).unwrap();
    }
    // Locked (inspection) open: the header is checked, encrypted tensors stay closed.
    let locked = OpenOptions {
        trusted: vec![fx.signer.verifying_key()],
        locked: true,
        ..Default::default()
    };
    let f = SealedFile::open(&p, &locked).unwrap();
    assert_kind!(read_wiped(&f, "embed.weight"), Error::NoMatchingKey { .. });
}

#[test]
fn a_model_key_of_another_model_does_not_open() {
    let fx = Fixture::new();
    let p = fx.seal("s.safetensors", |_| {});
    let o = OpenOptions {
        model_key: Some(ModelKey::generate().unwrap()),
        ..fx.opts()
    };
    // Its id does not match, so the slots are tried (and the identity opens).
    fx.open_and_read_all(&p, &o).unwrap();
    let o = OpenOptions {
        identities: vec![],
        ..o
    };
    assert_kind!(fx.open_and_read_all(&p, &o), Error::NoMatchingKey { .. });
}

#[test]
fn unknown_format_version_is_refused() {
    let fx = Fixture::new();
    let p = fx.seal("s.safetensors", |_| {});
    let q = fx.path("q.safetensors");
    for v in [0u64, 2, 1000] {
        let (mut h, data) = split(&p);
        edit_doc(&mut h, seal::KEY_SEAL, |d| d["v"] = json!(v));
        resign(&mut h, &fx.signer);
        join(&q, &h, &data);
        assert_kind!(
            fx.open_and_read_all(&q, &fx.opts()),
            Error::UnsupportedVersion(got) if *got == v
        );
    }
    let (mut h, data) = split(&p);
    edit_doc(&mut h, seal::KEY_SEAL, |d| d["v"] = json!("1"));
    join(&q, &h, &data);
    assert_kind!(
        fx.open_and_read_all(&q, &fx.opts()),
        Error::InvalidSealMetadata { .. }
    );
}

#[test]
fn unknown_reserved_key_is_refused() {
    let fx = Fixture::new();
    let mk = ModelKey::generate().unwrap();
    let p = fx.seal("s.safetensors", |o| o.model_key = Some(mk.clone()));
    let (mut h, data) = split(&p);
    meta(&mut h).insert("sealtensors.foo".into(), "{}".into());
    reauth(&mut h, &mk, Some(&fx.signer));
    let q = fx.path("q.safetensors");
    join(&q, &h, &data);
    assert_kind!(
        fx.open_and_read_all(&q, &fx.opts()),
        Error::InvalidSealMetadata { key, .. } if key == "sealtensors.foo"
    );
    assert_kind!(
        fx.open_and_read_all(&q, &lax(&fx.id)),
        Error::InvalidSealMetadata { key, .. } if key == "sealtensors.foo"
    );
}

#[test]
fn policy_is_refused_fail_closed() {
    let fx = Fixture::new();
    let mk = ModelKey::generate().unwrap();
    let p = fx.seal("s.safetensors", |o| o.model_key = Some(mk.clone()));
    let (mut h, data) = split(&p);
    meta(&mut h).insert(seal::KEY_POLICY.into(), "package x\nallow := true".into());
    reauth(&mut h, &mk, Some(&fx.signer));
    let q = fx.path("q.safetensors");
    join(&q, &h, &data);
    assert_kind!(
        fx.open_and_read_all(&q, &fx.opts()),
        Error::PolicyUnsupported
    );
}

#[test]
fn unknown_slot_type_is_skipped_and_listed() {
    let fx = Fixture::new();
    let mk = ModelKey::generate().unwrap();
    let p = fx.seal("s.safetensors", |o| o.model_key = Some(mk.clone()));
    let (mut h, data) = split(&p);
    edit_doc(&mut h, seal::KEY_SLOTS, |v| {
        v.as_array_mut().unwrap().insert(
            0,
            json!({"type": "kms-broker", "url": "https://keys.example/x", "ct": "AAAA"}),
        )
    });
    reauth(&mut h, &mk, Some(&fx.signer));
    let q = fx.path("q.safetensors");
    join(&q, &h, &data);
    fx.open_and_read_all(&q, &fx.opts()).unwrap();
    let f = fx.open(&q).unwrap();
    assert!(matches!(
        &f.seal().unwrap().slots[0],
        Slot::Unknown { kind, .. } if kind == "kms-broker"
    ));
    let other = X25519Identity::generate().unwrap();
    let o = OpenOptions {
        identities: vec![&other],
        ..fx.opts()
    };
    let e = assert_kind!(
        fx.open_and_read_all(&q, &o),
        Error::NoMatchingKey { slots, .. } if slots.contains("kms-broker")
    );
    assert!(e.to_string().contains("kms-broker"));
    // A slot without a type is malformed.
    let (mut h, data) = split(&q);
    edit_doc(&mut h, seal::KEY_SLOTS, |v| {
        v.as_array_mut().unwrap().push(json!({"url": "x"}))
    });
    reauth(&mut h, &mk, Some(&fx.signer));
    join(&q, &h, &data);
    assert_kind!(
        fx.open_and_read_all(&q, &fx.opts()),
        Error::InvalidSealMetadata { .. }
    );
}

#[test]
fn hostile_argon2_slot_is_refused_fast() {
    let fx = Fixture::new();
    let p = fx.seal("s.safetensors", |o| {
        o.recipients = vec![Box::new(Passphrase::with_params("pw", weak()))];
        o.signing_key = None;
    });
    let q = fx.path("q.safetensors");
    for (m, t, pl, what) in [
        (u32::MAX, 1u32, 1u32, "argon2 memory (KiB)"),
        (4 * 1024 * 1024, 1, 1, "argon2 memory (KiB)"),
        (64, u32::MAX, 1, "argon2 iterations"),
        (64, 1, 1 << 20, "argon2 lanes"),
    ] {
        let (mut h, data) = split(&p);
        edit_doc(&mut h, seal::KEY_SLOTS, |v| {
            v[0]["m"] = json!(m);
            v[0]["t"] = json!(t);
            v[0]["p"] = json!(pl);
        });
        join(&q, &h, &data);
        let start = Instant::now();
        let pass = Passphrase::with_params("pw", weak());
        assert_kind!(
            fx.open_and_read_all(&q, &lax(&pass)),
            Error::ExcessiveWork { what: w, .. } if *w == what
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "took {:?}",
            start.elapsed()
        );
    }
    // Degenerate parameters are an error, not a panic.
    for (m, t, pl) in [(0u32, 1u32, 1u32), (64, 0, 1), (64, 1, 0)] {
        let (mut h, data) = split(&p);
        edit_doc(&mut h, seal::KEY_SLOTS, |v| {
            v[0]["m"] = json!(m);
            v[0]["t"] = json!(t);
            v[0]["p"] = json!(pl);
        });
        join(&q, &h, &data);
        let pass = Passphrase::with_params("pw", weak());
        assert_kind!(fx.open_and_read_all(&q, &lax(&pass)), Error::InvalidKey(_));
    }
}

#[test]
fn expiry_is_enforced() {
    let fx = Fixture::new();
    let p = fx.seal("s.safetensors", |o| o.expires = Some(1_000_000));
    let at = |now| OpenOptions {
        now: Some(now),
        ..fx.opts()
    };
    assert_kind!(
        fx.open_and_read_all(&p, &at(2_000_000)),
        Error::Expired {
            expires: 1_000_000,
            now: 2_000_000
        }
    );
    assert_kind!(
        fx.open_and_read_all(&p, &at(1_000_000)),
        Error::Expired { .. }
    );
    fx.open_and_read_all(&p, &at(999_999)).unwrap();
    // With the real clock: long past.
    assert_kind!(fx.open_and_read_all(&p, &fx.opts()), Error::Expired { .. });
    // In the future.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let p2 = fx.seal("future.safetensors", |o| o.expires = Some(now + 3600));
    fx.open_and_read_all(&p2, &fx.opts()).unwrap();
    // Removing the expiry breaks the signature (signed) or the MAC (unsigned).
    let (mut h, data) = split(&p);
    edit_doc(&mut h, seal::KEY_SEAL, |v| {
        v["model"].as_object_mut().unwrap().remove("expires");
    });
    let q = fx.path("q.safetensors");
    join(&q, &h, &data);
    assert_kind!(fx.open_and_read_all(&q, &fx.opts()), Error::BadSignature);
    let u = fx.seal("unsigned.safetensors", |o| {
        o.expires = Some(1_000_000);
        o.signing_key = None;
    });
    let (mut h, data) = split(&u);
    edit_doc(&mut h, seal::KEY_SEAL, |v| {
        v["model"]["expires"] = json!(u64::MAX)
    });
    join(&q, &h, &data);
    assert_kind!(fx.open_and_read_all(&q, &lax(&fx.id)), Error::BadHeaderMac);
}

#[test]
fn slot_copied_from_another_model_does_not_open() {
    let fx = Fixture::new();
    let a = fx.seal("a.safetensors", |o| o.signing_key = None);
    let b = fx.seal("b.safetensors", |o| o.signing_key = None);
    let (ha, data) = split(&a);
    let (hb, _) = split(&b);
    let q = fx.path("q.safetensors");
    // B's slot (for the same recipient) in A: bound to B's model key id.
    let mut h = ha.clone();
    meta(&mut h).insert(
        seal::KEY_SLOTS.into(),
        hb.metadata.as_ref().unwrap()[seal::KEY_SLOTS].clone(),
    );
    join(&q, &h, &data);
    assert_kind!(
        fx.open_and_read_all(&q, &lax(&fx.id)),
        Error::NoMatchingKey { .. }
    );
    // B's slot and B's model key id: it unwraps B's key, which fails A's MAC.
    let vb: Value = serde_json::from_str(&hb.metadata.as_ref().unwrap()[seal::KEY_SEAL]).unwrap();
    edit_doc(&mut h, seal::KEY_SEAL, |v| v["mk_id"] = vb["mk_id"].clone());
    join(&q, &h, &data);
    assert_kind!(fx.open_and_read_all(&q, &lax(&fx.id)), Error::BadHeaderMac);
    // ... and even with A's slot kept beside it.
    let mut h2 = h.clone();
    edit_doc(&mut h2, seal::KEY_SLOTS, |v| {
        let sa: Value =
            serde_json::from_str(&ha.metadata.as_ref().unwrap()[seal::KEY_SLOTS]).unwrap();
        v.as_array_mut().unwrap().push(sa[0].clone());
    });
    join(&q, &h2, &data);
    assert_kind!(fx.open_and_read_all(&q, &lax(&fx.id)), Error::BadHeaderMac);
    // A's slots with B's data buffer: the MAC holds (same header), the data does not.
    let (_, data_b) = split(&b);
    join(&q, &ha, &data_b);
    let f = SealedFile::open(&q, &lax(&fx.id)).unwrap();
    assert_kind!(
        read_wiped(&f, "embed.weight"),
        Error::ChunkAuthFailed { .. }
    );
}

// ---- property 9: hostile containers ------------------------------------------------------

/// Tensors whose offsets sum past 2^64: the length check must not overflow
/// (a panic in debug builds; a wrapped sum passing the check in release).
#[test]
fn overflowing_offsets_are_a_container_error() {
    let n: u64 = (1u64 << 61) - 1;
    let mut entries = Vec::new();
    for i in 0..8u64 {
        entries.push(format!(
            "\"t{i}\":{{\"dtype\":\"U8\",\"shape\":[{n}],\"data_offsets\":[{},{}]}}",
            i * n,
            (i + 1) * n
        ));
    }
    let mut json = format!("{{{}}}", entries.join(",")).into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut buf = (json.len() as u64).to_le_bytes().to_vec();
    buf.extend_from_slice(&json);
    // The wrapped total (8 + N + 8n - 2^64) is what a buggy check would compare with.
    assert!(matches!(
        Header::parse_buffer(&buf),
        Err(Error::InvalidContainer(_))
    ));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.safetensors");
    std::fs::write(&p, &buf).unwrap();
    assert_kind!(
        SealedFile::open(&p, &OpenOptions::default()),
        Error::InvalidContainer(_)
    );
}

#[test]
fn hostile_container_headers_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.safetensors");
    let file = |json: &str, data: usize| {
        let mut j = json.as_bytes().to_vec();
        j.resize(j.len().next_multiple_of(8), b' ');
        let mut b = (j.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(&j);
        b.extend(std::iter::repeat_n(0u8, data));
        std::fs::write(&p, &b).unwrap();
    };
    let open = || SealedFile::open(&p, &OpenOptions::default()).map(|_| ());
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    file(
        &format!("{{\"a\":{{\"dtype\":\"U8\",\"shape\":{deep},\"data_offsets\":[0,1]}}}}"),
        1,
    );
    assert_kind!(open(), Error::InvalidContainer(_));
    let rank = vec!["1"; 65].join(",");
    file(
        &format!("{{\"a\":{{\"dtype\":\"U8\",\"shape\":[{rank}],\"data_offsets\":[0,1]}}}}"),
        1,
    );
    assert_kind!(
        open(),
        Error::LimitExceeded {
            what: "tensor rank",
            ..
        }
    );
    let name = "n".repeat(4097);
    file(
        &format!("{{\"{name}\":{{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}}}"),
        1,
    );
    assert_kind!(
        open(),
        Error::LimitExceeded {
            what: "tensor name length",
            ..
        }
    );
    file(
        r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,0]}}"#,
        1,
    );
    assert_kind!(open(), Error::InvalidContainer(_));
    file(
        r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}} x"#,
        1,
    );
    assert_kind!(open(), Error::InvalidContainer(_));
    file(r#"{"__metadata__":{"k":1}}"#, 0);
    assert_kind!(open(), Error::InvalidContainer(_));
    file("\u{feff}{}", 0);
    assert_kind!(open(), Error::InvalidContainer(_));
    // Deeply nested JSON inside a reserved value.
    let doc = serde_json::to_string(&deep).unwrap();
    file(
        &format!("{{\"__metadata__\":{{\"sealtensors.seal\":{doc}}}}}"),
        0,
    );
    assert_kind!(open(), Error::InvalidSealMetadata { .. });
    // Empty and short files.
    std::fs::write(&p, b"").unwrap();
    assert_kind!(open(), Error::InvalidContainer(_));
    std::fs::write(&p, 16u64.to_le_bytes()).unwrap();
    assert_kind!(open(), Error::InvalidContainer(_));
}

#[test]
fn hostile_seal_metadata_is_a_typed_error() {
    let fx = Fixture::new();
    let mk = ModelKey::generate().unwrap();
    let p = fx.seal("s.safetensors", |o| o.model_key = Some(mk.clone()));
    let q = fx.path("q.safetensors");
    type Edit = Box<dyn Fn(&mut Header)>;
    let edits: Vec<(Edit, &str)> = vec![
        (
            Box::new(|h| edit_doc(h, seal::KEY_SEAL, |v| v["chunk_size"] = json!(1))),
            "seal",
        ),
        (
            Box::new(|h| edit_doc(h, seal::KEY_SEAL, |v| v["chunk_size"] = json!(u64::MAX))),
            "seal",
        ),
        (
            Box::new(|h| edit_doc(h, seal::KEY_SEAL, |v| v["aead"] = json!("rot13"))),
            "seal",
        ),
        (
            Box::new(|h| edit_doc(h, seal::KEY_SEAL, |v| v["extra"] = json!(1))),
            "seal",
        ),
        (
            Box::new(|h| edit_doc(h, seal::KEY_SEAL, |v| v["mode"] = json!("signed"))),
            "seal",
        ),
        (
            Box::new(|h| edit_doc(h, seal::KEY_TENSORS, |v| v["ids"]["sha256"] = json!("AAAA"))),
            "tensors",
        ),
        (
            Box::new(|h| {
                edit_doc(h, seal::KEY_TENSORS, |v| {
                    v.as_object_mut().unwrap().remove("ids");
                })
            }),
            "tensors",
        ),
        (
            Box::new(|h| {
                edit_doc(h, seal::KEY_TENSORS, |v| {
                    let t = v["ids"]["tags"].as_str().unwrap();
                    v["ids"]["tags"] = json!(format!("{t}{t}"))
                })
            }),
            "tensors",
        ),
        (
            Box::new(|h| {
                meta(h).insert(seal::KEY_SLOTS.into(), "[]".into());
            }),
            "slots",
        ),
        (
            Box::new(|h| {
                meta(h).insert(seal::KEY_SLOTS.into(), "{\"type\":\"x25519\"}".into());
            }),
            "slots",
        ),
        (
            Box::new(|h| edit_doc(h, seal::KEY_SLOTS, |v| v[0]["rid"] = json!(12))),
            "slots",
        ),
        (
            Box::new(|h| {
                meta(h).insert(
                    seal::KEY_TENSORS.into(),
                    r#"{"ids":{"tags":"AAAA"},"ids":{"tags":"AAAA"}}"#.into(),
                );
            }),
            "tensors",
        ),
    ];
    for (edit, which) in &edits {
        let (mut h, data) = split(&p);
        edit(&mut h);
        reauth(&mut h, &mk, Some(&fx.signer));
        join(&q, &h, &data);
        assert_kind!(
            fx.open_and_read_all(&q, &fx.opts()),
            Error::InvalidSealMetadata { key, .. } if key == &format!("sealtensors.{which}")
        );
    }
    // A MAC of the wrong length.
    let (mut h, data) = split(&p);
    meta(&mut h).insert(seal::KEY_MAC.into(), "AAAA".into());
    resign(&mut h, &fx.signer);
    join(&q, &h, &data);
    assert_kind!(
        fx.open_and_read_all(&q, &fx.opts()),
        Error::InvalidSealMetadata { key, .. } if key == seal::KEY_MAC
    );
    // Too many slots.
    let (mut h, data) = split(&p);
    edit_doc(&mut h, seal::KEY_SLOTS, |v| {
        let s = v[0].clone();
        *v = Value::Array(vec![s; 65]);
    });
    reauth(&mut h, &mk, Some(&fx.signer));
    join(&q, &h, &data);
    assert_kind!(
        fx.open_and_read_all(&q, &fx.opts()),
        Error::LimitExceeded {
            what: "key slots",
            ..
        }
    );
}

// ---- property 10: rotation ------------------------------------------------------------------

fn data_of(p: &Path) -> Vec<u8> {
    split(p).1
}

#[test]
fn rekey_adds_and_removes_recipients_without_touching_data() {
    let fx = Fixture::new();
    let p = fx.seal("s.safetensors", |_| {});
    let before = data_of(&p);
    let newcomer = X25519Identity::generate().unwrap();
    assert_kind!(
        fx.open_and_read_all(
            &p,
            &OpenOptions {
                identities: vec![&newcomer],
                ..fx.opts()
            }
        ),
        Error::NoMatchingKey { .. }
    );
    let out = fx.path("added.safetensors");
    rekey_file(
        &p,
        Some(&out),
        &RekeyOptions {
            open: fx.opts(),
            add: vec![Box::new(newcomer.recipient())],
            signing_key: Some(fx.signer.try_clone().unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(data_of(&out), before, "rekey re-encrypted the data");
    let nc = OpenOptions {
        identities: vec![&newcomer],
        ..fx.opts()
    };
    fx.open_and_read_all(&out, &nc).unwrap();
    fx.open_and_read_all(&out, &fx.opts()).unwrap();

    // Remove the original recipient, in place.
    rekey_file(
        &out,
        None,
        &RekeyOptions {
            open: nc.clone(),
            remove: vec![Box::new(fx.id.recipient())],
            signing_key: Some(fx.signer.try_clone().unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(data_of(&out), before);
    assert_kind!(
        fx.open_and_read_all(&out, &fx.opts()),
        Error::NoMatchingKey { .. }
    );
    fx.open_and_read_all(&out, &nc).unwrap();

    // Refuse to remove the last recipient.
    assert_kind!(
        rekey_file(
            &out,
            None,
            &RekeyOptions {
                open: nc.clone(),
                remove: vec![Box::new(newcomer.recipient())],
                signing_key: Some(fx.signer.try_clone().unwrap()),
                ..Default::default()
            },
        ),
        Error::Config(_)
    );
    fx.open_and_read_all(&out, &nc).unwrap();
    // Removing a recipient that has no slot is an error, not a no-op.
    assert_kind!(
        rekey_file(
            &out,
            None,
            &RekeyOptions {
                open: nc.clone(),
                remove: vec![Box::new(fx.id.recipient())],
                signing_key: Some(fx.signer.try_clone().unwrap()),
                ..Default::default()
            },
        ),
        Error::Config(_)
    );
}

#[test]
fn rekey_rotates_the_signer() {
    let fx = Fixture::new();
    let p = fx.seal("s.safetensors", |_| {});
    let before = data_of(&p);
    let new_signer = SigningKey::generate().unwrap();
    // Refuses to drop a signature silently.
    assert_kind!(
        rekey_file(
            &p,
            None,
            &RekeyOptions {
                open: fx.opts(),
                ..Default::default()
            },
        ),
        Error::Config(_)
    );
    fx.open_and_read_all(&p, &fx.opts()).unwrap();
    rekey_file(
        &p,
        None,
        &RekeyOptions {
            open: fx.opts(),
            signing_key: Some(new_signer.try_clone().unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(data_of(&p), before);
    assert_kind!(
        fx.open_and_read_all(&p, &fx.opts()),
        Error::UntrustedSigner { .. }
    );
    let new_trust = OpenOptions {
        trusted: vec![new_signer.verifying_key()],
        ..fx.opts()
    };
    fx.open_and_read_all(&p, &new_trust).unwrap();
    assert_eq!(
        SealedFile::open(&p, &new_trust).unwrap().authenticity(),
        &Authenticity::Trusted(new_signer.verifying_key())
    );
    // Dropping the signature only when asked.
    rekey_file(
        &p,
        None,
        &RekeyOptions {
            open: new_trust.clone(),
            drop_signature: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_kind!(
        fx.open_and_read_all(&p, &new_trust),
        Error::NotSigned { .. }
    );
    fx.open_and_read_all(&p, &lax(&fx.id)).unwrap();

    // Sign-only files rotate their signer too.
    let s = fx.seal("signonly.safetensors", |o| o.recipients.clear());
    let before = data_of(&s);
    let t_old = OpenOptions {
        trusted: vec![fx.signer.verifying_key()],
        ..Default::default()
    };
    rekey_file(
        &s,
        None,
        &RekeyOptions {
            open: t_old.clone(),
            signing_key: Some(new_signer.try_clone().unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(data_of(&s), before);
    assert_kind!(
        fx.open_and_read_all(&s, &t_old),
        Error::UntrustedSigner { .. }
    );
    let t_new = OpenOptions {
        trusted: vec![new_signer.verifying_key()],
        ..Default::default()
    };
    fx.open_and_read_all(&s, &t_new).unwrap();
    assert_kind!(
        rekey_file(
            &s,
            None,
            &RekeyOptions {
                open: t_new,
                drop_signature: true,
                ..Default::default()
            },
        ),
        Error::Config(_)
    );
}

#[test]
fn rekey_refuses_a_tampered_or_unopenable_file() {
    let fx = Fixture::new();
    let p = fx.seal("s.safetensors", |_| {});
    let (mut h, data) = split(&p);
    meta(&mut h).insert("format".into(), "evil".into());
    let q = fx.path("q.safetensors");
    join(&q, &h, &data);
    let attacker = X25519Identity::generate().unwrap();
    assert_kind!(
        rekey_file(
            &q,
            None,
            &RekeyOptions {
                open: fx.opts(),
                add: vec![Box::new(attacker.recipient())],
                signing_key: Some(fx.signer.try_clone().unwrap()),
                ..Default::default()
            },
        ),
        Error::BadSignature
    );
    // Without a key, no recipient can be added.
    let keyless = OpenOptions {
        trusted: vec![fx.signer.verifying_key()],
        locked: true,
        ..Default::default()
    };
    assert_kind!(
        rekey_file(
            &p,
            None,
            &RekeyOptions {
                open: keyless,
                add: vec![Box::new(attacker.recipient())],
                signing_key: Some(fx.signer.try_clone().unwrap()),
                ..Default::default()
            },
        ),
        Error::Config(_)
    );
    assert_kind!(
        fx.open_and_read_all(
            &p,
            &OpenOptions {
                identities: vec![&attacker],
                ..fx.opts()
            }
        ),
        Error::NoMatchingKey { .. }
    );
}

// ---- property 8: secrets ----------------------------------------------------------------------

fn assert_no_secret(text: &str, secret: &[u8]) {
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let dec = format!("{secret:?}");
    for form in [b64(secret), hex, dec, URL_SAFE_NO_PAD.encode(&secret[..12])] {
        assert!(
            !text.contains(&form),
            "{text:?} contains the secret as {form:?}"
        );
    }
}

/// The model key's bytes, recovered from a symmetric slot we hold the key of.
fn model_key_bytes(mk: &ModelKey) -> [u8; 32] {
    let key = [0x42u8; 32];
    let sym = SymmetricKey::new("k", key).unwrap();
    let Slot::Oct { kid, salt, ct } = sym.wrap(mk).unwrap() else {
        panic!("not an oct slot")
    };
    let kek = sealtensors::crypto::hkdf32(
        &key,
        &unb64(&salt),
        &[&b"sealtensors/1 oct slot\0"[..], kid.as_bytes()],
    )
    .unwrap();
    let mut aad = b"sealtensors/1 slot\0oct\0".to_vec();
    aad.extend_from_slice(&mk.id().unwrap());
    *sealtensors::crypto::unwrap_key(&kek, &aad, &unb64(&ct))
        .expect("SPEC §6.2 derivation")
        .expose()
}

#[test]
fn secrets_are_not_printed_by_debug() {
    let secret: [u8; 32] = bytes(77, 32).try_into().unwrap();
    let x = X25519Identity::from_secret_bytes(secret).unwrap();
    assert_no_secret(&format!("{x:?} {x:#?}"), &secret);
    let s = SymmetricKey::new("kid-1", secret).unwrap();
    assert_no_secret(&format!("{s:?} {s:#?}"), &secret);
    let sk = SigningKey::from_seed(secret).unwrap();
    assert_no_secret(&format!("{sk:?} {sk:#?}"), &secret);
    let pass = Passphrase::with_params("hunter2-very-secret", weak());
    let d = format!("{pass:?} {pass:#?}");
    assert!(!d.contains("hunter2"), "{d}");
    let mk = ModelKey::generate().unwrap();
    let mkb = model_key_bytes(&mk);
    assert_no_secret(&format!("{mk:?} {mk:#?}"), &mkb);
}

#[test]
fn secrets_are_never_written_into_sealed_files() {
    let fx = Fixture::new();
    let mk = ModelKey::generate().unwrap();
    let mkb = model_key_bytes(&mk);
    let sym = SymmetricKey::new("k", [0x33; 32]).unwrap();
    let p = fx.seal("s.safetensors", |o| {
        o.model_key = Some(mk.clone());
        o.recipients.push(Box::new(sym.clone()));
        o.recipients.push(Box::new(Passphrase::with_params(
            "hunter2-very-secret",
            weak(),
        )));
    });
    let raw = std::fs::read(&p).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(find(&raw, &mkb).is_none());
    assert_no_secret(&text, &mkb);
    assert_no_secret(&text, &[0x33; 32]);
    assert!(!text.contains("hunter2"));
}

// ---- property 2: nonces ---------------------------------------------------------------------

#[test]
fn many_seals_under_one_model_key_never_share_a_file_id() {
    let fx = fixture_with(Model {
        tensors: vec![("w".into(), Dtype::U8, vec![5000], bytes(5, 5000))],
        metadata: None,
    });
    let mk = ModelKey::generate().unwrap();
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(fx.id.recipient())],
        chunk_size: 4096,
        model_key: Some(mk.clone()),
        ..Default::default()
    })
    .unwrap();
    let mut ids = std::collections::HashSet::new();
    let mut cts = std::collections::HashSet::new();
    for i in 0..50 {
        let out = fx.path(&format!("s{i}.safetensors"));
        sealer.seal_file(&fx.plain, &out).unwrap();
        let (h, data) = split(&out);
        assert!(ids.insert(file_id(&h)), "file_id repeated after {i} seals");
        // Same plaintext, same model key, same chunk index: a different
        // ciphertext every time, so no (key, nonce) pair was reused.
        assert!(cts.insert(data[..16].to_vec()));
        fx.open_and_read_all(&out, &lax(&fx.id)).unwrap();
    }
}

/// A slot whose JSON repeats a field: parsers that keep the first and the
/// last duplicate would read different slots from the same signed bytes, so
/// the slot must be refused, as duplicate keys are everywhere else.
#[test]
fn slot_with_duplicate_fields_is_refused() {
    let fx = Fixture::new();
    let mk = ModelKey::generate().unwrap();
    let p = fx.seal("s.safetensors", |o| o.model_key = Some(mk.clone()));
    let (mut h, data) = split(&p);
    let slots = h.metadata.as_ref().unwrap()[seal::KEY_SLOTS].clone();
    // [{..,"type":"x25519"}] -> [{"type":"kms",..,"type":"x25519"}]
    let dup = slots.replacen("[{", "[{\"type\":\"kms\",", 1);
    assert_ne!(dup, slots);
    meta(&mut h).insert(seal::KEY_SLOTS.into(), dup);
    reauth(&mut h, &mk, Some(&fx.signer));
    let q = fx.path("q.safetensors");
    join(&q, &h, &data);
    let e = assert_kind!(
        fx.open_and_read_all(&q, &fx.opts()),
        Error::InvalidSealMetadata { key, .. } if key == seal::KEY_SLOTS
    );
    assert!(e.to_string().contains("duplicate"), "{e}");
}

/// Property 6 at save time: a misconfiguration is an error, never a weaker file.
#[test]
fn misconfigured_seal_is_an_error_not_a_weaker_file() {
    let fx = Fixture::new();
    let id = X25519Identity::generate().unwrap();
    let attempts: Vec<(&str, SealOptions)> = vec![
        ("no key material", SealOptions::default()),
        (
            "pattern matching nothing",
            SealOptions {
                recipients: vec![Box::new(id.recipient())],
                encrypt: Some(vec!["no.such.*".into()]),
                ..Default::default()
            },
        ),
        (
            "empty pattern list",
            SealOptions {
                recipients: vec![Box::new(id.recipient())],
                encrypt: Some(vec![]),
                ..Default::default()
            },
        ),
        (
            "bad pattern",
            SealOptions {
                recipients: vec![Box::new(id.recipient())],
                encrypt: Some(vec!["[".into()]),
                ..Default::default()
            },
        ),
        (
            "patterns without recipients",
            SealOptions {
                signing_key: Some(fx.signer.try_clone().unwrap()),
                encrypt: Some(vec!["*".into()]),
                ..Default::default()
            },
        ),
        (
            "chunk too small",
            SealOptions {
                recipients: vec![Box::new(id.recipient())],
                chunk_size: 4095,
                ..Default::default()
            },
        ),
        (
            "empty passphrase",
            SealOptions {
                recipients: vec![Box::new(Passphrase::with_params("", weak()))],
                ..Default::default()
            },
        ),
    ];
    for (what, o) in attempts {
        let out = fx.path("out.safetensors");
        let r = Sealer::new(o).and_then(|s| s.seal_file(&fx.plain, &out));
        let e = assert_kind!(r, Error::Config(_));
        assert!(!out.exists(), "{what}: an output was left behind ({e})");
    }
    // Metadata under the reserved prefix is refused, not silently dropped.
    let dir = fx.path("reserved.safetensors");
    let m = Model {
        tensors: vec![("w".into(), Dtype::U8, vec![4], vec![1, 2, 3, 4])],
        metadata: Some([("sealtensors.seal".to_string(), "{}".to_string())].into()),
    };
    m.write(&dir);
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(id.recipient())],
        ..Default::default()
    })
    .unwrap();
    // The input now looks sealed (it has a reserved key): refused either way.
    assert_kind!(
        sealer.seal_file(&dir, &fx.path("o2.safetensors")),
        Error::Config(_)
    );
}
