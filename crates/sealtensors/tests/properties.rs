//! Property tests: random models (every dtype, zero-size dims, empty tensors,
//! hostile unicode names) through write_plain, seal, open, ranged reads and
//! unseal; and random header mutations that must never panic nor return
//! anything but the original data.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sealtensors::keys::{SigningKey, X25519Identity};
use sealtensors::{Cipher, Dtype, Header, OpenOptions, SealOptions, SealedFile, Sealer, TensorRef};

#[derive(Debug, Clone)]
struct Spec {
    name: String,
    dtype: Dtype,
    shape: Vec<u64>,
    seed: u64,
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_.]{0,12}",
        Just("quote\"d".to_string()),
        Just("back\\slash\\".to_string()),
        Just("ctl\u{0}\u{1}\n\t\u{1f}\u{7f}".to_string()),
        Just("non-bmp \u{1F600}\u{10FFFF}\u{1D518}".to_string()),
        Just("glob*?[]{}!".to_string()),
        Just(String::new()),
        Just("__metadata".to_string()),
        Just("sealtensors.seal".to_string()),
        prop::collection::vec(any::<char>(), 0..10).prop_map(String::from_iter),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    let dtypes: Vec<Dtype> = Dtype::all().collect();
    (
        name(),
        prop::sample::select(dtypes),
        prop::collection::vec(0u64..40, 0..4),
        any::<u64>(),
    )
        .prop_map(|(name, dtype, mut shape, seed)| {
            // Sub-byte dtypes need a whole number of bytes.
            if dtype.byte_len(&shape).is_none() {
                shape.push(8);
            }
            Spec {
                name,
                dtype,
                shape,
                seed,
            }
        })
}

fn specs() -> impl Strategy<Value = Vec<Spec>> {
    prop::collection::vec(spec(), 1..6).prop_map(|v| {
        let mut seen = std::collections::HashSet::new();
        v.into_iter()
            .filter(|s| s.name != "__metadata__" && seen.insert(s.name.clone()))
            .collect()
    })
}

#[derive(Debug, Clone)]
enum Mode {
    All,
    Globs(Vec<String>),
    SignOnly,
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just(Mode::All),
        Just(Mode::SignOnly),
        prop::collection::vec(
            prop::sample::select(vec!["*", "*a*", "?", "[a-m]*", "*.*", "{q,b}*"]),
            0..3
        )
        .prop_map(|v| Mode::Globs(v.into_iter().map(String::from).collect())),
    ]
}

