//! A loader's permission to use key brokers (SPEC §10): the hosts it
//! allows, the licence tokens it sends them (each only to its own host), a
//! private CA, and where all of that is discovered. Parsing only: nothing
//! here touches the network.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use zeroize::Zeroizing;

use super::slot::BrokerUrl;
#[cfg(feature = "broker-client")]
use super::tpm::TpmQuoter;
use crate::error::{Error, Result};
use crate::keys::ModelKey;

/// Allowed broker hosts, separated by `,` (SPEC §10).
pub const ENV_BROKERS: &str = "SEALTENSORS_BROKERS";
/// The licence token sent to allowed brokers.
pub const ENV_BROKER_TOKEN: &str = "SEALTENSORS_BROKER_TOKEN";
/// A PEM file of CA certificates that replaces the public roots for brokers
/// (a private broker CA).
pub const ENV_BROKER_CA: &str = "SEALTENSORS_BROKER_CA";

/// Released model keys, by broker URL, model key id and the credentials
/// that released them (a digest of the licence token and machine id), each
/// until the end of the lifetime its broker gave (SPEC §6.6).
/// A key is boxed, so that the map moves pointers, never key bytes, when it
/// grows (a moved key would stay behind, unwiped, in the freed table).
#[cfg_attr(not(feature = "broker-client"), allow(dead_code))]
type Cache = HashMap<(String, [u8; 16], [u8; 32]), (Box<ModelKey>, Deadline)>;

/// The end of a released key's lifetime on both clocks: the monotonic one
/// (immune to clock changes) and the wall clock (which, unlike the monotonic
/// clock, runs while the machine is suspended). A key is used only while both
/// say it is alive.
#[derive(Clone, Copy)]
pub(super) struct Deadline {
    mono: Instant,
    wall: SystemTime,
}

impl Deadline {
    /// `secs` from now.
    #[cfg_attr(not(feature = "broker-client"), allow(dead_code))]
    pub(super) fn after(secs: u64) -> Deadline {
        let d = Duration::from_secs(secs);
        Deadline {
            mono: Instant::now() + d,
            wall: SystemTime::now() + d,
        }
    }

    fn alive(&self) -> bool {
        Instant::now() < self.mono && SystemTime::now() < self.wall
    }
}

/// Drop (and so wipe) every key released to this process (SPEC §6.6): a
/// loader that is done with its models, or has learnt that a licence was
/// revoked, calls it so that the next open asks the broker again. Expired
/// keys are dropped by every use of the cache anyway.
pub fn forget_released_keys() {
    if let Ok(mut c) = process_cache().lock() {
        c.clear();
    }
}

/// The one cache of the process, shared by every [`BrokerAccess`]. The
/// reader is the process: a model's shards opened one at a time (as
/// transformers and vLLM do, each open with its own key configuration) cost
/// one release per model, not one per open, within the broker's lifetime. A
/// loader with other credentials (another token or machine id) asks again.
fn process_cache() -> Arc<Mutex<Cache>> {
    static CACHE: std::sync::OnceLock<Arc<Mutex<Cache>>> = std::sync::OnceLock::new();
    CACHE.get_or_init(Arc::default).clone()
}

/// An allowed-host or token entry, parsed: a host (an IPv6 address in its
/// canonical form) and a port, or any port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct HostEntry {
    host: String,
    port: Option<u16>,
}

