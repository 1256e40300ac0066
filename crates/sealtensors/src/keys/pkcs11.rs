//! Keys held in a PKCS#11 token (an HSM, a smart card, SoftHSM2), named by
//! RFC 7512 URIs. The private keys never leave the token:
//!
//! - P-256 identities: opening a `p256` slot (SPEC §6.7) asks the token for
//!   `Z = x(sk · epk)` with `CKM_ECDH1_DERIVE` (`CKD_NULL`), as a session
//!   object that is read once and destroyed; the KEK and the model key are
//!   derived in software from `Z`, exactly as for a key file.
//! - Signing keys: the header signature (SPEC §7.1) is made by the token
//!   with `CKM_EDDSA` (Ed25519, the same signature a key file makes) or,
//!   on tokens without Ed25519, `CKM_ECDSA` over SHA-256 (ECDSA P-256,
//!   `ecdsa-p256:` signers).
//!
//! The URI names the token and the key; the module and PIN come from its
//! query or the environment:
//!
//! ```text
//! pkcs11:token=deploy;object=model-key?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/pin
//! ```
//!
//! - path attributes: `token`, `serial`, `slot-id` (which token; may be left
//!   out when exactly one token is present), `object` (the key's label), `id`
//!   (its CKA_ID, percent-encoded bytes), `type` (`private` or `public`);
//! - query attributes: `module-path` (else `SEALTENSORS_PKCS11_MODULE`),
//!   `pin-source=file:PATH` (else `SEALTENSORS_PKCS11_PIN`). `pin-value` is
//!   refused: a PIN in a URI ends up in shell histories and process lists.
//!
//! Other attributes are refused rather than ignored, so a URI never selects
//! less precisely than it reads. A URI is trusted configuration, like a key
//! file path: its module is loaded and run.
//!
//! A key pair is found by its private half (the URI's label/id), and the
//! public half by the private key's own CKA_ID, never by label alone: token
//! vendors label the halves differently, and anyone who can open a public
//! session may add public objects. The pair is then proven to match (one
//! ECDH or one signature checked in software) before it is used, so a
//! substituted public key is refused rather than sealed to.
//!
//! Modules are loaded and initialised once per process and kept (a second
//! `C_Initialize`/`C_Finalize` pair would end the first user's sessions).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot as CkSlot;
use cryptoki::types::AuthPin;
use percent_encoding::percent_decode_str;
use zeroize::{Zeroize, Zeroizing};

use super::p256::{open_slot, P256Agreement, P256Identity, P256Recipient, POINT_LEN};
use super::{Identity, ModelKey, Slot, VerifyingKey};
use crate::crypto::{self, Secret32};
use crate::error::{Error, Pkcs11Problem, Result};

/// The module (shared library) when the URI has no `module-path`.
pub const ENV_PKCS11_MODULE: &str = "SEALTENSORS_PKCS11_MODULE";
/// The user PIN when the URI has no `pin-source`.
pub const ENV_PKCS11_PIN: &str = "SEALTENSORS_PKCS11_PIN";

/// DER of the P-256 curve's OID (1.2.840.10045.3.1.7), CKA_EC_PARAMS.
const P256_EC_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of id-Ed25519 (1.3.101.112, RFC 8410), CKA_EC_PARAMS of an Ed25519 key.
const ED25519_EC_PARAMS: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];
/// The other form PKCS#11 3.0 allows: PrintableString "edwards25519".
const ED25519_EC_PARAMS_NAME: &[u8] = b"\x13\x0cedwards25519";

/// The two kinds of token key sealtensors uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// P-256, derive only: an identity.
    P256,
    /// Ed25519, sign only: a publisher's signing key.
    Ed25519,
    /// P-256, sign only: a publisher's signing key on a token without Ed25519.
    EcdsaP256,
}

impl Kind {
    fn key_type(self) -> KeyType {
        match self {
            Kind::P256 | Kind::EcdsaP256 => KeyType::EC,
            Kind::Ed25519 => KeyType::EC_EDWARDS,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::P256 => "EC P-256",
            Kind::Ed25519 => "Ed25519",
            Kind::EcdsaP256 => "EC P-256 signing",
        }
    }
    fn signs(self) -> bool {
        matches!(self, Kind::Ed25519 | Kind::EcdsaP256)
    }
}

fn err(what: impl Into<String>, problem: Pkcs11Problem) -> Error {
    Error::Pkcs11 {
        what: what.into(),
        problem,
    }
}

fn bad_uri(msg: impl Into<String>) -> Error {
    err("URI", Pkcs11Problem::BadUri(msg.into()))
}

