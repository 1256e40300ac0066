//! The `p256` key slot (SPEC §6.7), the slot hardware keys open: a round trip
//! beside X25519, and attacks on the slot itself (a forged or malformed
//! ephemeral key, a relabelled slot, swapped wraps, the wrong key).
//!
//! The files are sealed unsigned so that a tampered slot reaches the slot
//! code: the header MAC needs the model key, so it is checked only after a
//! slot opened (SPEC §8.1), and a slot that does not open must fail by
//! itself.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use sealtensors::keys::{
    load_identity, load_recipient, KeyFile, P256Identity, P256Recipient, Recipient,
};
use sealtensors::rekey::{rekey_file, RekeyOptions};
use sealtensors::seal;
use sealtensors::{Error, Header, OpenOptions, SealOptions, SealedFile, Sealer};
use serde_json::Value;

fn seal_to(fx: &Fixture, name: &str, recipients: Vec<Box<dyn Recipient>>) -> std::path::PathBuf {
    let out = fx.path(name);
    Sealer::new(SealOptions {
        recipients,
        chunk_size: 4096,
        model_id: "acme/test".into(),
        model_version: "1".into(),
        ..Default::default()
    })
    .unwrap()
    .seal_file(&fx.plain, &out)
    .unwrap();
    out
}

fn open_with(p: &Path, id: &dyn sealtensors::keys::Identity) -> sealtensors::Result<SealedFile> {
    SealedFile::open(
        p,
        &OpenOptions {
            identities: vec![id],
            require_encrypted: true,
            ..Default::default()
        },
    )
}

fn read_all(fx: &Fixture, f: &SealedFile) {
    for t in f.tensors().to_vec() {
        assert_eq!(f.read_tensor(&t.name).unwrap(), fx.model.data(&t.name));
    }
}

/// Edit the slot array of a file in place (no re-authentication: the slots
/// are what is attacked, and an unsigned file's MAC is checked only after a
/// slot opened).
fn edit_slots(p: &Path, edit: impl FnOnce(&mut Vec<Value>)) {
    let raw = std::fs::read(p).unwrap();
    let mut h = Header::parse_buffer(&raw).unwrap();
    let data = raw[h.data_start() as usize..].to_vec();
    let meta: &mut BTreeMap<String, String> = h.metadata.as_mut().unwrap();
    let mut slots: Vec<Value> = serde_json::from_str(&meta[seal::KEY_SLOTS]).unwrap();
    edit(&mut slots);
    meta.insert(
        seal::KEY_SLOTS.into(),
        serde_json::to_string(&slots).unwrap(),
    );
    let mut out = h.to_bytes();
    out.extend_from_slice(&data);
    std::fs::write(p, out).unwrap();
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}
fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

#[test]
fn sealed_to_p256_and_x25519_opens_with_either() {
    let fx = Fixture::new();
    let p256 = P256Identity::generate().unwrap();
    let p = seal_to(
        &fx,
        "both.safetensors",
        vec![Box::new(fx.id.recipient()), Box::new(p256.recipient())],
    );
    read_all(&fx, &open_with(&p, &p256).unwrap());
    read_all(&fx, &open_with(&p, &fx.id).unwrap());
    let other = P256Identity::generate().unwrap();
    let e = open_with(&p, &other).err().unwrap();
    assert!(matches!(e.kind(), Error::NoMatchingKey { .. }), "{e:?}");
    assert!(e.to_string().contains("p256"), "{e}");
}

#[test]
fn recipient_strings_and_key_files_load() {
    let fx = Fixture::new();
    let id = P256Identity::generate().unwrap();
    let idp = fx.path("p256.jwk");
    KeyFile::P256Identity(P256Identity::generate().unwrap())
        .save(&idp, false)
        .unwrap();
    let loaded = load_identity(&idp).unwrap();
    assert!(loaded.describe().starts_with("p256 "));
    // A recipient by string and by public key file seal to the same key.
    let s = id.recipient().to_string();
    assert!(s.starts_with("p256:") && s.len() == 5 + 87, "{s}");
    let pubp = fx.path("p256.pub.jwk");
    KeyFile::P256Recipient(id.recipient())
        .save(&pubp, false)
        .unwrap();
    for spec in [s.clone(), pubp.to_string_lossy().into_owned()] {
        let r = load_recipient(&spec).unwrap();
        let p = seal_to(&fx, "by-spec.safetensors", vec![r]);
        read_all(&fx, &open_with(&p, &id).unwrap());
        std::fs::remove_file(p).unwrap();
    }
    // A public key file is not an identity.
    assert!(load_identity(&pubp).is_err());
}

