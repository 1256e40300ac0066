//! Keys stored as JSON Web Keys (RFC 7517, RFC 8037 for OKP).
//!
//! - X25519 identity: `{"kty":"OKP","crv":"X25519","d":..,"x":..}`
//! - P-256 identity: `{"kty":"EC","crv":"P-256","d":..,"x":..,"y":..}` (RFC 7518 §6.2)
//! - Ed25519 signing key: `{"kty":"OKP","crv":"Ed25519","d":..,"x":..}`
//! - public halves: the same without `d`
//! - symmetric key: `{"kty":"oct","k":..,"kid":..}`
//!
//! Secret key files are created with mode 0600 and never overwritten silently.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    b64, unb64_array, Identity, P256Identity, P256Recipient, Recipient, SigningKey, SymmetricKey,
    VerifyingKey, X25519Identity, X25519Recipient,
};
use crate::atomic::AtomicFile;
use crate::error::{Error, Result};

#[derive(Serialize, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    d: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    k: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    /// `ES256` marks an EC P-256 key as a signer (an ECDSA verifying key);
    /// without it an EC P-256 key is an encryption recipient or identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    alg: Option<String>,
}

impl Drop for Jwk {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.d.zeroize();
        self.k.zeroize();
    }
}

/// Any key this library stores in a JWK file.
#[non_exhaustive]
pub enum KeyFile {
    /// An X25519 secret key.
    X25519Identity(X25519Identity),
    /// An X25519 public key.
    X25519Recipient(X25519Recipient),
    /// A P-256 secret key (ECDH).
    P256Identity(P256Identity),
    /// A P-256 public key.
    P256Recipient(P256Recipient),
    /// A signing key: an Ed25519 seed, or (never in a file) a token's key.
    Signing(SigningKey),
    /// A signer's public key: Ed25519, or ECDSA P-256 (JWK EC with `alg`
    /// `ES256`).
    Verifying(VerifyingKey),
    /// A symmetric key.
    Symmetric(SymmetricKey),
}

impl KeyFile {
    /// Parse JWK text.
    pub fn from_jwk(text: &str) -> Result<KeyFile> {
        if super::is_cryptotensors_key(text) {
            return Err(Error::InvalidKey(
                "this is a CryptoTensors key file: it reads CryptoTensors files only, as an identity (-i, SEALTENSORS_IDENTITY) for its oct key and as a trusted signer (--trust) for its okp key".into(),
            ));
        }
        // serde's message may quote the offending value, which here may be
        // (part of) the secret: say where and what was expected, not what.
        if !text.trim_start().starts_with('{') {
            return Err(Error::InvalidKey(
                "not a JSON Web Key: the file is not a JSON object".into(),
            ));
        }
        let j: Jwk = serde_json::from_str(text).map_err(|e| {
            Error::InvalidKey(format!(
                "not a JSON Web Key: {} (every member, kty, crv, x, y, d, k and kid, is a string)",
                crate::error::json_error_text(&e)
            ))
        })?;
        match (j.kty.as_str(), j.crv.as_deref()) {
            ("OKP", Some("X25519")) => {
                let x: [u8; 32] = unb64_array("x", j.x.as_deref().unwrap_or(""))?;
                match &j.d {
                    Some(d) => {
                        let d = Zeroizing::new(unb64_array::<32>("d", d)?);
                        let id = X25519Identity::from_secret_bytes(*d)?;
                        if id.recipient().0 != x {
                            return Err(Error::InvalidKey("x does not match d".into()));
                        }
                        Ok(KeyFile::X25519Identity(id))
                    }
                    None => Ok(KeyFile::X25519Recipient(X25519Recipient(x))),
                }
            }
            ("EC", Some("P-256")) => {
                let x: [u8; 32] = unb64_array("x", j.x.as_deref().unwrap_or(""))?;
                let y: [u8; 32] = unb64_array("y", j.y.as_deref().unwrap_or(""))?;
                let public = P256Recipient::from_coordinates(&x, &y)?;
                if j.alg.as_deref() == Some("ES256") {
                    if j.d.is_some() {
                        return Err(Error::InvalidKey(
                            "an ECDSA P-256 signing key in a file is not supported: ECDSA signing keys live in PKCS#11 tokens (name them by pkcs11: URI)".into(),
                        ));
                    }
                    return Ok(KeyFile::Verifying(VerifyingKey::ecdsa_p256(
                        public.as_bytes(),
                    )?));
                }
                match &j.d {
                    Some(d) => {
                        let d = Zeroizing::new(unb64_array::<32>("d", d)?);
                        let id = P256Identity::from_secret_bytes(*d)?;
                        if id.recipient() != public {
                            return Err(Error::InvalidKey("x, y do not match d".into()));
                        }
                        Ok(KeyFile::P256Identity(id))
                    }
                    None => Ok(KeyFile::P256Recipient(public)),
                }
            }
            ("OKP", Some("Ed25519")) => {
                let x: [u8; 32] = unb64_array("x", j.x.as_deref().unwrap_or(""))?;
                match &j.d {
                    Some(d) => {
                        let d = Zeroizing::new(unb64_array::<32>("d", d)?);
                        let k = SigningKey::from_seed(*d)?;
                        if k.verifying_key() != VerifyingKey::from_bytes(x) {
                            return Err(Error::InvalidKey("x does not match d".into()));
                        }
                        Ok(KeyFile::Signing(k))
                    }
                    None => Ok(KeyFile::Verifying(VerifyingKey::from_bytes(x))),
                }
            }
            ("oct", _) => {
                let k = Zeroizing::new(unb64_array::<32>(
                    "k (a 256-bit key)",
                    j.k.as_deref().unwrap_or(""),
                )?);
                let kid = j
                    .kid
                    .clone()
                    .ok_or_else(|| Error::InvalidKey("a symmetric JWK needs a \"kid\"".into()))?;
                Ok(KeyFile::Symmetric(SymmetricKey::new(kid, *k)?))
            }
            (kty, crv) => Err(Error::InvalidKey(format!(
                "unsupported JWK kty {kty:?} crv {crv:?}; use OKP X25519, OKP Ed25519, EC P-256 or oct"
            ))),
        }
    }

