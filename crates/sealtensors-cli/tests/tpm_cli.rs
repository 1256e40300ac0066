//! `keygen --tpm` and `-i` with a TPM identity file, against a software TPM
//! (swtpm, installed by scripts/system-deps.sh) started on loopback.

use assert_cmd::Command;
use predicates::prelude::*;
use sealtensors::{Dtype, TensorRef};

#[allow(dead_code)]
#[path = "../../sealtensors/tests/common/hardware.rs"]
mod hardware;
use hardware::Swtpm;

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
    let t = Swtpm::start();
    let idp = d.join("id.tpm.json");
    let out = bin(&t.tcti)
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
    bin(&t.tcti)
        .args(["keygen", "--pcrs", "sha256:0"])
        .assert()
        .code(2);
    bin(&t.tcti).args(["keygen", "--tpm"]).assert().code(2);
    let sealed = d.join("sealed.safetensors");
    bin(&t.tcti)
        .args(["--quiet", "seal", "-r", &recipient, "-o"])
        .arg(&sealed)
        .arg(&plain)
        .assert()
        .success();
    let back = d.join("back.safetensors");
    bin(&t.tcti)
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
    let other = Swtpm::start();
    bin(&other.tcti)
        .args(["unseal", "-i"])
        .arg(&idp)
        .arg("-o")
        .arg(d.join("never.safetensors"))
        .arg(&sealed)
        .assert()
        .code(4)
        .stderr(predicate::str::contains("another TPM"));
}