impl HostEntry {
    /// `HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT`, or a bare IPv6 address,
    /// which never carries a port (`2001:db8::10:443` is one address; write
    /// `[2001:db8::10]:443`). `None` when it is none of these.
    fn parse(entry: &str) -> Option<HostEntry> {
        let e = entry.trim().to_lowercase();
        if e.is_empty() {
            return None;
        }
        if let Ok(v6) = e.parse::<std::net::Ipv6Addr>() {
            return Some(HostEntry {
                host: v6.to_string(),
                port: None,
            });
        }
        if let Some(rest) = e.strip_prefix('[') {
            let (h, after) = rest.split_once(']')?;
            let v6: std::net::Ipv6Addr = h.parse().ok()?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':')?.parse().ok()?),
            };
            return Some(HostEntry {
                host: v6.to_string(),
                port,
            });
        }
        match e.split_once(':') {
            None => Some(HostEntry {
                host: e,
                port: None,
            }),
            Some((h, p)) if !h.is_empty() => Some(HostEntry {
                host: h.to_string(),
                port: Some(p.parse().ok()?),
            }),
            Some(_) => None,
        }
    }

    /// Whether it names the broker at `u`: `Some(true)` by host and explicit
    /// port, `Some(false)` by host alone, `None` not it. A URL without a port
    /// has its scheme's (443 for `https`, 80 for loopback `http`), and an
    /// entry without a port names that default port only: any other port
    /// must be listed as `HOST:PORT`, or a file could send a token to
    /// whatever listens on another port of an allowed host (any local user,
    /// for a loopback one).
    fn names(&self, u: &BrokerUrl) -> Option<bool> {
        let host = u
            .host
            .parse::<std::net::Ipv6Addr>()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| u.host.clone());
        if self.host != host {
            return None;
        }
        let port = u.port.unwrap_or(default_port(u));
        match self.port {
            None if port == default_port(u) => Some(false),
            Some(p) if p == port => Some(true),
            _ => None,
        }
    }

    /// The entry that names exactly the broker at `u`: `HOST` at its
    /// scheme's default port, else `HOST:PORT` (for messages).
    pub(super) fn for_url(u: &BrokerUrl) -> HostEntry {
        let host = u
            .host
            .parse::<std::net::Ipv6Addr>()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| u.host.clone());
        HostEntry {
            host,
            port: u.port.filter(|p| *p != default_port(u)),
        }
    }
}

/// The port of a broker URL that names none: 443 for `https`, 80 for `http`.
fn default_port(u: &BrokerUrl) -> u16 {
    if u.https {
        443
    } else {
        80
    }
}

impl std::fmt::Display for HostEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(p) => write!(f, "{host}:{p}"),
            None => write!(f, "{host}"),
        }
    }
}

/// Why no licence token may be sent to a broker (SPEC §10). Never holds
/// the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum TokenError {
    /// No token configured at all.
    #[error("no licence token: set SEALTENSORS_BROKER_TOKEN or write it to broker-token in the configuration directory")]
    Missing,
    /// Tokens exist, but each for another host or port.
    #[error("no licence token for {broker}: the configured tokens are for other hosts or ports; add {entry}=TOKEN to SEALTENSORS_BROKER_TOKEN")]
    OtherHosts {
        /// The broker's `host[:port]`.
        broker: String,
        /// The entry to write for it.
        entry: String,
    },
    /// A bare token while several hosts are allowed.
    #[error("SEALTENSORS_BROKER_TOKEN holds a token without a host and {allowed} broker hosts are allowed, so it could reach a broker that did not issue it; write it as {entry}=TOKEN")]
    Ambiguous {
        /// How many host entries are allowed.
        allowed: usize,
        /// The entry to write for this broker.
        entry: String,
    },
}

/// A licence token and the broker host it may be sent to (SPEC §10).
#[derive(Clone)]
struct Token {
    /// Where it may go: `Some(Some(entry))` for `HOST=TOKEN`;
    /// `Some(None)` when the text before `=` is not a host (the token then
    /// goes nowhere); `None` for a bare token, sent only when exactly one
    /// host is allowed.
    host: Option<Option<HostEntry>>,
    secret: Arc<Zeroizing<String>>,
}

/// Tokens from text: entries separated by `,` or new lines, `#` comments,
/// each `HOST=TOKEN` or a bare `TOKEN` (split at the first `=`: a token
/// that holds `=` must be written after its host). Empty tokens are dropped.
fn parse_tokens(text: &str) -> Vec<Token> {
    text.split([',', '\n'])
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (host, secret) = match l.split_once('=') {
                Some((h, t)) => (Some(HostEntry::parse(h)), t.trim()),
                None => (None, l),
            };
            (!secret.is_empty()).then(|| Token {
                host,
                secret: Arc::new(Zeroizing::new(secret.to_string())),
            })
        })
        .collect()
}

