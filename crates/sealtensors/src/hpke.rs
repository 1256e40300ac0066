//! HPKE (RFC 9180), mode base, one suite: DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256, ChaCha20-Poly1305 (KEM 0x0020, KDF 0x0001, AEAD 0x0003).
//! SPEC §6.6: a key broker returns a released model key sealed with it to an
//! ephemeral key of the client's.
//!
//! aws-lc-rs offers no HPKE API; rustls, which this crate already links for
//! the broker client's TLS, ships a safe Rust HPKE on the same aws-lc-rs
//! provider (`rustls::crypto::aws_lc_rs::hpke`): X25519 through
//! `aws_lc_rs::agreement`, HKDF through aws-lc-rs HMAC, the AEAD through
//! `aws_lc_rs::aead`. This module uses that suite; it holds no `unsafe` code
//! (the crate forbids it) and the wire format is unchanged: same suite ids,
//! same mode, same `enc` and ciphertext bytes.
//!
//! Secrets: the recipient's secret lives in rustls's `HpkePrivateKey`, which
//! wipes its bytes on drop; the AEAD key and the KEM shared secret are wiped
//! by rustls on drop; a plaintext returned by [`HpkeSecretKey::open`] is in a
//! [`Zeroizing`] buffer. Copies escape us on both sides, inside rustls
//! 0.23: its key schedule builds the labeled HKDF input (which holds the raw
//! X25519 output) and the extracted PRKs in plain `Vec`s that are freed
//! unwiped; its open decrypts into a scratch `Vec` and frees it unwiped; its
//! seal copies the plaintext into a `Vec` that grows for the tag before
//! encrypting (aws-lc-rs `seal_in_place_append_tag`), freeing that copy
//! unwiped. So each release leaves, in freed heap memory of the client and
//! of the broker, the model key and material from which the release's AEAD
//! key can be rebuilt. The FFI wrapper kept all of it inside aws-lc, which
//! wipes; this is the price of no `unsafe`, until rustls wipes its buffers.
//! docs/threat-model.md ("Key hygiene") states the consequence.
//!
//! Test vectors (RFC 9180 A.2, this suite, mode base). The earlier FFI wrapper
//! also checked the sender against the RFC with aws-lc's seeded sender, and
//! the exporter values. Neither can be checked now: rustls's fixed-ephemeral
//! sender is `#[cfg(test)]` inside rustls, and rustls exposes no exporter
//! (nothing here used `export` outside tests, so dropping it loses no
//! function). What is checked: the recipient opens the RFC's ciphertexts for
//! sequence numbers 0, 1 and 2 (0 through the single-shot [`HpkeSecretKey::open`],
//! all three through rustls's opener context, which advances the sequence;
//! the RFC's later ones, 4 and up, need the missing 3 first), the public key
//! derived from skRm is pkRm, the suite ids rustls reports are exactly ours,
//! and the sender is tied to the RFC through the recipient: its messages open
//! with the RFC-checked recipient, and every binding (key, info, aad, enc,
//! ciphertext, length) is refused when changed.

use aws_lc_rs::agreement::{PrivateKey, X25519};
use rustls::crypto::aws_lc_rs::hpke::DH_KEM_X25519_HKDF_SHA256_CHACHA20_POLY1305 as RUSTLS_SUITE;
use rustls::crypto::hpke::{EncapsulatedSecret, Hpke, HpkePrivateKey, HpkePublicKey};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Length of an X25519 public key, of `enc`, and of a secret key.
pub const KEY_LEN: usize = 32;
/// ChaCha20-Poly1305 tag length: a ciphertext is this much longer than its plaintext.
pub const TAG_LEN: usize = 16;
/// The suite's name, for documents and messages.
pub const SUITE: &str = "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305";

/// An X25519 secret key for HPKE (the recipient's side). Not `Debug`-printable
/// beyond its public half; the secret bytes are wiped on drop.
pub struct HpkeSecretKey {
    secret: HpkePrivateKey,
    public: [u8; KEY_LEN],
}