/// A cryptoki error as a typed problem.
fn problem(e: CkError) -> Pkcs11Problem {
    match e {
        CkError::Pkcs11(RvError::PinIncorrect, _) => Pkcs11Problem::PinIncorrect,
        CkError::Pkcs11(RvError::PinLocked, _) => Pkcs11Problem::PinLocked,
        CkError::Pkcs11(RvError::PinLenRange, _) => Pkcs11Problem::PinIncorrect,
        CkError::Pkcs11(rv @ (RvError::TokenNotPresent | RvError::DeviceRemoved), _) => {
            Pkcs11Problem::TokenNotFound(format!("the URI ({rv})"))
        }
        CkError::Pkcs11(
            rv @ (RvError::ObjectHandleInvalid
            | RvError::KeyHandleInvalid
            | RvError::SessionHandleInvalid
            | RvError::SessionClosed),
            _,
        ) => Pkcs11Problem::KeyNotFound(format!(
            "the key or its session is gone ({rv}); was the key deleted or the token removed? open the identity again"
        )),
        CkError::LibraryLoading(e) => Pkcs11Problem::Module(e.to_string()),
        e => Pkcs11Problem::Token(e.to_string()),
    }
}

/// A parsed `pkcs11:` URI (RFC 7512), the subset sealtensors uses.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// Token label (CK_TOKEN_INFO.label).
    pub token: Option<String>,
    /// Token serial number.
    pub serial: Option<String>,
    /// Slot id.
    pub slot_id: Option<u64>,
    /// Key label (CKA_LABEL).
    pub object: Option<String>,
    /// Key id (CKA_ID).
    pub id: Option<Vec<u8>>,
    /// The module to load.
    pub module_path: Option<PathBuf>,
    /// Where the PIN is: a file path (`pin-source=file:PATH`).
    pub pin_file: Option<PathBuf>,
}

fn decode(name: &str, v: &str) -> Result<Vec<u8>> {
    // RFC 7512 allows only pchar/unreserved characters and %XX escapes; a
    // malformed escape is refused rather than passed through.
    let b = v.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'%'
            && !(i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit())
        {
            return Err(bad_uri(format!(
                "{name}: a % not followed by two hex digits"
            )));
        }
    }
    Ok(percent_decode_str(v).collect())
}

fn decode_str(name: &str, v: &str) -> Result<String> {
    String::from_utf8(decode(name, v)?).map_err(|_| bad_uri(format!("{name} is not UTF-8")))
}

impl FromStr for Pkcs11Uri {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let body = match s.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("pkcs11:") => &s[7..],
            _ => return Err(bad_uri("a PKCS#11 URI starts with \"pkcs11:\"")),
        };
        let (path, query) = match body.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (body, None),
        };
        let mut u = Pkcs11Uri::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut once = |name: &str| {
            if seen.insert(name.to_string()) {
                Ok(())
            } else {
                Err(bad_uri(format!("{name} is given twice")))
            }
        };
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, v) = attr
                .split_once('=')
                .ok_or_else(|| bad_uri(format!("{attr:?} is not name=value")))?;
            once(name)?;
            match name {
                "token" => u.token = Some(decode_str(name, v)?),
                "serial" => u.serial = Some(decode_str(name, v)?),
                "slot-id" => {
                    u.slot_id = Some(
                        decode_str(name, v)?
                            .parse()
                            .map_err(|_| bad_uri("slot-id is not a number"))?,
                    )
                }
                "object" => u.object = Some(decode_str(name, v)?),
                "id" => u.id = Some(decode(name, v)?),
                "type" => match v {
                    "private" | "public" => {}
                    _ => return Err(bad_uri("type must be private or public (a key pair)")),
                },
                other => {
                    return Err(bad_uri(format!(
                        "path attribute {:?} is not supported here; name the token with token=, serial= or slot-id= and the key with object= or id=",
                        crate::error::printable(other, 64)
                    )))
                }
            }
        }
        for attr in query.unwrap_or("").split('&').filter(|a| !a.is_empty()) {
            let (name, v) = attr
                .split_once('=')
                .ok_or_else(|| bad_uri(format!("{attr:?} is not name=value")))?;
            once(name)?;
            match name {
                "module-path" => u.module_path = Some(PathBuf::from(decode_str(name, v)?)),
                "pin-source" => {
                    let src = decode_str(name, v)?;
                    let file = src.strip_prefix("file:").ok_or_else(|| {
                        bad_uri("pin-source must be file:PATH (or leave it out and set SEALTENSORS_PKCS11_PIN)")
                    })?;
                    // RFC 7512 allows file:///path as well.
                    let file = file.strip_prefix("//").unwrap_or(file);
                    u.pin_file = Some(PathBuf::from(file));
                }
                "pin-value" => {
                    return Err(bad_uri(
                        "pin-value is refused: a PIN in a URI ends up in shell histories and process lists; use pin-source=file:PATH or SEALTENSORS_PKCS11_PIN",
                    ))
                }
                "module-name" => {
                    return Err(bad_uri(
                        "module-name is not supported; give module-path=/path/to/module.so",
                    ))
                }
                other => {
                    return Err(bad_uri(format!(
                        "query attribute {:?} is not supported here (module-path, pin-source)",
                        crate::error::printable(other, 64)
                    )))
                }
            }
        }
        if u.object.is_none() && u.id.is_none() {
            return Err(bad_uri("name the key with object=LABEL or id=%XX..."));
        }
        Ok(u)
    }
}

