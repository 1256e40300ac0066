//! Criterion micro-benchmarks of the sealtensors core, through its public API.
//!
//! - `chunk_open/*`: one 1 MiB chunk opened in place on one core, through
//!   `sealtensors::crypto::ChunkKey::open` (with the real chunk AAD of
//!   SPEC §5.4) and through aws-lc-rs's raw `LessSafeKey::open_in_place_separate_tag`
//!   on the same buffer, AAD, nonce and tag. The ciphertext is copied back
//!   into the buffer before every open, outside the timed region
//!   (`iter_custom`), so every open authenticates real ciphertext.
//! - `chunk_open_parallel/*`: 64 chunks of 1 MiB opened with rayon on all cores.
//! - `header_2000/*`: a sealed, signed header of 2000 tensors: JSON parse
//!   (`format::Header::parse_json`), seal metadata parse (`seal::parse`), the
//!   signed message (`seal::signed_message`), the Ed25519 check, and a full
//!   `SealedFile::open` (parse, signature, key slot, header MAC), also of the
//!   same file sealed with the expiry policy template (the policy's cost on open).
//! - `slot_unwrap/*`: opening one key slot: X25519, symmetric key, and a
//!   passphrase (Argon2id at the library's default cost).
//! - `policy/*`: evaluating the expiry and tensors templates for the input of
//!   a 2000-tensor file (compiled once outside the loop), and compiling one.
//!
//! `bench/run.py` runs this with `cargo bench` (CARGO_TARGET_DIR=/tmp/target-bench)
//! and reads `target/criterion/*/new/estimates.json`.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rayon::prelude::*;
use sealtensors::crypto::{ChunkKey, Secret32};
use sealtensors::format::Header;
use sealtensors::keys::{
    Argon2Params, Identity, ModelKey, Passphrase, Recipient, SigningKey, SymmetricKey,
    X25519Identity,
};
use sealtensors::policy::{input_document, Policy, PolicyContext, Template, TemplateParams};
use sealtensors::seal::{self, ChunkAad, ModelInfo};
use sealtensors::{Cipher, Dtype, OpenOptions, SealOptions, SealedFile, Sealer, TensorInfo};

const CHUNK: usize = 1 << 20;

fn nonce(i: u64) -> Nonce {
    // SPEC §5.3: 4 zero bytes, then the chunk index big-endian.
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&i.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    sealtensors::crypto::fill_random(&mut v).unwrap();
    v
}

/// A real chunk AAD: a 256 MiB float32 tensor's chunk 7 of 256.
fn chunk_aad() -> Vec<u8> {
    let t = TensorInfo {
        name: "model.layers.3.mlp.down_proj.weight".into(),
        dtype: Dtype::F32,
        shape: vec![8192, 8192],
        begin: 0,
        end: 8192 * 8192 * 4,
    };
    ChunkAad::new(&[7u8; 32], &t, 256).for_chunk(7)
}

fn chunk_open(c: &mut Criterion) {
    let aad = chunk_aad();
    for (cipher, alg, id) in [
        (Cipher::Aes256Gcm, &AES_256_GCM, "aes-256-gcm"),
        (
            Cipher::ChaCha20Poly1305,
            &CHACHA20_POLY1305,
            "chacha20-poly1305",
        ),
    ] {
        let key = random_bytes(32);
        let secret = Secret32::from_bytes(key.clone().try_into().unwrap());
        let lib = ChunkKey::new(cipher, &secret).unwrap();
        let raw = LessSafeKey::new(UnboundKey::new(alg, &key).unwrap());
        let plain = random_bytes(CHUNK);
        let mut ct = plain.clone();
        let tag = lib.seal(7, &aad, &mut ct).unwrap();
        let mut buf = vec![0u8; CHUNK];

        let mut g = c.benchmark_group(format!("chunk_open/{id}"));
        g.throughput(Throughput::Bytes(CHUNK as u64));
        g.bench_function("sealtensors", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    buf.copy_from_slice(&ct);
                    let t = Instant::now();
                    let ok = lib.open(7, black_box(&aad), &tag, black_box(&mut buf));
                    total += t.elapsed();
                    assert!(ok);
                }
                total
            })
        });
        g.bench_function("aws-lc-rs", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    buf.copy_from_slice(&ct);
                    let t = Instant::now();
                    let r = raw.open_in_place_separate_tag(
                        nonce(7),
                        Aad::from(black_box(&aad[..])),
                        &tag,
                        black_box(&mut buf[..]),
                    );
                    total += t.elapsed();
                    assert!(r.is_ok());
                }
                total
            })
        });
        g.finish();
        // Unless a filter skipped both (the buffer is then untouched).
        assert!(buf == plain || buf.iter().all(|&b| b == 0));
    }
}