/// The `broker-token` file: licence tokens are bearer secrets, so, as ssh
/// does with private keys, a file that other users can read (or write) is
/// refused, with the fix. `None` when there is none.
fn read_token_file(p: &Path) -> Result<Option<Zeroizing<String>>> {
    let mut f = match std::fs::File::open(p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("reading broker configuration", e).in_file(p)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The opened file's mode (fstat), not the path's: no race.
        let mode = f
            .metadata()
            .map_err(|e| Error::io("reading broker configuration", e).in_file(p))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(Error::Config(format!(
                "{} holds licence tokens and other users can access it (mode {:04o}); run `chmod 600 {}`",
                p.display(),
                mode & 0o7777,
                p.display()
            )));
        }
    }
    let mut text = Zeroizing::new(String::new());
    f.read_to_string(&mut text)
        .map_err(|e| Error::io("reading broker configuration", e).in_file(p))?;
    Ok(Some(text))
}

/// A loader's permission to use key brokers: the hosts it allows and the
/// licence tokens it sends them, each to its own host. Every one shares the
/// process's cache of released keys.
#[derive(Clone)]
pub struct BrokerAccess {
    /// Allowed hosts as parsed; `allowed_entries` counts every entry given,
    /// unparsable ones included (they allow nothing).
    allowed: Vec<HostEntry>,
    allowed_entries: usize,
    tokens: Vec<Token>,
    pub(super) machine_id: Option<String>,
    pub(super) ca: Option<Arc<Vec<u8>>>,
    #[cfg(feature = "broker-client")]
    pub(super) tpm: Option<Arc<TpmQuoter>>,
    #[cfg_attr(not(feature = "broker-client"), allow(dead_code))]
    pub(super) cache: Arc<Mutex<Cache>>,
}

impl BrokerAccess {
    /// A digest of everything that decides what a broker would release to
    /// this loader (allowed hosts, tokens, machine id, CA, TPM quoting): two
    /// configurations with the same fingerprint get the same answers. Load
    /// scopes share a key only between opens with equal fingerprints.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        for h in &self.allowed {
            parts.push(format!("host {}:{:?}", h.host, h.port).into_bytes());
        }
        parts.push(format!("entries {}", self.allowed_entries).into_bytes());
        for t in &self.tokens {
            let to = match &t.host {
                None => "any".to_string(),
                Some(None) => "none".to_string(),
                Some(Some(h)) => format!("{}:{:?}", h.host, h.port),
            };
            parts.push(format!("token {to}").into_bytes());
            parts.push(crate::crypto::sha256(t.secret.as_bytes()).to_vec());
        }
        parts.push(format!("machine {:?}", self.machine_id).into_bytes());
        parts.push(
            self.ca
                .as_deref()
                .map_or_else(Vec::new, |c| crate::crypto::sha256(c).to_vec()),
        );
        #[cfg(feature = "broker-client")]
        parts.push(vec![u8::from(self.tpm.is_some())]);
        let mut framed = Vec::new();
        for p in &parts {
            framed.extend_from_slice(&(p.len() as u64).to_le_bytes());
            framed.extend_from_slice(p);
        }
        crate::crypto::sha256(&framed)
    }
}

impl std::fmt::Debug for BrokerAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerAccess")
            .field(
                "allowed",
                &self
                    .allowed
                    .iter()
                    .map(|h| h.to_string())
                    .collect::<Vec<_>>(),
            )
            .field(
                "tokens",
                &self
                    .tokens
                    .iter()
                    .map(|t| match &t.host {
                        None => "*=<redacted>".to_string(),
                        Some(None) => "<not a host>=<redacted>".to_string(),
                        Some(Some(h)) => format!("{h}=<redacted>"),
                    })
                    .collect::<Vec<_>>(),
            )
            .field("machine_id", &self.machine_id)
            .field("private_ca", &self.ca.is_some())
            .field("tpm", &self.tpm_shown())
            .finish()
    }
}

