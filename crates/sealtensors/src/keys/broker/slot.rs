//! Key broker slots (SPEC §6.6): the model key wrapped to a broker's
//! long-term X25519 key-encryption key, like an `x25519` slot, plus the URL
//! and key id under which the broker serves it. Sealing needs only the
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
use crate::keys::x25519::ecdh_kek;
use crate::keys::{b64, slot_aad, unb64, unb64_array, Identity, ModelKey, Recipient, Slot};
use crate::keys::{X25519Identity, X25519Recipient};

/// The slot type.
pub const SLOT_TYPE: &str = "broker";
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
    pk: OnceLock<X25519Recipient>,
}

impl BrokerRecipient {
    /// From a key URL and the broker's public key, both known to the caller.
    pub fn new(url: &str, pk: X25519Recipient) -> Result<Self> {
        Ok(BrokerRecipient {
            url: BrokerUrl::parse(url)?,
            pk: OnceLock::from(pk),
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
    pub fn resolve(&self) -> Result<X25519Recipient> {
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
            fix: "give its public key as broker:URL#x25519:...",
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
    pub fn public_key(&self) -> Option<X25519Recipient> {
        self.pk.get().copied()
    }
}

/// `broker:URL`, `URL`, either with `#x25519:PK` to give the key; without
/// it the key is fetched by [`BrokerRecipient::resolve`]. Parsing never
/// touches the network.
impl FromStr for BrokerRecipient {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.strip_prefix("broker:").unwrap_or(s);
        match s.split_once('#') {
            Some((url, pk)) => BrokerRecipient::new(url, pk.parse()?),
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
        let (esk, epk) = crate::keys::x25519::ephemeral()?;
        let pk = pk.as_bytes();
        let kek = slot_kek(&esk, pk, &epk, pk, &self.url.url)?;
        let ct = crypto::wrap_key(&kek, &slot_aad(SLOT_TYPE, &key.id()?), key.secret())?;
        Ok(Slot::Broker {
            url: self.url.url.clone(),
            kid: self.url.kid.clone(),
            epk: b64(&epk),
            ct: b64(&ct),
        })
    }
    fn matches(&self, slot: &Slot) -> bool {
        matches!(slot, Slot::Broker { url, .. } if *url == self.url.url)
    }
    fn describe(&self) -> String {
        format!("broker {}", self.url.url)
    }
}

/// The broker's key-encryption key: an X25519 identity under a key id. Only
/// a broker holds one; it opens the `broker` slots with its `kid`.
pub struct BrokerKek {
    kid: String,
    id: X25519Identity,
}

impl BrokerKek {
    /// A KEK from an X25519 identity.
    pub fn new(kid: &str, id: X25519Identity) -> Result<Self> {
        if !valid_kid(kid) {
            return Err(Error::InvalidKey(format!(
                "broker key id {kid:?} must be 1 to 256 of A-Z a-z 0-9 . _ -"
            )));
        }
        Ok(BrokerKek {
            kid: kid.to_string(),
            id,
        })
    }
    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }
    /// The public key publishers seal to.
    pub fn public_key(&self) -> X25519Recipient {
        self.id.recipient()
    }

    /// Open a broker slot: `None` when it is not for this key id.
    pub fn open(&self, slot: &Slot, mk_id: &[u8; 16]) -> Option<Result<ModelKey>> {
        let Slot::Broker { url, kid, epk, ct } = slot else {
            return None;
        };
        if *kid != self.kid {
            return None;
        }
        Some((|| {
            BrokerUrl::parse(url)?;
            let epk: [u8; 32] = unb64_array("slot epk", epk)?;
            let ct = unb64("slot ct", ct)?;
            let sk = PrivateKey::from_private_key(&X25519, self.id.secret_bytes())
                .map_err(|_| Error::InvalidKey("X25519 secret key rejected".into()))?;
            let pk = self.id.recipient();
            let kek = slot_kek(&sk, &epk, &epk, pk.as_bytes(), url)?;
            let mk = crypto::unwrap_key(&kek, &slot_aad(SLOT_TYPE, mk_id), &ct)
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
        write!(f, "BrokerKek({}, {:?})", self.kid, self.id)
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
}
