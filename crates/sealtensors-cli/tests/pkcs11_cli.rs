//! The CLI with a key held in a real software token (SoftHSM2; installed by
//! scripts/system-deps.sh): `keygen --pkcs11` makes it, `seal -r` seals to
//! it, `-i URI` and `SEALTENSORS_IDENTITY=URI` open with it, and a wrong PIN
//! or a missing key exits with the no-key code and says what to do. Each
//! command is its own process, so every one of them loads the module,
//! finds the token and logs in.
#![cfg(feature = "pkcs11")]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use sealtensors::{Dtype, TensorRef};

const PIN: &str = "135790";

#[allow(dead_code)]
#[path = "../../sealtensors/tests/common/hardware.rs"]
mod hardware;
use hardware::softhsm_module as module;

/// A token `cli` in a fresh SoftHSM2 store; returns the SOFTHSM2_CONF path.
fn token(dir: &Path) -> PathBuf {
    hardware::softhsm_tokens(dir, &["cli"], PIN)
}

fn bin(conf: &Path) -> Command {
    let mut c = Command::cargo_bin("sealtensors").unwrap();
    c.env_remove("SEALTENSORS_IDENTITY")
        .env_remove("SEALTENSORS_TRUST")
        .env_remove("SEALTENSORS_PKCS11_PIN")
        .env_remove("SEALTENSORS_PKCS11_MODULE")
        .env("SEALTENSORS_CONFIG_DIR", "/nonexistent-sealtensors-config")
        .env("SOFTHSM2_CONF", conf);
    c
}

fn write_model(path: &Path) {
    let a: Vec<u8> = (0..4 * 3000u32).map(|i| (i * 7 % 251) as u8).collect();
    sealtensors::write_plain(
        path,
        &[TensorRef {
            name: "model.embed.weight".into(),
            dtype: Dtype::F32,
            shape: vec![60, 50],
            data: &a,
        }],
        Some([("format".into(), "pt".into())].into()),
        false,
    )
    .unwrap();
}

#[test]
fn keygen_seal_and_open_with_a_token_key() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let conf = token(d);
    let plain = d.join("model.safetensors");
    write_model(&plain);
    let uri = format!(
        "pkcs11:token=cli;object=deploy?module-path={}",
        module().display()
    );
    // keygen: the PIN from the environment, the recipient on stdout.
    let out = bin(&conf)
        .args(["keygen", "--pkcs11", &uri])
        .env("SEALTENSORS_PKCS11_PIN", PIN)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let recipient = String::from_utf8(out).unwrap().trim().to_string();
    assert!(recipient.starts_with("p256:"), "{recipient}");
    // The same key again is refused: keys are never replaced.
    bin(&conf)
        .args(["keygen", "--pkcs11", &uri])
        .env("SEALTENSORS_PKCS11_PIN", PIN)
        .assert()
        .code(4)
        .stderr(predicate::str::contains("never replaced"));

    let sealed = d.join("sealed.safetensors");
    bin(&conf)
        .args(["--quiet", "seal", "-r", &recipient, "-o"])
        .arg(&sealed)
        .arg(&plain)
        .assert()
        .success();
    // The URI as a recipient reads the same public key off the token.
    let sealed2 = d.join("sealed2.safetensors");
    bin(&conf)
        .args(["--quiet", "seal", "-r", &uri, "-o"])
        .arg(&sealed2)
        .arg(&plain)
        .env("SEALTENSORS_PKCS11_PIN", PIN)
        .assert()
        .success();

    // -i URI, PIN from a file named in the URI.
    let pin_file = d.join("pin");
    std::fs::write(&pin_file, PIN).unwrap();
    let with_pin = format!("{uri}&pin-source=file:{}", pin_file.display());
    for (i, f) in [&sealed, &sealed2].into_iter().enumerate() {
        let back = d.join(format!("back{i}.safetensors"));
        bin(&conf)
            .args(["--quiet", "unseal", "-i", &with_pin, "-o"])
            .arg(&back)
            .arg(f)
            .assert()
            .success();
        assert_eq!(
            std::fs::read(&back).unwrap(),
            std::fs::read(&plain).unwrap()
        );
    }
    // SEALTENSORS_IDENTITY=URI (the whole variable is the one URI).
    bin(&conf)
        .args(["verify", "--json"])
        .arg(&sealed)
        .env("SEALTENSORS_IDENTITY", &uri)
        .env("SEALTENSORS_PKCS11_PIN", PIN)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "\"encrypted_tensors\":1,\"unchecked_encrypted_tensors\":0",
        ));

    // A wrong PIN: the no-key exit code and what to do.
    bin(&conf)
        .args(["unseal", "-i", &uri, "-o"])
        .arg(d.join("never.safetensors"))
        .arg(&sealed)
        .env("SEALTENSORS_PKCS11_PIN", "000000")
        .assert()
        .code(4)
        .stderr(predicate::str::contains("refused the PIN"));
    assert!(!d.join("never.safetensors").exists());
    // No PIN at all.
    bin(&conf)
        .args(["unseal", "-i", &uri, "-o"])
        .arg(d.join("never.safetensors"))
        .arg(&sealed)
        .assert()
        .code(4)
        .stderr(predicate::str::contains("SEALTENSORS_PKCS11_PIN"));
    // A key that is not on the token.
    let missing = format!(
        "pkcs11:token=cli;object=nobody?module-path={}",
        module().display()
    );
    bin(&conf)
        .args(["unseal", "-i", &missing, "-o"])
        .arg(d.join("never.safetensors"))
        .arg(&sealed)
        .env("SEALTENSORS_PKCS11_PIN", PIN)
        .assert()
        .code(4)
        .stderr(predicate::str::contains("keygen --pkcs11"));
    // A PIN in the URI is refused before anything is tried.
    bin(&conf)
        .args(["unseal", "-i", &format!("{uri}&pin-value={PIN}"), "-o"])
        .arg(d.join("never.safetensors"))
        .arg(&sealed)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("pin-value is refused"))
        .stderr(predicate::str::contains(PIN).not());
}

