//! P-256 recipients (SPEC §6.7): ephemeral-static ECDH on NIST P-256, HKDF-SHA256
//! to a wrapping key, AES-256-GCM key wrap. The X25519 slot's construction on
//! the curve that hardware speaks: PKCS#11 tokens (`CKM_ECDH1_DERIVE`) and
//! TPMs (`TPM2_ECDH_ZGen`) do ECDH on P-256, most of them not on X25519.
//!
//! The opening side needs one operation of its key, `Z = x(sk · epk)`: a
//! [`P256Agreement`]. [`P256Identity`] is the software one (a JWK file); a key
//! held in hardware is another, and every one of them opens slots through
//! [`open_slot`], so a slot opens the same way wherever its key lives.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, ECDH_P256};
use aws_lc_rs::encoding::{AsBigEndian, EcPrivateKeyBin};

use super::{b64, slot_aad, unb64, Identity, ModelKey, Recipient, Slot};
use crate::crypto::{self, Secret32};
use crate::error::{Error, Result};

const PREFIX: &str = "p256:";
/// Length of an uncompressed SEC 1 point: `04 || x || y`.
pub const POINT_LEN: usize = 65;

/// A recipient's public key, written `p256:<base64url of the 65-byte
/// uncompressed point>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct P256Recipient(pub(crate) [u8; POINT_LEN]);

/// A point from its encoding: exactly 65 bytes, `04 || x || y`, on the curve.
/// Compressed, hybrid and DER forms are refused, so a key has one encoding
/// (it is hashed into the slot's `rid` and KEK salt).
fn point(what: &str, bytes: &[u8]) -> Result<[u8; POINT_LEN]> {
    let p: [u8; POINT_LEN] = bytes.try_into().map_err(|_| {
        Error::InvalidKey(format!(
            "{what} must be a 65-byte uncompressed P-256 point (04 || x || y), not {} bytes",
            bytes.len()
        ))
    })?;
    if p[0] != 4 {
        return Err(Error::InvalidKey(format!(
            "{what} must be an uncompressed P-256 point (first byte 04)"
        )));
    }
    // aws-lc checks that the point is on the curve (and not the identity).
    agreement::ParsedPublicKey::try_from(&UnparsedPublicKey::new(&ECDH_P256, &p[..]))
        .map_err(|_| Error::InvalidKey(format!("{what} is not a point on P-256")))?;
    Ok(p)
}

