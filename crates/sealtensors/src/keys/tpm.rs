//! P-256 identities held in a TPM 2.0 (SPEC §6.7 slots), through the
//! tpm2-tools programs (Debian `tpm2-tools`), as the broker client's quotes
//! are. Why the programs and not the `tss-esapi` crate: they need nothing at
//! build time (tss-esapi needs libtss2-dev to compile, which `make demo` on a
//! fresh machine would then need too), the test machines already have them
//! for attestation, and every step is a documented command an operator can
//! run by hand.
//!
//! `keygen --tpm` makes an ECDH P-256 key under the owner hierarchy's
//! storage primary key (created on demand from a fixed template, so it is
//! the same key every time on the same TPM), optionally bound to a PCR
//! policy. The identity file holds the key's public part and its private
//! part *as wrapped by that TPM*: the file opens nothing on another TPM, or
//! after the owner hierarchy was cleared, or (with `--pcrs`) when those PCRs
//! differ from their values at keygen. Opening a slot runs
//! `tpm2_ecdhzgen`; `Z` comes back through a pipe, never through a file.
//!
//! Transient objects and sessions are flushed (`tpm2_flushcontext -t -l
//! -s`) after each step:
//! behind the kernel's resource manager (`/dev/tpmrm0`) that is a no-op, and
//! on a TPM reached directly (a simulator, `/dev/tpm0`) the few object slots
//! would otherwise fill up.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::p256::{open_slot, P256Agreement, P256Recipient, POINT_LEN};
use super::{b64, unb64, Identity, ModelKey, Slot};
use crate::atomic::{PrivateDir, PrivateDirError};
use crate::crypto::Secret32;
use crate::error::{Error, Result, TpmProblem};

/// The TCTI that reaches the TPM (tpm2-tools' `-T`); the same variable as
/// the broker client's quotes (`ENV_TPM_TCTI`). Unset: tpm2-tools' default
/// (`TPM2TOOLS_TCTI`, else the kernel's resource manager).
const TCTI_VAR: &str = "SEALTENSORS_TPM_TCTI";

/// The storage primary key's template, recorded in the identity file.
const PARENT: &str = "owner ecc256:aes128cfb sha256 restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda";
const PARENT_ATTRS: &str =
    "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda";
/// One TPM operation at a time in this process: each flushes every
/// transient object and session on a TPM reached directly, which would
/// break another thread's operation in flight (a broker opens slots in
/// parallel).
fn one_at_a_time() -> Result<std::sync::MutexGuard<'static, ()>> {
    static TPM: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TPM.lock().map_err(|_| Error::Crypto("TPM lock poisoned"))
}

/// How long one tpm2-tools program may run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a program's output is read.
const MAX_OUTPUT: u64 = 64 * 1024;

fn err(what: impl Into<String>, problem: TpmProblem) -> Error {
    Error::Tpm {
        what: what.into(),
        problem,
    }
}

/// The identity file (JSON, mode 0600): the public point as a JWK would
/// give it, and the TPM-wrapped key.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TpmFile {
    kty: String,
    crv: String,
    x: String,
    y: String,
    tpm: TpmBlob,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TpmBlob {
    /// The parent's template (documentation; checked on load).
    parent: String,
    /// TPM2B_PUBLIC of the key, as `tpm2_create -u` writes it.
    public: String,
    /// TPM2B_PRIVATE of the key (wrapped by the parent), `tpm2_create -r`.
    private: String,
    /// The PCR selection the key's policy binds, `sha256:0,7`; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pcrs: Option<String>,
}

/// Whether key file text is a TPM identity file.
pub(crate) fn is_tpm_identity(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .is_some_and(|v| v.get("tpm").is_some_and(|t| t.is_object()))
}

/// A private temporary folder for the tools' input and context files
/// (nothing secret: the key blob is wrapped by the TPM and `Z` never lands
/// here), removed when dropped.
struct WorkDir(PrivateDir);

