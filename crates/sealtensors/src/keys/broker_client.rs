//! Asking a key broker for a model key (SPEC §6.6, §10; docs/broker.md).
//!
//! A loader contacts a broker named in a `broker` slot only when no local
//! identity opened the file and only when its own configuration allows the
//! slot's host. The request carries the header, a licence token, an ephemeral
//! HPKE public key, the machine id and a fresh nonce; the answer is the model
//! key sealed to the ephemeral key. Every request is bounded in time and in
//! the size of the answer, and transient failures are retried with backoff.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
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

/// The TPM attestation key the loader quotes with: a persistent handle
/// (`0x81010002`) or a context file (docs/broker.md "Attestation"). Setting
/// it makes every release request carry a TPM 2.0 quote.
pub const ENV_TPM_AK: &str = "SEALTENSORS_TPM_AK";
/// The TCTI tpm2-tools use to reach the TPM (`device:/dev/tpmrm0`,
/// `swtpm:host=127.0.0.1,port=2321`); unset: tpm2-tools' own default.
pub const ENV_TPM_TCTI: &str = "SEALTENSORS_TPM_TCTI";
/// The PCRs quoted, in tpm2-tools' syntax (`sha256:0,1,7`); default
/// [`DEFAULT_TPM_PCRS`].
pub const ENV_TPM_PCRS: &str = "SEALTENSORS_TPM_PCRS";
/// The PCRs quoted when [`ENV_TPM_PCRS`] is not set.
pub const DEFAULT_TPM_PCRS: &str = "sha256:0,1,2,3,4,5,6,7";
/// How long `tpm2_quote` may run.
const QUOTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest file read back from `tpm2_quote`.
const MAX_QUOTE_FILE: u64 = 16 * 1024;

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
    /// Attestation evidence by kind, e.g. `{"tpm": {"quote", "signature",
    /// "pcr_values"}}` (docs/broker.md "Attestation"), bound to this request
    /// by [`attestation_nonce`]; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<serde_json::Value>,
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

/// The qualifying data an attestation must carry (a TPM quote's
/// `extraData`): SHA-256 over a label, the request's nonce and its ephemeral
/// key, so that evidence made for one request is refused in any other.
pub fn attestation_nonce(nonce: &[u8], ek: &[u8]) -> [u8; 32] {
    let mut m = b"sealtensors/1 attestation\0".to_vec();
    m.extend_from_slice(nonce);
    m.extend_from_slice(ek);
    crypto::sha256(&m)
}

/// Makes TPM 2.0 quotes with tpm2-tools' `tpm2_quote` for release requests
/// (docs/broker.md "Attestation"). The attestation key must be usable by
/// `tpm2_quote -c`: a persistent handle, or a context file when a resource
/// manager (`tabrmd`, `/dev/tpmrm0`) keeps it loadable.
#[derive(Debug, Clone)]
pub struct TpmQuoter {
    ak: String,
    tcti: Option<String>,
    pcrs: String,
    program: PathBuf,
}

impl TpmQuoter {
    /// Quote with this attestation key (handle or context file).
    pub fn new(ak: impl Into<String>) -> Self {
        TpmQuoter {
            ak: ak.into().trim().to_string(),
            tcti: None,
            pcrs: DEFAULT_TPM_PCRS.into(),
            program: PathBuf::from("tpm2_quote"),
        }
    }

    /// Reach the TPM through this TCTI (`tpm2_quote -T`).
    pub fn with_tcti(mut self, tcti: impl Into<String>) -> Self {
        self.tcti = Some(tcti.into().trim().to_string()).filter(|t| !t.is_empty());
        self
    }

    /// Quote these PCRs (`sha256:0,7`; several banks with `+`).
    pub fn with_pcrs(mut self, pcrs: impl Into<String>) -> Self {
        self.pcrs = pcrs.into().trim().to_string();
        self
    }

