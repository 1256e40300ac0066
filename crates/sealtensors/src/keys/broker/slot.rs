//! Key broker slots (SPEC §6.6, §6.8): the model key wrapped to a broker's
//! long-term key-encryption key, like an `x25519` (or `p256`) slot, plus the
//! URL and key id under which the broker serves it. An X25519 KEK makes
//! `broker` slots; a P-256 KEK, which a PKCS#11 token or a TPM can hold,
//! makes `broker-p256` slots. Sealing needs only the
//! broker's public key; only the broker ([`BrokerKek`]) opens the slot, and it
//! releases the model key to clients over HPKE (see `release`).
//!
//! A [`BrokerRecipient`] parsed from text names the broker (its URL and key
//! id) and never touches the network; its public key is given in the text
//! (`#x25519:...`) or fetched by the explicit [`BrokerRecipient::resolve`],
//! which sealing and rekeying call through [`Recipient::resolve`].

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use aws_lc_rs::agreement::{PrivateKey, X25519};

use crate::crypto::{self, Secret32};
use crate::error::{Error, Result};
use crate::keys::p256::{open_kek, seal_kek};
use crate::keys::x25519::ecdh_kek;
use crate::keys::{b64, slot_aad, unb64, unb64_array, Identity, ModelKey, Recipient, Slot};
use crate::keys::{P256Agreement, P256Recipient, X25519Identity, X25519Recipient};

/// The slot type.
pub const SLOT_TYPE: &str = "broker";
/// The slot type of a P-256 KEK (SPEC §6.8).
pub const SLOT_TYPE_P256: &str = "broker-p256";

/// A broker KEK's public key: X25519 (`broker` slots) or P-256
/// (`broker-p256` slots).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum BrokerPublicKey {
    /// `x25519:...`
    X25519(X25519Recipient),
    /// `p256:...`
    P256(P256Recipient),
}

impl From<X25519Recipient> for BrokerPublicKey {
    fn from(k: X25519Recipient) -> Self {
        BrokerPublicKey::X25519(k)
    }
}

impl From<P256Recipient> for BrokerPublicKey {
    fn from(k: P256Recipient) -> Self {
        BrokerPublicKey::P256(k)
    }
}

impl fmt::Display for BrokerPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerPublicKey::X25519(k) => fmt::Display::fmt(k, f),
            BrokerPublicKey::P256(k) => fmt::Display::fmt(k, f),
        }
    }
}

impl fmt::Debug for BrokerPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for BrokerPublicKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.starts_with("p256:") {
            Ok(BrokerPublicKey::P256(s.parse()?))
        } else if s.starts_with("x25519:") {
            Ok(BrokerPublicKey::X25519(s.parse()?))
        } else {
            Err(Error::InvalidKey(
                "a broker's public key is x25519:... or p256:...".into(),
            ))
        }
    }
}

/// `KEK = HKDF(Z, epk || pk, "sealtensors/1 broker-p256 slot\0" || url)`.
fn p256_info(url: &str) -> [&[u8]; 2] {
    [b"sealtensors/1 broker-p256 slot\0", url.as_bytes()]
}
/// Longest `url` (SPEC §6.6).
pub const MAX_URL_LEN: usize = 2048;
/// Longest `kid`.
pub const MAX_KID_LEN: usize = 256;

/// A broker URL taken apart: scheme, host (without port), port, key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// The URL as written.
    pub url: String,
    /// `https` or `http` (loopback only).
    pub https: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port, when the URL names one.
    pub port: Option<u16>,
    /// The key id: the last path segment.
    pub kid: String,
}

