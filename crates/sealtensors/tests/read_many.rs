//! `SealedFile::read_tensors`: many tensors in one parallel pass, with the
//! same checks as a tensor at a time.

mod common;

use common::*;
use sealtensors::{Error, OpenOptions, SealedFile};

fn names(f: &SealedFile) -> Vec<String> {
    f.tensors().iter().map(|t| t.name.clone()).collect()
}

fn check_all(fx: &Fixture, f: &SealedFile) {
    let all = names(f);
    let mut order: Vec<&str> = all.iter().map(String::as_str).collect();
    order.reverse();
    order.push("ids"); // the same tensor twice
    let got = f.read_tensors(&order).unwrap();
    assert_eq!(got.len(), order.len());
    for (n, bytes) in order.iter().zip(&got) {
        assert_eq!(bytes.as_slice(), fx.model.data(n), "{n}");
    }
    assert!(f.read_tensors(&[]).unwrap().is_empty());
}

#[test]
fn every_mode_reads_the_same_bytes_as_one_at_a_time() {
    let fx = Fixture::new();
    let aes = fx.seal("aes.safetensors", |_| {});
    let chacha = fx.seal("chacha.safetensors", |o| {
        o.cipher = sealtensors::Cipher::ChaCha20Poly1305
    });
    let part = fx.seal("part.safetensors", |o| {
        o.encrypt = Some(vec!["layer.*".into()])
    });
    for p in [&aes, &chacha, &part] {
        check_all(&fx, &fx.open(p).unwrap());
    }
    let sign_only = fx.seal("signonly.safetensors", |o| o.recipients.clear());
    let trusting = OpenOptions {
        trusted: vec![fx.signer.verifying_key()],
        ..Default::default()
    };
    check_all(&fx, &SealedFile::open(&sign_only, &trusting).unwrap());
    check_all(
        &fx,
        &SealedFile::open(&fx.plain, &OpenOptions::default()).unwrap(),
    );
}

#[test]
fn one_tampered_chunk_fails_the_whole_read_and_names_it() {
    let fx = Fixture::new();
    for (label, p) in [
        ("aes", fx.seal("aes.safetensors", |_| {})),
        (
            "sign-only",
            fx.seal("signonly.safetensors", |o| o.recipients.clear()),
        ),
    ] {
        let raw = std::fs::read(&p).unwrap();
        let f0 = SealedFile::open(&fx.plain, &OpenOptions::default()).unwrap();
        let t = f0.tensor("embed.weight").unwrap().clone();
        let h = sealtensors::format::Header::parse_json(
            &raw[8..8 + u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize],
        )
        .unwrap();
        let mut bad = raw.clone();
        // the third chunk (4 KiB chunks) of embed.weight
        bad[h.data_start() as usize + t.begin + 2 * 4096 + 7] ^= 1;
        let q = fx.path(&format!("bad-{label}.safetensors"));
        std::fs::write(&q, &bad).unwrap();
        let opts = OpenOptions {
            identities: vec![&fx.id],
            trusted: vec![fx.signer.verifying_key()],
            ..Default::default()
        };
        let f = SealedFile::open(&q, &opts).unwrap();
        let all = names(&f);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let e = f.read_tensors(&refs).unwrap_err();
        assert!(
            matches!(e.kind(), Error::ChunkAuthFailed { name, chunk: 2 } if name == "embed.weight"),
            "{label}: {e:?}"
        );
        // Tensors that do not include the tampered chunk still read.
        assert_eq!(
            f.read_tensors(&["ids", "mask"]).unwrap()[0],
            fx.model.data("ids")
        );
    }
}

#[test]
fn unknown_names_and_missing_keys_are_refused() {
    let fx = Fixture::new();
    let p = fx.seal("aes.safetensors", |_| {});
    let f = fx.open(&p).unwrap();
    let e = f.read_tensors(&["ids", "nope"]).unwrap_err();
    assert!(format!("{e}").contains("nope"), "{e}");
    let locked = SealedFile::open(
        &p,
        &OpenOptions {
            locked: true,
            ..Default::default()
        },
    )
    .unwrap();
    let e = locked.read_tensors(&["ids"]).unwrap_err();
    assert!(matches!(e.kind(), Error::NoMatchingKey { .. }), "{e:?}");
}