impl fmt::Display for Pkcs11Uri {
    /// The token and key part, for messages (no module or PIN source).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let enc = |s: &[u8]| {
            percent_encoding::percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let mut parts = Vec::new();
        if let Some(t) = &self.token {
            parts.push(format!("token={}", enc(t.as_bytes())));
        }
        if let Some(t) = &self.serial {
            parts.push(format!("serial={}", enc(t.as_bytes())));
        }
        if let Some(t) = self.slot_id {
            parts.push(format!("slot-id={t}"));
        }
        if let Some(t) = &self.object {
            parts.push(format!("object={}", enc(t.as_bytes())));
        }
        if let Some(t) = &self.id {
            parts.push(format!("id={}", enc(t)));
        }
        write!(f, "pkcs11:{}", parts.join(";"))
    }
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Pkcs11Uri {
    fn module_path(&self) -> Result<PathBuf> {
        let p = self
            .module_path
            .clone()
            .or_else(|| std::env::var_os(ENV_PKCS11_MODULE).map(PathBuf::from))
            .ok_or_else(|| {
                bad_uri(format!(
                    "no module: add ?module-path=/path/to/module.so to the URI, or set {ENV_PKCS11_MODULE}"
                ))
            })?;
        // A relative name would be searched for on the library path, so the
        // file checked could differ from the one loaded.
        if !p.is_absolute() {
            return Err(bad_uri(
                "module-path must be an absolute path to the module (.so)",
            ));
        }
        Ok(p)
    }

    fn pin(&self) -> Result<AuthPin> {
        let text =
            match &self.pin_file {
                // The path is not repeated: a PIN typed where the path belongs
                // must not end up in the message.
                Some(p) => Zeroizing::new(std::fs::read_to_string(p).map_err(|e| {
                    Error::io("reading the PIN file named by the URI's pin-source", e)
                })?),
                None => match std::env::var(ENV_PKCS11_PIN) {
                    Ok(v) => Zeroizing::new(v),
                    Err(_) => return Err(err(self.to_string(), Pkcs11Problem::NoPin)),
                },
            };
        let pin = text.trim_end_matches(['\n', '\r']);
        if pin.is_empty() {
            return Err(err(self.to_string(), Pkcs11Problem::NoPin));
        }
        Ok(AuthPin::from(pin.to_string()))
    }

    /// The key's search template: its class and type, label and/or id.
    fn template(&self, class: ObjectClass, kind: Kind) -> Vec<Attribute> {
        let mut t = vec![Attribute::Class(class), Attribute::KeyType(kind.key_type())];
        // P-256 keys of both uses share a type: a private key is told
        // apart by what it may do.
        if class == ObjectClass::PRIVATE_KEY {
            match kind {
                Kind::P256 => t.push(Attribute::Derive(true)),
                Kind::EcdsaP256 => t.push(Attribute::Sign(true)),
                Kind::Ed25519 => {}
            }
        }
        if let Some(l) = &self.object {
            t.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        if let Some(id) = &self.id {
            t.push(Attribute::Id(id.clone()));
        }
        t
    }
}

/// The process's loaded modules, by path: each initialised once.
fn module(path: &Path) -> Result<Pkcs11> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut m = MODULES
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| Error::Crypto("PKCS#11 module table poisoned"))?;
    if let Some(ctx) = m.get(path) {
        return Ok(ctx.clone());
    }
    let what = format!("module {}", path.display());
    if !path.is_file() {
        return Err(err(what, Pkcs11Problem::Module("no such file".into())));
    }
    let ctx =
        Pkcs11::new(path).map_err(|e| err(what.clone(), Pkcs11Problem::Module(e.to_string())))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(err(what, Pkcs11Problem::Module(e.to_string()))),
    }
    m.insert(path.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// The one token slot the URI names.
fn find_slot(ctx: &Pkcs11, uri: &Pkcs11Uri) -> Result<CkSlot> {
    let what = || uri.to_string();
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| err(what(), problem(e)))?;
    let mut found = Vec::new();
    for s in slots {
        if uri.slot_id.is_some_and(|id| id != s.id()) {
            continue;
        }
        let info = ctx.get_token_info(s).map_err(|e| err(what(), problem(e)))?;
        if uri
            .token
            .as_deref()
            .is_some_and(|t| t != info.label().trim_end())
        {
            continue;
        }
        if uri
            .serial
            .as_deref()
            .is_some_and(|t| t != info.serial_number().trim_end())
        {
            continue;
        }
        found.push(s);
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(err(what(), Pkcs11Problem::TokenNotFound(what()))),
        many => Err(err(
            what(),
            Pkcs11Problem::TokenNotFound(format!(
                "{} (it matches {} tokens: name one with token=, serial= or slot-id=)",
                what(),
                many.len()
            )),
        )),
    }
}