/// Whether a host is a loopback name or address.
pub fn is_loopback(host: &str) -> bool {
    // An address, parsed: "127.evil.example" is a name anyone can point anywhere.
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

fn valid_kid(kid: &str) -> bool {
    (1..=MAX_KID_LEN).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl BrokerUrl {
    /// Parse and check a broker key URL (SPEC §6.6).
    pub fn parse(url: &str) -> Result<BrokerUrl> {
        let bad = |why: &str| {
            Error::InvalidKey(format!(
                "broker URL {url:?}: {why}; expected https://HOST[:PORT]/keys/KEY_ID"
            ))
        };
        if url.len() > MAX_URL_LEN {
            return Err(bad("too long"));
        }
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("not an https:// URL"));
        };
        let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no path"))?;
        if authority.contains('@') || path.contains(['?', '#']) {
            return Err(bad("user info, query or fragment"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("garbage after the IPv6 address")),
            };
            (h.to_string(), port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => None,
            Some(p) => Some(p.parse::<u16>().map_err(|_| bad("bad port"))?),
        };
        let kid = path.rsplit('/').next().unwrap_or_default().to_string();
        if !valid_kid(&kid) {
            return Err(bad(
                "the last path segment (the key id) must be 1 to 256 of A-Z a-z 0-9 . _ -",
            ));
        }
        if !https && !is_loopback(&host) {
            return Err(bad("plain http:// is allowed only for a loopback host"));
        }
        Ok(BrokerUrl {
            url: url.to_string(),
            https,
            host: host.to_lowercase(),
            port,
            kid,
        })
    }

    /// `host` or `host:port`, for messages and configuration matching.
    pub fn authority(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }
}

/// `KEK = HKDF(Z, epk || pk, "sealtensors/1 broker slot\0" || url)`.
fn slot_kek(
    sk: &PrivateKey,
    peer: &[u8; 32],
    epk: &[u8; 32],
    pk: &[u8; 32],
    url: &str,
) -> Result<Secret32> {
    ecdh_kek(
        sk,
        peer,
        epk,
        pk,
        &[b"sealtensors/1 broker slot\0", url.as_bytes()],
    )
}

/// A broker as a recipient: its key URL and its KEK's public key, given or
/// fetched once by [`BrokerRecipient::resolve`].
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerRecipient {
    url: BrokerUrl,
    pk: OnceLock<BrokerPublicKey>,
}

impl BrokerRecipient {
    /// From a key URL and the broker's public key, both known to the caller.
    pub fn new(url: &str, pk: impl Into<BrokerPublicKey>) -> Result<Self> {
        Ok(BrokerRecipient {
            url: BrokerUrl::parse(url)?,
            pk: OnceLock::from(pk.into()),
        })
    }

    /// The broker at a key URL whose public key is not known yet: no I/O;
    /// [`resolve`](Self::resolve) fetches the key before it can wrap.
    pub fn named(url: &str) -> Result<Self> {
        Ok(BrokerRecipient {
            url: BrokerUrl::parse(url)?,
            pk: OnceLock::new(),
        })
    }

    /// Ask the broker at `url` for its public key (SPEC §6.6, `GET url`):
    /// [`named`](Self::named), then [`resolve`](Self::resolve).
    pub fn fetch(url: &str) -> Result<Self> {
        let r = BrokerRecipient::named(url)?;
        r.resolve()?;
        Ok(r)
    }

    /// The broker's public key: the one given, else fetched from the broker
    /// (`GET url`, SPEC §6.6) the first time and kept. The publisher named
    /// this broker itself, so no host list applies. The only step of a broker
    /// recipient that uses the network.
    pub fn resolve(&self) -> Result<BrokerPublicKey> {
        if let Some(pk) = self.pk.get() {
            return Ok(*pk);
        }
        #[cfg(feature = "broker-client")]
        {
            let pk = super::http::fetch_public_key(&self.url)?;
            // Two threads may fetch at once; the first answer stays.
            Ok(*self.pk.get_or_init(|| pk))
        }
        #[cfg(not(feature = "broker-client"))]
        Err(Error::BrokerClientMissing {
            broker: self.url.authority(),
            task: "sealing to this broker",
            fix: "give its public key as broker:URL#x25519:... (or #p256:...)",
        })
    }

    /// The key URL.
    pub fn url(&self) -> &str {
        &self.url.url
    }
    /// The key id.
    pub fn kid(&self) -> &str {
        &self.url.kid
    }
    /// The broker's public key, when given or already fetched.
    pub fn public_key(&self) -> Option<BrokerPublicKey> {
        self.pk.get().copied()
    }
}

/// `broker:URL`, `URL`, either with `#x25519:PK` or `#p256:PK` to give the key; without
/// it the key is fetched by [`BrokerRecipient::resolve`]. Parsing never
/// touches the network.
impl FromStr for BrokerRecipient {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.strip_prefix("broker:").unwrap_or(s);
        match s.split_once('#') {
            Some((url, pk)) => BrokerRecipient::new(url, pk.parse::<BrokerPublicKey>()?),
            None => BrokerRecipient::named(s),
        }
    }
}

