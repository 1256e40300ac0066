//! Round trips through every mode, and the plain-file contract.

mod common;

use common::*;
use sealtensors::keys::{Argon2Params, Passphrase, SymmetricKey, X25519Identity};
use sealtensors::{Authenticity, Cipher, OpenOptions, SealOptions, SealedFile, Sealer};

#[test]
fn seal_open_unseal_is_byte_identical() {
    let fx = Fixture::new();
    for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
        let sealed = fx.seal(&format!("s-{}.safetensors", cipher.id()), |o| {
            o.cipher = cipher
        });
        fx.open_and_read_all(&sealed, &fx.opts()).unwrap();
        let f = fx.open(&sealed).unwrap();
        assert_eq!(
            f.authenticity(),
            &Authenticity::Trusted(fx.signer.verifying_key())
        );
        assert_eq!(f.metadata(), fx.model.metadata);
        f.verify_data().unwrap();
        let back = fx.path(&format!("u-{}.safetensors", cipher.id()));
        f.unseal_to(&back, false).unwrap();
        assert_eq!(
            std::fs::read(&back).unwrap(),
            std::fs::read(&fx.plain).unwrap()
        );
    }
}

#[test]
fn ciphertext_has_plaintext_length_and_differs() {
    let fx = Fixture::new();
    let sealed = fx.seal("s.safetensors", |_| {});
    let plain = SealedFile::open(&fx.plain, &OpenOptions::default()).unwrap();
    let f = fx.open(&sealed).unwrap();
    for (a, b) in plain.tensors().iter().zip(f.tensors()) {
        assert_eq!(
            (a.name.as_str(), a.dtype, &a.shape, a.begin, a.end),
            (b.name.as_str(), b.dtype, &b.shape, b.begin, b.end)
        );
    }
    let raw = std::fs::read(&sealed).unwrap();
    let t = f.tensor("embed.weight").unwrap();
    let start = f.header().data_start() as usize + t.begin;
    let ct = &raw[start..start + t.len()];
    assert_ne!(ct, fx.model.data("embed.weight"));
    // no long plaintext run survives
    let pt = fx.model.data("embed.weight");
    assert!(!raw.windows(32).any(|w| w == &pt[1000..1032]));
}

#[test]
fn slices_decrypt_only_what_they_cover() {
    let fx = Fixture::new();
    let sealed = fx.seal("s.safetensors", |_| {});
    let f = fx.open(&sealed).unwrap();
    let full = fx.model.data("embed.weight");
    for (s, e) in [
        (0, 0),
        (0, 1),
        (4095, 4097),
        (100, 76800),
        (8192, 12288),
        (76799, 76800),
    ] {
        let mut out = vec![0u8; e - s];
        f.read_range_into("embed.weight", s, e, &mut out).unwrap();
        assert_eq!(out, &full[s..e], "range {s}..{e}");
    }
    let mut out = vec![0u8; 2];
    assert!(f
        .read_range_into("embed.weight", 76799, 76801, &mut out)
        .is_err());
}

#[test]
fn recipients_of_every_kind_open_the_file() {
    let fx = Fixture::new();
    let other = X25519Identity::generate().unwrap();
    let sym = SymmetricKey::generate(Some("team-key".into())).unwrap();
    let weak = Argon2Params {
        memory_kib: 64,
        iterations: 1,
        lanes: 1,
    };
    let pass = Passphrase::with_params("correct horse", weak);
    let sealer = Sealer::new(SealOptions {
        recipients: vec![
            Box::new(fx.id.recipient()),
            Box::new(other.recipient()),
            Box::new(sym.clone()),
            Box::new(Passphrase::with_params("correct horse", weak)),
        ],
        chunk_size: 4096,
        ..Default::default()
    })
    .unwrap();
    let out = fx.path("multi.safetensors");
    sealer.seal_file(&fx.plain, &out).unwrap();
    for id in [
        &fx.id as &dyn sealtensors::keys::Identity,
        &other,
        &sym,
        &pass,
    ] {
        let o = OpenOptions {
            identities: vec![id],
            ..Default::default()
        };
        fx.open_and_read_all(&out, &o).unwrap();
        let f = SealedFile::open(&out, &o).unwrap();
        assert_eq!(f.authenticity(), &Authenticity::Unsigned);
    }
}