fn login(session: &Session, uri: &Pkcs11Uri) -> Result<()> {
    let pin = uri.pin()?;
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(err(format!("login to {uri}"), problem(e))),
    }
}

/// The one object of `class` and `kind` the URI names.
fn find_key(
    session: &Session,
    uri: &Pkcs11Uri,
    class: ObjectClass,
    kind: Kind,
) -> Result<ObjectHandle> {
    let half = if class == ObjectClass::PRIVATE_KEY {
        "private"
    } else {
        "public"
    };
    let found = session
        .find_objects(&uri.template(class, kind))
        .map_err(|e| err(uri.to_string(), problem(e)))?;
    let keygen = match kind {
        Kind::P256 => "keygen --pkcs11 URI",
        Kind::Ed25519 | Kind::EcdsaP256 => "keygen --sign --pkcs11 URI",
    };
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(err(
            uri.to_string(),
            Pkcs11Problem::KeyNotFound(format!(
                "no {} {half} key with this object=/id= on the token; list its keys (pkcs11-tool --list-objects) or make one with `sealtensors {keygen}`",
                kind.name()
            )),
        )),
        many => Err(err(
            uri.to_string(),
            Pkcs11Problem::KeyNotFound(format!(
                "{} {} {half} keys match; name one key with both object= and id=",
                many.len(),
                kind.name()
            )),
        )),
    }
}

/// The key pair the URI names: the private key by the URI's label and/or id,
/// its public key by the private key's own CKA_ID (see the module docs).
fn find_pair(
    session: &Session,
    uri: &Pkcs11Uri,
    kind: Kind,
) -> Result<(ObjectHandle, ObjectHandle)> {
    let sk = find_key(session, uri, ObjectClass::PRIVATE_KEY, kind)?;
    let id = session
        .get_attributes(sk, &[AttributeType::Id])
        .map_err(|e| err(uri.to_string(), problem(e)))?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Id(id) if !id.is_empty() => Some(id),
            _ => None,
        })
        .ok_or_else(|| {
            err(
                uri.to_string(),
                Pkcs11Problem::WrongKey(
                    "the private key has no CKA_ID, so its public key cannot be told apart from others; give the pair an id".into(),
                ),
            )
        })?;
    let by_id = Pkcs11Uri {
        object: None,
        id: Some(id),
        ..uri.clone()
    };
    let pk = find_key(session, &by_id, ObjectClass::PUBLIC_KEY, kind)?;
    Ok((sk, pk))
}

fn mismatch(uri: &Pkcs11Uri) -> Error {
    err(
        uri.to_string(),
        Pkcs11Problem::WrongKey(
            "the public key stored beside this private key does not belong to it; the token's objects were changed: do not seal to it, check the token".into(),
        ),
    )
}

/// The EC parameters and point of a public key object.
fn ec_public(session: &Session, uri: &Pkcs11Uri, key: ObjectHandle) -> Result<(Vec<u8>, Vec<u8>)> {
    let attrs = session
        .get_attributes(key, &[AttributeType::EcParams, AttributeType::EcPoint])
        .map_err(|e| err(uri.to_string(), problem(e)))?;
    let mut params = Vec::new();
    let mut point = Vec::new();
    for a in attrs {
        match a {
            Attribute::EcParams(p) => params = p,
            Attribute::EcPoint(p) => point = p,
            _ => {}
        }
    }
    Ok((params, point))
}