    /// JWK text.
    pub fn to_jwk(&self) -> Zeroizing<String> {
        let okp = |crv: &str, x: &[u8; 32], d: Option<String>| Jwk {
            kty: "OKP".into(),
            crv: Some(crv.into()),
            x: Some(b64(x)),
            y: None,
            d,
            k: None,
            kid: None,
            alg: None,
        };
        let ec_with = |p: &P256Recipient, d: Option<String>, alg: Option<&str>| Jwk {
            kty: "EC".into(),
            crv: Some("P-256".into()),
            x: Some(b64(&p.x())),
            y: Some(b64(&p.y())),
            d,
            k: None,
            kid: None,
            alg: alg.map(str::to_string),
        };
        let ec = |p: &P256Recipient, d: Option<String>| ec_with(p, d, None);
        // A verifying key's JWK: OKP Ed25519, or EC P-256 marked ES256.
        let verifying = |v: &VerifyingKey, d: Option<String>| match v.ed25519_bytes() {
            Some(x) => okp("Ed25519", x, d),
            None => ec_with(
                &P256Recipient(v.as_bytes().try_into().unwrap_or([4u8; 65])),
                None,
                Some("ES256"),
            ),
        };
        let j = match self {
            KeyFile::X25519Identity(id) => {
                okp("X25519", &id.recipient().0, Some(b64(id.secret_bytes())))
            }
            KeyFile::X25519Recipient(r) => okp("X25519", &r.0, None),
            KeyFile::P256Identity(id) => ec(&id.recipient(), Some(b64(id.secret_bytes()))),
            KeyFile::P256Recipient(r) => ec(r, None),
            // A token-held key has no secret to write: its public half only
            // (save refuses it, so it never lands in a file as if it were one).
            KeyFile::Signing(k) => verifying(&k.verifying_key(), k.seed().map(|s| b64(s))),
            KeyFile::Verifying(v) => verifying(v, None),
            KeyFile::Symmetric(s) => Jwk {
                kty: "oct".into(),
                crv: None,
                x: None,
                y: None,
                d: None,
                k: Some(b64(s.secret().expose())),
                kid: Some(s.kid().to_string()),
                alg: None,
            },
        };
        Zeroizing::new(serde_json::to_string_pretty(&j).unwrap_or_default() + "\n")
    }

    /// Whether the file holds a secret.
    pub fn is_secret(&self) -> bool {
        matches!(
            self,
            KeyFile::X25519Identity(_)
                | KeyFile::P256Identity(_)
                | KeyFile::Signing(_)
                | KeyFile::Symmetric(_)
        )
    }