impl WorkDir {
    fn new() -> Result<WorkDir> {
        match PrivateDir::create("sealtensors-tpm") {
            Ok(d) => Ok(WorkDir(d)),
            Err(PrivateDirError::Random(e)) => Err(e),
            Err(PrivateDirError::Create { path, source }) => Err(Error::io(
                "making a private temporary folder for tpm2-tools",
                source,
            )
            .in_file(path)),
        }
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let p = self.file(name);
        std::fs::write(&p, bytes).map_err(|e| Error::io("writing a tpm2-tools input", e))?;
        Ok(p)
    }
    fn read(&self, name: &str) -> Result<Vec<u8>> {
        let p = self.file(name);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        if len > MAX_OUTPUT {
            return Err(err(
                "tpm2-tools",
                TpmProblem::Failed(format!("{} is {len} bytes", p.display())),
            ));
        }
        std::fs::read(&p).map_err(|e| Error::io("reading what tpm2-tools wrote", e))
    }
}

/// Run one tpm2-tools program in `dir` (no shell), bounded in time; its
/// standard output (at most [`MAX_OUTPUT`] bytes, wiped when dropped).
fn tool(dir: &WorkDir, program: &str, args: &[&str]) -> Result<Zeroizing<Vec<u8>>> {
    let mut cmd = Command::new(program);
    if let Some(t) = std::env::var_os(TCTI_VAR).filter(|t| !t.is_empty()) {
        cmd.arg("-T").arg(t);
    }
    // TSS2_LOG at trace level would print command and response buffers,
    // `Z` among them, to the tools' standard error.
    cmd.env_remove("TSS2_LOG").env_remove("TSS2_LOGFILE");
    let mut child = cmd
        .args(args)
        .current_dir(dir.0.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                err(program, TpmProblem::ToolMissing(program.into()))
            } else {
                Error::io(format!("starting {program}"), e)
            }
        })?;
    // Both outputs are small (a point, a few messages); they are read on
    // threads so that a stuck program is still killed on time, and never
    // land in a file.
    fn reader<R: Read + Send + 'static>(
        pipe: Option<R>,
    ) -> std::thread::JoinHandle<Zeroizing<Vec<u8>>> {
        std::thread::spawn(move || {
            // Room for the whole output up front: growing would leave
            // unwiped copies of `Z` in freed memory.
            let mut buf = Zeroizing::new(Vec::with_capacity(MAX_OUTPUT as usize));
            if let Some(o) = pipe {
                let _ = o.take(MAX_OUTPUT).read_to_end(&mut buf);
            }
            buf
        })
    }
    let out = reader(child.stdout.take());
    let errs = reader(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() < TOOL_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err(
                    program,
                    TpmProblem::Unreachable(format!(
                        "{program} did not finish within {} s",
                        TOOL_TIMEOUT.as_secs()
                    )),
                ));
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = errs.join().unwrap_or_default();
    if status.success() {
        return Ok(stdout);
    }
    Err(err(
        program,
        classify(program, status, &String::from_utf8_lossy(&stderr)),
    ))
}

/// What a failed tpm2-tools run means, from the TPM response codes and
/// messages on its standard error.
fn classify(program: &str, status: std::process::ExitStatus, text: &str) -> TpmProblem {
    let lower = text.to_ascii_lowercase();
    // The line that carries the TPM's response code, else the last one.
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("(0x"))
        .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .chars()
        .take(300)
        .collect::<String>();
    let code =
        |c: &str| lower.contains(&format!("(0x{c})")) || lower.contains(&format!("(0x00000{c})"));
    if lower.contains("integrity check failed") || code("1df") || code("9a2") {
        TpmProblem::OtherTpm
    } else if lower.contains("policy check failed")
        || lower.contains("pcr have changed")
        || code("99d")
        || code("128")
    {
        TpmProblem::PcrMismatch(String::new())
    } else if lower.contains("could not load tcti")
        || lower.contains("connection refused")
        || lower.contains("tcti")
    {
        TpmProblem::Unreachable(line)
    } else {
        TpmProblem::Failed(format!("{program} failed ({status}): {line}"))
    }
}