/// The Ed25519 public key of `key` (a public key object): CKA_EC_PARAMS
/// names Ed25519, CKA_EC_POINT is the DER OCTET STRING of the 32-byte key
/// (or the raw key).
fn ed25519_public(session: &Session, uri: &Pkcs11Uri, key: ObjectHandle) -> Result<VerifyingKey> {
    let (params, point) = ec_public(session, uri, key)?;
    if params != ED25519_EC_PARAMS && params != ED25519_EC_PARAMS_NAME {
        return Err(err(
            uri.to_string(),
            Pkcs11Problem::WrongKey("the key is not an Ed25519 key (CKA_EC_PARAMS)".into()),
        ));
    }
    let raw = match point.as_slice() {
        [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest,
        p => p,
    };
    let pk: [u8; 32] = raw.try_into().map_err(|_| {
        err(
            uri.to_string(),
            Pkcs11Problem::WrongKey("the token's Ed25519 public key is not 32 bytes".into()),
        )
    })?;
    Ok(VerifyingKey::from_bytes(pk))
}

/// The P-256 public point of `key` (a public key object): CKA_EC_PARAMS must
/// name P-256, CKA_EC_POINT is the DER OCTET STRING of the point (some
/// modules give the raw point).
fn public_point(session: &Session, uri: &Pkcs11Uri, key: ObjectHandle) -> Result<P256Recipient> {
    let (params, point) = ec_public(session, uri, key)?;
    if params != P256_EC_PARAMS {
        return Err(err(
            uri.to_string(),
            Pkcs11Problem::WrongKey(
                "the key is not on P-256 (CKA_EC_PARAMS); sealtensors' hardware slot is P-256 (SPEC §6.7)"
                    .into(),
            ),
        ));
    }
    let raw = match point.as_slice() {
        [0x04, 0x41, rest @ ..] if rest.len() == POINT_LEN => rest,
        p => p,
    };
    P256Recipient::from_point(raw).map_err(|_| {
        err(
            uri.to_string(),
            Pkcs11Problem::WrongKey("the token's CKA_EC_POINT is not a P-256 point".into()),
        )
    })
}

fn open_session(uri: &Pkcs11Uri, rw: bool) -> Result<Session> {
    let ctx = module(&uri.module_path()?)?;
    let slot = find_slot(&ctx, uri)?;
    let s = if rw {
        ctx.open_rw_session(slot)
    } else {
        ctx.open_ro_session(slot)
    };
    s.map_err(|e| err(uri.to_string(), problem(e)))
}

/// A P-256 identity whose private key stays in a PKCS#11 token.
pub struct Pkcs11Identity {
    uri: Pkcs11Uri,
    session: Mutex<Session>,
    key: ObjectHandle,
    public: P256Recipient,
}

impl Pkcs11Identity {
    /// Log in to the token the URI names and find its P-256 key pair (a
    /// private key with CKA_DERIVE, and its public key of the same label/id).
    pub fn open(uri: &str) -> Result<Self> {
        let uri: Pkcs11Uri = uri.parse()?;
        let session = open_session(&uri, false)?;
        login(&session, &uri)?;
        let (key, public) = find_pair(&session, &uri, Kind::P256)?;
        let public = public_point(&session, &uri, public)?;
        let id = Pkcs11Identity {
            uri,
            session: Mutex::new(session),
            key,
            public,
        };
        id.prove()?;
        Ok(id)
    }

    /// Check that the private key belongs to the public key: ECDH with a
    /// fresh software key `e`, `x(sk · eG)` by the token against
    /// `x(e · pk)` in software.
    fn prove(&self) -> Result<()> {
        let e = P256Identity::generate()?;
        let by_token = self.agree(e.recipient().as_bytes())?;
        let in_software = e.agree(self.public.as_bytes())?;
        if crypto::ct_eq(by_token.expose(), in_software.expose()) {
            Ok(())
        } else {
            Err(mismatch(&self.uri))
        }
    }

    /// The public half.
    pub fn recipient(&self) -> P256Recipient {
        self.public
    }
}

impl P256Agreement for Pkcs11Identity {
    fn public_key(&self) -> &P256Recipient {
        &self.public
    }

    fn agree(&self, peer: &[u8; POINT_LEN]) -> Result<Secret32> {
        let session = self
            .session
            .lock()
            .map_err(|_| Error::Crypto("PKCS#11 session poisoned"))?;
        let params = Ecdh1DeriveParams::new(EcKdf::null(), peer);
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::ValueLen(32.into()),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ];
        let what = || format!("ECDH with {}", self.uri);
        let z = session
            .derive_key(&Mechanism::Ecdh1Derive(params), self.key, &template)
            .map_err(|e| err(what(), problem(e)))?;
        let value = session.get_attributes(z, &[AttributeType::Value]);
        // The derived object is destroyed whatever happened to the read.
        let destroyed = session.destroy_object(z);
        let mut out = None;
        for a in value.map_err(|e| err(what(), problem(e)))? {
            if let Attribute::Value(mut v) = a {
                out = <[u8; 32]>::try_from(v.as_slice())
                    .ok()
                    .map(Secret32::from_bytes);
                v.zeroize();
            }
        }
        destroyed.map_err(|e| err(what(), problem(e)))?;
        out.ok_or_else(|| {
            err(
                what(),
                Pkcs11Problem::Token("the derived secret is not 32 bytes".into()),
            )
        })
    }

    fn location(&self) -> String {
        self.uri.to_string()
    }
}

