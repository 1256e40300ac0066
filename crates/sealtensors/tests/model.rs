//! Model folders: shards, the index file, one model key for every shard; and
//! the header-size budget.

mod common;

use std::collections::BTreeMap;

use common::*;
use sealtensors::keys::X25519Identity;
use sealtensors::model::{seal_model_dir, unseal_model_dir, SealedModel, INDEX_FILE};
use sealtensors::{Dtype, Error, OpenOptions, SealOptions, Sealer, TensorInfo, TensorRef};

#[test]
fn sharded_folder_seals_opens_with_one_key_and_unseals_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("model");
    let expected = write_sharded(&src);
    let id = X25519Identity::generate().unwrap();
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(id.recipient())],
        chunk_size: 4096,
        ..Default::default()
    })
    .unwrap();
    let sealed = tmp.path().join("sealed");
    seal_model_dir(&sealer, &src, &sealed, false).unwrap();
    // other files copied unchanged, index still valid
    for f in ["config.json", INDEX_FILE, "sub/tokenizer.json"] {
        assert_eq!(
            std::fs::read(src.join(f)).unwrap(),
            std::fs::read(sealed.join(f)).unwrap(),
            "{f}"
        );
    }
    let opts = OpenOptions {
        identities: vec![&id],
        require_encrypted: true,
        ..Default::default()
    };
    let m = SealedModel::open(&sealed, &opts).unwrap();
    assert_eq!(m.files().len(), 3);
    // one model key for all shards
    let k0 = m.files()[0].model_key().unwrap().id().unwrap();
    for f in m.files() {
        assert_eq!(f.model_key().unwrap().id().unwrap(), k0);
    }
    for (n, d) in &expected {
        assert_eq!(&m.read_tensor(n).unwrap(), d, "{n}");
    }
    let back = tmp.path().join("back");
    unseal_model_dir(&sealed, &back, &opts, false).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            let name = p.file_name().unwrap();
            assert_eq!(
                std::fs::read(&p).unwrap(),
                std::fs::read(back.join(name)).unwrap(),
                "{name:?}"
            );
        }
    }
    // existing output is not overwritten
    let err = seal_model_dir(&sealer, &src, &sealed, false).unwrap_err();
    assert!(matches!(err.kind(), Error::OutputExists(_)), "{err}");
}

#[test]
fn folder_without_weights_and_inconsistent_index_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let id = X25519Identity::generate().unwrap();
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(id.recipient())],
        ..Default::default()
    })
    .unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("config.json"), "{}").unwrap();
    let err = seal_model_dir(&sealer, &empty, &tmp.path().join("o1"), false).unwrap_err();
    assert!(matches!(err.kind(), Error::InvalidContainer(_)), "{err}");
    assert!(err.to_string().contains("no .safetensors"), "{err}");

    let src = tmp.path().join("model");
    write_sharded(&src);
    let idx = std::fs::read_to_string(src.join(INDEX_FILE)).unwrap();
    std::fs::write(
        src.join(INDEX_FILE),
        idx.replace("model-00002-of-00003", "model-00001-of-00003"),
    )
    .unwrap();
    let err = seal_model_dir(&sealer, &src, &tmp.path().join("o2"), false).unwrap_err();
    assert!(matches!(err.kind(), Error::InvalidContainer(_)), "{err}");
    assert!(!tmp.path().join("o2").exists());
}

#[test]
fn a_glob_matching_nothing_in_the_whole_model_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("model");
    write_sharded(&src);
    let id = X25519Identity::generate().unwrap();
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(id.recipient())],
        encrypt: Some(vec!["lm_head.*".into()]),
        ..Default::default()
    })
    .unwrap();
    let err = seal_model_dir(&sealer, &src, &tmp.path().join("o"), false).unwrap_err();
    assert!(matches!(err.kind(), Error::Config(_)), "{err}");
    // a glob matching tensors of one shard only is fine
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(id.recipient())],
        encrypt: Some(vec!["layers.2.*".into()]),
        ..Default::default()
    })
    .unwrap();
    seal_model_dir(&sealer, &src, &tmp.path().join("o"), false).unwrap();
}

fn header_fraction(tensors: Vec<TensorInfo>) -> f64 {
    let tmp = tempfile::tempdir().unwrap();
    let id = X25519Identity::generate().unwrap();
    let signer = sealtensors::keys::SigningKey::generate().unwrap();
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(id.recipient())],
        signing_key: Some(signer),
        chunk_size: 1 << 20,
        ..Default::default()
    })
    .unwrap();
    let data: usize = tensors.iter().map(|t| t.len()).sum();
    let w = sealer
        .create(
            &tmp.path().join("x.safetensors"),
            tensors,
            Some(BTreeMap::new()),
        )
        .unwrap();
    w.header_len() as f64 / (w.header_len() + data) as f64
}

