//! The one place that runs crypto. Every primitive comes from aws-lc-rs,
//! except Argon2id (SPEC §6.3), which aws-lc-rs does not offer.
//!
//! Labels: every derivation and every associated-data string starts with a
//! domain-separation label from SPEC §4, so no value computed for one purpose
//! can be replayed for another.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::rand::{self, SecureRandom};
use aws_lc_rs::{digest, hkdf, hmac};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// AEAD tag length for both ciphers (SPEC §5).
pub const TAG_LEN: usize = 16;
/// SHA-256 output length.
pub const DIGEST_LEN: usize = 32;

/// The AEAD used for tensor chunks (SPEC §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Cipher {
    /// AES-256-GCM, the default.
    #[default]
    Aes256Gcm,
    /// ChaCha20-Poly1305, for machines without AES instructions.
    ChaCha20Poly1305,
}

impl Cipher {
    /// The identifier written in the seal metadata.
    pub fn id(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm => "aes-256-gcm",
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }
    /// Parse an identifier.
    pub fn from_id(s: &str) -> Option<Cipher> {
        match s {
            "aes-256-gcm" => Some(Cipher::Aes256Gcm),
            "chacha20-poly1305" => Some(Cipher::ChaCha20Poly1305),
            _ => None,
        }
    }
    fn alg(self) -> &'static aead::Algorithm {
        match self {
            Cipher::Aes256Gcm => &aead::AES_256_GCM,
            Cipher::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

impl std::str::FromStr for Cipher {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Cipher::from_id(s).ok_or_else(|| {
            Error::Config(format!(
                "unknown cipher {s:?}; use aes-256-gcm or chacha20-poly1305"
            ))
        })
    }
}

/// A 256-bit secret that is wiped on drop and never printed.
pub struct Secret32(Zeroizing<[u8; 32]>);

impl Secret32 {
    /// Wrap bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Secret32(Zeroizing::new(b))
    }
    /// A fresh random secret.
    pub fn random() -> Result<Self> {
        let mut b = Zeroizing::new([0u8; 32]);
        fill_random(&mut b[..])?;
        Ok(Secret32(b))
    }
    /// The bytes.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Clone for Secret32 {
    fn clone(&self) -> Self {
        Secret32(Zeroizing::new(*self.0))
    }
}

impl std::fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret32(<redacted>)")
    }
}

/// Fill with bytes from the system CSPRNG.
pub fn fill_random(out: &mut [u8]) -> Result<()> {
    rand::SystemRandom::new()
        .fill(out)
        .map_err(|_| Error::Crypto("the system random generator failed"))
}