    /// Run this program instead of `tpm2_quote` from `PATH`.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    /// From [`ENV_TPM_AK`], [`ENV_TPM_TCTI`] and [`ENV_TPM_PCRS`]; `None`
    /// when no attestation key is set.
    pub fn from_env() -> Option<TpmQuoter> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let mut q = TpmQuoter::new(var(ENV_TPM_AK)?);
        if let Some(t) = var(ENV_TPM_TCTI) {
            q = q.with_tcti(t);
        }
        if let Some(p) = var(ENV_TPM_PCRS) {
            q = q.with_pcrs(p);
        }
        Some(q)
    }

    /// Quote the configured PCRs with `qualifying` as the quote's
    /// `extraData`: `{"quote", "signature", "pcr_values"}` (base64url of
    /// TPMS_ATTEST, TPMT_SIGNATURE and the PCR values in the quote's
    /// selection order). Bounded: the tool is killed after 10 s.
    pub fn quote(&self, qualifying: &[u8]) -> std::result::Result<serde_json::Value, String> {
        let arg_ok =
            |a: &str| !a.is_empty() && !a.starts_with('-') && a.len() <= 4096 && !a.contains('\0');
        if !arg_ok(&self.ak) {
            return Err(format!(
                "{ENV_TPM_AK} must be a key handle or a context file"
            ));
        }
        if !self
            .pcrs
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ",:+_".contains(c))
            || !arg_ok(&self.pcrs)
        {
            return Err(format!(
                "{ENV_TPM_PCRS} must be a PCR selection such as sha256:0,7"
            ));
        }
        let dir = QuoteDir::new()?;
        let file = |n: &str| dir.0.join(n);
        let stderr = std::fs::File::create(file("stderr"))
            .map_err(|e| format!("cannot create a temporary file: {e}"))?;
        let qhex: String = qualifying.iter().map(|b| format!("{b:02x}")).collect();
        let mut cmd = std::process::Command::new(&self.program);
        if let Some(t) = &self.tcti {
            cmd.arg("-T").arg(t);
        }
        cmd.arg("-c")
            .arg(&self.ak)
            .arg("-l")
            .arg(&self.pcrs)
            .arg("-q")
            .arg(&qhex)
            .arg("-g")
            .arg("sha256")
            .arg("-m")
            .arg(file("quote"))
            .arg("-s")
            .arg(file("sig"))
            .arg("-o")
            .arg(file("pcrs"))
            .arg("-F")
            .arg("values")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr);
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "{} not found: install tpm2-tools (apt-get install tpm2-tools), or unset {ENV_TPM_AK}",
                    self.program.display()
                )
            } else {
                format!("cannot run {}: {e}", self.program.display())
            }
        })?;
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if start.elapsed() < QUOTE_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "tpm2_quote did not finish within {} s; check {ENV_TPM_TCTI}",
                        QUOTE_TIMEOUT.as_secs()
                    ));
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("waiting for tpm2_quote: {e}"));
                }
            }
        };
        if !status.success() {
            let err = read_bounded(&file("stderr")).unwrap_or_default();
            let last = String::from_utf8_lossy(&err)
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .chars()
                .take(300)
                .collect::<String>();
            return Err(format!(
                "tpm2_quote failed ({status}): {last}; check {ENV_TPM_TCTI} and {ENV_TPM_AK}"
            ));
        }
        Ok(serde_json::json!({
            "quote": b64(&read_bounded(&file("quote"))?),
            "signature": b64(&read_bounded(&file("sig"))?),
            "pcr_values": b64(&read_bounded(&file("pcrs"))?),
        }))
    }
}

/// A private temporary folder, removed when dropped.
struct QuoteDir(PathBuf);

impl QuoteDir {
    fn new() -> std::result::Result<QuoteDir, String> {
        let r: [u8; 12] =
            crypto::random_array().map_err(|e| format!("random generator failed: {e}"))?;
        let name: String = r.iter().map(|b| format!("{b:02x}")).collect();
        let p = std::env::temp_dir().join(format!("sealtensors-quote-{name}"));
        let mut b = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(&p)
            .map_err(|e| format!("cannot create {}: {e}", p.display()))?;
        Ok(QuoteDir(p))
    }
}

impl Drop for QuoteDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read_bounded(p: &Path) -> std::result::Result<Vec<u8>, String> {
    let f =
        std::fs::File::open(p).map_err(|e| format!("tpm2_quote wrote no {}: {e}", p.display()))?;
    let mut v = Vec::new();
    f.take(MAX_QUOTE_FILE + 1)
        .read_to_end(&mut v)
        .map_err(|e| format!("reading {}: {e}", p.display()))?;
    if v.len() as u64 > MAX_QUOTE_FILE {
        return Err(format!(
            "{} is larger than {MAX_QUOTE_FILE} bytes",
            p.display()
        ));
    }
    Ok(v)
}

type Cache = HashMap<(String, [u8; 16]), (ModelKey, Instant)>;