impl Identity for Pkcs11Identity {
    fn unwrap(&self, slot: &Slot, mk_id: &[u8; 16]) -> Option<Result<ModelKey>> {
        open_slot(self, slot, mk_id)
    }
    fn describe(&self) -> String {
        format!("p256 {} ({})", self.public.rid(), self.uri)
    }
}

impl fmt::Debug for Pkcs11Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pkcs11Identity({}, {})", self.uri, self.public)
    }
}

/// The public key of the key pair the URI names (for `-r pkcs11:...`). It
/// needs the PIN: the pair is opened and proven as for an identity, because
/// a public key object alone can be replaced by anyone who can reach the
/// token.
pub fn pkcs11_recipient(uri: &str) -> Result<P256Recipient> {
    Ok(Pkcs11Identity::open(uri)?.recipient())
}

/// A new key pair on the token: `(session, uri with its id, public key)`.
/// The private key is sensitive, never extractable, and usable for one
/// thing only (derive for P-256, sign for Ed25519); labelled `object` and
/// with the URI's `id` (else 16 random bytes). Refuses when the token
/// already holds an object with that label or id: keys are never replaced.
fn generate(uri: &str, kind: Kind) -> Result<(Session, Pkcs11Uri, ObjectHandle)> {
    let uri: Pkcs11Uri = uri.parse()?;
    let label = uri
        .object
        .clone()
        .ok_or_else(|| bad_uri("keygen needs object=LABEL, the new key's name"))?;
    let id = match &uri.id {
        Some(id) => id.clone(),
        None => crypto::random_array::<16>()?.to_vec(),
    };
    let session = open_session(&uri, true)?;
    login(&session, &uri)?;
    // One key generation at a time in this process: SoftHSM2 2.6 fails with
    // CKR_GENERAL_ERROR when two sessions create token objects at once, and
    // the label/id check below must not race another keygen.
    static KEYGEN: Mutex<()> = Mutex::new(());
    let _one = KEYGEN
        .lock()
        .map_err(|_| Error::Crypto("PKCS#11 keygen lock poisoned"))?;
    for t in [
        vec![Attribute::Label(label.as_bytes().to_vec())],
        vec![Attribute::Id(id.clone())],
    ] {
        let n = session
            .find_objects(&t)
            .map_err(|e| err(uri.to_string(), problem(e)))?
            .len();
        if n > 0 {
            return Err(err(
                uri.to_string(),
                Pkcs11Problem::WrongKey(
                    "the token already holds an object with this label or id; choose another object= (keys are never replaced)"
                        .into(),
                ),
            ));
        }
    }
    let (mechanism, params) = match kind {
        Kind::P256 | Kind::EcdsaP256 => (Mechanism::EccKeyPairGen, P256_EC_PARAMS.to_vec()),
        Kind::Ed25519 => (Mechanism::EccEdwardsKeyPairGen, ED25519_EC_PARAMS.to_vec()),
    };
    let public = [
        Attribute::Token(true),
        // Readable (and replaceable) only after login.
        Attribute::Private(true),
        Attribute::EcParams(params),
        Attribute::Verify(kind.signs()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.clone()),
    ];
    let private = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Derive(kind == Kind::P256),
        Attribute::Sign(kind.signs()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.clone()),
    ];
    let (pk, sk) = session
        .generate_key_pair(&mechanism, &public, &private)
        .map_err(|e| {
            err(
                format!("generating an {} key on {uri}", kind.name()),
                problem(e),
            )
        })?;
    let uri = Pkcs11Uri {
        id: Some(id),
        ..uri
    };
    // A token may ignore parts of a template: check what it made, and undo
    // a key that could leave the token.
    let made = session
        .get_attributes(
            sk,
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Derive,
                AttributeType::Sign,
            ],
        )
        .map_err(|e| err(uri.to_string(), problem(e)))?;
    let as_asked = made.iter().all(|a| match a {
        Attribute::Sensitive(v) => *v,
        Attribute::Extractable(v) => !*v,
        Attribute::Derive(v) => *v == (kind == Kind::P256),
        Attribute::Sign(v) => *v == kind.signs(),
        _ => true,
    });
    if !as_asked || made.len() < 4 {
        let _ = session.destroy_object(sk);
        let _ = session.destroy_object(pk);
        return Err(err(
            uri.to_string(),
            Pkcs11Problem::WrongKey(
                "the token did not make the key as asked (sensitive, not extractable, one use); it was deleted again".into(),
            ),
        ));
    }
    Ok((session, uri, pk))
}

