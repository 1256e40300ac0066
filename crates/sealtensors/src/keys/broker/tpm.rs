//! TPM 2.0 quotes for attestation (docs/broker.md "Attestation"): runs
//! tpm2-tools' `tpm2_quote` (no shell, arguments checked) in a private
//! temporary folder, bounded in time and in what it reads back.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::atomic::{PrivateDir, PrivateDirError};
use crate::keys::b64;

/// Why a TPM quote could not be made. Each message says what to check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// The attestation key is not a usable `tpm2_quote -c` argument.
    #[error("SEALTENSORS_TPM_AK must be a key handle (0x81010002) or a context file")]
    BadKey,
    /// The PCR selection is not in tpm2-tools' syntax.
    #[error("SEALTENSORS_TPM_PCRS must be a PCR selection such as sha256:0,7")]
    BadPcrs,
    /// The private temporary folder or a file in it could not be made.
    #[error("cannot create the temporary file or folder {}: {source}", path.display())]
    TempFile {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The random generator failed while naming the temporary folder.
    #[error("the random generator failed: {0}")]
    Random(String),
    /// The program is not installed.
    #[error("{} not found: install tpm2-tools (apt-get install tpm2-tools), or unset SEALTENSORS_TPM_AK", program.display())]
    NotInstalled {
        /// The program looked for.
        program: PathBuf,
    },
    /// The program could not be started.
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The program ran too long and was killed.
    #[error("tpm2_quote did not finish within {secs} s; check SEALTENSORS_TPM_TCTI")]
    Timeout {
        /// The limit, seconds.
        secs: u64,
    },
    /// Waiting for the program failed.
    #[error("waiting for tpm2_quote: {0}")]
    Wait(std::io::Error),
    /// The program failed; its last error line, shortened.
    #[error("tpm2_quote failed ({status}): {last_line}; check SEALTENSORS_TPM_TCTI and SEALTENSORS_TPM_AK")]
    Failed {
        /// How it exited.
        status: std::process::ExitStatus,
        /// The last non-empty line it wrote to stderr (at most 300 characters).
        last_line: String,
    },
    /// An output file is missing or unreadable.
    #[error("tpm2_quote wrote no readable {}: {source}", path.display())]
    Output {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An output file is larger than a quote can be.
    #[error("{} is larger than {max} bytes", path.display())]
    OutputTooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
}

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
    pub fn quote(&self, qualifying: &[u8]) -> Result<serde_json::Value, TpmError> {
        let arg_ok =
            |a: &str| !a.is_empty() && !a.starts_with('-') && a.len() <= 4096 && !a.contains('\0');
        if !arg_ok(&self.ak) {
            return Err(TpmError::BadKey);
        }
        if !self
            .pcrs
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ",:+_".contains(c))
            || !arg_ok(&self.pcrs)
        {
            return Err(TpmError::BadPcrs);
        }
        let dir = quote_dir()?;
        let file = |n: &str| dir.path().join(n);
        let stderr =
            std::fs::File::create(file("stderr")).map_err(|source| TpmError::TempFile {
                path: file("stderr"),
                source,
            })?;
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
        let mut child = cmd.spawn().map_err(|source| {
            let program = self.program.clone();
            if source.kind() == std::io::ErrorKind::NotFound {
                TpmError::NotInstalled { program }
            } else {
                TpmError::Spawn { program, source }
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
                    return Err(TpmError::Timeout {
                        secs: QUOTE_TIMEOUT.as_secs(),
                    });
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(TpmError::Wait(e));
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
            return Err(TpmError::Failed {
                status,
                last_line: last,
            });
        }
        Ok(serde_json::json!({
            "quote": b64(&read_bounded(&file("quote"))?),
            "signature": b64(&read_bounded(&file("sig"))?),
            "pcr_values": b64(&read_bounded(&file("pcrs"))?),
        }))
    }
}

/// The quote's private temporary folder (the crate's one kind of it).
fn quote_dir() -> Result<PrivateDir, TpmError> {
    PrivateDir::create("sealtensors-quote").map_err(|e| match e {
        PrivateDirError::Random(e) => TpmError::Random(e.to_string()),
        PrivateDirError::Create { path, source } => TpmError::TempFile { path, source },
    })
}

/// A file `tpm2_quote` wrote, at most [`MAX_QUOTE_FILE`] bytes.
fn read_bounded(p: &Path) -> Result<Vec<u8>, TpmError> {
    let output = |source| TpmError::Output {
        path: p.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(p).map_err(output)?;
    let mut v = Vec::new();
    f.take(MAX_QUOTE_FILE + 1)
        .read_to_end(&mut v)
        .map_err(output)?;
    if v.len() as u64 > MAX_QUOTE_FILE {
        return Err(TpmError::OutputTooLarge {
            path: p.to_path_buf(),
            max: MAX_QUOTE_FILE,
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_arguments_and_a_missing_tool_are_typed_and_say_what_to_do() {
        let q = TpmQuoter::new("-c evil");
        assert!(matches!(q.quote(b"x"), Err(TpmError::BadKey)));
        let q = TpmQuoter::new("0x81010002").with_pcrs("sha256:0;rm -rf");
        assert!(matches!(q.quote(b"x"), Err(TpmError::BadPcrs)));
        let q = TpmQuoter::new("0x81010002").with_program("/nonexistent/tpm2_quote");
        let e = q.quote(b"x").unwrap_err();
        assert!(matches!(e, TpmError::NotInstalled { .. }), "{e}");
        assert!(e.to_string().contains("apt-get install tpm2-tools"), "{e}");
    }

    #[test]
    fn oversized_or_missing_outputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("quote");
        std::fs::write(&big, vec![0u8; MAX_QUOTE_FILE as usize + 1]).unwrap();
        assert!(matches!(
            read_bounded(&big),
            Err(TpmError::OutputTooLarge { .. })
        ));
        let none = dir.path().join("sig");
        let e = read_bounded(&none).unwrap_err();
        assert!(matches!(e, TpmError::Output { .. }), "{e}");
        assert!(e.to_string().contains("sig"), "{e}");
    }
}