fn data_of(specs: &[Spec]) -> Vec<Vec<u8>> {
    specs
        .iter()
        .map(|s| bytes(s.seed, s.dtype.byte_len(&s.shape).unwrap()))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn round_trip(
    specs: Vec<Spec>,
    meta: Option<BTreeMap<String, String>>,
    chunk: usize,
    cipher: Cipher,
    mode: Mode,
    ranges: Vec<(usize, usize)>,
    id: &X25519Identity,
    signer: &SigningKey,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let data = data_of(&specs);
    let refs: Vec<TensorRef<'_>> = specs
        .iter()
        .zip(&data)
        .map(|(s, d)| TensorRef {
            name: s.name.clone(),
            dtype: s.dtype,
            shape: s.shape.clone(),
            data: d,
        })
        .collect();
    let plain = dir.path().join("plain.safetensors");
    sealtensors::write_plain(&plain, &refs, meta.clone(), false).unwrap();
    let raw = std::fs::read(&plain).unwrap();
    prop_assert_eq!(
        &raw,
        &sealtensors::serialize_plain(&refs, meta.clone()).unwrap()
    );

    // The plain file parses back to the same tensors and metadata.
    let h = Header::parse_buffer(&raw).unwrap();
    prop_assert_eq!(h.tensors.len(), specs.len());
    prop_assert_eq!(&h.metadata, &meta);
    prop_assert_eq!(h.header_len % 8, 0);
    for (s, d) in specs.iter().zip(&data) {
        let t = h.tensors.iter().find(|t| t.name == s.name).unwrap();
        prop_assert_eq!(t.dtype, s.dtype);
        prop_assert_eq!(&t.shape, &s.shape);
        let at = h.data_start() as usize;
        prop_assert_eq!(&raw[at + t.begin..at + t.end], &d[..]);
    }

    // Seal.
    let (recipients, encrypt): (Vec<Box<dyn sealtensors::keys::Recipient>>, _) = match &mode {
        Mode::All => (vec![Box::new(id.recipient())], None),
        Mode::SignOnly => (vec![], None),
        Mode::Globs(g) => {
            // Always select one tensor by its exact (escaped) name, so the
            // selection is never empty; skip names the escape cannot express.
            let mut g = g.clone();
            match specs.iter().find(|s| !s.name.contains('\\')) {
                Some(s) => g.push(globset::escape(&s.name)),
                None => g.push("*".into()),
            }
            (vec![Box::new(id.recipient())], Some(g))
        }
    };
    let sealer = Sealer::new(SealOptions {
        recipients,
        signing_key: Some(signer.try_clone().unwrap()),
        cipher,
        chunk_size: chunk,
        encrypt,
        model_id: "prop".into(),
        ..Default::default()
    })
    .unwrap();
    let sealed = dir.path().join("sealed.safetensors");
    sealer.seal_file(&plain, &sealed).unwrap();

    // The sealed file is still a safetensors file with the same table.
    let sraw = std::fs::read(&sealed).unwrap();
    let sh = Header::parse_buffer(&sraw).unwrap();
    prop_assert_eq!(sh.data_len(), h.data_len());
    for (a, b) in h.tensors.iter().zip(&sh.tensors) {
        prop_assert_eq!(
            (&a.name, a.dtype, &a.shape, a.begin, a.end),
            (&b.name, b.dtype, &b.shape, b.begin, b.end)
        );
    }

    let o = OpenOptions {
        identities: vec![id],
        trusted: vec![signer.verifying_key()],
        ..Default::default()
    };
    let f = SealedFile::open(&sealed, &o).unwrap();
    prop_assert_eq!(f.metadata(), meta);
    let mut any_encrypted = false;
    for (s, d) in specs.iter().zip(&data) {
        any_encrypted |= f.is_encrypted(&s.name).unwrap();
        prop_assert_eq!(&f.read_tensor(&s.name).unwrap(), d);
        for &(a, b) in &ranges {
            let st = a % (d.len() + 1);
            let en = st + b % (d.len() - st + 1);
            let mut out = vec![0u8; en - st];
            f.read_range_into(&s.name, st, en, &mut out).unwrap();
            prop_assert_eq!(&out[..], &d[st..en], "range {}..{}", st, en);
        }
    }
    prop_assert_eq!(any_encrypted, !matches!(mode, Mode::SignOnly));
    f.verify_data().unwrap();

    // Unseal gives the plain file back, byte for byte.
    let back = dir.path().join("back.safetensors");
    f.unseal_to(&back, false).unwrap();
    prop_assert_eq!(std::fs::read(&back).unwrap(), raw);
    Ok(())
}

fn metadata() -> impl Strategy<Value = Option<BTreeMap<String, String>>> {
    prop::option::of(prop::collection::btree_map(
        "[a-z\"\\\\\u{1F600} ]{0,6}",
        any::<String>(),
        0..3,
    ))
}

proptest! {
    #![proptest_config(Config { cases: 32, ..Config::default() })]

    #[test]
    fn seal_open_read_unseal_round_trip(
        specs in specs(),
        meta in metadata(),
        chunk in 4096usize..=65536,
        chacha in any::<bool>(),
        mode in mode(),
        ranges in prop::collection::vec((any::<usize>(), any::<usize>()), 3),
    ) {
        let id = X25519Identity::generate().unwrap();
        let signer = SigningKey::generate().unwrap();
        let cipher = if chacha { Cipher::ChaCha20Poly1305 } else { Cipher::Aes256Gcm };
        round_trip(specs, meta, chunk, cipher, mode, ranges, &id, &signer)?;
    }
}

/// Random byte mutations of a sealed header: no panic, and every open and
/// read either fails or returns exactly the original data.
#[test]
fn mutated_headers_never_panic_nor_lie() {
    let fx = Fixture::new();
    let files = [
        fx.seal("signed.safetensors", |_| {}),
        fx.seal("unsigned.safetensors", |o| o.signing_key = None),
        fx.seal("part.safetensors", |o| {
            o.encrypt = Some(vec!["layer.*".into()]);
            o.signing_key = None;
        }),
        fx.seal("signonly.safetensors", |o| o.recipients.clear()),
    ];
    let lax = OpenOptions {
        identities: vec![&fx.id],
        ..Default::default()
    };
    let trusting = OpenOptions {
        identities: vec![&fx.id],
        trusted: vec![fx.signer.verifying_key()],
        ..Default::default()
    };
    let mut runner = TestRunner::new(Config {
        cases: 256,
        ..Config::default()
    });
    let out = fx.path("mutated.safetensors");
    let strategy = (
        0..files.len(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        any::<bool>(),
    );
    runner
        .run(&strategy, |(which, muts, trust)| {
            let mut raw = std::fs::read(&files[which]).unwrap();
            let h = Header::parse_buffer(&raw).unwrap();
            let header_end = h.data_start() as usize;
            for (at, v) in &muts {
                raw[at.index(header_end)] = *v;
            }
            let changed = raw != std::fs::read(&files[which]).unwrap();
            std::fs::write(&out, &raw).unwrap();
            let o = if trust { &trusting } else { &lax };
            // open_and_read_all asserts any successful read is exact.
            let r = fx.open_and_read_all(&out, o);
            if changed && r.is_ok() {
                // Only a change outside the meaning (padding to padding) may pass.
                let h2 = Header::parse_buffer(&raw).unwrap();
                prop_assert_eq!(h2.tensors, h.tensors);
                prop_assert_eq!(h2.metadata, h.metadata);
            }
            Ok(())
        })
        .unwrap();
}
