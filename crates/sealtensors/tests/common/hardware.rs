//! Software stand-ins for hardware keys, shared by the core's, the CLI's and
//! the broker's tests (the last two include this file by path): a SoftHSM2
//! token store and a swtpm on loopback, both from Debian packages that
//! scripts/system-deps.sh installs.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL: &str =
    "scripts/system-deps.sh (apt-get install softhsm2 swtpm swtpm-tools tpm2-tools)";

/// SoftHSM2's PKCS#11 module.
pub fn softhsm_module() -> PathBuf {
    for p in [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ] {
        if Path::new(p).is_file() {
            return p.into();
        }
    }
    panic!("SoftHSM2's module libsofthsm2.so is not installed; run {INSTALL}");
}

/// A SoftHSM2 token store in `dir` holding one token per label, each with
/// the user PIN `pin`; returns its configuration file, for SOFTHSM2_CONF.
pub fn softhsm_tokens(dir: &Path, labels: &[&str], pin: &str) -> PathBuf {
    let store = dir.join("tokens");
    std::fs::create_dir(&store).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            store.display()
        ),
    )
    .unwrap();
    for label in labels {
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--pin", pin, "--so-pin", "13579"])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap_or_else(|e| panic!("cannot run softhsm2-util ({e}); run {INSTALL}"));
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    conf
}

/// A software TPM on two loopback ports, killed on drop.
pub struct Swtpm {
    child: Child,
    dir: tempfile::TempDir,
    /// Its TCTI, for `-T` or SEALTENSORS_TPM_TCTI.
    pub tcti: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCTI on a loopback port where nothing listens.
pub fn unreachable_tcti() -> String {
    format!("swtpm:host=127.0.0.1,port={}", free_port())
}

impl Swtpm {
    /// Start one and wait (bounded) until it answers.
    pub fn start() -> Swtpm {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            // The swtpm TCTI finds the control channel on port + 1.
            let port = free_port();
            let Some(ctrl) = port.checked_add(1) else {
                continue;
            };
            if TcpListener::bind(("127.0.0.1", ctrl)).is_err() {
                continue;
            }
            let child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", dir.path().display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
                .args(["--flags", "not-need-init,startup-clear"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start swtpm ({e}); run {INSTALL}"));
            let mut t = Swtpm {
                child,
                dir,
                tcti: format!("swtpm:host=127.0.0.1,port={port}"),
            };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = t.child.try_wait() {
                    break; // a port was taken: try others
                }
                if t.tool("tpm2_getcap", &["properties-fixed"]).is_ok() {
                    return t;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = t.child.kill();
        }
        panic!("swtpm did not start on loopback; run {INSTALL}");
    }

    /// Its state folder (also where [`Swtpm::tool`] runs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Run a tpm2-tools program against this TPM; its standard output, or
    /// what went wrong.
    pub fn tool(&self, tool: &str, args: &[&str]) -> Result<Vec<u8>, String> {
        let out = Command::new(tool)
            .args(args)
            .env("TPM2TOOLS_TCTI", &self.tcti)
            .current_dir(self.dir.path())
            .output()
            .map_err(|e| format!("{tool}: {e}; run {INSTALL}"))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(format!(
                "{tool} {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Extend a sha256 PCR with a 32-byte value.
    pub fn extend_pcr(&self, index: u8, value: &[u8; 32]) {
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        self.tool("tpm2_pcrextend", &[&format!("{index}:sha256={hex}")])
            .unwrap();
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
