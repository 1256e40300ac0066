//! CryptoTensors files (SPEC appendix A), as their reference package writes
//! them: the vectors in spec/vectors/cryptotensors/ were made by
//! `cryptotensors` 0.2.3 itself (scripts/make_cryptotensors_vectors.py).
//! Here they are opened, read, converted, and attacked: every edit either
//! fails with a typed error or leaves the bytes read exactly right.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sealtensors::keys::{
    load_identity, load_verifying_key, Identity, VerifyingKey, X25519Identity,
};
use sealtensors::model::convert_path;
use sealtensors::policy::PolicyContext;
use sealtensors::report::Inspection;
use sealtensors::{Authenticity, Error, OpenOptions, SealOptions, SealedFile, Sealer};

const FILES: [&str; 2] = ["v2-aes256gcm", "v1-chacha20poly1305"];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../spec/vectors/cryptotensors")
}

fn file(name: &str) -> PathBuf {
    dir().join(format!("{name}.safetensors"))
}

struct Keys {
    id: Box<dyn Identity>,
    signer: VerifyingKey,
}

fn keys(name: &str) -> Keys {
    Keys {
        id: load_identity(&dir().join(format!("{name}.keys.json"))).unwrap(),
        signer: load_verifying_key(dir().join("signer.pub.json").to_str().unwrap()).unwrap(),
    }
}

fn licensed() -> PolicyContext {
    PolicyContext {
        licence: Some(serde_json::json!({"vector": "yes"})),
        ..Default::default()
    }
}

fn opts(k: &Keys) -> OpenOptions<'_> {
    OpenOptions {
        identities: vec![k.id.as_ref()],
        trusted: vec![k.signer],
        policy: licensed(),
        ..Default::default()
    }
}

/// The tensors the vectors hold (scripts/make_cryptotensors_vectors.py).
fn expected() -> BTreeMap<&'static str, Vec<u8>> {
    let f32s: Vec<u8> = (0..3000u32)
        .flat_map(|i| (i as f32).to_le_bytes())
        .collect();
    BTreeMap::from([
        ("t.f32", f32s),
        ("t.u8", (0..10u8).collect()),
        ("t.empty", Vec::new()),
    ])
}

fn read_all(f: &SealedFile) -> sealtensors::Result<BTreeMap<String, Vec<u8>>> {
    f.tensors()
        .iter()
        .map(|t| Ok((t.name.clone(), f.read_tensor(&t.name)?)))
        .collect()
}

fn assert_expected(got: &BTreeMap<String, Vec<u8>>) {
    let want = expected();
    assert_eq!(got.len(), want.len());
    for (k, v) in want {
        assert_eq!(got[k], v, "{k}");
    }
}

#[test]
fn reference_files_open_with_trusted_signer_and_their_key() {
    for name in FILES {
        let k = keys(name);
        let f = SealedFile::open(file(name), &opts(&k)).unwrap();
        assert_eq!(f.authenticity(), &Authenticity::Trusted(k.signer));
        assert_eq!(
            f.metadata(),
            Some(BTreeMap::from([("k".to_string(), "v".to_string())]))
        );
        assert!(f.is_encrypted("t.f32").unwrap());
        assert!(f.seal().is_none() && f.cryptotensors().is_some());
        assert_expected(&read_all(&f).unwrap());
        // ranges inside and across chunks
        let all = &expected()["t.f32"];
        for (s, e) in [(0, 1), (4090, 4100), (100, 12000), (8192, 8196)] {
            assert_eq!(
                f.read_range("t.f32", s, e).unwrap(),
                all[s..e],
                "{name} {s}..{e}"
            );
        }
        // read_tensors: one parallel pass
        let many = f.read_tensors(&["t.u8", "t.f32", "t.empty"]).unwrap();
        assert_eq!(many[1], *all);
        f.verify_data().unwrap();
    }
}

#[test]
fn inspection_shows_their_entries_and_checks_nothing() {
    let i = Inspection::of_file(&file("v2-aes256gcm")).unwrap();
    assert!(!i.sealed);
    let c = i.cryptotensors.unwrap();
    assert_eq!(
        (c.version, c.cipher.as_str(), c.chunk_size),
        (2, "aes256gcm", Some(4096))
    );
    assert!(c.sign_key.contains("vector-sign"));
    assert!(i.tensors.iter().all(|t| t.encrypted));
    assert_eq!(i.metadata.unwrap().len(), 1);
    let i = Inspection::of_file(&file("v1-chacha20poly1305")).unwrap();
    assert_eq!(i.cryptotensors.unwrap().chunk_size, None);
}