impl Default for BrokerAccess {
    /// Allows no host (and shares the process's cache, as every one does).
    fn default() -> Self {
        Self::with_token_text(std::iter::empty::<&str>(), None)
    }
}

impl BrokerAccess {
    /// Allow these hosts (`HOST` for its scheme's default port only, 443 for
    /// `https` and 80 for `http`, or `HOST:PORT`), with licence tokens:
    /// `HOST=TOKEN` entries separated by `,`, or one bare `TOKEN`,
    /// which is sent only while exactly one host is allowed (a token goes to
    /// the broker that issued it, never to every allowed one).
    pub fn new<S: AsRef<str>>(allowed: impl IntoIterator<Item = S>, token: Option<String>) -> Self {
        let token = token.map(Zeroizing::new);
        Self::with_token_text(allowed, token.as_deref().map(String::as_str))
    }

    fn with_token_text<S: AsRef<str>>(
        allowed: impl IntoIterator<Item = S>,
        token: Option<&str>,
    ) -> Self {
        let given: Vec<String> = allowed
            .into_iter()
            .map(|h| h.as_ref().trim().to_string())
            .filter(|h| !h.is_empty())
            .collect();
        BrokerAccess {
            allowed: given.iter().filter_map(|h| HostEntry::parse(h)).collect(),
            allowed_entries: given.len(),
            tokens: token.map(parse_tokens).unwrap_or_default(),
            machine_id: None,
            ca: None,
            #[cfg(feature = "broker-client")]
            tpm: None,
            cache: process_cache(),
        }
    }

    /// The TPM quoter, for Debug (none without the broker client).
    fn tpm_shown(&self) -> Option<&dyn std::fmt::Debug> {
        #[cfg(feature = "broker-client")]
        return self.tpm.as_deref().map(|q| q as &dyn std::fmt::Debug);
        #[cfg(not(feature = "broker-client"))]
        None
    }

    /// Trust only these CA certificates (PEM) for brokers, instead of the
    /// public web roots.
    pub fn with_ca_pem(mut self, pem: Vec<u8>) -> Self {
        self.ca = Some(Arc::new(pem));
        self
    }

    /// Attach a TPM 2.0 quote, made by `q`, to every release request.
    #[cfg(feature = "broker-client")]
    pub fn with_tpm(mut self, q: TpmQuoter) -> Self {
        self.tpm = Some(Arc::new(q));
        self
    }

    /// Send this machine id instead of `/etc/machine-id`.
    pub fn with_machine_id(mut self, id: impl Into<String>) -> Self {
        self.machine_id = Some(id.into());
        self
    }