impl fmt::Display for BrokerRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pk.get() {
            Some(pk) => write!(f, "broker:{}#{pk}", self.url.url),
            None => write!(f, "broker:{}", self.url.url),
        }
    }
}

impl fmt::Debug for BrokerRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Recipient for BrokerRecipient {
    fn resolve(&self) -> Result<()> {
        BrokerRecipient::resolve(self).map(|_| ())
    }
    fn wrap(&self, key: &ModelKey) -> Result<Slot> {
        let Some(pk) = self.pk.get() else {
            return Err(Error::ApiMisuse(format!(
                "the public key of broker {} is not known yet: call resolve() (it fetches the key) before wrap, or give the key as URL#x25519:...",
                self.url.url
            )));
        };
        let (url, kid) = (self.url.url.clone(), self.url.kid.clone());
        match pk {
            BrokerPublicKey::X25519(pk) => {
                let (esk, epk) = crate::keys::x25519::ephemeral()?;
                let pk = pk.as_bytes();
                let kek = slot_kek(&esk, pk, &epk, pk, &url)?;
                let ct = crypto::wrap_key(&kek, &slot_aad(SLOT_TYPE, &key.id()?), key.secret())?;
                Ok(Slot::Broker {
                    url,
                    kid,
                    epk: b64(&epk),
                    ct: b64(&ct),
                })
            }
            BrokerPublicKey::P256(pk) => {
                let (epk, kek) = seal_kek(pk, &p256_info(&url))?;
                let aad = slot_aad(SLOT_TYPE_P256, &key.id()?);
                let ct = crypto::wrap_key(&kek, &aad, key.secret())?;
                Ok(Slot::BrokerP256 {
                    url,
                    kid,
                    epk: b64(&epk),
                    ct: b64(&ct),
                })
            }
        }
    }
    fn matches(&self, slot: &Slot) -> bool {
        slot.broker().is_some_and(|(url, _)| url == self.url.url)
    }
    fn describe(&self) -> String {
        format!("broker {}", self.url.url)
    }
}

/// The broker's key-encryption key under a key id: an X25519 identity
/// (`broker` slots), or a P-256 key in a file, a PKCS#11 token or a TPM
/// (`broker-p256` slots). Only a broker holds one; it opens the slots of its
/// kind with its `kid`.
pub struct BrokerKek {
    kid: String,
    key: KekKey,
}

enum KekKey {
    X25519(X25519Identity),
    P256(Box<dyn P256Agreement>),
}

fn check_kid(kid: &str) -> Result<()> {
    if valid_kid(kid) {
        Ok(())
    } else {
        Err(Error::InvalidKey(format!(
            "broker key id {kid:?} must be 1 to 256 of A-Z a-z 0-9 . _ -"
        )))
    }
}

impl BrokerKek {
    /// A KEK from an X25519 identity.
    pub fn new(kid: &str, id: X25519Identity) -> Result<Self> {
        check_kid(kid)?;
        Ok(BrokerKek {
            kid: kid.to_string(),
            key: KekKey::X25519(id),
        })
    }
    /// A KEK held as a P-256 key: a key file's, a PKCS#11 token's or a TPM's.
    pub fn new_p256(kid: &str, key: Box<dyn P256Agreement>) -> Result<Self> {
        check_kid(kid)?;
        Ok(BrokerKek {
            kid: kid.to_string(),
            key: KekKey::P256(key),
        })
    }
    /// The KEK named by a broker configuration's `identity`: a JWK file
    /// (X25519 or P-256), a TPM identity file, or a `pkcs11:` URI.
    pub fn load(kid: &str, spec: &std::path::Path) -> Result<Self> {
        match crate::keys::jwk::load_ecdh_key(spec)? {
            crate::keys::jwk::EcdhKey::X25519(id) => Self::new(kid, id),
            crate::keys::jwk::EcdhKey::P256(k) => Self::new_p256(kid, k),
        }
    }
    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }
    /// The public key publishers seal to.
    pub fn public_key(&self) -> BrokerPublicKey {
        match &self.key {
            KekKey::X25519(id) => BrokerPublicKey::X25519(id.recipient()),
            KekKey::P256(k) => BrokerPublicKey::P256(*k.public_key()),
        }
    }

    /// Open a broker slot: `None` when it is not for this key id, or of the
    /// other kind.
    pub fn open(&self, slot: &Slot, mk_id: &[u8; 16]) -> Option<Result<ModelKey>> {
        let (url, kid, epk, ct, kind) = match (slot, &self.key) {
            (Slot::Broker { url, kid, epk, ct }, KekKey::X25519(_)) => {
                (url, kid, epk, ct, SLOT_TYPE)
            }
            (Slot::BrokerP256 { url, kid, epk, ct }, KekKey::P256(_)) => {
                (url, kid, epk, ct, SLOT_TYPE_P256)
            }
            _ => return None,
        };
        if *kid != self.kid {
            return None;
        }
        Some((|| {
            BrokerUrl::parse(url)?;
            let ct = unb64("slot ct", ct)?;
            let kek = match &self.key {
                KekKey::X25519(id) => {
                    let epk: [u8; 32] = unb64_array("slot epk", epk)?;
                    let sk = PrivateKey::from_private_key(&X25519, id.secret_bytes())
                        .map_err(|_| Error::InvalidKey("X25519 secret key rejected".into()))?;
                    slot_kek(&sk, &epk, &epk, id.recipient().as_bytes(), url)?
                }
                KekKey::P256(k) => open_kek(k.as_ref(), epk, &p256_info(url))?,
            };
            let mk = crypto::unwrap_key(&kek, &slot_aad(kind, mk_id), &ct)
                .map(ModelKey::from_secret)
                .ok_or(Error::NoMatchingKey {
                    given: 1,
                    slots: format!("broker {url} (present but it does not open: corrupt, forged, or sealed to another key)"),
                })?;
            if mk.id()? != *mk_id {
                return Err(Error::NoMatchingKey {
                    given: 1,
                    slots: format!("broker {url} (holds another model's key)"),
                });
            }
            Ok(mk)
        })())
    }
}