    /// Read a JWK file.
    pub fn load(path: &Path) -> Result<KeyFile> {
        KeyFile::from_jwk(&read_key_text(path)?).map_err(|e| e.in_file(path))
    }

    /// Write a JWK file, mode 0600 from its creation: written aside (a new
    /// file beside `path`, never following a link), synced and renamed into
    /// place. Never overwritten unless `force`; with `force`, a symbolic link
    /// at `path` is replaced by the key file and its target is left as it
    /// was (a link planted there cannot make the key land elsewhere, or a
    /// victim file be truncated).
    pub fn save(&self, path: &Path, force: bool) -> Result<()> {
        if let KeyFile::Signing(k) = self {
            if k.seed().is_none() {
                return Err(Error::InvalidKey(
                    "this signing key is held in a PKCS#11 token and has no file form; name it by its pkcs11: URI".into(),
                ));
            }
        }
        write_key_file(path, self.to_jwk().as_bytes(), force)
    }
}

/// Write a secret key file (a JWK, an OMS PEM key), mode 0600 from its
/// creation, as [`KeyFile::save`] describes.
pub(crate) fn write_key_file(path: &Path, bytes: &[u8], force: bool) -> Result<()> {
    let out = AtomicFile::create_private(path, force).map_err(|e| match e {
        e @ Error::OutputExists(_) => e,
        e => e.in_file(path),
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        out.file()
            .set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::output("setting key file mode", e).in_file(path))?;
    }
    out.file()
        .write_all(bytes)
        .map_err(|e| Error::output("writing key file", e).in_file(path))?;
    out.commit(force).map_err(|e| match e {
        e @ Error::OutputExists(_) => e,
        e => e.in_file(path),
    })
}

/// A key file's text, wiped when dropped.
pub(crate) fn read_key_text(path: &Path) -> Result<Zeroizing<String>> {
    Ok(Zeroizing::new(fs::read_to_string(path).map_err(|e| {
        Error::io("reading key file", e).in_file(path)
    })?))
}

/// Load an identity from a JWK file: an X25519 secret or symmetric key, or
/// a CryptoTensors key file (SPEC A.4) holding an oct key.
pub fn load_identity(path: &Path) -> Result<Box<dyn Identity>> {
    if let Some(uri) = pkcs11_uri(path) {
        return pkcs11_identity(uri);
    }
    let text = read_key_text(path)?;
    if super::tpm::is_tpm_identity(&text) {
        return Ok(Box::new(super::TpmIdentity::from_text(&text, path)?));
    }
    if super::is_cryptotensors_key(&text) {
        let keys = super::parse_cryptotensors_keys(&text).map_err(|e| e.in_file(path))?;
        if keys.master.is_empty() {
            return Err(Error::InvalidKey(
                "this CryptoTensors key file holds no oct (encryption) key, so it is not an identity; a file of signing keys goes to --trust".into(),
            )
            .in_file(path));
        }
        return Ok(Box::new(keys));
    }
    match KeyFile::from_jwk(&text).map_err(|e| e.in_file(path))? {
        KeyFile::X25519Identity(i) => Ok(Box::new(i)),
        KeyFile::P256Identity(i) => Ok(Box::new(i)),
        KeyFile::Symmetric(s) => Ok(Box::new(s)),
        _ => Err(Error::InvalidKey(
            "this key file is not an identity (an X25519 or P-256 secret key, or a symmetric key)"
                .into(),
        )
        .in_file(path)),
    }
}

/// An ECDH key a key broker can hold as its KEK.
pub(crate) enum EcdhKey {
    X25519(X25519Identity),
    P256(Box<dyn super::P256Agreement>),
}

/// The key a broker's `[[keys]] identity` names: a JWK file (X25519 or
/// P-256 identity), a TPM identity file, or a `pkcs11:` URI (P-256).
pub(crate) fn load_ecdh_key(path: &Path) -> Result<EcdhKey> {
    if let Some(uri) = pkcs11_uri(path) {
        return pkcs11_agreement(uri).map(EcdhKey::P256);
    }
    let text = read_key_text(path)?;
    if super::tpm::is_tpm_identity(&text) {
        return Ok(EcdhKey::P256(Box::new(super::TpmIdentity::from_text(
            &text, path,
        )?)));
    }
    match KeyFile::from_jwk(&text).map_err(|e| e.in_file(path))? {
        KeyFile::X25519Identity(i) => Ok(EcdhKey::X25519(i)),
        KeyFile::P256Identity(i) => Ok(EcdhKey::P256(Box::new(i))),
        _ => Err(Error::InvalidKey(
            "a key broker's KEK is an X25519 or P-256 secret key (a JWK file, a TPM identity file or a pkcs11: URI)".into(),
        )
        .in_file(path)),
    }
}

