//! Asking a key broker for a model key (SPEC §6.6, §10; docs/broker.md).
//!
//! A loader contacts a broker named in a `broker` slot only when no local
//! identity opened the file and only when its own configuration allows the
//! slot's host. The request carries the header, a licence token, an ephemeral
//! HPKE public key, the machine id and a fresh nonce; the answer is the model
//! key sealed to the ephemeral key. Every request is bounded in time and in
//! the size of the answer, and transient failures are retried with backoff.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::broker::BrokerUrl;
use super::{b64, unb64, ModelKey, Slot, X25519Recipient};
use crate::crypto::{self, Secret32};
use crate::error::{Error, Result};
use crate::format::Header;
use crate::hpke::HpkeSecretKey;
use crate::policy::{host_info, PolicyContext};
use crate::seal::SealMeta;

/// Allowed broker hosts, separated by `,` (SPEC §10).
pub const ENV_BROKERS: &str = "SEALTENSORS_BROKERS";
/// The licence token sent to allowed brokers.
pub const ENV_BROKER_TOKEN: &str = "SEALTENSORS_BROKER_TOKEN";
/// A PEM file of CA certificates that replaces the public roots for brokers
/// (a private broker CA).
pub const ENV_BROKER_CA: &str = "SEALTENSORS_BROKER_CA";

/// Bounds of one HTTP exchange (SPEC §10).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const TOTAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read from a broker.
pub const MAX_ANSWER: u64 = 64 * 1024;
/// Retries after the first attempt, and the first backoff (doubled each time).
const RETRIES: u32 = 3;
const BACKOFF: Duration = Duration::from_millis(200);
/// A released key is never cached longer than this, whatever the broker says.
const MAX_TTL: u64 = 24 * 3600;

/// The body of `POST {url}/release` (docs/broker.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The sealed file's header: the 8-byte length and the JSON, base64url.
    pub header: String,
    /// The client's ephemeral HPKE (X25519) public key, base64url.
    pub ek: String,
    /// The client's machine id (`/etc/machine-id`), counted against seats.
    pub machine_id: String,
    /// 16 to 64 fresh random bytes, base64url; never reused.
    pub nonce: String,
    /// The client's clock, Unix seconds.
    pub time: u64,
    /// The file's name, for the policy input (SPEC §3.6 `file.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    /// What the client says about its runtime and framework (unverified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<serde_json::Value>,
    /// The tensors the client asks for; absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensors: Option<Vec<String>>,
}

/// The broker's answer to an allowed release.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseAnswer {
    /// HPKE `enc`, base64url.
    pub enc: String,
    /// HPKE ciphertext of the model key, base64url.
    pub ct: String,
    /// How long the client may keep the key in memory, seconds.
    pub ttl: u64,
}

/// The broker's answer to a refused request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorAnswer {
    /// A stable code (`licence_revoked`, `policy_denied`, ...).
    pub error: String,
    /// What was wrong, for people.
    pub reason: String,
}

/// HPKE `info` of a release: binds the answer to one file and one model key.
pub fn release_info(file_id: &[u8; 32], mk_id: &[u8; 16]) -> Vec<u8> {
    let mut v = b"sealtensors/1 broker release\0".to_vec();
    v.extend_from_slice(file_id);
    v.extend_from_slice(mk_id);
    v
}

type Cache = HashMap<(String, [u8; 16]), (ModelKey, Instant)>;

/// A loader's permission to use key brokers: the hosts it allows and the
/// licence token it sends them. Cloning shares the key cache.
#[derive(Clone, Default)]
pub struct BrokerAccess {
    allowed: Vec<String>,
    token: Option<Arc<Zeroizing<String>>>,
    machine_id: Option<String>,
    ca: Option<Arc<Vec<u8>>>,
    cache: Arc<Mutex<Cache>>,
}

impl std::fmt::Debug for BrokerAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerAccess")
            .field("allowed", &self.allowed)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("machine_id", &self.machine_id)
            .field("private_ca", &self.ca.is_some())
            .finish()
    }
}