/// Flush every transient object and every loaded and saved session left on
/// the TPM (see the module docs): tpm2-tools leave one loaded session behind
/// per run of some tools, and a TPM has room for three.
fn flush(dir: &WorkDir) -> Result<()> {
    for what in ["-t", "-l", "-s"] {
        tool(dir, "tpm2_flushcontext", &[what])?;
    }
    Ok(())
}

/// The storage primary key, as `primary.ctx` in `dir`.
fn primary(dir: &WorkDir) -> Result<()> {
    tool(
        dir,
        "tpm2_createprimary",
        &[
            "-Q",
            "-C",
            "o",
            "-g",
            "sha256",
            "-G",
            "ecc256:aes128cfb",
            "-a",
            PARENT_ATTRS,
            "-c",
            "primary.ctx",
        ],
    )?;
    flush(dir)
}

/// A PCR selection as tpm2-tools takes it: `bank:i,j[+bank:k]`.
fn check_pcrs(pcrs: &str) -> Result<()> {
    let ok = !pcrs.is_empty()
        && pcrs.len() <= 200
        && pcrs.split('+').all(|sel| {
            sel.split_once(':').is_some_and(|(bank, list)| {
                matches!(bank, "sha1" | "sha256" | "sha384" | "sha512")
                    && !list.is_empty()
                    && list
                        .split(',')
                        .all(|i| i.parse::<u8>().is_ok_and(|n| n < 16))
            })
        });
    if ok {
        Ok(())
    } else {
        Err(err(
            "--pcrs",
            TpmProblem::BadFile(format!(
                "{:?} is not a PCR selection; write it as sha256:0,7 (banks sha1, sha256, sha384, sha512; PCRs 0 to 15: 16 to 23 can be reset by software or a dynamic launch, so binding to them proves nothing)",
                crate::error::printable(pcrs, 64)
            )),
        ))
    }
}

/// The public point of a loaded key context, from `tpm2_readpublic -f pem`.
fn read_point(dir: &WorkDir, ctx: &str, pcrs: Option<&str>) -> Result<P256Recipient> {
    let yaml = tool(
        dir,
        "tpm2_readpublic",
        &["-c", ctx, "-f", "pem", "-o", "key.pem"],
    )?;
    check_attributes(&String::from_utf8_lossy(&yaml), pcrs)?;
    let pem = pem::parse(dir.read("key.pem")?).map_err(|_| {
        err(
            "tpm2_readpublic",
            TpmProblem::Failed("no PEM public key".into()),
        )
    })?;
    // SubjectPublicKeyInfo of a P-256 key: a fixed 26-byte prefix (SEQUENCE,
    // id-ecPublicKey, prime256v1, BIT STRING) and the 65-byte point.
    const SPKI_P256: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let der = pem.contents();
    match der.split_at_checked(SPKI_P256.len()) {
        Some((prefix, point)) if prefix == SPKI_P256 && point.len() == POINT_LEN => {
            P256Recipient::from_point(point)
        }
        _ => Err(err(
            "tpm2_readpublic",
            TpmProblem::Failed("the TPM key is not a P-256 key".into()),
        )),
    }
}

/// Load `key.pub`/`key.priv` under `primary.ctx` as `key.ctx`, check that
/// the TPM describes it as a key `keygen --tpm` makes, and return its point.
fn load_key(dir: &WorkDir, pcrs: Option<&str>) -> Result<P256Recipient> {
    let args = [
        "-Q",
        "-C",
        "primary.ctx",
        "-u",
        "key.pub",
        "-r",
        "key.priv",
        "-c",
        "key.ctx",
    ];
    tool(dir, "tpm2_load", &args)?;
    flush(dir)?;
    let public = read_point(dir, "key.ctx", pcrs)?;
    flush(dir)?;
    Ok(public)
}