impl P256Recipient {
    /// From the 65-byte uncompressed point, checked to be on the curve.
    pub fn from_point(bytes: &[u8]) -> Result<Self> {
        Ok(P256Recipient(point("P-256 public key", bytes)?))
    }
    /// From the JWK coordinates (32 bytes each, big-endian).
    pub fn from_coordinates(x: &[u8; 32], y: &[u8; 32]) -> Result<Self> {
        let mut p = [4u8; POINT_LEN];
        p[1..33].copy_from_slice(x);
        p[33..].copy_from_slice(y);
        Self::from_point(&p)
    }
    /// The uncompressed point.
    pub fn as_bytes(&self) -> &[u8; POINT_LEN] {
        &self.0
    }
    /// The x coordinate.
    pub fn x(&self) -> [u8; 32] {
        let mut x = [0u8; 32];
        x.copy_from_slice(&self.0[1..33]);
        x
    }
    /// The y coordinate.
    pub fn y(&self) -> [u8; 32] {
        let mut y = [0u8; 32];
        y.copy_from_slice(&self.0[33..]);
        y
    }
    /// The slot's recipient id (SPEC §6.7).
    pub fn rid(&self) -> String {
        let mut m = b"sealtensors/1 p256 rid\0".to_vec();
        m.extend_from_slice(&self.0);
        let d = crypto::sha256(&m);
        d[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The one operation a P-256 key must offer to open slots: the x coordinate
/// of `sk · peer` (SEC 1 ECDH primitive; PKCS#11 `CKM_ECDH1_DERIVE` with
/// `CKD_NULL`; the x of `TPM2_ECDH_ZGen`'s point). `peer` has been checked to
/// be an uncompressed point on the curve.
pub trait P256Agreement: Send + Sync {
    /// The key's public point.
    fn public_key(&self) -> &P256Recipient;
    /// `Z = x(sk · peer)`.
    fn agree(&self, peer: &[u8; POINT_LEN]) -> Result<Secret32>;
    /// Where the key lives, for messages ("P-256 key file", "PKCS#11 token ...").
    fn location(&self) -> String;
}

/// `KEK = HKDF(Z, salt = epk || pk, info)`: the `p256` and `broker-p256`
/// slots differ only in `info` (SPEC §6.7, §6.8).
fn kek_with(
    z: &Secret32,
    epk: &[u8; POINT_LEN],
    pk: &[u8; POINT_LEN],
    info: &[&[u8]],
) -> Result<Secret32> {
    let mut salt = [0u8; 2 * POINT_LEN];
    salt[..POINT_LEN].copy_from_slice(epk);
    salt[POINT_LEN..].copy_from_slice(pk);
    crypto::hkdf32(z.expose(), &salt, info)
}

/// The sealing side of a P-256 slot: a fresh ephemeral key, and the KEK
/// shared with `pk` under `info`. Returns `(epk, KEK)`.
pub(crate) fn seal_kek(pk: &P256Recipient, info: &[&[u8]]) -> Result<([u8; POINT_LEN], Secret32)> {
    let esk = PrivateKey::generate(&ECDH_P256).map_err(|_| Error::Crypto("P-256 keygen"))?;
    let epk = point(
        "ephemeral public key",
        esk.compute_public_key()
            .map_err(|_| Error::Crypto("P-256 public key"))?
            .as_ref(),
    )?;
    let z = software_agree(&esk, &pk.0)?;
    Ok((epk, kek_with(&z, &epk, &pk.0, info)?))
}

/// The opening side: `epk` as stored (base64url, checked to be a point on
/// the curve), the key's ECDH, the KEK under `info`.
pub(crate) fn open_kek(key: &dyn P256Agreement, epk: &str, info: &[&[u8]]) -> Result<Secret32> {
    let epk = point("slot epk", &unb64("slot epk", epk)?)?;
    let z = key.agree(&epk)?;
    kek_with(&z, &epk, &key.public_key().0, info)
}

/// Open a `p256` slot with any P-256 key (SPEC §6.7): `None` unless the slot's
/// `rid` is the key's.
pub fn open_slot(
    key: &dyn P256Agreement,
    slot: &Slot,
    mk_id: &[u8; 16],
) -> Option<Result<ModelKey>> {
    let Slot::P256 { rid, epk, ct } = slot else {
        return None;
    };
    let pk = key.public_key();
    if *rid != pk.rid() {
        return None;
    }
    Some((|| {
        let ct = unb64("slot ct", ct)?;
        let kek = open_kek(key, epk, &[b"sealtensors/1 p256 slot"])?;
        crypto::unwrap_key(&kek, &slot_aad("p256", mk_id), &ct)
            .map(ModelKey::from_secret)
            .ok_or(Error::NoMatchingKey {
                given: 1,
                slots: format!("p256 {rid} (present but it does not open: corrupt or forged)"),
            })
    })())
}

/// ECDH in software: `x(sk · peer)` by aws-lc-rs.
fn software_agree(sk: &PrivateKey, peer: &[u8]) -> Result<Secret32> {
    agreement::agree(
        sk,
        UnparsedPublicKey::new(&ECDH_P256, peer),
        Error::Crypto("P-256 agreement failed (a point not on the curve?)"),
        |z| {
            let z: [u8; 32] = z
                .try_into()
                .map_err(|_| Error::Crypto("P-256 shared secret has the wrong length"))?;
            Ok(Secret32::from_bytes(z))
        },
    )
}

/// A P-256 secret key held in software (a JWK file, `kty` `EC`). Not
/// `Debug`-printable beyond its public half; the scalar is wiped on drop.
pub struct P256Identity {
    secret: Secret32,
    public: P256Recipient,
}

impl P256Identity {
    /// A fresh identity.
    pub fn generate() -> Result<Self> {
        let sk = PrivateKey::generate(&ECDH_P256).map_err(|_| Error::Crypto("P-256 keygen"))?;
        let d: EcPrivateKeyBin<'_> = sk
            .as_be_bytes()
            .map_err(|_| Error::Crypto("P-256 secret key export"))?;
        let d: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(
            d.as_ref()
                .try_into()
                .map_err(|_| Error::Crypto("P-256 secret key length"))?,
        );
        Self::from_secret_bytes(*d)
    }

    /// From the 32-byte big-endian scalar `d` (JWK `d`, SEC 1).
    pub fn from_secret_bytes(d: [u8; 32]) -> Result<Self> {
        let secret = Secret32::from_bytes(d);
        let sk = PrivateKey::from_private_key(&ECDH_P256, secret.expose()).map_err(|_| {
            Error::InvalidKey("P-256 secret key rejected (d must be in 1..n-1)".into())
        })?;
        let pk = sk
            .compute_public_key()
            .map_err(|_| Error::Crypto("P-256 public key"))?;
        let public = P256Recipient(point("P-256 public key", pk.as_ref())?);
        Ok(P256Identity { secret, public })
    }

    /// The public half.
    pub fn recipient(&self) -> P256Recipient {
        self.public
    }

    pub(crate) fn secret_bytes(&self) -> &[u8; 32] {
        self.secret.expose()
    }
}

impl P256Agreement for P256Identity {
    fn public_key(&self) -> &P256Recipient {
        &self.public
    }
    fn agree(&self, peer: &[u8; POINT_LEN]) -> Result<Secret32> {
        let sk = PrivateKey::from_private_key(&ECDH_P256, self.secret.expose())
            .map_err(|_| Error::InvalidKey("P-256 secret key rejected".into()))?;
        software_agree(&sk, peer)
    }
    fn location(&self) -> String {
        "key file".into()
    }
}

impl fmt::Debug for P256Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "P256Identity({}, secret: <redacted>)", self.public)
    }
}

