//! `keygen --tpm` and `-i` with a TPM identity file, against a software TPM
//! (swtpm, installed by scripts/system-deps.sh) started on loopback.

use std::net::TcpListener;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;
use sealtensors::{Dtype, TensorRef};

struct Swtpm(Child, String, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn swtpm() -> Swtpm {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let Some(ctrl) = port.checked_add(1) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", ctrl)).is_err() {
            continue;
        }
        let child = Process::new("swtpm")
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
            .expect("swtpm: run scripts/system-deps.sh");
        let mut t = Swtpm(child, format!("swtpm:host=127.0.0.1,port={port}"), dir);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = t.0.try_wait() {
                break;
            }
            let up = Process::new("tpm2_getcap")
                .args(["-T", &t.1, "properties-fixed"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("tpm2_getcap: run scripts/system-deps.sh")
                .success();
            if up {
                return t;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = t.0.kill();
    }
    panic!("swtpm did not start on loopback; run scripts/system-deps.sh");
}

fn bin(tcti: &str) -> Command {
    let mut c = Command::cargo_bin("sealtensors").unwrap();
    c.env_remove("SEALTENSORS_IDENTITY")
        .env_remove("SEALTENSORS_TRUST")
        .env("SEALTENSORS_CONFIG_DIR", "/nonexistent-sealtensors-config")
        .env("SEALTENSORS_TPM_TCTI", tcti);
    c
}

#[test]
fn keygen_tpm_then_unseal_with_the_identity_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let plain = d.join("model.safetensors");
    let data: Vec<u8> = (0..4000u32).map(|i| (i % 253) as u8).collect();
    sealtensors::write_plain(
        &plain,
        &[TensorRef {
            name: "w".into(),
            dtype: Dtype::U8,
            shape: vec![4000],
            data: &data,
        }],
        None,
        false,
    )
    .unwrap();
    let t = swtpm();
    let idp = d.join("id.tpm.json");
    let out = bin(&t.1)
        .args(["keygen", "--tpm", "--pcrs", "sha256:7", "-o"])
        .arg(&idp)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let recipient = String::from_utf8(out).unwrap().trim().to_string();
    assert!(recipient.starts_with("p256:"), "{recipient}");
    // --pcrs without --tpm, and --tpm without -o, are usage errors.
    bin(&t.1)
        .args(["keygen", "--pcrs", "sha256:0"])
        .assert()
        .code(2);
    bin(&t.1).args(["keygen", "--tpm"]).assert().code(2);
    let sealed = d.join("sealed.safetensors");
    bin(&t.1)
        .args(["--quiet", "seal", "-r", &recipient, "-o"])
        .arg(&sealed)
        .arg(&plain)
        .assert()
        .success();
    let back = d.join("back.safetensors");
    bin(&t.1)
        .args(["--quiet", "unseal", "-i"])
        .arg(&idp)
        .arg("-o")
        .arg(&back)
        .arg(&sealed)
        .assert()
        .success();
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(&plain).unwrap()
    );
    // Another TPM: exit 4, and the message says why.
    let other = swtpm();
    bin(&other.1)
        .args(["unseal", "-i"])
        .arg(&idp)
        .arg("-o")
        .arg(d.join("never.safetensors"))
        .arg(&sealed)
        .assert()
        .code(4)
        .stderr(predicate::str::contains("another TPM"));
}