/// Check the TPM's own description of a loaded key (`tpm2_readpublic`'s
/// YAML): made inside this TPM and never to leave it, for decryption, and
/// usable through its PCR policy when `pcrs`, else by its empty password.
/// A key imported from outside (whose creator kept a copy) or one whose PCR
/// binding was removed from the file is refused.
fn check_attributes(yaml: &str, pcrs: Option<&str>) -> Result<()> {
    let mut attrs = "";
    let mut policy = "";
    let mut lines = yaml.lines();
    while let Some(l) = lines.next() {
        if l.trim() == "attributes:" {
            attrs = lines
                .next()
                .and_then(|v| v.trim().strip_prefix("value:"))
                .unwrap_or("")
                .trim();
        } else if let Some(p) = l.strip_prefix("authorization policy:") {
            policy = p.trim();
        }
    }
    let has = |a: &str| attrs.split('|').any(|x| x == a);
    let made_here = has("fixedtpm") && has("fixedparent") && has("sensitivedataorigin");
    let ok = made_here
        && has("decrypt")
        && !has("restricted")
        && match pcrs {
            Some(_) => !has("userwithauth") && !policy.is_empty(),
            None => has("userwithauth"),
        };
    if ok {
        Ok(())
    } else {
        Err(err(
            "identity file",
            TpmProblem::BadFile(format!(
                "the TPM key is not one `keygen --tpm` makes (attributes {:?}, {}); it may have been imported from outside the TPM, or its PCR binding edited in the file",
                crate::error::printable(attrs, 200),
                if pcrs.is_some() { "a PCR policy expected" } else { "no PCR policy expected" }
            )),
        ))
    }
}

/// Make a P-256 ECDH key in the TPM (`keygen --tpm`), optionally bound to the
/// current values of the PCRs `pcrs` (`sha256:0,7`), and write its identity
/// file (mode 0600, never overwritten unless `force`). Returns the recipient.
pub fn tpm_generate_p256(path: &Path, pcrs: Option<&str>, force: bool) -> Result<P256Recipient> {
    if let Some(p) = pcrs {
        check_pcrs(p)?;
    }
    let dir = WorkDir::new()?;
    primary(&dir)?;
    let _tpm = one_at_a_time()?;
    let mut attrs = "fixedtpm|fixedparent|sensitivedataorigin|decrypt|noda".to_string();
    let mut args = vec![
        "-Q",
        "-C",
        "primary.ctx",
        "-G",
        "ecc256:ecdh",
        "-u",
        "key.pub",
        "-r",
        "key.priv",
    ];
    if let Some(p) = pcrs {
        // The policy digest of "these PCRs have their current values", in
        // one program (a session kept between programs does not survive
        // the kernel's resource manager). Using the key, and changing its
        // authorisation, then need that policy.
        tool(
            &dir,
            "tpm2_createpolicy",
            &["-Q", "--policy-pcr", "-l", p, "-L", "policy.dat"],
        )?;
        flush(&dir)?;
        args.extend(["-L", "policy.dat"]);
        attrs.push_str("|adminwithpolicy");
    } else {
        attrs.push_str("|userwithauth");
    }
    args.extend(["-a", &attrs]);
    tool(&dir, "tpm2_create", &args)?;
    flush(&dir)?;
    let public = load_key(&dir, pcrs)?;
    let file = TpmFile {
        kty: "EC".into(),
        crv: "P-256".into(),
        x: b64(&public.x()),
        y: b64(&public.y()),
        tpm: TpmBlob {
            parent: PARENT.into(),
            public: b64(&dir.read("key.pub")?),
            private: b64(&dir.read("key.priv")?),
            pcrs: pcrs.map(str::to_string),
        },
    };
    let text = serde_json::to_string_pretty(&file)
        .map_err(|e| Error::Config(format!("TPM identity file: {e}")))?
        + "\n";
    super::write_key_file(path, text.as_bytes(), force)?;
    Ok(public)
}

/// A P-256 identity whose private key stays in this machine's TPM.
pub struct TpmIdentity {
    public: P256Recipient,
    blob_public: Vec<u8>,
    blob_private: Vec<u8>,
    pcrs: Option<String>,
    source: PathBuf,
}