    /// From the environment, else the configuration directory (SPEC §10);
    /// `None` when no broker host is allowed anywhere.
    pub fn discover(config_dir: Option<&Path>) -> Result<Option<BrokerAccess>> {
        let env_hosts = std::env::var(ENV_BROKERS)
            .ok()
            .filter(|v| !v.trim().is_empty());
        let env_token = std::env::var(ENV_BROKER_TOKEN)
            .ok()
            .filter(|v| !v.trim().is_empty());
        let read = |name: &str| -> Result<Option<Zeroizing<String>>> {
            let Some(dir) = config_dir else {
                return Ok(None);
            };
            let p = dir.join(name);
            match std::fs::read_to_string(&p) {
                Ok(s) => Ok(Some(Zeroizing::new(s))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io("reading broker configuration", e).in_file(p)),
            }
        };
        let hosts: Vec<String> = match env_hosts {
            Some(v) => v.split(',').map(str::to_string).collect(),
            None => match read("brokers")? {
                Some(text) => text
                    .lines()
                    .map(|l| l.split('#').next().unwrap_or_default().trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect(),
                None => Vec::new(),
            },
        };
        if hosts.is_empty() {
            return Ok(None);
        }
        let file_token = match (env_token.is_some(), config_dir) {
            (false, Some(dir)) => read_token_file(&dir.join("broker-token"))?,
            _ => None,
        };
        let token = env_token
            .as_deref()
            .or(file_token.as_deref().map(String::as_str));
        let mut access = BrokerAccess::with_token_text(hosts, token);
        let ca = match ca_from_env()? {
            Some(pem) => Some(pem),
            None => read("broker-ca.pem")?.map(|p| p.as_bytes().to_vec()),
        };
        if let Some(pem) = ca {
            access = access.with_ca_pem(pem);
        }
        #[cfg(feature = "broker-client")]
        if let Some(q) = TpmQuoter::from_env() {
            access = access.with_tpm(q);
        }
        Ok(Some(access))
    }

    /// Whether the configuration allows the broker at `u`.
    pub fn allows(&self, u: &BrokerUrl) -> bool {
        self.allowed.iter().any(|a| a.names(u).is_some())
    }

    /// The token for the broker at `u`: the one written for its host, else
    /// a bare token while it is the only allowed host.
    #[cfg_attr(not(feature = "broker-client"), allow(dead_code))]
    pub(super) fn token_for(
        &self,
        u: &BrokerUrl,
    ) -> std::result::Result<&Zeroizing<String>, TokenError> {
        // The token written for this host and port, else for the host (at
        // its default port only, as for allowed hosts).
        let written_for = |with_port: bool| {
            self.tokens
                .iter()
                .find(|t| matches!(&t.host, Some(Some(h)) if h.names(u) == Some(with_port)))
        };
        if let Some(t) = written_for(true).or_else(|| written_for(false)) {
            return Ok(&t.secret);
        }
        let bare: Vec<&Token> = self.tokens.iter().filter(|t| t.host.is_none()).collect();
        match (bare.as_slice(), self.allowed_entries) {
            ([t], 1) => Ok(&t.secret),
            ([], _) if self.tokens.is_empty() => Err(TokenError::Missing),
            ([], _) => Err(TokenError::OtherHosts {
                broker: u.authority(),
                entry: HostEntry::for_url(u).to_string(),
            }),
            (_, allowed) => Err(TokenError::Ambiguous {
                allowed,
                entry: HostEntry::for_url(u).to_string(),
            }),
        }
    }

    #[cfg_attr(not(feature = "broker-client"), allow(dead_code))]
    pub(super) fn cached(&self, url: &str, mk_id: &[u8; 16], who: &[u8; 32]) -> Option<ModelKey> {
        let mut c = self.cache.lock().ok()?;
        // Every expired key is dropped (and so wiped) at each use of the
        // cache, not only the one asked for.
        c.retain(|_, (_, until)| until.alive());
        c.get(&(url.to_string(), *mk_id, *who))
            .map(|(mk, _)| ModelKey::clone(mk))
    }

    /// Keep a released key until `until`.
    #[cfg_attr(not(feature = "broker-client"), allow(dead_code))]
    pub(super) fn keep(
        &self,
        url: &str,
        mk_id: &[u8; 16],
        who: &[u8; 32],
        mk: &ModelKey,
        until: Deadline,
    ) {
        if let Ok(mut c) = self.cache.lock() {
            c.retain(|_, (_, d)| d.alive());
            c.insert(
                (url.to_string(), *mk_id, *who),
                (Box::new(mk.clone()), until),
            );
        }
    }
}

/// `SEALTENSORS_BROKER_CA`, read.
pub(super) fn ca_from_env() -> Result<Option<Vec<u8>>> {
    match std::env::var_os(ENV_BROKER_CA).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(p) => std::fs::read(&p)
            .map(Some)
            .map_err(|e| Error::io(format!("reading {ENV_BROKER_CA}"), e).in_file(p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_entries_are_parsed_not_compared_as_text() {
        let u = |s: &str| BrokerUrl::parse(s).unwrap();
        // A bare IPv6 address is one address, never address-and-port.
        let a = BrokerAccess::new(["2001:db8::10:443"], None);
        assert!(a.allows(&u("https://[2001:db8::10:443]/keys/k")));
        assert!(!a.allows(&u("https://[2001:db8::10]:443/keys/k")));
        let b = BrokerAccess::new(["[2001:DB8::10]:443"], None);
        assert!(b.allows(&u("https://[2001:db8:0::10]:443/keys/k")));
        assert!(
            b.allows(&u("https://[2001:db8::10]/keys/k")),
            "443 is https's port"
        );
        assert!(!b.allows(&u("https://[2001:db8::10:443]/keys/k")));
        // Entries that are not hosts allow nothing.
        for bad in ["[2001:db8::10", "host:port", ":443", "[x]:1"] {
            let c = BrokerAccess::new([bad], None);
            assert!(!c.allows(&u("https://host/keys/k")), "{bad}");
        }
    }

    #[test]
    fn allowed_hosts_match_host_or_host_and_port() {
        let a = BrokerAccess::new(["Keys.Example.com", "127.0.0.1:8080", "[::1]"], None);
        let u = |s: &str| BrokerUrl::parse(s).unwrap();
        assert!(a.allows(&u("https://keys.example.com/keys/k")));
        assert!(a.allows(&u("https://keys.example.com:443/keys/k")));
        assert!(a.allows(&u("http://127.0.0.1:8080/keys/k")));
        assert!(!a.allows(&u("http://127.0.0.1:8081/keys/k")));
        assert!(a.allows(&u("http://[::1]/keys/k")));
        assert!(a.allows(&u("http://[::1]:80/keys/k")));
        assert!(!a.allows(&u("https://evil.example.com/keys/k")));
        assert!(!a.allows(&u("https://keys.example.com.evil.net/keys/k")));
    }

    #[test]
    fn a_host_without_a_port_allows_only_the_default_port() {
        // Issue 15: with `127.0.0.1` allowed, a file naming another port of
        // the same host got the token over plain HTTP, so any local user
        // listening there could collect it.
        let u = |s: &str| BrokerUrl::parse(s).unwrap();
        let a = BrokerAccess::new(["127.0.0.1", "keys.example.com", "::1"], None);
        assert!(a.allows(&u("http://127.0.0.1/keys/k")));
        assert!(a.allows(&u("http://127.0.0.1:80/keys/k")));
        assert!(!a.allows(&u("http://127.0.0.1:8081/keys/k")));
        assert!(!a.allows(&u("http://127.0.0.1:443/keys/k")));
        assert!(!a.allows(&u("https://127.0.0.1:80/keys/k")));
        assert!(a.allows(&u("https://keys.example.com/keys/k")));
        assert!(!a.allows(&u("https://keys.example.com:9/keys/k")));
        assert!(!a.allows(&u("https://keys.example.com:80/keys/k")));
        assert!(!a.allows(&u("http://[::1]:1/keys/k")));
        // Tokens written for a host alone follow the same rule: never sent
        // to another port of that host, whatever the allowed hosts say.
        let t = BrokerAccess::new(
            ["127.0.0.1", "127.0.0.1:9000"],
            Some("127.0.0.1=stl_default".into()),
        );
        let e = t
            .token_for(&u("http://127.0.0.1:9000/keys/k"))
            .map(|t| t.to_string())
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("stl_default") && e.contains("127.0.0.1:9000=TOKEN"),
            "{e}"
        );
        assert_eq!(
            t.token_for(&u("http://127.0.0.1/keys/k"))
                .map(|t| t.to_string()),
            Ok("stl_default".into())
        );
        // A bare token with one bare host allowed: that host's default port
        // only, since the host's other ports are not allowed at all.
        let one = BrokerAccess::new(["127.0.0.1"], Some("stl_one".into()));
        assert!(!one.allows(&u("http://127.0.0.1:1234/keys/k")));
    }

    #[test]
    fn token_is_never_debug_printed() {
        let a = BrokerAccess::new(["h"], Some("s3cret-token".into()));
        let d = format!("{a:?}");
        assert!(!d.contains("s3cret") && d.contains("redacted"));
        let a = BrokerAccess::new(["h"], Some("h=s3cret-token".into()));
        let d = format!("{a:?}");
        assert!(!d.contains("s3cret") && d.contains("h=<redacted>"), "{d}");
    }

    #[test]
    fn each_token_goes_only_to_its_own_broker() {
        let u = |s: &str| BrokerUrl::parse(s).unwrap();
        let a = u("https://a.example/keys/k");
        let b = u("https://b.example:8443/keys/k");
        let secret = |r: std::result::Result<&Zeroizing<String>, TokenError>| {
            r.map(|t| t.to_string()).map_err(|e| e.to_string())
        };
        // One host: a bare token is its token.
        let one = BrokerAccess::new(["a.example"], Some(" stl_a ".into()));
        assert_eq!(secret(one.token_for(&a)), Ok("stl_a".into()));
        // Two hosts: a bare token is refused for both, never sent to either.
        let two = BrokerAccess::new(["a.example", "b.example"], Some("stl_a".into()));
        for url in [&a, &b] {
            let e = secret(two.token_for(url)).unwrap_err();
            assert!(e.contains("=TOKEN") && !e.contains("stl_a"), "{e}");
        }
        // Host-qualified tokens: each to its host (and port), and only there.
        let q = BrokerAccess::new(
            ["a.example", "b.example"],
            Some("A.example=stl_a, b.example:8443=stl=b # comment".into()),
        );
        assert_eq!(secret(q.token_for(&a)), Ok("stl_a".into()));
        assert_eq!(secret(q.token_for(&b)), Ok("stl=b".into()));
        let e = secret(q.token_for(&u("https://b.example:9/keys/k"))).unwrap_err();
        assert!(e.contains("other hosts") && !e.contains("stl"), "{e}");
        // The entry with the port wins over the host alone, in any order.
        let p = BrokerAccess::new(
            ["b.example"],
            Some("b.example=stl_any,b.example:8443=stl_8443".into()),
        );
        assert_eq!(secret(p.token_for(&b)), Ok("stl_8443".into()));
        assert_eq!(
            secret(p.token_for(&u("https://b.example/keys/k"))),
            Ok("stl_any".into())
        );
        // An empty token is no token; text before `=` that is not a host
        // sends its token nowhere, and is not printed.
        let e = BrokerAccess::new(["a.example"], Some("a.example=".into()));
        assert!(secret(e.token_for(&a))
            .unwrap_err()
            .contains("no licence token"));
        let odd = BrokerAccess::new(["a.example"], Some("s3cret:part=rest".into()));
        assert!(secret(odd.token_for(&a)).is_err());
        assert!(!format!("{odd:?}").contains("s3cret"), "{odd:?}");
        // Qualified and bare together: the bare one only for the sole host.
        let mixed = BrokerAccess::new(["a.example"], Some("b.example=stl_b\nstl_a".into()));
        assert_eq!(secret(mixed.token_for(&a)), Ok("stl_a".into()));
        let none = BrokerAccess::new(["a.example"], None);
        assert!(secret(none.token_for(&a))
            .unwrap_err()
            .contains("no licence token"));
    }

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        // Issue 15: the broker-token file's mode was never checked.
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("broker-token");
        assert!(read_token_file(&p).unwrap().is_none());
        std::fs::write(&p, "keys.example.com=stl_s3cret\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_token_file(&p).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(
                shown.contains("chmod 600") && !shown.contains("s3cret"),
                "{shown}"
            );
            assert_eq!(e.class(), crate::ErrorClass::Usage);
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(
                read_token_file(&p).unwrap().unwrap().as_str(),
                "keys.example.com=stl_s3cret\n"
            );
        }
        // Through discovery from the configuration directory (when the
        // environment names no broker, as in this test process).
        if std::env::var_os(ENV_BROKERS).is_none() && std::env::var_os(ENV_BROKER_TOKEN).is_none() {
            std::fs::write(dir.path().join("brokers"), "keys.example.com\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = BrokerAccess::discover(Some(dir.path())).unwrap_err();
            assert!(e.to_string().contains("chmod 600"), "{e}");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(BrokerAccess::discover(Some(dir.path())).unwrap().is_some());
        }
    }
}