#[test]
fn header_overhead_of_a_1gib_model_with_1mib_chunks_is_under_a_thousandth() {
    let layout = |specs: Vec<(String, Dtype, Vec<u64>)>| {
        sealtensors::format::official_layout(specs).unwrap()
    };
    // 8 tensors of 128 MiB
    let big = layout(
        (0..8)
            .map(|i| {
                (
                    format!("model.layers.{i}.mlp.weight"),
                    Dtype::F32,
                    vec![8192, 4096],
                )
            })
            .collect(),
    );
    let f = header_fraction(big);
    assert!(f < 0.001, "header is {:.5}% of the file", f * 100.0);
    // 2000 tensors of 512 KiB
    let small = layout(
        (0..2000)
            .map(|i| {
                (
                    format!("model.layers.{}.self_attn.proj_{}.weight", i / 8, i % 8),
                    Dtype::BF16,
                    vec![512, 512],
                )
            })
            .collect(),
    );
    let f = header_fraction(small);
    assert!(f < 0.001, "header is {:.5}% of the file", f * 100.0);
}

#[test]
fn shards_of_different_seals_are_not_mixed() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("model");
    write_sharded(&src);
    let id = X25519Identity::generate().unwrap();
    let seal = |out: &str| {
        let sealer = Sealer::new(SealOptions {
            recipients: vec![Box::new(id.recipient())],
            chunk_size: 4096,
            ..Default::default()
        })
        .unwrap();
        let p = tmp.path().join(out);
        seal_model_dir(&sealer, &src, &p, false).unwrap();
        p
    };
    let a = seal("a");
    let b = seal("b");
    // swap one shard for the same shard of another seal (another model key)
    let shard = "model-00002-of-00003.safetensors";
    std::fs::copy(b.join(shard), a.join(shard)).unwrap();
    let opts = OpenOptions {
        identities: vec![&id],
        ..Default::default()
    };
    let err = SealedModel::open(&a, &opts)
        .err()
        .expect("mixed shards must be refused");
    assert!(matches!(err.kind(), Error::IncompleteModel(_)), "{err}");
    assert!(
        err.to_string().contains("not shards of one sealed model"),
        "{err}"
    );
}

#[test]
fn more_than_four_passphrase_slots_are_refused_before_any_derivation() {
    use sealtensors::keys::{Argon2Params, Passphrase};
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("p.safetensors");
    let a = bytes(1, 64);
    sealtensors::write_plain(
        &plain,
        &[TensorRef {
            name: "t".into(),
            dtype: Dtype::U8,
            shape: vec![64],
            data: &a,
        }],
        None,
        false,
    )
    .unwrap();
    let cheap = Argon2Params {
        memory_kib: 64,
        iterations: 1,
        lanes: 1,
    };
    let sealed = tmp.path().join("s.safetensors");
    Sealer::new(SealOptions {
        recipients: vec![Box::new(Passphrase::with_params("pw", cheap))],
        ..Default::default()
    })
    .unwrap()
    .seal_file(&plain, &sealed)
    .unwrap();
    // A hostile edit: four more passphrase slots, each at the per-slot bounds
    // (2 GiB, 16 passes). Deriving them would take minutes.
    let raw = std::fs::read(&sealed).unwrap();
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Value = serde_json::from_slice(&raw[8..8 + n]).unwrap();
    let slots_text = h["__metadata__"]["sealtensors.slots"]
        .as_str()
        .unwrap()
        .to_string();
    let mut slots: Vec<serde_json::Value> = serde_json::from_str(&slots_text).unwrap();
    let mut costly = slots[0].clone();
    costly["m"] = (2u64 * 1024 * 1024).into();
    costly["t"] = 16.into();
    for _ in 0..4 {
        slots.insert(0, costly.clone());
    }
    h["__metadata__"]["sealtensors.slots"] = serde_json::to_string(&slots).unwrap().into();
    let mut json = serde_json::to_vec(&h).unwrap();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&raw[8 + n..]);
    let hostile = tmp.path().join("h.safetensors");
    std::fs::write(&hostile, out).unwrap();

    let t = std::time::Instant::now();
    let pass = Passphrase::new("pw");
    let err = sealtensors::SealedFile::open(
        &hostile,
        &OpenOptions {
            identities: vec![&pass],
            ..Default::default()
        },
    )
    .err()
    .expect("five passphrase slots must be refused");
    assert!(
        matches!(
            err.kind(),
            Error::LimitExceeded {
                what: "passphrase slots",
                ..
            }
        ),
        "{err}"
    );
    assert!(t.elapsed().as_secs() < 2, "no derivation may run");
}