#[test]
fn forged_ephemeral_keys_are_refused() {
    let fx = Fixture::new();
    let id = P256Identity::generate().unwrap();
    let good = seal_to(&fx, "good.safetensors", vec![Box::new(id.recipient())]);
    let case = |name: &str, epk: Vec<u8>| {
        let p = fx.path(name);
        std::fs::copy(&good, &p).unwrap();
        edit_slots(&p, |s| s[0]["epk"] = b64(&epk).into());
        open_with(&p, &id).err().unwrap()
    };
    let epk = {
        let raw = std::fs::read(&good).unwrap();
        let h = Header::parse_buffer(&raw).unwrap();
        let slots: Vec<Value> =
            serde_json::from_str(&h.metadata.unwrap()[seal::KEY_SLOTS]).unwrap();
        unb64(slots[0]["epk"].as_str().unwrap())
    };
    assert_eq!((epk.len(), epk[0]), (65, 4));

    // Off the curve: y changed.
    let mut off = epk.clone();
    off[64] ^= 1;
    let e = case("off.safetensors", off);
    assert!(matches!(e.kind(), Error::InvalidKey(_)), "{e:?}");
    // The compressed form of the same point, and the identity's own point
    // with another prefix byte: one encoding only.
    let mut compressed = vec![2 + (epk[64] & 1)];
    compressed.extend_from_slice(&epk[1..33]);
    let e = case("compressed.safetensors", compressed);
    assert!(matches!(e.kind(), Error::InvalidKey(_)), "{e:?}");
    let mut hybrid = epk.clone();
    hybrid[0] = 6 + (epk[64] & 1);
    let e = case("hybrid.safetensors", hybrid);
    assert!(matches!(e.kind(), Error::InvalidKey(_)), "{e:?}");
    // All zeros (the point at infinity has no such encoding) and a short one.
    let e = case("zero.safetensors", vec![0u8; 65]);
    assert!(matches!(e.kind(), Error::InvalidKey(_)), "{e:?}");
    let e = case("short.safetensors", epk[..64].to_vec());
    assert!(matches!(e.kind(), Error::InvalidKey(_)), "{e:?}");
    // A valid point that is not the one the slot was made with: Z differs,
    // the wrap does not open.
    let other = P256Identity::generate().unwrap().recipient();
    let e = case("other-point.safetensors", other.as_bytes().to_vec());
    assert!(matches!(e.kind(), Error::NoMatchingKey { .. }), "{e:?}");
    assert!(e.to_string().contains("does not open"), "{e}");
}

#[test]
fn relabelled_and_swapped_slots_do_not_open() {
    let fx = Fixture::new();
    let a = P256Identity::generate().unwrap();
    let b = P256Identity::generate().unwrap();
    let both = seal_to(
        &fx,
        "two.safetensors",
        vec![Box::new(a.recipient()), Box::new(b.recipient())],
    );
    // Each slot's wrap moved to the other's rid: KEK (salt = epk || pk) and
    // the key differ, so neither opens.
    let p = fx.path("swapped.safetensors");
    std::fs::copy(&both, &p).unwrap();
    edit_slots(&p, |s| {
        let (ra, rb) = (s[0]["rid"].clone(), s[1]["rid"].clone());
        s[0]["rid"] = rb;
        s[1]["rid"] = ra;
    });
    for id in [&a, &b] {
        let e = open_with(&p, id).err().unwrap();
        assert!(matches!(e.kind(), Error::NoMatchingKey { .. }), "{e:?}");
    }
    // An x25519 slot relabelled p256 (rid kept): no P-256 key has its rid,
    // and the X25519 identity no longer sees an x25519 slot.
    let x = seal_to(&fx, "x.safetensors", vec![Box::new(fx.id.recipient())]);
    edit_slots(&x, |s| s[0]["type"] = "p256".into());
    let e = open_with(&x, &fx.id).err().unwrap();
    assert!(matches!(e.kind(), Error::NoMatchingKey { .. }), "{e:?}");
    // ... and a p256 slot relabelled x25519 with a P-256 identity's rid is
    // refused as malformed (a 65-byte epk is no X25519 key) or unopened,
    // never opened.
    let p2 = seal_to(&fx, "p.safetensors", vec![Box::new(a.recipient())]);
    edit_slots(&p2, |s| s[0]["type"] = "x25519".into());
    assert!(open_with(&p2, &a).is_err());
    assert!(open_with(&p2, &fx.id).is_err());
}

#[test]
fn each_wrap_uses_a_fresh_ephemeral_key() {
    let fx = Fixture::new();
    let id = P256Identity::generate().unwrap();
    let r: P256Recipient = id.recipient();
    let mk = sealtensors::keys::ModelKey::generate().unwrap();
    let (s1, s2) = (r.wrap(&mk).unwrap(), r.wrap(&mk).unwrap());
    assert_ne!(s1, s2);
    assert!(r.matches(&s1) && r.matches(&s2));
    assert!(!P256Identity::generate().unwrap().recipient().matches(&s1));
    drop(fx);
}

#[test]
fn rekey_adds_and_removes_a_p256_recipient() {
    let fx = Fixture::new();
    let p256 = P256Identity::generate().unwrap();
    let p = seal_to(&fx, "x.safetensors", vec![Box::new(fx.id.recipient())]);
    let opts = |add: Vec<Box<dyn Recipient>>, remove: Vec<Box<dyn Recipient>>| RekeyOptions {
        open: OpenOptions {
            identities: vec![&fx.id],
            ..Default::default()
        },
        add,
        remove,
        signing_key: None,
        drop_signature: false,
        overwrite: true,
    };
    rekey_file(&p, None, &opts(vec![Box::new(p256.recipient())], vec![])).unwrap();
    read_all(&fx, &open_with(&p, &p256).unwrap());
    rekey_file(&p, None, &opts(vec![], vec![Box::new(p256.recipient())])).unwrap();
    let e = open_with(&p, &p256).err().unwrap();
    assert!(matches!(e.kind(), Error::NoMatchingKey { .. }), "{e:?}");
    read_all(&fx, &open_with(&p, &fx.id).unwrap());
}