/// Make a P-256 key pair on the token the URI names (`keygen --pkcs11`), its
/// private key usable only to derive (ECDH). Returns the public half, the
/// recipient to seal to.
pub fn pkcs11_generate_p256(uri: &str) -> Result<P256Recipient> {
    let (session, uri, pk) = generate(uri, Kind::P256)?;
    public_point(&session, &uri, pk)
}

/// Make an Ed25519 key pair on the token the URI names, its private key
/// usable only to sign. Returns the public half, the signer that loaders
/// trust.
pub fn pkcs11_generate_ed25519(uri: &str) -> Result<VerifyingKey> {
    let (session, uri, pk) = generate(uri, Kind::Ed25519)?;
    ed25519_public(&session, &uri, pk)
}

/// Make an ECDSA P-256 signing key pair on the token the URI names (for
/// tokens without Ed25519). Returns the `ecdsa-p256:` signer.
pub fn pkcs11_generate_ecdsa_p256(uri: &str) -> Result<VerifyingKey> {
    let (session, uri, pk) = generate(uri, Kind::EcdsaP256)?;
    VerifyingKey::ecdsa_p256(public_point(&session, &uri, pk)?.as_bytes())
}

/// Make a signing key on the token (`keygen --sign --pkcs11`): Ed25519 when
/// the token offers it (`CKM_EC_EDWARDS_KEY_PAIR_GEN` and `CKM_EDDSA`),
/// else ECDSA P-256.
pub fn pkcs11_generate_signer(uri: &str) -> Result<VerifyingKey> {
    let parsed: Pkcs11Uri = uri.parse()?;
    let ctx = module(&parsed.module_path()?)?;
    let slot = find_slot(&ctx, &parsed)?;
    let mechs = ctx
        .get_mechanism_list(slot)
        .map_err(|e| err(parsed.to_string(), problem(e)))?;
    if has_ed25519(&mechs) {
        pkcs11_generate_ed25519(uri)
    } else {
        pkcs11_generate_ecdsa_p256(uri)
    }
}

/// Whether a token's mechanisms make and use Ed25519 keys.
fn has_ed25519(mechs: &[MechanismType]) -> bool {
    mechs.contains(&MechanismType::ECC_EDWARDS_KEY_PAIR_GEN)
        && mechs.contains(&MechanismType::EDDSA)
}

/// A signing key held in a PKCS#11 token (`CKM_EDDSA`, or `CKM_ECDSA` for a
/// P-256 key); used as a [`SigningKey`](super::SigningKey) through
/// `load_signing_key(URI)`.
pub(crate) struct Pkcs11Signer {
    uri: Pkcs11Uri,
    session: Mutex<Session>,
    key: ObjectHandle,
    public: VerifyingKey,
    ecdsa: bool,
}

impl Pkcs11Signer {
    /// Log in to the token and find the signing key pair the URI names: an
    /// Ed25519 pair, else a P-256 pair whose private key may sign.
    pub(crate) fn open(uri: &str) -> Result<Self> {
        let uri: Pkcs11Uri = uri.parse()?;
        let session = open_session(&uri, false)?;
        login(&session, &uri)?;
        // An Ed25519 key pair, else a P-256 key that may sign.
        let (key, public, ecdsa) = match find_pair(&session, &uri, Kind::Ed25519) {
            Ok((key, public)) => (key, ed25519_public(&session, &uri, public)?, false),
            Err(first) => match find_pair(&session, &uri, Kind::EcdsaP256) {
                Ok((key, public)) => {
                    let p = public_point(&session, &uri, public)?;
                    (key, VerifyingKey::ecdsa_p256(p.as_bytes())?, true)
                }
                Err(_) => return Err(first),
            },
        };
        let s = Pkcs11Signer {
            uri,
            session: Mutex::new(session),
            key,
            public,
            ecdsa,
        };
        // Prove the pair: a signature over a fresh challenge must verify.
        let mut challenge = b"sealtensors/1 pkcs11 key check\0".to_vec();
        challenge.extend_from_slice(&crypto::random_array::<32>()?);
        if !s.public.verify(&challenge, &s.sign(&challenge)?) {
            return Err(mismatch(&s.uri));
        }
        Ok(s)
    }

    pub(crate) fn verifying_key(&self) -> VerifyingKey {
        self.public
    }