impl TpmIdentity {
    /// Read a TPM identity file (no TPM is contacted until a slot is opened).
    pub fn from_text(text: &str, source: &Path) -> Result<Self> {
        let bad = |m: String| err(source.display().to_string(), TpmProblem::BadFile(m));
        let f: TpmFile = serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "not a sealtensors TPM identity file: {}",
                crate::error::json_error_text(&e)
            ))
        })?;
        if f.kty != "EC" || f.crv != "P-256" {
            return Err(bad("a TPM identity is an EC P-256 key".into()));
        }
        if f.tpm.parent != PARENT {
            return Err(bad(
                "the key's parent template is not the one this version uses".into(),
            ));
        }
        if let Some(p) = &f.tpm.pcrs {
            check_pcrs(p)?;
        }
        let public = P256Recipient::from_coordinates(
            &super::unb64_array("x", &f.x)?,
            &super::unb64_array("y", &f.y)?,
        )?;
        Ok(TpmIdentity {
            public,
            blob_public: unb64("tpm.public", &f.tpm.public)?,
            blob_private: unb64("tpm.private", &f.tpm.private)?,
            pcrs: f.tpm.pcrs,
            source: source.to_path_buf(),
        })
    }

    /// The public half.
    pub fn recipient(&self) -> P256Recipient {
        self.public
    }
}

/// TPM2B_ECC_POINT of a P-256 point (tpm2-tools' `-u` input).
fn tpm2b_point(p: &[u8; POINT_LEN]) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + 2 + 32 + 2 + 32);
    v.extend_from_slice(&68u16.to_be_bytes());
    v.extend_from_slice(&32u16.to_be_bytes());
    v.extend_from_slice(&p[1..33]);
    v.extend_from_slice(&32u16.to_be_bytes());
    v.extend_from_slice(&p[33..]);
    v
}

impl P256Agreement for TpmIdentity {
    fn public_key(&self) -> &P256Recipient {
        &self.public
    }

    fn agree(&self, peer: &[u8; POINT_LEN]) -> Result<Secret32> {
        let _tpm = one_at_a_time()?;
        let dir = WorkDir::new()?;
        primary(&dir)?;
        dir.write("key.pub", &self.blob_public)?;
        dir.write("key.priv", &self.blob_private)?;
        // The loaded key must be the file's: its x, y are what slots name.
        if load_key(&dir, self.pcrs.as_deref())? != self.public {
            return Err(err(
                self.source.display().to_string(),
                TpmProblem::BadFile(
                    "the TPM key does not match the x, y written in the identity file".into(),
                ),
            ));
        }
        dir.write("peer.dat", &tpm2b_point(peer))?;
        let mut args = vec!["-c", "key.ctx", "-u", "peer.dat", "-o", "/dev/stdout"];
        // The PCR policy is satisfied inside the one program that uses the
        // key (`-p pcr:SEL`), so no session has to outlive a program.
        let auth = self.pcrs.as_ref().map(|p| format!("pcr:{p}"));
        if let Some(a) = &auth {
            args.extend(["-p", a]);
        }
        let z = tool(&dir, "tpm2_ecdhzgen", &args).map_err(|e| match e {
            Error::Tpm {
                what,
                problem: TpmProblem::PcrMismatch(_),
            } => Error::Tpm {
                what,
                problem: TpmProblem::PcrMismatch(self.pcrs.clone().unwrap_or_default()),
            },
            e => e,
        });
        let _ = flush(&dir);
        let z = z?;
        // TPM2B_ECC_POINT: size, then x as a TPM2B; Z is x.
        match z.as_slice() {
            [0, 68, 0, 32, rest @ ..] if rest.len() == 66 => {
                let mut x = [0u8; 32];
                x.copy_from_slice(&rest[..32]);
                let s = Secret32::from_bytes(x);
                zeroize::Zeroize::zeroize(&mut x);
                Ok(s)
            }
            _ => Err(err(
                "tpm2_ecdhzgen",
                TpmProblem::Failed("it returned no P-256 point".into()),
            )),
        }
    }