/// An allowed-host or token entry, parsed: a host (an IPv6 address in its
/// canonical form) and a port, or any port.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HostEntry {
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
    fn for_url(u: &BrokerUrl) -> HostEntry {
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

/// Text from a broker, fit to show (it may hold terminal escapes).
fn shown(reason: &str) -> String {
    crate::error::printable(reason, 512)
}

/// A loader's permission to use key brokers: the hosts it allows and the
/// licence tokens it sends them, each to its own host. Cloning shares the key
/// cache.
#[derive(Clone, Default)]
pub struct BrokerAccess {
    /// Allowed hosts as parsed; `allowed_entries` counts every entry given,
    /// unparsable ones included (they allow nothing).
    allowed: Vec<HostEntry>,
    allowed_entries: usize,
    tokens: Vec<Token>,
    machine_id: Option<String>,
    ca: Option<Arc<Vec<u8>>>,
    tpm: Option<Arc<TpmQuoter>>,
    cache: Arc<Mutex<Cache>>,
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
            .field("tpm", &self.tpm)
            .finish()
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
            tpm: None,
            cache: Arc::default(),
        }
    }

    /// Trust only these CA certificates (PEM) for brokers, instead of the
    /// public web roots.
    pub fn with_ca_pem(mut self, pem: Vec<u8>) -> Self {
        self.ca = Some(Arc::new(pem));
        self
    }

    /// Attach a TPM 2.0 quote, made by `q`, to every release request.
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
    fn token_for(&self, u: &BrokerUrl) -> std::result::Result<&Zeroizing<String>, String> {
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
            ([], _) if self.tokens.is_empty() => Err(format!(
                "no licence token: set {ENV_BROKER_TOKEN} or write it to broker-token in the configuration directory"
            )),
            ([], _) => Err(format!(
                "no licence token for {}: the configured tokens are for other hosts or ports; add {}=TOKEN to {ENV_BROKER_TOKEN}",
                u.authority(),
                HostEntry::for_url(u)
            )),
            (_, n) => Err(format!(
                "{ENV_BROKER_TOKEN} holds a token without a host and {n} broker hosts are allowed, so it could reach a broker that did not issue it; write it as {}=TOKEN",
                HostEntry::for_url(u)
            )),
        }
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
                "this loader's configuration does not allow it; add {} to {ENV_BROKERS} if you trust it (a host without a port allows only its scheme's default port)",
                HostEntry::for_url(u)
            )));
        }
        let mk_id = meta
            .mk_id
            .ok_or_else(|| unavailable("the file has no model key id".into()))?;
        if let Some(k) = self.cached(&u.url, &mk_id) {
            return Ok(k);
        }
        let token = self.token_for(u).map_err(unavailable)?;
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
            let attestation = match &self.tpm {
                None => None,
                Some(q) => {
                    let bind = attestation_nonce(&nonce, &ek.public_key());
                    let ev = q.quote(&bind).map_err(|e| {
                        unavailable(format!("the TPM quote for attestation failed: {e}"))
                    })?;
                    Some(serde_json::json!({ "tpm": ev }))
                }
            };
            let req = ReleaseRequest {
                header: b64(&hdr),
                ek: b64(&ek.public_key()),
                machine_id: machine_id.clone(),
                nonce: b64(&nonce),
                time: crate::runtime::now_unix(),
                file_name: file_name.map(str::to_string),
                process: Some(process.clone()),
                tensors: ctx.requested.clone(),
                attestation,
            };
            let body = serde_json::to_vec(&req)
                .map_err(|e| unavailable(format!("cannot encode the request: {e}")))?;
            match post(&agent, &endpoint, token, &body) {
                Ok((200, answer)) => {
                    let a: ReleaseAnswer = serde_json::from_slice(&answer).map_err(|e| {
                        unavailable(format!("malformed answer: {}", shown(&e.to_string())))
                    })?;
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
                        Ok(e) => shown(&e.reason),
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
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
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
        // Never a proxy from HTTPS_PROXY/ALL_PROXY: the token would leave
        // for the proxy (in the clear, for a loopback http:// broker).
        .proxy(None)
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
            .map(|e| shown(&e.reason))
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
        let hosts: Vec<String> = urls
            .iter()
            .map(|u| HostEntry::for_url(u).to_string())
            .collect();
        return Err(Error::BrokerUnavailable {
            broker: urls[0].authority(),
            reason: format!(
                "no local identity opens the file and this loader's configuration allows none of its brokers ({}); add it to {ENV_BROKERS} (HOST:PORT for a port other than the scheme's default) and set {ENV_BROKER_TOKEN} if you trust it, or pass an identity (-i FILE)",
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
            .unwrap_err();
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
        let secret = |r: std::result::Result<&Zeroizing<String>, String>| r.map(|t| t.to_string());
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
    fn broker_reasons_are_shown_without_control_characters() {
        assert_eq!(shown("licence L was revoked"), "licence L was revoked");
        let s = shown("\u{1b}[2J\u{1b}]0;pwned\u{7}line\nnext");
        assert!(!s.chars().any(char::is_control), "{s:?}");
        assert_eq!(shown(&"x".repeat(10_000)).chars().count(), 515);
        // Text that reorders or hides what follows is escaped too.
        let s = shown("ok\u{202E}dexoveR\u{2066}\u{200B}\u{2028}");
        assert_eq!(s, "ok\\u{202e}dexoveR\\u{2066}\\u{200b}\\u{2028}");
    }

    #[cfg(unix)]
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

    #[test]
    fn release_info_binds_file_and_key() {
        let a = release_info(&[1; 32], &[2; 16]);
        assert_ne!(a, release_info(&[1; 32], &[3; 16]));
        assert_ne!(a, release_info(&[4; 32], &[2; 16]));
        assert!(a.starts_with(b"sealtensors/1 broker release\0"));
    }
}