fn chunk_open_parallel(c: &mut Criterion) {
    const N: usize = 64;
    let aad = chunk_aad();
    let secret = Secret32::from_bytes(random_bytes(32).try_into().unwrap());
    let lib = ChunkKey::new(Cipher::Aes256Gcm, &secret).unwrap();
    let mut ct = random_bytes(N * CHUNK);
    let tags: Vec<_> = ct
        .chunks_mut(CHUNK)
        .enumerate()
        .map(|(i, c)| lib.seal(i as u64, &aad, c).unwrap())
        .collect();
    let mut buf = vec![0u8; N * CHUNK];
    let mut g = c.benchmark_group("chunk_open_parallel/aes-256-gcm");
    g.throughput(Throughput::Bytes((N * CHUNK) as u64));
    g.sample_size(20);
    g.bench_function(
        format!("sealtensors-{}-threads", rayon::current_num_threads()),
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    buf.copy_from_slice(&ct);
                    let t = Instant::now();
                    let bad = buf
                        .par_chunks_mut(CHUNK)
                        .enumerate()
                        .map(|(i, c)| usize::from(!lib.open(i as u64, &aad, &tags[i], c)))
                        .sum::<usize>();
                    total += t.elapsed();
                    assert_eq!(bad, 0);
                }
                total
            })
        },
    );
    g.finish();
    // Keep `ct` alive and used.
    ct.truncate(0);
}

struct Sealed2000 {
    _dir: PathBuf,
    path: PathBuf,
    with_policy: PathBuf,
    json: Vec<u8>,
    id: X25519Identity,
    signer: sealtensors::keys::VerifyingKey,
}

/// A plain file of 2000 small tensors, sealed (one X25519 recipient) and signed.
fn sealed_2000() -> Sealed2000 {
    let dir = std::env::temp_dir().join(format!("sealtensors-micro-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plain = dir.join("plain.safetensors");
    let data = random_bytes(2000 * 64);
    let names: Vec<String> = (0..2000)
        .map(|i| format!("model.layers.{}.mlp.w{}.weight", i / 10, i % 10))
        .collect();
    let refs: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| sealtensors::TensorRef {
            name: n.clone(),
            dtype: Dtype::F32,
            shape: vec![4, 4],
            data: &data[i * 64..(i + 1) * 64],
        })
        .collect();
    sealtensors::write_plain(&plain, &refs, None, true).unwrap();
    let id = X25519Identity::generate().unwrap();
    let sk = SigningKey::generate().unwrap();
    let signer = sk.verifying_key();
    let path = dir.join("sealed.safetensors");
    let with_policy = dir.join("sealed-policy.safetensors");
    let expiry = Template::Expiry
        .render(&TemplateParams {
            not_after: Some("2999-01-01".into()),
            ..Default::default()
        })
        .unwrap();
    for (out, policy) in [(&path, None), (&with_policy, Some(expiry))] {
        Sealer::new(SealOptions {
            recipients: vec![Box::new(id.recipient())],
            signing_key: Some(sk.try_clone().unwrap()),
            overwrite: true,
            policy,
            ..Default::default()
        })
        .unwrap()
        .seal_file(&plain, out)
        .unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let json = bytes[8..8 + n].to_vec();
    Sealed2000 {
        _dir: dir,
        path,
        with_policy,
        json,
        id,
        signer,
    }
}

fn header_2000(c: &mut Criterion) {
    let s = sealed_2000();
    let h = Header::parse_json(&s.json).unwrap();
    let meta = seal::parse(&h).unwrap();
    let sig = meta.signature.as_ref().expect("signed");
    let sig_bytes = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&sig.sig)
            .unwrap()
    };
    let mut g = c.benchmark_group("header_2000");
    g.throughput(Throughput::Bytes(s.json.len() as u64));
    g.bench_function("parse_json", |b| {
        b.iter(|| Header::parse_json(black_box(&s.json)).unwrap())
    });
    g.bench_function("seal_parse", |b| {
        b.iter(|| seal::parse(black_box(&h)).unwrap())
    });
    g.bench_function("signed_message", |b| {
        b.iter(|| seal::signed_message(black_box(&h)))
    });
    let msg = seal::signed_message(&h);
    g.bench_function("ed25519_verify", |b| {
        b.iter(|| assert!(s.signer.verify(black_box(&msg), black_box(&sig_bytes))))
    });
    g.bench_function("signature_check", |b| {
        b.iter(|| {
            let m = seal::signed_message(black_box(&h));
            assert!(s.signer.verify(&m, &sig_bytes))
        })
    });
    let opts = OpenOptions {
        identities: vec![&s.id],
        trusted: vec![s.signer.clone()],
        require_signed: true,
        ..Default::default()
    };
    g.bench_function("sealed_file_open", |b| {
        b.iter(|| SealedFile::open(black_box(&s.path), &opts).unwrap())
    });
    g.bench_function("sealed_file_open_expiry_policy", |b| {
        b.iter(|| SealedFile::open(black_box(&s.with_policy), &opts).unwrap())
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&s._dir);
}

fn slot_unwrap(c: &mut Criterion) {
    let mk = ModelKey::generate().unwrap();
    let mk_id = mk.id().unwrap();
    let mut g = c.benchmark_group("slot_unwrap");
    let x = X25519Identity::generate().unwrap();
    let slot = x.recipient().wrap(&mk).unwrap();
    g.bench_function("x25519", |b| {
        b.iter(|| x.unwrap(black_box(&slot), &mk_id).unwrap().unwrap())
    });
    let k = SymmetricKey::generate(Some("bench".into())).unwrap();
    let slot = k.wrap(&mk).unwrap();
    g.bench_function("symmetric", |b| {
        b.iter(|| k.unwrap(black_box(&slot), &mk_id).unwrap().unwrap())
    });
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(3));
    let p = Passphrase::with_params("correct horse battery staple", Argon2Params::default());
    let slot = p.wrap(&mk).unwrap();
    g.bench_function("passphrase-argon2id-64MiB-t3-p4", |b| {
        b.iter(|| p.unwrap(black_box(&slot), &mk_id).unwrap().unwrap())
    });
    g.finish();
}

