//! Replays every file of the fuzz corpus (`fuzz/corpus/*/`) through the
//! bodies of the fuzz targets, without libFuzzer, so that every input that
//! once crashed stays a regression test in a plain `cargo test`.
//!
//! `cargo test --test fuzz_corpus -- --ignored regenerate` rewrites the seed
//! files (not the regression files).

#[allow(dead_code)]
#[path = "../../../fuzz/src/targets.rs"]
mod targets;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sealtensors::keys::Recipient;
use sealtensors::{Dtype, SealOptions, Sealer, TensorRef};

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

#[test]
fn fuzz_corpus_replays_without_panics() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    let mut dirs: Vec<_> = std::fs::read_dir(corpus_root())
        .expect("fuzz/corpus exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for d in dirs {
        let mut files: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            // Both targets on every file: a header seed is a file to open too.
            targets::header(&data);
            targets::open(&data, dir.path());
            n += 1;
        }
    }
    assert!(
        n >= 5,
        "only {n} corpus files found under {:?}",
        corpus_root()
    );
}

/// The seed files decode as intended: the sealed seeds open with the
/// target's identity (so the fuzzer starts from inputs that reach the
/// decryption paths).
#[test]
fn sealed_seeds_open_with_the_target_identity() {
    let id = targets::identity();
    let o = sealtensors::OpenOptions {
        identities: vec![&id],
        now: Some(targets::NOW),
        ..Default::default()
    };
    let mut opened = 0;
    for d in ["header", "open"] {
        for e in std::fs::read_dir(corpus_root().join(d)).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("sealed-") || name.starts_with("signonly-") {
                let f =
                    sealtensors::SealedFile::open(&p, &o).unwrap_or_else(|e| panic!("{name}: {e}"));
                for t in f.tensors() {
                    f.read_tensor(&t.name).unwrap();
                }
                opened += 1;
            }
        }
    }
    assert!(opened >= 3, "only {opened} sealed seeds");
}

type Tensors = Vec<(String, Dtype, Vec<u64>, Vec<u8>)>;

fn tiny_model() -> (Tensors, BTreeMap<String, String>) {
    let t = vec![
        ("w".to_string(), Dtype::F32, vec![2, 3], (0u8..24).collect()),
        (
            "b".to_string(),
            Dtype::BF16,
            vec![3],
            vec![1, 2, 3, 4, 5, 6],
        ),
        ("e".to_string(), Dtype::U8, vec![0], vec![]),
        (
            "q\"\\\u{1F600}".to_string(),
            Dtype::F4,
            vec![4],
            vec![0x12, 0x34],
        ),
    ];
    (t, [("format".to_string(), "pt".to_string())].into())
}

fn refs(t: &[(String, Dtype, Vec<u64>, Vec<u8>)]) -> Vec<TensorRef<'_>> {
    t.iter()
        .map(|(n, d, s, b)| TensorRef {
            name: n.clone(),
            dtype: *d,
            shape: s.clone(),
            data: b,
        })
        .collect()
}

fn frame(json: &str) -> Vec<u8> {
    let mut j = json.as_bytes().to_vec();
    j.resize(j.len().next_multiple_of(8), b' ');
    let mut out = (j.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&j);
    out
}

#[test]
#[ignore = "rewrites the seed corpus; run by hand"]
fn regenerate_seed_corpus() {
    let root = corpus_root();
    let header = root.join("header");
    let open = root.join("open");
    let tmp = tempfile::tempdir().unwrap();
    let (t, meta) = tiny_model();
    let plain = sealtensors::serialize_plain(&refs(&t), Some(meta.clone())).unwrap();
    let plain_path = tmp.path().join("plain.safetensors");
    std::fs::write(&plain_path, &plain).unwrap();
    std::fs::write(header.join("plain-small"), &plain).unwrap();
    std::fs::write(
        header.join("plain-empty"),
        sealtensors::serialize_plain(&[], None).unwrap(),
    )
    .unwrap();

    let seal = |name: &str, tweak: &dyn Fn(&mut SealOptions)| {
        let mut o = SealOptions {
            recipients: vec![Box::new(targets::identity().recipient()) as Box<dyn Recipient>],
            signing_key: Some(targets::signer()),
            chunk_size: 4096,
            model_id: "fuzz/seed".into(),
            model_version: "1".into(),
            ..Default::default()
        };
        tweak(&mut o);
        let out = tmp.path().join(name);
        Sealer::new(o)
            .unwrap()
            .seal_file(&plain_path, &out)
            .unwrap();
        std::fs::read(out).unwrap()
    };
    let sealed = seal("a", &|_| {});
    let partial = seal("b", &|o| {
        o.signing_key = None;
        o.encrypt = Some(vec!["w".into()]);
        o.cipher = sealtensors::Cipher::ChaCha20Poly1305;
    });
    let signonly = seal("c", &|o| o.recipients.clear());
    std::fs::write(header.join("sealed-signed"), &sealed).unwrap();
    std::fs::write(header.join("signonly-small"), &signonly).unwrap();
    std::fs::write(open.join("sealed-signed"), &sealed).unwrap();
    std::fs::write(open.join("sealed-unsigned-partial"), &partial).unwrap();
    std::fs::write(open.join("signonly-small"), &signonly).unwrap();

    // Malformed inputs.
    std::fs::write(
        header.join("malformed-truncated"),
        &sealed[..sealed.len() - 3],
    )
    .unwrap();
    std::fs::write(header.join("malformed-short"), [1u8, 0, 0]).unwrap();
    std::fs::write(header.join("malformed-huge-prefix"), u64::MAX.to_le_bytes()).unwrap();
    std::fs::write(
        header.join("malformed-bad-json"),
        frame(r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]"#),
    )
    .unwrap();
    std::fs::write(
        header.join("malformed-duplicate-key"),
        frame(r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}"#),
    )
    .unwrap();
    std::fs::write(
        header.join("malformed-seal-metadata"),
        frame(
            r#"{"__metadata__":{"sealtensors.seal":"{\"v\":1}","sealtensors.slots":"[[[[{}]]]]"}}"#,
        ),
    )
    .unwrap();
}
