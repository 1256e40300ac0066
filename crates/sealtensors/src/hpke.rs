//! HPKE (RFC 9180), mode base, one suite: DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256, ChaCha20-Poly1305 (KEM 0x0020, KDF 0x0001, AEAD 0x0003).
//! SPEC §6.6: a key broker returns a released model key sealed with it to an
//! ephemeral key of the client's.
//!
//! aws-lc-rs offers no HPKE, so this wraps aws-lc's own `EVP_HPKE_*` through
//! `aws-lc-sys`, the same library build that aws-lc-rs links: one crypto
//! backend. This module is the only `unsafe` code of the crate. Every call is
//! to a C function whose contract (BoringSSL/aws-lc `openssl/hpke.h`) is
//! stated next to it; the two owned C objects, `EVP_HPKE_KEY` and
//! `EVP_HPKE_CTX`, each live in a wrapper that checks the pointer for null
//! when it is created and frees it exactly once, in `Drop`.

use std::ptr::NonNull;

use aws_lc_sys as ffi;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Length of an X25519 public key, of `enc`, and of a secret key.
pub const KEY_LEN: usize = 32;
/// ChaCha20-Poly1305 tag length: a ciphertext is this much longer than its plaintext.
pub const TAG_LEN: usize = 16;
/// The suite's name, for documents and messages.
pub const SUITE: &str = "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305";

/// The three algorithm descriptors of the suite. They are pointers to static
/// tables inside aws-lc.
fn suite() -> (
    *const ffi::EVP_HPKE_KEM,
    *const ffi::EVP_HPKE_KDF,
    *const ffi::EVP_HPKE_AEAD,
) {
    // SAFETY: these three functions take no argument, have no precondition
    // and return pointers to immutable static objects that live for the whole
    // program; they are never written through or freed.
    unsafe {
        (
            ffi::EVP_hpke_x25519_hkdf_sha256(),
            ffi::EVP_hpke_hkdf_sha256(),
            ffi::EVP_hpke_chacha20_poly1305(),
        )
    }
}

/// An X25519 secret key for HPKE (the recipient's side). Not `Debug`-printable
/// beyond its public half; aws-lc wipes the key when it is freed.
pub struct HpkeSecretKey {
    key: NonNull<ffi::EVP_HPKE_KEY>,
    public: [u8; KEY_LEN],
}

impl HpkeSecretKey {
    fn alloc() -> Result<NonNull<ffi::EVP_HPKE_KEY>> {
        // SAFETY: EVP_HPKE_KEY_new has no precondition; it returns a freshly
        // allocated, zero-initialised key or null on allocation failure, which
        // NonNull::new turns into an error. Ownership passes to the caller,
        // who stores it in a HpkeSecretKey whose Drop frees it.
        NonNull::new(unsafe { ffi::EVP_HPKE_KEY_new() })
            .ok_or(Error::Crypto("HPKE key allocation failed"))
    }