#[test]
fn refused_without_trust_key_or_licence() {
    for name in FILES {
        let k = keys(name);
        let path = file(name);
        // no trusted signer: the file does not carry its signer's key
        let o = OpenOptions {
            trusted: vec![],
            ..opts(&k)
        };
        match SealedFile::open(&path, &o).map(|_| ()).unwrap_err().kind() {
            Error::CryptoTensorsSignature { trusted: 0, .. } => {}
            e => panic!("{e}"),
        }
        // another trusted signer
        let other = sealtensors::keys::SigningKey::generate()
            .unwrap()
            .verifying_key();
        let o = OpenOptions {
            trusted: vec![other],
            ..opts(&k)
        };
        match SealedFile::open(&path, &o).map(|_| ()).unwrap_err().kind() {
            Error::CryptoTensorsSignature { trusted: 1, .. } => {}
            e => panic!("{e}"),
        }
        // no CryptoTensors key (a sealtensors identity opens nothing here)
        let x = X25519Identity::generate().unwrap();
        let o = OpenOptions {
            identities: vec![&x],
            ..opts(&k)
        };
        assert!(matches!(
            SealedFile::open(&path, &o).map(|_| ()).unwrap_err().kind(),
            Error::NoMatchingKey { .. }
        ));
        // the other vector's key: same kid, wrong key
        let wrong = keys(FILES.iter().find(|n| **n != name).unwrap());
        let o = OpenOptions {
            identities: vec![wrong.id.as_ref()],
            ..opts(&k)
        };
        assert!(matches!(
            SealedFile::open(&path, &o).map(|_| ()).unwrap_err().kind(),
            Error::NoMatchingKey { .. }
        ));
        // the policy wants a licence
        let o = OpenOptions {
            policy: PolicyContext {
                licence: Some(serde_json::json!({})),
                ..Default::default()
            },
            ..opts(&k)
        };
        assert!(matches!(
            SealedFile::open(&path, &o).map(|_| ()).unwrap_err().kind(),
            Error::PolicyDenied { .. }
        ));
        // a loader that requires encryption accepts it
        let o = OpenOptions {
            require_encrypted: true,
            require_signed: true,
            ..opts(&k)
        };
        SealedFile::open(&path, &o).unwrap();
    }
}

#[test]
fn locked_open_without_trust_is_unchecked_and_reads_nothing() {
    let o = OpenOptions {
        locked: true,
        ..Default::default()
    };
    let f = SealedFile::open(file("v2-aes256gcm"), &o).unwrap();
    assert_eq!(f.authenticity(), &Authenticity::SignedUnchecked);
    assert!(!f.can_decrypt());
    assert!(matches!(
        f.read_tensor("t.f32").unwrap_err().kind(),
        Error::NoMatchingKey { .. }
    ));
    // but requiring a signature still needs a trusted one
    let o = OpenOptions {
        locked: true,
        require_signed: true,
        ..Default::default()
    };
    assert!(SealedFile::open(file("v2-aes256gcm"), &o).is_err());
}

/// Open `bytes` (a modified vector) and read everything: an error, or
/// exactly the expected tensors; never other bytes.
fn never_wrong(tmp: &Path, k: &Keys, bytes: &[u8], what: &str) -> bool {
    let p = tmp.join("edited.safetensors");
    std::fs::write(&p, bytes).unwrap();
    match SealedFile::open(&p, &opts(k)).and_then(|f| read_all(&f)) {
        Ok(got) => {
            assert_expected(&got);
            false
        }
        Err(e) => {
            // typed, with a message that names the file or what is wrong
            assert!(!e.to_string().is_empty(), "{what}");
            true
        }
    }
}

#[test]
fn every_data_byte_flip_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FILES {
        let k = keys(name);
        let raw = std::fs::read(file(name)).unwrap();
        let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
        for at in (8 + n..raw.len()).step_by(61) {
            let mut b = raw.clone();
            b[at] ^= 0x10;
            assert!(
                never_wrong(tmp.path(), &k, &b, name),
                "{name}: flip at {at} not caught"
            );
        }
    }
}

#[test]
fn header_edits_fail_or_change_nothing() {
    // Every byte of the JSON header changed in turn (sampled): the open
    // fails, or (a change outside what is signed: padding, whitespace) the
    // tensors read are exactly the expected ones.
    let tmp = tempfile::tempdir().unwrap();
    for name in FILES {
        let k = keys(name);
        let raw = std::fs::read(file(name)).unwrap();
        let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
        for at in (8..8 + n).step_by(7) {
            for x in [0x01u8, 0x20] {
                let mut b = raw.clone();
                b[at] ^= x;
                never_wrong(tmp.path(), &k, &b, name);
            }
        }
    }
}