/// Random array.
pub fn random_array<const N: usize>() -> Result<[u8; N]> {
    let mut a = [0u8; N];
    fill_random(&mut a)?;
    Ok(a)
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// HKDF-SHA256 (RFC 5869) to 32 bytes.
pub fn hkdf32(ikm: &[u8], salt: &[u8], info: &[&[u8]]) -> Result<Secret32> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let okm = prk
        .expand(info, Len32)
        .map_err(|_| Error::Crypto("HKDF expand failed"))?;
    let mut out = Zeroizing::new([0u8; 32]);
    okm.fill(&mut out[..])
        .map_err(|_| Error::Crypto("HKDF fill failed"))?;
    Ok(Secret32(out))
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    let tag = ctx.sign();
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// SHA-256.
pub fn sha256(data: &[u8]) -> [u8; DIGEST_LEN] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; DIGEST_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

/// Constant-time equality.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// An AEAD key bound to one tensor (SPEC §5.2): each key encrypts exactly one
/// tensor, and the nonce is the chunk index, so a nonce never repeats under a key.
pub struct ChunkKey {
    key: LessSafeKey,
}

impl ChunkKey {
    /// Build from a derived tensor key.
    pub fn new(cipher: Cipher, key: &Secret32) -> Result<Self> {
        let k = UnboundKey::new(cipher.alg(), key.expose())
            .map_err(|_| Error::Crypto("AEAD key setup failed"))?;
        Ok(ChunkKey {
            key: LessSafeKey::new(k),
        })
    }

    /// Encrypt one chunk in place, returning its tag.
    pub fn seal(&self, index: u64, aad: &[u8], in_out: &mut [u8]) -> Result<[u8; TAG_LEN]> {
        let tag = self
            .key
            .seal_in_place_separate_tag(chunk_nonce(index), Aad::from(aad), in_out)
            .map_err(|_| Error::Crypto("AEAD seal failed"))?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypt one chunk in place; `false` when the tag does not verify (the
    /// buffer then holds unspecified bytes and must be discarded).
    pub fn open(&self, index: u64, aad: &[u8], tag: &[u8], in_out: &mut [u8]) -> bool {
        self.key
            .open_in_place_separate_tag(chunk_nonce(index), Aad::from(aad), tag, in_out)
            .is_ok()
    }
}

/// SPEC §5.3: the 96-bit nonce is 4 zero bytes then the chunk index, big-endian.
fn chunk_nonce(index: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The AEADs of CryptoTensors files (SPEC appendix A), read only: their
/// algorithm names, key lengths and the one extra cipher, AES-128-GCM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForeignCipher {
    /// `aes128gcm`.
    Aes128Gcm,
    /// `aes256gcm`.
    Aes256Gcm,
    /// `chacha20poly1305`.
    ChaCha20Poly1305,
}

impl ForeignCipher {
    /// Parse a CryptoTensors `alg` as their reader does: `-` removed, case ignored.
    pub fn from_alg(alg: &str) -> Option<ForeignCipher> {
        match alg.replace('-', "").to_ascii_lowercase().as_str() {
            "aes128gcm" => Some(ForeignCipher::Aes128Gcm),
            "aes256gcm" => Some(ForeignCipher::Aes256Gcm),
            "chacha20poly1305" => Some(ForeignCipher::ChaCha20Poly1305),
            _ => None,
        }
    }
    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            ForeignCipher::Aes128Gcm => "aes128gcm",
            ForeignCipher::Aes256Gcm => "aes256gcm",
            ForeignCipher::ChaCha20Poly1305 => "chacha20poly1305",
        }
    }
    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            ForeignCipher::Aes128Gcm => 16,
            ForeignCipher::Aes256Gcm | ForeignCipher::ChaCha20Poly1305 => 32,
        }
    }
    fn alg(self) -> &'static aead::Algorithm {
        match self {
            ForeignCipher::Aes128Gcm => &aead::AES_128_GCM,
            ForeignCipher::Aes256Gcm => &aead::AES_256_GCM,
            ForeignCipher::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// A key of another format's AEAD, opened with the nonce and tag that format
/// stores and no associated data: what CryptoTensors files use for their
/// data keys and tensor data (SPEC appendix A). Decryption only: sealtensors
/// never writes with explicit nonces. The key bytes live inside aws-lc-rs.
pub struct ForeignKey {
    key: LessSafeKey,
    cipher: ForeignCipher,
}

impl ForeignKey {
    /// Build from raw key bytes, which must have the cipher's length.
    pub fn new(cipher: ForeignCipher, key: &[u8]) -> Result<Self> {
        if key.len() != cipher.key_len() {
            return Err(Error::InvalidKey(format!(
                "a {} key has {} bytes, this one {}",
                cipher.name(),
                cipher.key_len(),
                key.len()
            )));
        }
        let k = UnboundKey::new(cipher.alg(), key)
            .map_err(|_| Error::Crypto("AEAD key setup failed"))?;
        Ok(ForeignKey {
            key: LessSafeKey::new(k),
            cipher,
        })
    }

    /// The cipher.
    pub fn cipher(&self) -> ForeignCipher {
        self.cipher
    }

    /// Decrypt in place with an explicit 96-bit nonce and empty associated
    /// data; `false` when the tag does not verify (the buffer then holds
    /// unspecified bytes and must be discarded).
    pub fn open(&self, nonce: &[u8; 12], tag: &[u8; TAG_LEN], in_out: &mut [u8]) -> bool {
        self.key
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::empty(),
                tag,
                in_out,
            )
            .is_ok()
    }

    /// Unwrap a data key stored as `ciphertext`, nonce, tag: decrypted into
    /// zeroizing memory, or `None` when it does not authenticate.
    pub fn unwrap(
        &self,
        nonce: &[u8; 12],
        tag: &[u8; TAG_LEN],
        wrapped: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        let mut buf = Zeroizing::new(wrapped.to_vec());
        self.open(nonce, tag, &mut buf).then_some(buf)
    }
}