#[test]
fn partial_encryption_and_sign_only() {
    let fx = Fixture::new();
    let part = fx.seal("part.safetensors", |o| {
        o.encrypt = Some(vec!["layer.*".into()])
    });
    let f = fx.open(&part).unwrap();
    assert!(f.is_encrypted("layer.0.weight").unwrap());
    assert!(!f.is_encrypted("embed.weight").unwrap());
    fx.open_and_read_all(&part, &fx.opts()).unwrap();

    let signed = fx.seal("signed.safetensors", |o| o.recipients.clear());
    let o = OpenOptions {
        trusted: vec![fx.signer.verifying_key()],
        ..Default::default()
    };
    fx.open_and_read_all(&signed, &o).unwrap();
    // a plain reader still sees the plaintext at the right place
    let raw = std::fs::read(&signed).unwrap();
    let h = sealtensors::Header::parse_buffer(&raw).unwrap();
    let t = h.tensors.iter().find(|t| t.name == "embed.weight").unwrap();
    let s = h.data_start() as usize + t.begin;
    assert_eq!(&raw[s..s + t.len()], fx.model.data("embed.weight"));
}

#[test]
fn empty_tensors_at_one_offset_round_trip_in_any_json_order() {
    use sealtensors::{Dtype, TensorRef};
    let fx = Fixture::new();
    // The official layout puts "b" (F64) before "a" (F32): dtype first.
    let plain = fx.path("empties.safetensors");
    let x = bytes(5, 8);
    let refs = vec![
        TensorRef {
            name: "a".into(),
            dtype: Dtype::F32,
            shape: vec![0],
            data: &[],
        },
        TensorRef {
            name: "b".into(),
            dtype: Dtype::F64,
            shape: vec![0, 3],
            data: &[],
        },
        TensorRef {
            name: "c".into(),
            dtype: Dtype::U8,
            shape: vec![8],
            data: &x,
        },
    ];
    sealtensors::write_plain(&plain, &refs, None, false).unwrap();
    let sealed = fx.path("empties.sealed.safetensors");
    Sealer::new(SealOptions {
        recipients: vec![Box::new(fx.id.recipient())],
        signing_key: Some(fx.signer.try_clone().unwrap()),
        ..Default::default()
    })
    .unwrap()
    .seal_file(&plain, &sealed)
    .unwrap();
    // Reorder the two empty entries in the JSON text: meaning is unchanged,
    // so the signature and MAC must still verify.
    let raw = std::fs::read(&sealed).unwrap();
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let mut v: serde_json::Value = serde_json::from_slice(&raw[8..8 + n]).unwrap();
    let obj = v.as_object_mut().unwrap();
    let mut reordered = serde_json::Map::new();
    for k in ["a", "b"] {
        reordered.insert(k.to_string(), obj[k].clone());
    }
    for (k, val) in obj.iter() {
        if k != "a" && k != "b" {
            reordered.insert(k.clone(), val.clone());
        }
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(reordered)).unwrap();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut edited = (json.len() as u64).to_le_bytes().to_vec();
    edited.extend_from_slice(&json);
    edited.extend_from_slice(&raw[8 + n..]);
    let edited_path = fx.path("empties.reordered.safetensors");
    std::fs::write(&edited_path, edited).unwrap();
    for p in [&sealed, &edited_path] {
        let f = fx.open(p).unwrap();
        assert_eq!(f.read_tensor("c").unwrap(), x);
        assert!(f.read_tensor("a").unwrap().is_empty());
    }
    // unsealing the untouched file gives the original bytes
    let back = fx.path("empties.back.safetensors");
    fx.open(&sealed).unwrap().unseal_to(&back, false).unwrap();
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(&plain).unwrap()
    );
}