fn policy(c: &mut Criterion) {
    let names: Vec<String> = (0..2000)
        .map(|i| format!("model.layers.{}.mlp.w{}.weight", i / 10, i % 10))
        .collect();
    let model = ModelInfo {
        id: "bench".into(),
        version: "1".into(),
        created: 1_700_000_000,
        expires: None,
    };
    let ctx = PolicyContext {
        framework: Some("torch".into()),
        ..Default::default()
    };
    let input = input_document(
        &ctx,
        &model,
        Some("model.safetensors"),
        names.iter().map(String::as_str),
        1_800_000_000,
    )
    .unwrap();
    let mut g = c.benchmark_group("policy_2000");
    for (t, params) in [
        (
            Template::Expiry,
            TemplateParams {
                not_after: Some("2999-01-01".into()),
                ..Default::default()
            },
        ),
        (
            Template::Tensors,
            TemplateParams {
                tensors: vec!["model.layers.*".into()],
                ..Default::default()
            },
        ),
    ] {
        let text = t.render(&params).unwrap();
        let compiled = Policy::compile(&text)
            .map_err(sealtensors::Error::from)
            .unwrap();
        assert!(compiled.clone().evaluate(&input).unwrap().is_allow());
        g.bench_function(format!("evaluate-{}", t.name()), |b| {
            b.iter_batched(
                || compiled.clone(),
                |mut p| p.evaluate(black_box(&input)).unwrap(),
                BatchSize::SmallInput,
            )
        });
        if t == Template::Expiry {
            g.bench_function("compile-expiry", |b| {
                b.iter(|| {
                    Policy::compile(black_box(&text))
                        .map_err(sealtensors::Error::from)
                        .unwrap()
                })
            });
        }
    }
    g.finish();
}

/// The digest of a sign-only chunk (SPEC §5: SHA-256 through the library)
/// against BLAKE3 (the `blake3` crate, one thread), per 1 MiB chunk.
fn digest(c: &mut Criterion) {
    let data = random_bytes(CHUNK);
    let mut g = c.benchmark_group("digest_chunk");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    g.bench_function("sha256-sealtensors", |b| {
        b.iter(|| sealtensors::crypto::sha256(black_box(&data)))
    });
    g.bench_function("blake3", |b| b.iter(|| blake3::hash(black_box(&data))));
    g.finish();
}

criterion_group!(
    benches,
    chunk_open,
    digest,
    chunk_open_parallel,
    header_2000,
    slot_unwrap,
    policy
);
criterion_main!(benches);