/// An ECDSA key pair on NIST P-256 with SHA-256, signatures DER-encoded:
/// the key type OpenSSF model signing's `key` method signs with (docs/oms.md).
pub struct EcdsaP256Key {
    pair: aws_lc_rs::signature::EcdsaKeyPair,
}

impl EcdsaP256Key {
    /// From a DER private key: PKCS#8, or SEC1 (`EC PRIVATE KEY`).
    pub fn from_der(der: &[u8]) -> Result<Self> {
        use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der)
            .or_else(|_| EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, der))
            .map_err(|_| {
                Error::InvalidKey("not an ECDSA P-256 private key (PKCS#8 or SEC1 DER)".into())
            })?;
        Ok(EcdsaP256Key { pair })
    }
    /// A fresh key, as PKCS#8 DER (wiped when dropped).
    pub fn generate_pkcs8() -> Result<Zeroizing<Vec<u8>>> {
        use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
        let doc = EcdsaKeyPair::generate_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &rand::SystemRandom::new(),
        )
        .map_err(|_| Error::Crypto("ECDSA key generation failed"))?;
        Ok(Zeroizing::new(doc.as_ref().to_vec()))
    }
    /// The public key as a DER SubjectPublicKeyInfo.
    pub fn public_spki_der(&self) -> Result<Vec<u8>> {
        use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
        use aws_lc_rs::signature::KeyPair;
        let der: PublicKeyX509Der<'static> = self
            .pair
            .public_key()
            .as_der()
            .map_err(|_| Error::Crypto("encoding the ECDSA public key failed"))?;
        Ok(der.as_ref().to_vec())
    }
    /// Sign `msg` (hashed with SHA-256): a DER-encoded signature.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let sig = self
            .pair
            .sign(&rand::SystemRandom::new(), msg)
            .map_err(|_| Error::Crypto("ECDSA signing failed"))?;
        Ok(sig.as_ref().to_vec())
    }
}

impl std::fmt::Debug for EcdsaP256Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EcdsaP256Key(<redacted>)")
    }
}

/// The NIST curves OpenSSF model signing accepts, each with its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcdsaCurve {
    /// P-256 with SHA-256.
    P256,
    /// P-384 with SHA-384.
    P384,
    /// P-521 with SHA-512.
    P521,
}

/// Verify a DER-encoded ECDSA signature over `msg` with a public key given
/// as a DER SubjectPublicKeyInfo of `curve`.
pub fn ecdsa_verify(curve: EcdsaCurve, spki_der: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    use aws_lc_rs::signature::{
        UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1, ECDSA_P521_SHA512_ASN1,
    };
    let alg = match curve {
        EcdsaCurve::P256 => &ECDSA_P256_SHA256_ASN1,
        EcdsaCurve::P384 => &ECDSA_P384_SHA384_ASN1,
        EcdsaCurve::P521 => &ECDSA_P521_SHA512_ASN1,
    };
    UnparsedPublicKey::new(alg, spki_der)
        .verify(msg, sig)
        .is_ok()
}

/// The curve of a DER SubjectPublicKeyInfo, when it is an EC key on one of
/// [`EcdsaCurve`]'s (the key is parsed and checked on the curve).
pub fn ecdsa_curve_of(spki_der: &[u8]) -> Option<EcdsaCurve> {
    use aws_lc_rs::signature::{
        ParsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1, ECDSA_P521_SHA512_ASN1,
    };
    [
        (EcdsaCurve::P256, &ECDSA_P256_SHA256_ASN1),
        (EcdsaCurve::P384, &ECDSA_P384_SHA384_ASN1),
        (EcdsaCurve::P521, &ECDSA_P521_SHA512_ASN1),
    ]
    .into_iter()
    .find(|(_, alg)| ParsedPublicKey::new(*alg, spki_der).is_ok())
    .map(|(c, _)| c)
}