    /// Ed25519 (pure) over `msg`, or ECDSA P-256 over SHA-256(`msg`) as
    /// `r || s` with the low `s`, by the token.
    pub(crate) fn sign(&self, msg: &[u8]) -> Result<[u8; 64]> {
        let session = self
            .session
            .lock()
            .map_err(|_| Error::Crypto("PKCS#11 session poisoned"))?;
        let sig = if self.ecdsa {
            // CKM_ECDSA signs a digest given to it: tokens differ in which
            // hash-and-sign mechanisms they have, every one has this.
            session.sign(&Mechanism::Ecdsa, self.key, &crypto::sha256(msg))
        } else {
            session.sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                self.key,
                msg,
            )
        }
        .map_err(|e| err(format!("signing with {}", self.uri), problem(e)))?;
        let mut out: [u8; 64] = sig.as_slice().try_into().map_err(|_| {
            err(
                format!("signing with {}", self.uri),
                Pkcs11Problem::Token(format!("a signature of {} bytes, not 64", sig.len())),
            )
        })?;
        if self.ecdsa {
            crypto::ecdsa_p256_low_s(&mut out);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_strictly() {
        let u: Pkcs11Uri = "pkcs11:token=My%20Token;object=k1;id=%01%ff?module-path=/usr/lib/x.so&pin-source=file:/run/pin"
            .parse()
            .unwrap();
        assert_eq!(u.token.as_deref(), Some("My Token"));
        assert_eq!(u.object.as_deref(), Some("k1"));
        assert_eq!(u.id.as_deref(), Some(&[1u8, 0xff][..]));
        assert_eq!(u.module_path.as_deref(), Some(Path::new("/usr/lib/x.so")));
        assert_eq!(u.pin_file.as_deref(), Some(Path::new("/run/pin")));
        assert_eq!(u.to_string(), "pkcs11:token=My%20Token;object=k1;id=%01%FF");
        for bad in [
            "pkcs11:token=t",                           // no key named
            "pkcs11:object=k?pin-value=1234",           // PIN in the URI
            "pkcs11:object=k;object=j",                 // twice
            "pkcs11:object=k;manufacturer=x",           // unsupported selector
            "pkcs11:object=k%2",                        // bad escape
            "pkcs11:object=k?module-name=softhsm2",     // no module lookup by name
            "pkcs11:object=k?pin-source=https://x/pin", // only files
            "pkcs11:object=k;type=cert",
            "pkcs11:object",
            "file:/x",
        ] {
            let e = bad.parse::<Pkcs11Uri>().err().unwrap();
            assert!(
                matches!(
                    e,
                    Error::Pkcs11 {
                        problem: Pkcs11Problem::BadUri(_),
                        ..
                    }
                ),
                "{bad}: {e}"
            );
        }
        // The PIN is never in the message.
        let e = "pkcs11:object=k?pin-value=9876"
            .parse::<Pkcs11Uri>()
            .err()
            .unwrap()
            .to_string();
        assert!(!e.contains("9876"), "{e}");
    }

    #[test]
    fn signers_are_ed25519_only_where_the_token_makes_and_uses_it() {
        use MechanismType as M;
        assert!(has_ed25519(&[
            M::ECDSA,
            M::ECC_EDWARDS_KEY_PAIR_GEN,
            M::EDDSA
        ]));
        // A YubiKey-PIV-like token: ECDSA only.
        assert!(!has_ed25519(&[
            M::ECC_KEY_PAIR_GEN,
            M::ECDSA,
            M::ECDH1_DERIVE
        ]));
        // Half of it is not enough.
        assert!(!has_ed25519(&[M::ECC_EDWARDS_KEY_PAIR_GEN]));
        assert!(!has_ed25519(&[M::EDDSA]));
    }

    #[test]
    fn module_paths_must_be_absolute() {
        let e = Pkcs11Identity::open("pkcs11:object=k?module-path=libsofthsm2.so")
            .err()
            .unwrap();
        assert!(
            matches!(
                e,
                Error::Pkcs11 {
                    problem: Pkcs11Problem::BadUri(_),
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("absolute"), "{e}");
    }

    #[test]
    fn a_pin_path_is_not_echoed() {
        let e = Pkcs11Uri {
            pin_file: Some("123456".into()),
            ..Default::default()
        }
        .pin()
        .err()
        .unwrap();
        assert!(!e.to_string().contains("123456"), "{e}");
    }

    #[test]
    fn a_missing_module_is_a_typed_error() {
        let e = Pkcs11Identity::open("pkcs11:object=k?module-path=/nonexistent/module.so")
            .err()
            .unwrap();
        assert!(
            matches!(
                e,
                Error::Pkcs11 {
                    problem: Pkcs11Problem::Module(_),
                    ..
                }
            ),
            "{e}"
        );
    }
}