impl BrokerAccess {
    /// Allow these hosts (`HOST` for any port, or `HOST:PORT`), with a token.
    pub fn new<S: AsRef<str>>(allowed: impl IntoIterator<Item = S>, token: Option<String>) -> Self {
        BrokerAccess {
            allowed: allowed
                .into_iter()
                .map(|h| h.as_ref().trim().to_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            token: token.map(|t| Arc::new(Zeroizing::new(t.trim().to_string()))),
            machine_id: None,
            ca: None,
            cache: Arc::default(),
        }
    }

    /// Trust only these CA certificates (PEM) for brokers, instead of the
    /// public web roots.
    pub fn with_ca_pem(mut self, pem: Vec<u8>) -> Self {
        self.ca = Some(Arc::new(pem));
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
        let token = match env_token {
            Some(t) => Some(t),
            None => read("broker-token")?.and_then(|t| t.lines().next().map(str::to_string)),
        };
        let mut access = BrokerAccess::new(hosts, token);
        let ca = match ca_from_env()? {
            Some(pem) => Some(pem),
            None => read("broker-ca.pem")?.map(|p| p.as_bytes().to_vec()),
        };
        if let Some(pem) = ca {
            access = access.with_ca_pem(pem);
        }
        Ok(Some(access))
    }

    /// Whether the configuration allows the broker at `u`.
    pub fn allows(&self, u: &BrokerUrl) -> bool {
        let auth = u.authority();
        let bracketed = u.port.map(|p| format!("[{}]:{p}", u.host));
        self.allowed.iter().any(|a| {
            let a = a.as_str();
            a == u.host
                || a == auth
                || Some(a) == bracketed.as_deref()
                || a.strip_prefix('[').and_then(|r| r.strip_suffix(']')) == Some(&u.host)
        })
    }

    fn cached(&self, url: &str, mk_id: &[u8; 16]) -> Option<ModelKey> {
        let mut c = self.cache.lock().ok()?;
        let k = (url.to_string(), *mk_id);
        match c.get(&k) {
            Some((mk, until)) if Instant::now() < *until => Some(mk.clone()),
            Some(_) => {
                c.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Ask the broker at `u` for the model key of this file.
    pub fn release(
        &self,
        u: &BrokerUrl,
        header: &Header,
        meta: &SealMeta,
        file_name: Option<&str>,
        ctx: &PolicyContext,
    ) -> Result<ModelKey> {
        let unavailable = |reason: String| Error::BrokerUnavailable {
            broker: u.authority(),
            reason,
        };
        if !self.allows(u) {
            return Err(unavailable(format!(
                "this loader's configuration does not allow it; add {} to {ENV_BROKERS} if you trust it",
                u.host
            )));
        }
        let mk_id = meta
            .mk_id
            .ok_or_else(|| unavailable("the file has no model key id".into()))?;
        if let Some(k) = self.cached(&u.url, &mk_id) {
            return Ok(k);
        }
        let token = self.token.as_ref().ok_or_else(|| {
            unavailable(format!(
                "no licence token: set {ENV_BROKER_TOKEN} or write it to broker-token in the configuration directory"
            ))
        })?;
        let machine_id = self
            .machine_id
            .clone()
            .or_else(|| host_info().machine_id.clone())
            .ok_or_else(|| {
                unavailable(
                    "this machine has no /etc/machine-id to identify it to the broker".into(),
                )
            })?;
        let mut hdr = Vec::new();
        hdr.extend_from_slice(&header.to_bytes());
        let process = serde_json::json!({
            "runtime": ctx.runtime.clone().unwrap_or_else(|| "rust".into()),
            "runtime_version": ctx.runtime_version,
            "framework": ctx.framework,
            "framework_version": ctx.framework_version,
        });
        let agent = agent(self.ca.as_deref().map(Vec::as_slice)).map_err(unavailable)?;
        let endpoint = format!("{}/release", u.url);
        let info = release_info(&meta.file_id, &mk_id);
        let mut attempt = 0;
        loop {
            // A fresh key and nonce per attempt: the broker refuses a nonce twice.
            let ek = HpkeSecretKey::generate()?;
            let nonce: [u8; 16] = crypto::random_array()?;
            let req = ReleaseRequest {
                header: b64(&hdr),
                ek: b64(&ek.public_key()),
                machine_id: machine_id.clone(),
                nonce: b64(&nonce),
                time: crate::write::now_unix(),
                file_name: file_name.map(str::to_string),
                process: Some(process.clone()),
                tensors: ctx.requested.clone(),
            };
            let body = serde_json::to_vec(&req)
                .map_err(|e| unavailable(format!("cannot encode the request: {e}")))?;
            match post(&agent, &endpoint, token, &body) {
                Ok((200, answer)) => {
                    let a: ReleaseAnswer = serde_json::from_slice(&answer)
                        .map_err(|e| unavailable(format!("malformed answer: {e}")))?;
                    let enc = unb64("enc", &a.enc)
                        .map_err(|_| unavailable("malformed answer: enc".into()))?;
                    let ct = unb64("ct", &a.ct)
                        .map_err(|_| unavailable("malformed answer: ct".into()))?;
                    let pt = ek.open(&enc, &info, &nonce, &ct).ok_or_else(|| {
                        unavailable("its answer does not open with this request's key (corrupted or forged)".into())
                    })?;
                    let arr: [u8; 32] = pt
                        .as_slice()
                        .try_into()
                        .map_err(|_| unavailable("the released key has the wrong length".into()))?;
                    let mk = ModelKey::from_secret(Secret32::from_bytes(arr));
                    if mk.id()? != mk_id {
                        return Err(unavailable(
                            "it released a key that is not this file's model key".into(),
                        ));
                    }
                    let ttl = a.ttl.min(MAX_TTL);
                    if ttl > 0 {
                        if let Ok(mut c) = self.cache.lock() {
                            c.insert(
                                (u.url.clone(), mk_id),
                                (mk.clone(), Instant::now() + Duration::from_secs(ttl)),
                            );
                        }
                    }
                    return Ok(mk);
                }
                Ok((status, answer)) if !transient(status) || attempt >= RETRIES => {
                    let reason = match serde_json::from_slice::<ErrorAnswer>(&answer) {
                        Ok(e) => e.reason,
                        Err(_) => format!("HTTP status {status}"),
                    };
                    return Err(Error::BrokerDenied {
                        broker: u.authority(),
                        status,
                        reason,
                    });
                }
                Err(Fail::Stop(e)) => return Err(unavailable(e)),
                Err(e) if attempt >= RETRIES => {
                    return Err(unavailable(format!(
                        "{e} (after {} attempts); check that the broker is running and reachable",
                        attempt + 1
                    )))
                }
                _ => {}
            }
            std::thread::sleep(BACKOFF * 2u32.pow(attempt));
            attempt += 1;
        }
    }
}

fn transient(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
}

/// `SEALTENSORS_BROKER_CA`, read.
fn ca_from_env() -> Result<Option<Vec<u8>>> {
    match std::env::var_os(ENV_BROKER_CA).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(p) => std::fs::read(&p)
            .map(Some)
            .map_err(|e| Error::io(format!("reading {ENV_BROKER_CA}"), e).in_file(p)),
    }
}

/// One agent per release: rustls over aws-lc-rs (the one crypto backend),
/// the public web roots or only the given CA, bounded timeouts, no redirects,
/// statuses returned rather than raised.
fn agent(ca: Option<&[u8]>) -> Result<ureq::Agent, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(provider);
    if let Some(pem) = ca {
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                Ok(_) => {}
                Err(e) => return Err(format!("the broker CA file is not PEM: {e}")),
            }
        }
        if certs.is_empty() {
            return Err(format!(
                "the broker CA file ({ENV_BROKER_CA}) holds no certificate"
            ));
        }
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    let cfg = ureq::Agent::config_builder()
        .tls_config(tls.build())
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(TOTAL_TIMEOUT))
        .max_redirects(0)
        .http_status_as_error(false)
        .build();
    Ok(ureq::Agent::new_with_config(cfg))
}