#[test]
fn a_token_key_signs_and_the_signature_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let conf = token(d);
    let plain = d.join("model.safetensors");
    write_model(&plain);
    let uri = format!(
        "pkcs11:token=cli;object=publisher?module-path={}",
        module().display()
    );
    let out = bin(&conf)
        .args(["keygen", "--sign", "--pkcs11", &uri])
        .env("SEALTENSORS_PKCS11_PIN", PIN)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let signer = String::from_utf8(out).unwrap().trim().to_string();
    assert!(signer.starts_with("ed25519:"), "{signer}");
    let signed = d.join("signed.safetensors");
    bin(&conf)
        .args(["--quiet", "sign", "--sign-key", &uri, "-o"])
        .arg(&signed)
        .arg(&plain)
        .env("SEALTENSORS_PKCS11_PIN", PIN)
        .assert()
        .success();
    bin(&conf)
        .args(["verify", "--json", "--trust", &signer])
        .arg(&signed)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "\"authenticity\":\"signed-trusted\"",
        ));
    // A token without Ed25519 (forced here with --ecdsa): ECDSA P-256, and a
    // trust entry that names that algorithm, from the environment too.
    let ecdsa_uri = format!(
        "pkcs11:token=cli;object=publisher-ecdsa?module-path={}",
        module().display()
    );
    let out = bin(&conf)
        .args(["keygen", "--sign", "--ecdsa", "--pkcs11", &ecdsa_uri])
        .env("SEALTENSORS_PKCS11_PIN", PIN)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let ecdsa = String::from_utf8(out).unwrap().trim().to_string();
    assert!(ecdsa.starts_with("ecdsa-p256:"), "{ecdsa}");
    let ecdsa_signed = d.join("ecdsa-signed.safetensors");
    bin(&conf)
        .args(["--quiet", "sign", "--sign-key", &ecdsa_uri, "-o"])
        .arg(&ecdsa_signed)
        .arg(&plain)
        .env("SEALTENSORS_PKCS11_PIN", PIN)
        .assert()
        .success();
    bin(&conf)
        .args(["verify", "--json", "--require-signed"])
        .arg(&ecdsa_signed)
        .env("SEALTENSORS_TRUST", &ecdsa)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "\"authenticity\":\"signed-trusted\"",
        ));
    // The Ed25519 signer is not trusted for the ECDSA file.
    bin(&conf)
        .args(["verify", "--trust", &signer])
        .arg(&ecdsa_signed)
        .assert()
        .code(3);
    // The signing key is no identity (and --sign-key with a wrong PIN fails).
    bin(&conf)
        .args(["--quiet", "sign", "--sign-key", &uri, "-o"])
        .arg(d.join("never.safetensors"))
        .arg(&plain)
        .env("SEALTENSORS_PKCS11_PIN", "000000")
        .assert()
        .code(4)
        .stderr(predicate::str::contains("refused the PIN"));
}