/// The X25519 public key of `secret` (RFC 9180 `SerializePublicKey(pk(skR))`),
/// by aws-lc-rs.
fn public_of(secret: &[u8]) -> Result<[u8; KEY_LEN]> {
    let sk = PrivateKey::from_private_key(&X25519, secret)
        .map_err(|_| Error::InvalidKey("X25519 HPKE secret key rejected".into()))?;
    let pk = sk
        .compute_public_key()
        .map_err(|_| Error::Crypto("HPKE public key export failed"))?;
    pk.as_ref()
        .try_into()
        .map_err(|_| Error::Crypto("HPKE public key export failed"))
}

impl HpkeSecretKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self> {
        let (_, secret) = RUSTLS_SUITE
            .generate_key_pair()
            .map_err(|_| Error::Crypto("HPKE key generation failed"))?;
        // The public half is derived from the secret as in `from_bytes`, so a
        // key has one public key however it was made.
        let public = public_of(secret.secret_bytes())?;
        Ok(HpkeSecretKey { secret, public })
    }

    /// From the raw 32-byte X25519 secret (RFC 9180 `SerializePrivateKey`).
    pub fn from_bytes(secret: &[u8; KEY_LEN]) -> Result<Self> {
        let public = public_of(secret)?;
        Ok(HpkeSecretKey {
            secret: HpkePrivateKey::from(secret.to_vec()),
            public,
        })
    }

    /// The public key (RFC 9180 `SerializePublicKey`).
    pub fn public_key(&self) -> [u8; KEY_LEN] {
        self.public
    }

    /// Open a single message sealed by [`seal`] to this key: `None` when it
    /// does not authenticate (wrong key, info, aad, enc or ciphertext).
    pub fn open(
        &self,
        enc: &[u8],
        info: &[u8],
        aad: &[u8],
        ct: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        if enc.len() != KEY_LEN || ct.len() < TAG_LEN {
            return None;
        }
        RUSTLS_SUITE
            .open(
                &EncapsulatedSecret(enc.to_vec()),
                info,
                aad,
                ct,
                &self.secret,
            )
            .ok()
            .map(Zeroizing::new)
    }
}

impl std::fmt::Debug for HpkeSecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HpkeSecretKey(public: {}, secret: <redacted>)",
            crate::keys::b64(&self.public)
        )
    }
}