impl fmt::Debug for BrokerKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            KekKey::X25519(id) => write!(f, "BrokerKek({}, {id:?})", self.kid),
            KekKey::P256(k) => write!(
                f,
                "BrokerKek({}, {} in {}, secret: <redacted>)",
                self.kid,
                k.public_key(),
                k.location()
            ),
        }
    }
}

/// A broker's KEK is also an identity, so tools that hold it (the broker
/// itself, tests) can open files sealed to it directly.
impl Identity for BrokerKek {
    fn unwrap(&self, slot: &Slot, mk_id: &[u8; 16]) -> Option<Result<ModelKey>> {
        self.open(slot, mk_id)
    }
    fn describe(&self) -> String {
        format!("broker key {}", self.kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_and_localhost_are_loopback() {
        for h in ["localhost", "127.0.0.1", "127.1.2.3", "::1"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "127.evil.example",
            "127.0.0.1.nip.io",
            "localhost.example",
            "10.0.0.1",
            "::2",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
        assert!(BrokerUrl::parse("http://127.evil.example/keys/k").is_err());
        assert!(BrokerUrl::parse("http://127.0.0.1:8/keys/k").is_ok());
    }

    fn kek() -> BrokerKek {
        BrokerKek::new("k1", X25519Identity::generate().unwrap()).unwrap()
    }

    #[test]
    fn url_parsing_accepts_and_refuses() {
        let u = BrokerUrl::parse("https://keys.example.com:8443/v1/keys/acme-1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.kid.as_str()),
            ("keys.example.com", Some(8443), "acme-1")
        );
        assert_eq!(u.authority(), "keys.example.com:8443");
        let u = BrokerUrl::parse("http://[::1]:9/keys/k").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", Some(9)));
        assert!(BrokerUrl::parse("http://127.0.0.1:80/keys/k").is_ok());
        for bad in [
            "ftp://h/keys/k",
            "http://example.com/keys/k",
            "https://h",
            "https:///keys/k",
            "https://h/keys/",
            "https://h/keys/a b",
            "https://u@h/keys/k",
            "https://h/keys/k?x=1",
            "https://h:99999/keys/k",
            "https://[::1/keys/k",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
        let long = format!("https://h/keys/{}", "a".repeat(300));
        assert!(BrokerUrl::parse(&long).is_err());
    }

    #[test]
    fn wrap_then_open_with_the_broker_kek_only() {
        let k = kek();
        let r = BrokerRecipient::new("https://b.example/keys/k1", k.public_key()).unwrap();
        let mk = ModelKey::generate().unwrap();
        let id = mk.id().unwrap();
        let slot = r.wrap(&mk).unwrap();
        assert!(r.matches(&slot));
        let got = k.open(&slot, &id).unwrap().unwrap();
        assert_eq!(got.secret().expose(), mk.secret().expose());
        // A local X25519 identity never opens a broker slot.
        let x = X25519Identity::generate().unwrap();
        assert!(x.unwrap(&slot, &id).is_none());
        // Another KEK with the same kid: ours, but does not open.
        assert!(kek().open(&slot, &id).unwrap().is_err());
        // Another kid: not ours.
        let other = BrokerKek::new("k2", X25519Identity::generate().unwrap()).unwrap();
        assert!(other.open(&slot, &id).is_none());
        // The wrong mk_id (slot moved to another model's file) fails.
        assert!(k.open(&slot, &[0u8; 16]).unwrap().is_err());
    }

    #[test]
    fn the_url_is_bound_into_the_wrap() {
        let k = kek();
        let r = BrokerRecipient::new("https://b.example/keys/k1", k.public_key()).unwrap();
        let mk = ModelKey::generate().unwrap();
        let Slot::Broker { kid, epk, ct, .. } = r.wrap(&mk).unwrap() else {
            panic!("not a broker slot")
        };
        let moved = Slot::Broker {
            url: "https://evil.example/keys/k1".into(),
            kid,
            epk,
            ct,
        };
        assert!(k.open(&moved, &mk.id().unwrap()).unwrap().is_err());
    }

    #[test]
    fn slot_json_round_trips_and_rejects_unknown_members() {
        let k = kek();
        let r: BrokerRecipient = format!("broker:https://b.example/keys/k1#{}", k.public_key())
            .parse()
            .unwrap();
        let slot = r.wrap(&ModelKey::generate().unwrap()).unwrap();
        let v = slot.to_value().unwrap();
        assert_eq!(v["type"], "broker");
        assert_eq!(Slot::from_value(v.clone()).unwrap(), slot);
        let mut extra = v;
        extra["x"] = serde_json::json!(1);
        assert!(Slot::from_value(extra).is_err());
        assert!(slot.describe().contains("https://b.example/keys/k1"));
    }

    #[test]
    fn p256_keks_make_and_open_broker_p256_slots_only() {
        use crate::keys::P256Identity;
        let url = "https://b.example/keys/k1";
        let p = BrokerKek::new_p256("k1", Box::new(P256Identity::generate().unwrap())).unwrap();
        let x = BrokerKek::new("k1", X25519Identity::generate().unwrap()).unwrap();
        assert!(matches!(p.public_key(), BrokerPublicKey::P256(_)));
        let mk = ModelKey::generate().unwrap();
        let id = mk.id().unwrap();
        // The public key string round-trips through a recipient.
        let r: BrokerRecipient = format!("broker:{url}#{}", p.public_key()).parse().unwrap();
        let slot = r.wrap(&mk).unwrap();
        assert!(matches!(slot, Slot::BrokerP256 { .. }), "{slot:?}");
        assert_eq!(slot.broker(), Some((url, "k1")));
        assert!(r.matches(&slot));
        let got = p.open(&slot, &id).unwrap().unwrap();
        assert_eq!(got.expose_secret(), mk.expose_secret());
        // The other kind of KEK does not see it; nor does this kind another's.
        assert!(x.open(&slot, &id).is_none());
        let xslot = BrokerRecipient::new(url, x.public_key())
            .unwrap()
            .wrap(&mk)
            .unwrap();
        assert!(p.open(&xslot, &id).is_none());
        // Relabelled (type swapped, fields kept): neither opens it.
        let Slot::BrokerP256 {
            url: u,
            kid,
            epk,
            ct,
        } = slot.clone()
        else {
            unreachable!()
        };
        let swapped = Slot::Broker {
            url: u.clone(),
            kid: kid.clone(),
            epk,
            ct,
        };
        assert!(p.open(&swapped, &id).is_none());
        assert!(x.open(&swapped, &id).unwrap().is_err());
        // The URL is bound into the KEK: another URL, same kid, does not open.
        let Slot::BrokerP256 { kid, epk, ct, .. } = slot else {
            unreachable!()
        };
        let moved = Slot::BrokerP256 {
            url: "https://evil.example/keys/k1".into(),
            kid,
            epk,
            ct,
        };
        assert!(p.open(&moved, &id).unwrap().is_err());
        // Debug shows no secret.
        assert!(format!("{p:?}").contains("redacted"));
        assert!("ed25519:AAAA".parse::<BrokerPublicKey>().is_err());
    }
}
