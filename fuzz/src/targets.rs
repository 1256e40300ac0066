//! The bodies of the fuzz targets. Also compiled into
//! `crates/sealtensors/tests/fuzz_corpus.rs` (by `#[path]`), which replays
//! every corpus file through them without libFuzzer. Only `sealtensors` and
//! `std` may be used here.

use std::path::Path;

use sealtensors::keys::{SigningKey, X25519Identity};
use sealtensors::{seal, Header, OpenOptions, SealedFile};

/// The secret of the identity the `open` target holds; seed files are sealed to it.
pub const IDENTITY_SECRET: [u8; 32] = [7u8; 32];
/// The seed of the signer of the signed seed files (the `open` target trusts nobody).
pub const SIGNER_SEED: [u8; 32] = [9u8; 32];
/// The clock the `open` target uses for expiry.
pub const NOW: u64 = 1_700_000_000;

/// The identity of the `open` target.
pub fn identity() -> X25519Identity {
    X25519Identity::from_secret_bytes(IDENTITY_SECRET).expect("a valid X25519 secret")
}

/// The signer of the seed files.
pub fn signer() -> SigningKey {
    SigningKey::from_seed(SIGNER_SEED).expect("a valid Ed25519 seed")
}

fn check_header(h: &Header) {
    // Seal metadata: any result but a panic.
    if seal::is_sealed(h) {
        let _ = seal::parse(h);
    }
    let _ = seal::signed_message(h);
    // What the writer makes of a parsed header parses back to the same thing.
    let bytes = h.to_bytes();
    let back = Header::parse_json(&bytes[8..]).expect("a re-serialised header parses");
    assert_eq!(
        back.tensors, h.tensors,
        "tensor table changed on re-serialisation"
    );
    assert_eq!(
        back.metadata, h.metadata,
        "metadata changed on re-serialisation"
    );
}

/// `header`: the container parser on a whole file, and on the JSON alone.
pub fn header(data: &[u8]) {
    if let Ok(h) = Header::parse_buffer(data) {
        check_header(&h);
        assert_eq!(h.data_start() as usize + h.data_len(), data.len());
    }
    if data.len() >= 8 {
        let _ = Header::parse_len(&data[..8]);
        if let Ok(h) = Header::parse_json(&data[8..]) {
            check_header(&h);
        }
    }
}

/// `open`: write the bytes to `dir`, open them with a fixed identity and
/// read every tensor (and verify and unseal) - any error, never a panic.
pub fn open(data: &[u8], dir: &Path) {
    let p = dir.join("input.safetensors");
    if std::fs::write(&p, data).is_err() {
        return;
    }
    let id = identity();
    let o = OpenOptions {
        identities: vec![&id],
        now: Some(NOW),
        ..Default::default()
    };
    let Ok(f) = SealedFile::open(&p, &o) else {
        return;
    };
    for t in f.tensors().to_vec() {
        if let Ok(b) = f.read_tensor(&t.name) {
            assert_eq!(b.len(), t.len());
        }
        if t.len() > 2 {
            let mut one = [0u8; 1];
            let _ = f.read_range_into(&t.name, t.len() / 2, t.len() / 2 + 1, &mut one);
        }
    }
    let _ = f.verify_data();
    let _ = f.metadata();
    let out = dir.join("unsealed.safetensors");
    if f.unseal_to(&out, true).is_ok() {
        let plain = std::fs::read(&out).expect("the unsealed file");
        Header::parse_buffer(&plain).expect("an unsealed file parses");
    }
}