/// Why an exchange failed: worth another attempt (the broker may come
/// back) or not (it answered, but something we refuse).
enum Fail {
    Retry(String),
    Stop(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Retry(s) | Fail::Stop(s) => f.write_str(s),
        }
    }
}

fn transport(e: ureq::Error) -> Fail {
    use ureq::Error as E;
    match e {
        E::Io(_) | E::Timeout(_) | E::HostNotFound | E::ConnectionFailed | E::BodyStalled => {
            Fail::Retry(e.to_string())
        }
        e => Fail::Stop(e.to_string()),
    }
}

fn read_body(mut resp: ureq::http::Response<ureq::Body>) -> Result<(u16, Vec<u8>), Fail> {
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_vec()
        .map_err(|e| Fail::Stop(format!("reading the answer: {e}")))?;
    Ok((status, body))
}

fn post(
    agent: &ureq::Agent,
    url: &str,
    token: &Zeroizing<String>,
    body: &[u8],
) -> Result<(u16, Vec<u8>), Fail> {
    let auth = Zeroizing::new(format!("Bearer {}", token.as_str()));
    let resp = agent
        .post(url)
        .header("authorization", auth.as_str())
        .header("content-type", "application/json")
        .send(body)
        .map_err(transport)?;
    read_body(resp)
}

