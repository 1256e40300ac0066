//! TPM 2.0 quotes for attestation (docs/broker.md "Attestation"): runs
//! tpm2-tools' `tpm2_quote` (no shell, arguments checked) in a private
//! temporary folder, bounded in time and in what it reads back.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::crypto;
use crate::keys::b64;

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