    fn finish(key: NonNull<ffi::EVP_HPKE_KEY>) -> Result<Self> {
        // Wrap first, so the key is freed on every path below.
        let mut k = HpkeSecretKey {
            key,
            public: [0u8; KEY_LEN],
        };
        let mut len = 0usize;
        // SAFETY: `k.key` is a valid, initialised EVP_HPKE_KEY owned by `k`;
        // `out` points to KEY_LEN writable bytes and `max_out` says so, so
        // aws-lc writes at most KEY_LEN bytes and stores the length in `len`.
        let ok = unsafe {
            ffi::EVP_HPKE_KEY_public_key(k.key.as_ptr(), k.public.as_mut_ptr(), &mut len, KEY_LEN)
        };
        if ok != 1 || len != KEY_LEN {
            return Err(Error::Crypto("HPKE public key export failed"));
        }
        Ok(k)
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self> {
        let key = Self::alloc()?;
        let kem = suite().0;
        // SAFETY: `key` is a valid EVP_HPKE_KEY just allocated; `kem` is the
        // static X25519 KEM descriptor.
        let ok = unsafe { ffi::EVP_HPKE_KEY_generate(key.as_ptr(), kem) };
        if ok != 1 {
            // SAFETY: `key` came from EVP_HPKE_KEY_new, is not stored anywhere
            // else, and is freed only here on this path.
            unsafe { ffi::EVP_HPKE_KEY_free(key.as_ptr()) };
            return Err(Error::Crypto("HPKE key generation failed"));
        }
        Self::finish(key)
    }

    /// From the raw 32-byte X25519 secret (RFC 9180 `SerializePrivateKey`).
    pub fn from_bytes(secret: &[u8; KEY_LEN]) -> Result<Self> {
        let key = Self::alloc()?;
        let kem = suite().0;
        // SAFETY: `key` is a valid EVP_HPKE_KEY just allocated; `secret`
        // points to exactly KEY_LEN readable bytes, the length passed; aws-lc
        // copies them and keeps no pointer to `secret`.
        let ok = unsafe { ffi::EVP_HPKE_KEY_init(key.as_ptr(), kem, secret.as_ptr(), KEY_LEN) };
        if ok != 1 {
            // SAFETY: as in `generate`: freed once, on this path only.
            unsafe { ffi::EVP_HPKE_KEY_free(key.as_ptr()) };
            return Err(Error::InvalidKey("X25519 HPKE secret key rejected".into()));
        }
        Self::finish(key)
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
        let mut ctx = Context::recipient(self, enc, info).ok()?;
        ctx.open(aad, ct)
    }
}

impl Drop for HpkeSecretKey {
    fn drop(&mut self) {
        // SAFETY: `self.key` was returned by EVP_HPKE_KEY_new, is owned only
        // by `self` (the type is neither Clone nor Copy and never hands the
        // pointer out), and Drop runs once, so it is freed exactly once.
        // EVP_HPKE_KEY_free cleans the key up (the secret is wiped by
        // aws-lc's OPENSSL_free) and releases the allocation.
        unsafe { ffi::EVP_HPKE_KEY_free(self.key.as_ptr()) }
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

/// An HPKE context (sender or recipient), freed once on drop.
struct Context(NonNull<ffi::EVP_HPKE_CTX>);

impl Context {
    fn alloc() -> Result<Context> {
        // SAFETY: EVP_HPKE_CTX_new has no precondition; it returns a
        // zero-initialised context or null, which becomes an error. The
        // pointer is owned by the returned Context, whose Drop frees it.
        NonNull::new(unsafe { ffi::EVP_HPKE_CTX_new() })
            .map(Context)
            .ok_or(Error::Crypto("HPKE context allocation failed"))
    }

    /// Sender: encapsulate to `pk`; returns the context and `enc`.
    fn sender(pk: &[u8; KEY_LEN], info: &[u8]) -> Result<(Context, [u8; KEY_LEN])> {
        Self::sender_inner(pk, info, None)
    }

    fn sender_inner(
        pk: &[u8; KEY_LEN],
        info: &[u8],
        seed: Option<&[u8]>,
    ) -> Result<(Context, [u8; KEY_LEN])> {
        let ctx = Context::alloc()?;
        let (kem, kdf, aead) = suite();
        let mut enc = [0u8; KEY_LEN];
        let mut enc_len = 0usize;
        let ok = match seed {
            // SAFETY: `ctx.0` is a valid, freshly allocated context owned by
            // `ctx`; `enc` has KEY_LEN writable bytes and `max_enc` says so;
            // `pk` and `info` are valid for the lengths passed (a zero-length
            // slice's pointer is non-null and never read); the descriptors are
            // static. aws-lc copies every input and keeps no pointer to them.
            None => unsafe {
                ffi::EVP_HPKE_CTX_setup_sender(
                    ctx.0.as_ptr(),
                    enc.as_mut_ptr(),
                    &mut enc_len,
                    KEY_LEN,
                    kem,
                    kdf,
                    aead,
                    pk.as_ptr(),
                    KEY_LEN,
                    info.as_ptr(),
                    info.len(),
                )
            },
            // SAFETY: as above; `seed` is valid for `seed.len()` bytes.
            Some(seed) => unsafe {
                ffi::EVP_HPKE_CTX_setup_sender_with_seed_for_testing(
                    ctx.0.as_ptr(),
                    enc.as_mut_ptr(),
                    &mut enc_len,
                    KEY_LEN,
                    kem,
                    kdf,
                    aead,
                    pk.as_ptr(),
                    KEY_LEN,
                    info.as_ptr(),
                    info.len(),
                    seed.as_ptr(),
                    seed.len(),
                )
            },
        };
        if ok != 1 || enc_len != KEY_LEN {
            return Err(Error::InvalidKey(
                "HPKE encapsulation failed: the recipient public key is not a usable X25519 key"
                    .into(),
            ));
        }
        Ok((ctx, enc))
    }

    /// Recipient: decapsulate `enc` with `key`.
    fn recipient(key: &HpkeSecretKey, enc: &[u8], info: &[u8]) -> Result<Context> {
        if enc.len() != KEY_LEN {
            return Err(Error::Crypto("HPKE enc has the wrong length"));
        }
        let ctx = Context::alloc()?;
        let (_, kdf, aead) = suite();
        // SAFETY: `ctx.0` is a fresh context owned by `ctx`; `key.key` is a
        // valid initialised key borrowed for the duration of the call (aws-lc
        // derives the key schedule during setup and keeps no pointer to the
        // key); `enc` and `info` are valid for the lengths passed.
        let ok = unsafe {
            ffi::EVP_HPKE_CTX_setup_recipient(
                ctx.0.as_ptr(),
                key.key.as_ptr(),
                kdf,
                aead,
                enc.as_ptr(),
                enc.len(),
                info.as_ptr(),
                info.len(),
            )
        };
        if ok != 1 {
            return Err(Error::Crypto("HPKE decapsulation failed"));
        }
        Ok(ctx)
    }

    fn seal(&mut self, aad: &[u8], pt: &[u8]) -> Result<Vec<u8>> {
        let max = pt
            .len()
            .checked_add(TAG_LEN)
            .ok_or(Error::Crypto("HPKE plaintext too long"))?;
        let mut out = vec![0u8; max];
        let mut out_len = 0usize;
        // SAFETY: `self.0` is a set-up context owned by `self` (`&mut self`
        // gives exclusive access: the sequence number is mutated); `out` has
        // `max` writable bytes, enough for pt plus the ChaCha20-Poly1305 tag,
        // and `max_out_len` says so; `pt` and `aad` are valid for their lengths
        // and do not overlap `out`.
        let ok = unsafe {
            ffi::EVP_HPKE_CTX_seal(
                self.0.as_ptr(),
                out.as_mut_ptr(),
                &mut out_len,
                max,
                pt.as_ptr(),
                pt.len(),
                aad.as_ptr(),
                aad.len(),
            )
        };
        if ok != 1 || out_len != max {
            return Err(Error::Crypto("HPKE seal failed"));
        }
        Ok(out)
    }

    fn open(&mut self, aad: &[u8], ct: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let mut out = Zeroizing::new(vec![0u8; ct.len()]);
        let mut out_len = 0usize;
        // SAFETY: `self.0` is a set-up recipient context owned by `self`;
        // `out` has ct.len() writable bytes (a plaintext is never longer than
        // its ciphertext) and `max_out_len` says so; `ct` and `aad` are valid
        // for their lengths and do not overlap `out`.
        let ok = unsafe {
            ffi::EVP_HPKE_CTX_open(
                self.0.as_ptr(),
                out.as_mut_ptr(),
                &mut out_len,
                ct.len(),
                ct.as_ptr(),
                ct.len(),
                aad.as_ptr(),
                aad.len(),
            )
        };
        if ok != 1 || out_len > ct.len() {
            return None;
        }
        out.truncate(out_len);
        Some(out)
    }

    #[cfg(test)]
    fn export(&self, context: &[u8], len: usize) -> Option<Vec<u8>> {
        let mut out = vec![0u8; len];
        // SAFETY: `self.0` is a set-up context; `out` has `len` writable bytes,
        // the length passed; `context` is valid for its length.
        let ok = unsafe {
            ffi::EVP_HPKE_CTX_export(
                self.0.as_ptr(),
                out.as_mut_ptr(),
                len,
                context.as_ptr(),
                context.len(),
            )
        };
        (ok == 1).then_some(out)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from EVP_HPKE_CTX_new and is owned only by
        // this Context (never copied out), so it is freed exactly once, here.
        // EVP_HPKE_CTX_free cleans up (wipes the key schedule) and frees it,
        // also when setup failed (the context is then merely zeroed).
        unsafe { ffi::EVP_HPKE_CTX_free(self.0.as_ptr()) }
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
    let (mut ctx, enc) = Context::sender(pk, info)?;
    let ct = ctx.seal(aad, pt)?;
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
    // aws-lc's deterministic sender takes the X25519 ephemeral secret skEm
    // itself as its seed (not ikmE).
    const SK_EM: &str = "f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600";
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
    // (exporter_context, exported_value), L = 32
    const EXPORTS: [(&str, &str); 3] = [
        (
            "",
            "4bbd6243b8bb54cec311fac9df81841b6fd61f56538a775e7c80a9f40160606e",
        ),
        (
            "00",
            "8c1df14732580e5501b00f82b10a1647b40713191b7c1240ac80e2b68808ba69",
        ),
        (
            "54657374436f6e74657874",
            "5acb09211139c43b3090489a9da433e8a30ee7188ba8b0a9a1ccf0c229283e53",
        ),
    ];

    fn sk_r() -> HpkeSecretKey {
        HpkeSecretKey::from_bytes(&hex(SK_RM).try_into().unwrap()).unwrap()
    }

    #[test]
    fn rfc9180_a2_recipient_key_derives_the_published_public_key() {
        assert_eq!(sk_r().public_key().to_vec(), hex(PK_RM));
    }

    #[test]
    fn rfc9180_a2_sender_with_published_ephemeral_key_matches_every_value() {
        let pk: [u8; 32] = hex(PK_RM).try_into().unwrap();
        let esk = HpkeSecretKey::from_bytes(&hex(SK_EM).try_into().unwrap()).unwrap();
        assert_eq!(esk.public_key().to_vec(), hex(PK_EM), "pkEm");
        let (mut ctx, enc) = Context::sender_inner(&pk, &hex(INFO), Some(&hex(SK_EM))).unwrap();
        assert_eq!(enc.to_vec(), hex(PK_EM), "enc");
        for (seq, aad, ct) in ENCRYPTIONS {
            assert_eq!(ctx.seal(&hex(aad), &hex(PT)).unwrap(), hex(ct), "seq {seq}");
        }
        for (c, v) in EXPORTS {
            assert_eq!(ctx.export(&hex(c), 32).unwrap(), hex(v), "export {c}");
        }
    }

    #[test]
    fn rfc9180_a2_recipient_opens_the_published_ciphertexts() {
        let mut ctx = Context::recipient(&sk_r(), &hex(PK_EM), &hex(INFO)).unwrap();
        for (seq, aad, ct) in ENCRYPTIONS {
            assert_eq!(
                ctx.open(&hex(aad), &hex(ct)).unwrap().to_vec(),
                hex(PT),
                "seq {seq}"
            );
        }
        for (c, v) in EXPORTS {
            assert_eq!(ctx.export(&hex(c), 32).unwrap(), hex(v), "export {c}");
        }
        // Single-shot open is sequence 0.
        let (_, aad, ct) = ENCRYPTIONS[0];
        let pt = sk_r().open(&hex(PK_EM), &hex(INFO), &hex(aad), &hex(ct));
        assert_eq!(pt.unwrap().to_vec(), hex(PT));
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
        let mut e = enc;
        e[0] ^= 1;
        assert!(sk.open(&e, b"info", b"aad", &ct).is_none(), "tampered enc");
        assert!(
            sk.open(&enc[..31], b"info", b"aad", &ct).is_none(),
            "short enc"
        );
        assert!(
            sk.open(&enc, b"info", b"aad", &ct[..15]).is_none(),
            "short ct"
        );
        assert!(sk.open(&enc, b"info", b"aad", &[]).is_none(), "empty ct");
    }

    #[test]
    fn low_order_public_keys_are_refused() {
        // The all-zero point gives an all-zero shared secret (RFC 7748 §6.1).
        assert!(seal(&[0u8; 32], b"", b"", b"x").is_err());
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
    fn debug_is_redacted() {
        let sk = sk_r();
        let d = format!("{sk:?}");
        assert!(d.contains("redacted") && !d.to_lowercase().contains(SK_RM));
    }
}