/// A SHA-256 computed in pieces.
pub struct Sha256Stream(digest::Context);

impl Sha256Stream {
    /// A fresh one.
    pub fn new() -> Self {
        Sha256Stream(digest::Context::new(&digest::SHA256))
    }
    /// Add bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    /// The digest.
    pub fn finish(self) -> [u8; DIGEST_LEN] {
        let d = self.0.finish();
        let mut out = [0u8; DIGEST_LEN];
        out.copy_from_slice(d.as_ref());
        out
    }
}

impl Default for Sha256Stream {
    fn default() -> Self {
        Self::new()
    }
}

/// Wrap a 32-byte key under a single-use wrapping key (SPEC §6): AES-256-GCM,
/// zero nonce (the wrapping key is fresh for every slot), output `ct || tag`.
pub fn wrap_key(kek: &Secret32, aad: &[u8], key: &Secret32) -> Result<Vec<u8>> {
    let k = LessSafeKey::new(
        UnboundKey::new(&aead::AES_256_GCM, kek.expose())
            .map_err(|_| Error::Crypto("AEAD key setup failed"))?,
    );
    let mut buf = key.expose().to_vec();
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0u8; 12]),
        Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| Error::Crypto("key wrap failed"))?;
    Ok(buf)
}

/// Unwrap; `None` when it does not authenticate.
pub fn unwrap_key(kek: &Secret32, aad: &[u8], wrapped: &[u8]) -> Option<Secret32> {
    if wrapped.len() != 32 + TAG_LEN {
        return None;
    }
    let k = LessSafeKey::new(UnboundKey::new(&aead::AES_256_GCM, kek.expose()).ok()?);
    let mut buf = Zeroizing::new(wrapped.to_vec());
    let pt = k
        .open_in_place(
            Nonce::assume_unique_for_key([0u8; 12]),
            Aad::from(aad),
            &mut buf[..],
        )
        .ok()?;
    let arr: [u8; 32] = pt.try_into().ok()?;
    Some(Secret32::from_bytes(arr))
}

/// n/2 for P-256 (n the group order), big-endian: a signature's `s` above
/// it is the other of the two valid encodings, refused (SPEC §7.1).
const P256_HALF_N: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];
/// The P-256 group order n, big-endian.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// ECDSA P-256 with SHA-256 over `msg`, the signature as 64 bytes `r || s`
/// (IEEE P1363), with `s <= n/2` required so that a signature has one
/// encoding.
pub fn ecdsa_p256_verify_fixed(point: &[u8; 65], msg: &[u8], sig: &[u8]) -> bool {
    sig.len() == 64
        && sig[32..] <= P256_HALF_N[..]
        && aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            point,
        )
        .verify(msg, sig)
        .is_ok()
}

/// An ECDSA P-256 signature `r || s` with `s` replaced by `n - s` when it
/// is above n/2 (both verify; SPEC §7.1 keeps the low one).
pub fn ecdsa_p256_low_s(sig: &mut [u8; 64]) {
    if sig[32..] > P256_HALF_N[..] {
        ecdsa_p256_other_s(sig);
    }
}

/// The other encoding of an ECDSA P-256 signature `r || s`: `s` replaced by
/// `n - s` (for `s` in 1..n; both verify).
pub fn ecdsa_p256_other_s(sig: &mut [u8; 64]) {
    let mut borrow = 0u16;
    for i in (0..32).rev() {
        let d = u16::from(P256_N[i])
            .wrapping_sub(u16::from(sig[32 + i]))
            .wrapping_sub(borrow);
        sig[32 + i] = d as u8;
        borrow = u16::from(d > 0xff);
    }
}