#[cfg(feature = "pkcs11")]
fn pkcs11_agreement(uri: &str) -> Result<Box<dyn super::P256Agreement>> {
    Ok(Box::new(super::Pkcs11Identity::open(uri)?))
}

#[cfg(not(feature = "pkcs11"))]
fn pkcs11_agreement(_uri: &str) -> Result<Box<dyn super::P256Agreement>> {
    Err(no_pkcs11())
}

/// `path` as a PKCS#11 URI, when it starts with `pkcs11:` (any case). A URI
/// always wins over a file of that name, which a cloned folder could plant;
/// such a file is named `./pkcs11:...`.
fn pkcs11_uri(path: &Path) -> Option<&str> {
    let s = path.to_str()?;
    s.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("pkcs11:"))
        .then_some(s)
}

#[cfg(feature = "pkcs11")]
fn pkcs11_identity(uri: &str) -> Result<Box<dyn Identity>> {
    Ok(Box::new(super::Pkcs11Identity::open(uri)?))
}

#[cfg(feature = "pkcs11")]
fn pkcs11_public(uri: &str) -> Result<Box<dyn Recipient>> {
    Ok(Box::new(super::pkcs11_recipient(uri)?))
}

#[cfg(feature = "pkcs11")]
fn pkcs11_signer(uri: &str) -> Result<SigningKey> {
    Ok(SigningKey::from_token(super::pkcs11::Pkcs11Signer::open(
        uri,
    )?))
}

#[cfg(not(feature = "pkcs11"))]
fn pkcs11_signer(_uri: &str) -> Result<SigningKey> {
    Err(no_pkcs11())
}

#[cfg(not(feature = "pkcs11"))]
fn pkcs11_identity(_uri: &str) -> Result<Box<dyn Identity>> {
    Err(no_pkcs11())
}

#[cfg(not(feature = "pkcs11"))]
fn pkcs11_public(_uri: &str) -> Result<Box<dyn Recipient>> {
    Err(no_pkcs11())
}

#[cfg(not(feature = "pkcs11"))]
fn no_pkcs11() -> Error {
    Error::Pkcs11 {
        what: "key".into(),
        problem: crate::error::Pkcs11Problem::Module(
            "this build of sealtensors has no PKCS#11 support (built without the `pkcs11` feature)"
                .into(),
        ),
    }
}

/// A recipient: an `x25519:` or `p256:` string, a key broker URL
/// (`https://HOST/keys/KID` or `broker:URL[#x25519:PK]`), or a path to a JWK
/// file holding an X25519 or P-256 public key (or identity) or a symmetric key,
/// or a `pkcs11:` URI naming a P-256 key pair on a token (its public key).
///
/// Never touches the network: a broker named without its key is fetched
/// from when sealing calls [`Recipient::resolve`].
pub fn load_recipient(spec: &str) -> Result<Box<dyn Recipient>> {
    if spec.starts_with("x25519:") {
        return Ok(Box::new(spec.parse::<X25519Recipient>()?));
    }
    if spec.starts_with("p256:") {
        return Ok(Box::new(spec.parse::<P256Recipient>()?));
    }
    if let Some(uri) = pkcs11_uri(Path::new(spec)) {
        return pkcs11_public(uri);
    }
    // SPEC §6.6: a key broker, by URL (its public key fetched when sealing)
    // or `broker:URL#x25519:PK`.
    if spec.starts_with("broker:") || spec.starts_with("https://") || spec.starts_with("http://") {
        return Ok(Box::new(spec.parse::<super::BrokerRecipient>()?));
    }
    let path = Path::new(spec);
    if !path.exists() {
        return Err(Error::InvalidKey(format!(
            "recipient {spec:?} is neither an x25519:... or p256:... public key, a key broker URL, nor an existing key file"
        )));
    }
    match KeyFile::load(path)? {
        KeyFile::X25519Recipient(r) => Ok(Box::new(r)),
        KeyFile::X25519Identity(i) => Ok(Box::new(i.recipient())),
        KeyFile::P256Recipient(r) => Ok(Box::new(r)),
        KeyFile::P256Identity(i) => Ok(Box::new(i.recipient())),
        KeyFile::Symmetric(s) => Ok(Box::new(s)),
        _ => Err(Error::InvalidKey("a signing key is not a recipient".into()).in_file(path)),
    }
}