/// Seal one message to `pk` (RFC 9180 single-shot `Seal` in mode base):
/// returns `enc` (the ephemeral public key) and the ciphertext.
pub fn seal(
    pk: &[u8; KEY_LEN],
    info: &[u8],
    aad: &[u8],
    pt: &[u8],
) -> Result<([u8; KEY_LEN], Vec<u8>)> {
    // Set up and seal in two steps, so a bad key and a failed seal say so.
    let (enc, mut sealer) = RUSTLS_SUITE
        .setup_sealer(info, &HpkePublicKey(pk.to_vec()))
        .map_err(|_| {
            Error::InvalidKey(
                "HPKE encapsulation failed: the recipient public key is not a usable X25519 key"
                    .into(),
            )
        })?;
    let enc: [u8; KEY_LEN] = enc
        .0
        .as_slice()
        .try_into()
        .map_err(|_| Error::Crypto("HPKE enc has the wrong length"))?;
    let ct = sealer
        .seal(aad, pt)
        .map_err(|_| Error::Crypto("HPKE seal failed"))?;
    if pt.len().checked_add(TAG_LEN) != Some(ct.len()) {
        return Err(Error::Crypto("HPKE seal failed"));
    }
    Ok((enc, ct))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // RFC 9180 Appendix A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
    // ChaCha20Poly1305, mode base (mode 0, kem 32, kdf 1, aead 3).
    const INFO: &str = "4f6465206f6e2061204772656369616e2055726e";
    // enc = pkEm.
    const PK_EM: &str = "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a";
    const PK_RM: &str = "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a";
    const SK_RM: &str = "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb";
    const PT: &str = "4265617574792069732074727574682c20747275746820626561757479";
    // (sequence number, aad, ct)
    const ENCRYPTIONS: [(u64, &str, &str); 3] = [
        (
            0,
            "436f756e742d30",
            "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28",
        ),
        (
            1,
            "436f756e742d31",
            "6b53c051e4199c518de79594e1c4ab18b96f081549d45ce015be002090bb119e85285337cc95ba5f59992dc98c",
        ),
        (
            2,
            "436f756e742d32",
            "71146bd6795ccc9c49ce25dda112a48f202ad220559502cef1f34271e0cb4b02b4f10ecac6f48c32f878fae86b",
        ),
    ];

    fn sk_r() -> HpkeSecretKey {
        HpkeSecretKey::from_bytes(&hex(SK_RM).try_into().unwrap()).unwrap()
    }

    #[test]
    fn the_suite_is_x25519_hkdf_sha256_chacha20_poly1305() {
        let s = RUSTLS_SUITE.suite();
        assert_eq!(u16::from(s.kem), 0x0020, "KEM");
        assert_eq!(u16::from(s.sym.kdf_id), 0x0001, "KDF");
        assert_eq!(u16::from(s.sym.aead_id), 0x0003, "AEAD");
    }

    #[test]
    fn rfc9180_a2_recipient_key_derives_the_published_public_key() {
        assert_eq!(sk_r().public_key().to_vec(), hex(PK_RM));
    }

    #[test]
    fn rfc9180_a2_recipient_opens_the_published_ciphertexts() {
        // Single-shot open is sequence 0.
        let (_, aad, ct) = ENCRYPTIONS[0];
        let pt = sk_r().open(&hex(PK_EM), &hex(INFO), &hex(aad), &hex(ct));
        assert_eq!(pt.unwrap().to_vec(), hex(PT));
        // ... so it refuses the later ones (their nonces differ).
        for (seq, aad, ct) in &ENCRYPTIONS[1..] {
            assert!(
                sk_r()
                    .open(&hex(PK_EM), &hex(INFO), &hex(aad), &hex(ct))
                    .is_none(),
                "seq {seq} opened as seq 0"
            );
        }

        // The opener context advances the sequence on each success, and only
        // on success: a message out of turn is refused and changes nothing.
        let sk = sk_r();
        let mut ctx = RUSTLS_SUITE
            .setup_opener(&EncapsulatedSecret(hex(PK_EM)), &hex(INFO), &sk.secret)
            .unwrap();
        let (_, aad2, ct2) = ENCRYPTIONS[2];
        assert!(ctx.open(&hex(aad2), &hex(ct2)).is_err(), "seq 2 at seq 0");
        for (seq, aad, ct) in ENCRYPTIONS {
            assert_eq!(ctx.open(&hex(aad), &hex(ct)).unwrap(), hex(PT), "seq {seq}");
        }
    }

    #[test]
    fn sealed_to_the_rfc_key_opens_with_the_rfc_key() {
        // The sender is checked through the RFC-checked recipient.
        let pk: [u8; KEY_LEN] = hex(PK_RM).try_into().unwrap();
        for (seq, aad, _) in ENCRYPTIONS {
            let (enc, ct) = seal(&pk, &hex(INFO), &hex(aad), &hex(PT)).unwrap();
            assert_eq!(ct.len(), hex(PT).len() + TAG_LEN);
            let pt = sk_r().open(&enc, &hex(INFO), &hex(aad), &ct);
            assert_eq!(pt.unwrap().to_vec(), hex(PT), "aad of seq {seq}");
        }
    }

    #[test]
    fn round_trip_and_every_binding_fails_when_changed() {
        let sk = HpkeSecretKey::generate().unwrap();
        let (enc, ct) = seal(&sk.public_key(), b"info", b"aad", b"model key").unwrap();
        assert_eq!(ct.len(), 9 + TAG_LEN);
        assert_eq!(
            sk.open(&enc, b"info", b"aad", &ct).unwrap().as_slice(),
            b"model key"
        );
        let other = HpkeSecretKey::generate().unwrap();
        assert!(
            other.open(&enc, b"info", b"aad", &ct).is_none(),
            "wrong key"
        );
        assert!(sk.open(&enc, b"infx", b"aad", &ct).is_none(), "wrong info");
        assert!(sk.open(&enc, b"info", b"aae", &ct).is_none(), "wrong aad");
        for i in 0..ct.len() {
            let mut t = ct.clone();
            t[i] ^= 1;
            assert!(sk.open(&enc, b"info", b"aad", &t).is_none(), "byte {i}");
        }
        for i in 0..enc.len() {
            let mut e = enc;
            e[i] ^= 1;
            assert!(sk.open(&e, b"info", b"aad", &ct).is_none(), "enc byte {i}");
        }
        assert!(
            sk.open(&enc[..31], b"info", b"aad", &ct).is_none(),
            "short enc"
        );
        let mut long_enc = enc.to_vec();
        long_enc.push(0);
        assert!(
            sk.open(&long_enc, b"info", b"aad", &ct).is_none(),
            "long enc"
        );
        assert!(sk.open(&[], b"info", b"aad", &ct).is_none(), "empty enc");
        for n in 0..ct.len() {
            assert!(
                sk.open(&enc, b"info", b"aad", &ct[..n]).is_none(),
                "ct cut to {n}"
            );
        }
        let mut long_ct = ct.clone();
        long_ct.push(0);
        assert!(
            sk.open(&enc, b"info", b"aad", &long_ct).is_none(),
            "long ct"
        );
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let sk = HpkeSecretKey::generate().unwrap();
        let (enc, ct) = seal(&sk.public_key(), b"", b"", b"").unwrap();
        assert_eq!(ct.len(), TAG_LEN);
        assert!(sk.open(&enc, b"", b"", &ct).unwrap().is_empty());
    }

    #[test]
    fn low_order_public_keys_are_refused() {
        // u = 0 and u = 1 give an all-zero shared secret (RFC 7748 §6.1),
        // which aws-lc-rs's X25519 agreement refuses.
        let mut one = [0u8; KEY_LEN];
        one[0] = 1;
        for pk in [[0u8; KEY_LEN], one] {
            assert!(matches!(
                seal(&pk, b"", b"", b"x"),
                Err(Error::InvalidKey(_))
            ));
        }
        // The same for a recipient handed such an `enc`.
        let sk = HpkeSecretKey::generate().unwrap();
        let (_, ct) = seal(&sk.public_key(), b"", b"", b"x").unwrap();
        assert!(sk.open(&[0u8; KEY_LEN], b"", b"", &ct).is_none());
        assert!(sk.open(&one, b"", b"", &ct).is_none());
    }

    #[test]
    fn fresh_encapsulation_each_time() {
        let sk = HpkeSecretKey::generate().unwrap();
        let a = seal(&sk.public_key(), b"", b"", b"same").unwrap();
        let b = seal(&sk.public_key(), b"", b"", b"same").unwrap();
        assert_ne!(a.0, b.0);
        assert_ne!(a.1, b.1);
    }

    #[test]
    fn generated_keys_differ_and_know_their_public_half() {
        let a = HpkeSecretKey::generate().unwrap();
        let b = HpkeSecretKey::generate().unwrap();
        assert_ne!(a.public_key(), b.public_key());
        let again =
            HpkeSecretKey::from_bytes(&a.secret.secret_bytes().try_into().unwrap()).unwrap();
        assert_eq!(again.public_key(), a.public_key());
    }

    #[test]
    fn debug_is_redacted() {
        let sk = sk_r();
        let d = format!("{sk:?}");
        assert!(d.contains("redacted") && !d.to_lowercase().contains(SK_RM));
        assert!(!d.contains(&crate::keys::b64(&hex(SK_RM))));
        assert!(d.contains(&crate::keys::b64(&hex(PK_RM))));
    }
}