impl Identity for P256Identity {
    fn unwrap(&self, slot: &Slot, mk_id: &[u8; 16]) -> Option<Result<ModelKey>> {
        open_slot(self, slot, mk_id)
    }
    fn describe(&self) -> String {
        format!("p256 {}", self.public.rid())
    }
}

impl Recipient for P256Recipient {
    fn wrap(&self, key: &ModelKey) -> Result<Slot> {
        let (epk, kek) = seal_kek(self, &[b"sealtensors/1 p256 slot"])?;
        let ct = crypto::wrap_key(&kek, &slot_aad("p256", &key.id()?), key.secret())?;
        Ok(Slot::P256 {
            rid: self.rid(),
            epk: b64(&epk),
            ct: b64(&ct),
        })
    }
    fn matches(&self, slot: &Slot) -> bool {
        matches!(slot, Slot::P256 { rid, .. } if *rid == self.rid())
    }
    fn describe(&self) -> String {
        format!("p256 {}", self.rid())
    }
}

impl fmt::Display for P256Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", b64(&self.0))
    }
}

impl fmt::Debug for P256Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for P256Recipient {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let body = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| Error::InvalidKey(format!("a recipient must start with {PREFIX:?}")))?;
        Self::from_point(&unb64("p256 public key", body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::unwrap_any;

    #[test]
    fn wrap_then_open() {
        let id = P256Identity::generate().unwrap();
        let mk = ModelKey::generate().unwrap();
        let slot = id.recipient().wrap(&mk).unwrap();
        let got = unwrap_any(&[slot], &[&id], &mk.id().unwrap()).unwrap();
        assert_eq!(got.expose_secret(), mk.expose_secret());
    }

    #[test]
    fn recipient_string_round_trips_and_is_checked() {
        let r = P256Identity::generate().unwrap().recipient();
        let s = r.to_string();
        assert_eq!(s.parse::<P256Recipient>().unwrap(), r);
        // Compressed form (33 bytes), wrong prefix byte, off-curve point.
        let mut compressed = vec![2 + (r.0[64] & 1)];
        compressed.extend_from_slice(&r.0[1..33]);
        assert!(format!("p256:{}", b64(&compressed))
            .parse::<P256Recipient>()
            .is_err());
        let mut p = r.0;
        p[0] = 6;
        assert!(P256Recipient::from_point(&p).is_err());
        let mut p = r.0;
        p[64] ^= 1;
        assert!(P256Recipient::from_point(&p).is_err());
        assert!(P256Recipient::from_point(&[4u8; 65]).is_err());
        assert!("x25519:AAAA".parse::<P256Recipient>().is_err());
    }

    #[test]
    fn secret_is_not_printed() {
        let id = P256Identity::generate().unwrap();
        let d = b64(id.secret_bytes());
        let dbg = format!("{id:?}");
        assert!(!dbg.contains(&d) && dbg.contains("redacted"));
    }

    #[test]
    fn same_scalar_same_key_and_zero_scalar_refused() {
        let a = P256Identity::generate().unwrap();
        let b = P256Identity::from_secret_bytes(*a.secret_bytes()).unwrap();
        assert_eq!(a.recipient(), b.recipient());
        assert!(P256Identity::from_secret_bytes([0u8; 32]).is_err());
        assert!(P256Identity::from_secret_bytes([0xff; 32]).is_err());
    }
}