/// Load an Ed25519 signing key.
pub fn load_signing_key(path: &Path) -> Result<SigningKey> {
    if let Some(uri) = pkcs11_uri(path) {
        return pkcs11_signer(uri);
    }
    match KeyFile::load(path)? {
        KeyFile::Signing(k) => Ok(k),
        _ => Err(Error::InvalidKey(
            "not an Ed25519 signing key (kty OKP, crv Ed25519, with d)".into(),
        )
        .in_file(path)),
    }
}

/// A trusted signer: an `ed25519:` or `ecdsa-p256:` string, or a JWK file
/// with an Ed25519 key (public or secret; only the public half is used).
pub fn load_verifying_key(spec: &str) -> Result<VerifyingKey> {
    if spec.starts_with("ed25519:") || spec.starts_with("ecdsa-p256:") {
        return spec.parse();
    }
    let path = Path::new(spec);
    let text = read_key_text(path)?;
    if super::is_cryptotensors_key(&text) {
        let keys = super::parse_cryptotensors_keys(&text).map_err(|e| e.in_file(path))?;
        return match keys.signers.as_slice() {
            [one] => Ok(*one),
            [] => Err(Error::InvalidKey(
                "this CryptoTensors key file holds no okp (Ed25519) key to trust".into(),
            )
            .in_file(path)),
            many => Err(Error::InvalidKey(format!(
                "this CryptoTensors key file holds {} Ed25519 keys; trust one at a time (a file with one key, or ed25519:...)",
                many.len()
            ))
            .in_file(path)),
        };
    }
    match KeyFile::from_jwk(&text).map_err(|e| e.in_file(path))? {
        KeyFile::Verifying(v) => Ok(v),
        KeyFile::Signing(k) => Ok(k.verifying_key()),
        _ => Err(Error::InvalidKey("not an Ed25519 key".into()).in_file(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwk_round_trips_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let id = X25519Identity::generate().unwrap();
        let r = id.recipient();
        let p = dir.path().join("id.jwk");
        KeyFile::X25519Identity(id).save(&p, false).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        match KeyFile::load(&p).unwrap() {
            KeyFile::X25519Identity(i) => assert_eq!(i.recipient(), r),
            _ => panic!("wrong kind"),
        }
        // never overwritten silently
        let again = KeyFile::Symmetric(SymmetricKey::generate(None).unwrap());
        assert!(matches!(again.save(&p, false), Err(Error::OutputExists(_))));
    }

    #[test]
    fn p256_jwk_round_trips_and_is_checked() {
        let id = P256Identity::generate().unwrap();
        let r = id.recipient();
        let text = KeyFile::P256Identity(id).to_jwk();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (v["kty"].as_str(), v["crv"].as_str()),
            (Some("EC"), Some("P-256"))
        );
        match KeyFile::from_jwk(&text).unwrap() {
            KeyFile::P256Identity(i) => assert_eq!(i.recipient(), r),
            _ => panic!("wrong kind"),
        }
        let public = KeyFile::P256Recipient(r).to_jwk();
        assert!(!public.contains("\"d\""));
        match KeyFile::from_jwk(&public).unwrap() {
            KeyFile::P256Recipient(p) => assert_eq!(p, r),
            _ => panic!("wrong kind"),
        }
        // d of another key: x, y do not match d.
        let other = P256Identity::generate().unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["d"] = b64(other.secret_bytes()).into();
        let e = KeyFile::from_jwk(&v.to_string()).err().unwrap().to_string();
        assert!(e.contains("do not match"), "{e}");
        // A point off the curve.
        let mut v: serde_json::Value = serde_json::from_str(&public).unwrap();
        let mut y = r.y();
        y[31] ^= 1;
        v["y"] = b64(&y).into();
        assert!(KeyFile::from_jwk(&v.to_string()).is_err());
        // Other curves are refused by name.
        v["crv"] = "P-384".into();
        let e = KeyFile::from_jwk(&v.to_string()).err().unwrap().to_string();
        assert!(e.contains("P-256"), "{e}");
    }

    #[test]
    fn a_pkcs11_uri_is_never_taken_for_a_file() {
        // Even when a file of that name exists (a cloned folder could plant
        // one): such a file is reached as ./pkcs11:...
        let dir = tempfile::tempdir().unwrap();
        let planted = dir.path().join("pkcs11:token=t;object=k");
        std::fs::write(&planted, "{}").unwrap();
        assert_eq!(
            pkcs11_uri(Path::new("pkcs11:token=t;object=k")),
            Some("pkcs11:token=t;object=k")
        );
        assert!(pkcs11_uri(Path::new("PKCS11:object=k")).is_some());
        assert_eq!(pkcs11_uri(Path::new("./pkcs11:token=t;object=k")), None);
        assert_eq!(pkcs11_uri(&planted), None);
    }

    #[cfg(unix)]
    #[test]
    fn save_never_writes_through_a_symbolic_link() {
        // Issue 15: `keygen --force -o LINK` truncated and wrote the link's
        // target (with the target's mode).
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = dir.path().join("key.jwk");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let key = KeyFile::X25519Identity(X25519Identity::generate().unwrap());
        // Without force a link, dangling or not, is something there.
        assert!(matches!(
            key.save(&link, false),
            Err(Error::OutputExists(_))
        ));
        let dangling = dir.path().join("dangling.jwk");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(matches!(
            key.save(&dangling, false),
            Err(Error::OutputExists(_))
        ));
        assert!(!dir.path().join("nowhere").exists());
        // With force the link itself is replaced by a private regular file.
        key.save(&link, true).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        let m = std::fs::metadata(&victim).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o644);
        let m = std::fs::symlink_metadata(&link).unwrap();
        assert!(m.file_type().is_file(), "{m:?}");
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert!(matches!(
            KeyFile::load(&link).unwrap(),
            KeyFile::X25519Identity(_)
        ));
        // Nothing left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn malformed_jwk_errors_never_echo_the_secret() {
        // Issue 15: serde's "invalid type: ..." quoted the offending value.
        const SECRET: &str = "s3cretS3CRETs3cret";
        let num = "918273645546372819";
        let cases = [
            format!(r#"{{"kty":"OKP","crv":"X25519","x":"AAAA","d":{num}}}"#),
            format!(r#"{{"kty":"oct","kid":"t","k":["{SECRET}"]}}"#),
            format!(r#"{{"kty":"oct","kid":"t","k":{{"v":"{SECRET}"}}}}"#),
            format!(r#"{{"kty":"oct","kid":"t","k":"{SECRET}"}}"#),
            format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"AAAA","d":"{SECRET}"}}"#),
            format!(r#"{{"kty":"OKP","crv":"X25519","d":"{SECRET}","d":"{SECRET}"}}"#),
            format!(r#"{{"kty":"OKP","crv":"X25519","d":"{SECRET}"#),
            format!(r#"{{"kty":"oct","kid":"t","k":"{SECRET}\q"}}"#),
            format!(r#""{SECRET}""#),
            format!(r#"["{SECRET}"]"#),
            num.to_string(),
            format!(r#"{{"kty":{num}}}"#),
        ];
        for text in &cases {
            let e = match KeyFile::from_jwk(text) {
                Err(e) => e,
                Ok(_) => panic!("accepted {text}"),
            };
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains(SECRET) && !shown.contains(num), "{shown}");
        }
        // Still says where and what was expected.
        let e = KeyFile::from_jwk(&cases[0]).err().unwrap().to_string();
        assert!(
            e.contains("line 1 column") && e.contains("expected a string"),
            "{e}"
        );
    }

    #[test]
    fn serde_messages_lose_their_values() {
        use crate::error::without_values;
        assert_eq!(
            without_values("invalid type: string \"x, expected y\", expected u64"),
            "wrong type, expected u64"
        );
        assert_eq!(
            without_values("invalid value: integer `7`, expected a port"),
            "invalid value, expected a port"
        );
        assert_eq!(
            without_values("unknown variant `pg`, expected `sqlite` or `postgres`"),
            "unknown variant, expected `sqlite` or `postgres`"
        );
        assert_eq!(without_values("missing field `kty`"), "missing field `kty`");
    }

    #[test]
    fn jwk_mismatched_public_half_rejected() {
        let a = X25519Identity::generate().unwrap();
        let b = X25519Identity::generate().unwrap();
        let text = KeyFile::X25519Identity(a).to_jwk();
        let mut j: serde_json::Value = serde_json::from_str(&text).unwrap();
        j["x"] = serde_json::Value::String(b64(&b.recipient().0));
        assert!(KeyFile::from_jwk(&j.to_string()).is_err());
    }
}