    fn location(&self) -> String {
        format!("TPM key {}", self.source.display())
    }
}

impl Identity for TpmIdentity {
    fn unwrap(&self, slot: &Slot, mk_id: &[u8; 16]) -> Option<Result<ModelKey>> {
        open_slot(self, slot, mk_id)
    }
    fn describe(&self) -> String {
        format!(
            "p256 {} (TPM key {})",
            self.public.rid(),
            self.source.display()
        )
    }
}

impl fmt::Debug for TpmIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TpmIdentity({}, {})", self.public, self.source.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr_selections_are_checked() {
        for ok in ["sha256:0,7", "sha1:0+sha256:1,2,15"] {
            check_pcrs(ok).unwrap();
        }
        // 16 (debug) and 23 (application) can be reset by software, 17-22
        // by a dynamic launch: a binding to them proves nothing.
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:16",
            "sha256:0,23",
            "sha256:24",
            "md5:0",
            "sha256:0;rm",
            "-c",
        ] {
            assert!(check_pcrs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn identity_files_are_strict() {
        let p = Path::new("id.tpm.json");
        assert!(TpmIdentity::from_text("{}", p).is_err());
        let pt = super::super::P256Identity::generate().unwrap().recipient();
        let good = serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": b64(&pt.x()), "y": b64(&pt.y()),
            "tpm": {"parent": PARENT, "public": "AAA", "private": "AAA"},
        });
        TpmIdentity::from_text(&good.to_string(), p).unwrap();
        let mut other_parent = good.clone();
        other_parent["tpm"]["parent"] = "endorsement rsa2048".into();
        assert!(TpmIdentity::from_text(&other_parent.to_string(), p).is_err());
        let mut extra = good.clone();
        extra["d"] = "AAAA".into();
        assert!(TpmIdentity::from_text(&extra.to_string(), p).is_err());
        assert!(is_tpm_identity(&good.to_string()));
        assert!(!is_tpm_identity(r#"{"kty":"EC"}"#));
    }

    #[test]
    fn only_keys_made_inside_the_tpm_for_their_binding_are_taken() {
        let yaml = |attrs: &str, policy: &str| {
            format!("name: 000b\nattributes:\n  value: {attrs}\n  raw: 0x1\nauthorization policy: {policy}\n")
        };
        let plain = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|decrypt";
        let bound = "fixedtpm|fixedparent|sensitivedataorigin|adminwithpolicy|noda|decrypt";
        check_attributes(&yaml(plain, ""), None).unwrap();
        check_attributes(&yaml(bound, "8b56"), Some("sha256:7")).unwrap();
        // The binding removed from the file, or added to it.
        assert!(check_attributes(&yaml(bound, "8b56"), None).is_err());
        assert!(check_attributes(&yaml(plain, ""), Some("sha256:7")).is_err());
        // Imported (no sensitivedataorigin), restricted, or not for decryption.
        let imported = "fixedtpm|fixedparent|userwithauth|decrypt";
        assert!(check_attributes(&yaml(imported, ""), None).is_err());
        assert!(check_attributes(&yaml(&format!("{plain}|restricted"), ""), None).is_err());
        let signing = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign";
        assert!(check_attributes(&yaml(signing, ""), None).is_err());
        assert!(check_attributes("", None).is_err());
    }

    #[test]
    fn tpm2b_points_are_marshalled() {
        let pt = super::super::P256Identity::generate().unwrap().recipient();
        let m = tpm2b_point(pt.as_bytes());
        assert_eq!(m.len(), 70);
        assert_eq!(&m[..4], &[0, 68, 0, 32]);
        assert_eq!(&m[4..36], &pt.x());
        assert_eq!(&m[36..38], &[0, 32]);
        assert_eq!(&m[38..], &pt.y());
    }
}