/// Ed25519 signature verification.
pub fn ed25519_verify(public: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, public)
        .verify(msg, sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_signatures_have_one_encoding() {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .unwrap();
        let kp =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point: [u8; 65] = kp.public_key().as_ref().try_into().unwrap();
        let mut seen_high = false;
        for i in 0..64u8 {
            let msg = [i; 9];
            let raw: [u8; 64] = kp
                .sign(&aws_lc_rs::rand::SystemRandom::new(), &msg)
                .unwrap()
                .as_ref()
                .try_into()
                .unwrap();
            let mut low = raw;
            ecdsa_p256_low_s(&mut low);
            assert!(ecdsa_p256_verify_fixed(&point, &msg, &low));
            if low != raw {
                // The high form verifies with aws-lc alone, and is refused here.
                seen_high = true;
                assert!(!ecdsa_p256_verify_fixed(&point, &msg, &raw));
                assert!(aws_lc_rs::signature::UnparsedPublicKey::new(
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
                    &point
                )
                .verify(&msg, &raw)
                .is_ok());
            }
            assert!(!ecdsa_p256_verify_fixed(&point, &[i; 8], &low));
        }
        assert!(seen_high, "64 signatures, none with a high s");
    }

    #[test]
    fn low_s_boundaries() {
        let with_s = |s: [u8; 32]| {
            let mut sig = [7u8; 64];
            sig[32..].copy_from_slice(&s);
            sig
        };
        let add = |a: [u8; 32], k: u8| {
            let mut out = a;
            let mut carry = k as u16;
            for b in out.iter_mut().rev() {
                let v = *b as u16 + carry;
                *b = v as u8;
                carry = v >> 8;
            }
            out
        };
        // n/2 stays; n/2 + 1 becomes n - (n/2 + 1) = n/2 (n is odd); n - 1 becomes 1.
        let mut sig = with_s(P256_HALF_N);
        ecdsa_p256_low_s(&mut sig);
        assert_eq!(sig[32..], P256_HALF_N[..]);
        let mut sig = with_s(add(P256_HALF_N, 1));
        ecdsa_p256_low_s(&mut sig);
        assert_eq!(sig[32..], P256_HALF_N[..]);
        let mut n_minus_1 = P256_N;
        n_minus_1[31] -= 1;
        let mut sig = with_s(n_minus_1);
        ecdsa_p256_low_s(&mut sig);
        let mut one = [0u8; 32];
        one[31] = 1;
        assert_eq!(sig[32..], one[..]);
        // The r half is never touched.
        assert_eq!(sig[..32], [7u8; 32]);
        // Wrong lengths never verify.
        let point = [4u8; 65];
        assert!(!ecdsa_p256_verify_fixed(&point, b"m", &[0u8; 63]));
        assert!(!ecdsa_p256_verify_fixed(&point, b"m", &[0u8; 65]));
        assert!(!ecdsa_p256_verify_fixed(&point, b"m", &[0u8; 64]));
    }

    #[test]
    fn chunk_round_trip_and_binding() {
        for c in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
            let k = ChunkKey::new(c, &Secret32::random().unwrap()).unwrap();
            let mut buf = b"hello world".to_vec();
            let tag = k.seal(3, b"ad", &mut buf).unwrap();
            assert_ne!(&buf, b"hello world");
            let mut a = buf.clone();
            assert!(k.open(3, b"ad", &tag, &mut a));
            assert_eq!(&a, b"hello world");
            let mut b = buf.clone();
            assert!(!k.open(4, b"ad", &tag, &mut b), "wrong index must fail");
            let mut b = buf.clone();
            assert!(!k.open(3, b"ae", &tag, &mut b), "wrong aad must fail");
        }
    }

    #[test]
    fn wrap_rejects_wrong_kek_and_length() {
        let kek = Secret32::random().unwrap();
        let mk = Secret32::random().unwrap();
        let w = wrap_key(&kek, b"x", &mk).unwrap();
        assert_eq!(unwrap_key(&kek, b"x", &w).unwrap().expose(), mk.expose());
        assert!(unwrap_key(&Secret32::random().unwrap(), b"x", &w).is_none());
        assert!(unwrap_key(&kek, b"y", &w).is_none());
        assert!(unwrap_key(&kek, b"x", &w[1..]).is_none());
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret32::from_bytes([7u8; 32]);
        assert_eq!(format!("{s:?}"), "Secret32(<redacted>)");
    }
}