#[test]
fn swapped_chunks_and_tensors_are_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "v2-aes256gcm";
    let k = keys(name);
    let raw = std::fs::read(file(name)).unwrap();
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let f = SealedFile::open(file(name), &opts(&k)).unwrap();
    let t = f.tensor("t.f32").unwrap();
    let (a, b) = (8 + n + t.begin, 8 + n + t.begin + 4096);
    let mut swapped = raw.clone();
    swapped[a..a + 4096].copy_from_slice(&raw[b..b + 4096]);
    swapped[b..b + 4096].copy_from_slice(&raw[a..a + 4096]);
    assert!(never_wrong(tmp.path(), &k, &swapped, "chunks"));
    // a chunk of t.f32 over t.u8's bytes (another tensor's key)
    let u = f.tensor("t.u8").unwrap();
    let mut moved = raw.clone();
    moved[8 + n + u.begin..8 + n + u.end].copy_from_slice(&raw[a..a + u.len()]);
    assert!(never_wrong(tmp.path(), &k, &moved, "moved"));
    // truncated and extended
    assert!(never_wrong(
        tmp.path(),
        &k,
        &raw[..raw.len() - 1],
        "truncated"
    ));
    let mut longer = raw.clone();
    longer.push(0);
    assert!(never_wrong(tmp.path(), &k, &longer, "extended"));
}

#[test]
fn sealing_their_file_as_plain_is_refused_and_convert_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let id = X25519Identity::generate().unwrap();
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(id.recipient())],
        ..Default::default()
    })
    .unwrap();
    for name in FILES {
        let k = keys(name);
        let err = sealer
            .seal_file(&file(name), &tmp.path().join("x.safetensors"))
            .unwrap_err();
        assert!(
            matches!(err.kind(), Error::Config(m) if m.contains("convert")),
            "{err}"
        );
        let out = tmp.path().join(format!("{name}.sealed.safetensors"));
        convert_path(&sealer, &file(name), &out, &opts(&k), false).unwrap();
        let o = OpenOptions {
            identities: vec![&id],
            ..Default::default()
        };
        let f = SealedFile::open(&out, &o).unwrap();
        assert!(f.seal().is_some());
        assert_eq!(f.metadata().unwrap()["k"], "v");
        assert_expected(&read_all(&f).unwrap());
        // and back to plain, the official layout
        let plain = tmp.path().join(format!("{name}.plain.safetensors"));
        SealedFile::open(file(name), &opts(&k))
            .unwrap()
            .unseal_to(&plain, false)
            .unwrap();
        let p = SealedFile::open(&plain, &OpenOptions::default()).unwrap();
        assert_eq!(p.authenticity(), &Authenticity::Plain);
        assert_expected(&read_all(&p).unwrap());
        // convert refuses a file that is not theirs
        assert!(matches!(
            convert_path(
                &sealer,
                &plain,
                &tmp.path().join("y"),
                &OpenOptions::default(),
                false
            )
            .unwrap_err()
            .kind(),
            Error::Config(_)
        ));
    }
}

#[test]
fn a_file_with_both_formats_keys_is_refused() {
    // A sealtensors file whose header also carries a CryptoTensors entry.
    let tmp = tempfile::tempdir().unwrap();
    let k = keys("v2-aes256gcm");
    let raw = std::fs::read(file("v2-aes256gcm")).unwrap();
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let mut doc: serde_json::Value = serde_json::from_slice(&raw[8..8 + n]).unwrap();
    doc["__metadata__"]["sealtensors.seal"] = "{}".into();
    let mut json = serde_json::to_vec(&doc).unwrap();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut b = (json.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(&json);
    b.extend_from_slice(&raw[8 + n..]);
    let p = tmp.path().join("both.safetensors");
    std::fs::write(&p, &b).unwrap();
    assert!(matches!(
        SealedFile::open(&p, &opts(&k))
            .map(|_| ())
            .unwrap_err()
            .kind(),
        Error::InvalidSealMetadata { .. }
    ));
}

#[test]
fn chunk_nonce_counter_never_wraps() {
    use sealtensors::cryptotensors::chunk_nonce;
    let mut base = [7u8; 12];
    base[8..].copy_from_slice(&0xFFFF_FFFEu32.to_be_bytes());
    assert_eq!(
        &chunk_nonce(&base, 1).unwrap()[8..],
        &0xFFFF_FFFFu32.to_be_bytes()
    );
    assert!(chunk_nonce(&base, 2).is_none());
    assert!(chunk_nonce(&base, 1 << 33).is_none());
}
