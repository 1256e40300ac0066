//! The CLI on CryptoTensors files (SPEC appendix A): the vectors in
//! spec/vectors/cryptotensors/ were written by the reference package itself.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

fn bin() -> Command {
    let mut c = Command::cargo_bin("sealtensors").unwrap();
    c.env_remove("SEALTENSORS_IDENTITY")
        .env_remove("SEALTENSORS_TRUST")
        .env_remove("SEALTENSORS_LICENCE")
        .env("SEALTENSORS_CONFIG_DIR", "/nonexistent-sealtensors-config");
    c
}

fn vec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../spec/vectors/cryptotensors")
}

/// `verb` with their key file as identity, the signer trusted and the
/// licence their policy wants.
fn keyed(verb: &[&str], keys: &Path, signer: &Path, lic: &Path) -> Command {
    let mut c = bin();
    c.args(verb)
        .arg("-i")
        .arg(keys)
        .arg("--trust")
        .arg(signer)
        .arg("--licence")
        .arg(lic);
    c
}

fn licence(dir: &Path) -> PathBuf {
    let p = dir.join("licence.json");
    std::fs::write(&p, r#"{"vector": "yes"}"#).unwrap();
    p
}

#[test]
fn inspect_verify_convert_unseal() {
    let tmp = tempfile::tempdir().unwrap();
    let d = vec_dir();
    let lic = licence(tmp.path());
    for name in ["v2-aes256gcm", "v1-chacha20poly1305"] {
        let file = d.join(format!("{name}.safetensors"));
        let keys = d.join(format!("{name}.keys.json"));
        let signer = d.join("signer.pub.json");
        bin()
            .arg("inspect")
            .arg(&file)
            .assert()
            .success()
            .stdout(predicate::str::contains("format:      CryptoTensors v"))
            .stdout(predicate::str::contains("kid \"vector-sign\""))
            .stdout(predicate::str::contains("plain safetensors").not());
        // no trusted signer: refused, and the message says what to give
        bin()
            .args(["verify", "-i"])
            .arg(&keys)
            .arg("--licence")
            .arg(&lic)
            .arg(&file)
            .assert()
            .failure()
            .stderr(predicate::str::contains("trusts no signer"));
        // no key and no trust: inspected locked, its signature unchecked,
        // which is never "OK"
        bin()
            .arg("verify")
            .arg(&file)
            .assert()
            .code(3)
            .stdout(predicate::str::contains("NOT VERIFIED"))
            .stderr(predicate::str::contains("signature was not checked"));
        // their key file as identity, the signer's public half trusted
        keyed(&["verify"], &keys, &signer, &lic)
            .arg(&file)
            .assert()
            .success()
            .stdout(predicate::str::contains("OK"))
            .stdout(predicate::str::contains("3 encrypted"));
        // the policy wants a licence
        bin()
            .args(["verify", "-i"])
            .arg(&keys)
            .arg("--trust")
            .arg(&signer)
            .arg(&file)
            .assert()
            .failure()
            .stderr(predicate::str::contains("denies"));
        // convert to a sealed file for a new recipient
        let id = tmp.path().join("id.jwk");
        let out = bin()
            .args(["keygen", "--force", "-o"])
            .arg(&id)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let recipient = String::from_utf8(out).unwrap().trim().to_string();
        let sealed = tmp.path().join(format!("{name}.sealed.safetensors"));
        keyed(
            &["convert", "--from", "cryptotensors"],
            &keys,
            &signer,
            &lic,
        )
        .args(["-r", &recipient, "-o"])
        .arg(&sealed)
        .arg(&file)
        .assert()
        .success();
        bin()
            .arg("inspect")
            .arg(&sealed)
            .assert()
            .success()
            .stdout(predicate::str::contains(
                "format:      sealtensors v1 (encrypted)",
            ));
        // back to plain two ways: from the sealed file, and from theirs
        let a = tmp.path().join(format!("{name}.a.safetensors"));
        let b = tmp.path().join(format!("{name}.b.safetensors"));
        bin()
            .args(["unseal", "-i"])
            .arg(&id)
            .arg("-o")
            .arg(&a)
            .arg(&sealed)
            .assert()
            .success();
        keyed(&["unseal"], &keys, &signer, &lic)
            .arg("-o")
            .arg(&b)
            .arg(&file)
            .assert()
            .success();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        // converting to a partial seal would write plaintext: refused
        keyed(
            &["convert", "--from", "cryptotensors"],
            &keys,
            &signer,
            &lic,
        )
        .args(["-r", &recipient, "--encrypt", "t.u8", "-o"])
        .arg(tmp.path().join("partial.safetensors"))
        .arg(&file)
        .assert()
        .failure()
        .stderr(predicate::str::contains("unencrypted on disk"));
        // sealing their file as if it were plain is refused
        bin()
            .args(["seal", "-r", &recipient, "-o"])
            .arg(tmp.path().join("x.safetensors"))
            .arg(&file)
            .assert()
            .failure()
            .stderr(predicate::str::contains("convert --from cryptotensors"));
    }
}