/// `GET url`: the broker's public key for this key id (SPEC §6.6).
pub(crate) fn fetch_public_key(u: &BrokerUrl) -> Result<X25519Recipient> {
    let unavailable = |reason: String| Error::BrokerUnavailable {
        broker: u.authority(),
        reason,
    };
    let ca = ca_from_env()?;
    let agent = agent(ca.as_deref()).map_err(unavailable)?;
    let mut attempt = 0;
    let (status, body) = loop {
        match agent
            .get(&u.url)
            .call()
            .map_err(transport)
            .and_then(read_body)
        {
            Ok((s, b)) if !transient(s) || attempt >= RETRIES => break (s, b),
            Err(Fail::Stop(e)) => return Err(unavailable(e)),
            Err(e) if attempt >= RETRIES => {
                return Err(unavailable(format!(
                    "{e}; check the URL and that the broker is running"
                )))
            }
            _ => {}
        }
        std::thread::sleep(BACKOFF * 2u32.pow(attempt));
        attempt += 1;
    };
    if status != 200 {
        let reason = serde_json::from_slice::<ErrorAnswer>(&body)
            .map(|e| e.reason)
            .unwrap_or_else(|_| format!("HTTP status {status}"));
        return Err(unavailable(format!("asking for its public key: {reason}")));
    }
    #[derive(Deserialize)]
    struct KeyAnswer {
        kid: String,
        public_key: String,
    }
    let k: KeyAnswer = serde_json::from_slice(&body)
        .map_err(|e| unavailable(format!("malformed public key answer: {e}")))?;
    if k.kid != u.kid {
        return Err(unavailable(format!(
            "it answered for key id {:?}, not {:?}",
            k.kid, u.kid
        )));
    }
    k.public_key.parse()
}

/// SPEC §6.6, reader side: called when no local identity opened the file.
/// Tries each allowed broker slot in file order; a refusal is final. Without
/// a broker slot, or without access to any, the original error stands (with
/// a hint when a broker could have opened it).
pub(crate) fn release_after_miss(
    err: Error,
    access: Option<&BrokerAccess>,
    header: &Header,
    meta: &SealMeta,
    path: &Path,
    ctx: &PolicyContext,
) -> Result<ModelKey> {
    let urls: Vec<BrokerUrl> = meta
        .slots
        .iter()
        .filter_map(|s| match s {
            Slot::Broker { url, .. } => BrokerUrl::parse(url).ok(),
            _ => None,
        })
        .collect();
    if urls.is_empty() || !matches!(err, Error::NoMatchingKey { .. }) {
        return Err(err);
    }
    let Some(access) = access.filter(|a| urls.iter().any(|u| a.allows(u))) else {
        let hosts: Vec<String> = urls.iter().map(|u| u.host.clone()).collect();
        return Err(Error::BrokerUnavailable {
            broker: urls[0].authority(),
            reason: format!(
                "no local identity opens the file and this loader's configuration allows none of its brokers ({}); add the host to {ENV_BROKERS} (and set {ENV_BROKER_TOKEN}) if you trust it, or pass an identity (-i FILE)",
                hosts.join(", ")
            ),
        });
    };
    let name = path.file_name().and_then(|n| n.to_str());
    let mut last = err;
    for u in urls.iter().filter(|u| access.allows(u)) {
        match access.release(u, header, meta, name, ctx) {
            Ok(k) => return Ok(k),
            Err(e @ Error::BrokerDenied { .. }) => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_hosts_match_host_or_host_and_port() {
        let a = BrokerAccess::new(["Keys.Example.com", "127.0.0.1:8080", "[::1]"], None);
        let u = |s: &str| BrokerUrl::parse(s).unwrap();
        assert!(a.allows(&u("https://keys.example.com/keys/k")));
        assert!(a.allows(&u("https://keys.example.com:9/keys/k")));
        assert!(a.allows(&u("http://127.0.0.1:8080/keys/k")));
        assert!(!a.allows(&u("http://127.0.0.1:8081/keys/k")));
        assert!(a.allows(&u("http://[::1]:1/keys/k")));
        assert!(!a.allows(&u("https://evil.example.com/keys/k")));
        assert!(!a.allows(&u("https://keys.example.com.evil.net/keys/k")));
    }

    #[test]
    fn token_is_never_debug_printed() {
        let a = BrokerAccess::new(["h"], Some("s3cret-token".into()));
        let d = format!("{a:?}");
        assert!(!d.contains("s3cret") && d.contains("redacted"));
    }

    #[test]
    fn release_info_binds_file_and_key() {
        let a = release_info(&[1; 32], &[2; 16]);
        assert_ne!(a, release_info(&[1; 32], &[3; 16]));
        assert_ne!(a, release_info(&[4; 32], &[2; 16]));
        assert!(a.starts_with(b"sealtensors/1 broker release\0"));
    }
}
